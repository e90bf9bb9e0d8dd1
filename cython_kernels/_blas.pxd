# distutils: language = c++
"""Declaration of the one BLAS routine the attention kernel uses (no code).

The torch CPU wheel links MKL statically and exports its Fortran-style
``sgemm_`` (LP64: 32-bit ints) from ``libtorch_cpu.so``, like the FBGEMM
instances in ``_fbgemm.pxd``.  Column-major, arguments by pointer.
"""

cdef extern from *:
    """
    extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                           const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                           const float* beta, float* c, const int* ldc);
    """
    void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                const float* beta, float* c, const int* ldc) nogil
