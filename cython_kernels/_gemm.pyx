# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True
# distutils: language = c++
"""Batched u8 x s8 GEMMs on FBGEMM (thin layer: no dtype or range checks).

Layout, for every batch index ``p`` (``batch`` = batch x heads in attention)::

    a[p]: uint8 (M, K) row-major      activations, must be in 0..127 (7 bits)
    b[p]: int8  (N, K) row-major      i.e. B transposed, like K in Q @ K^T
    c[p] = a[p] @ b[p]^T               (M, N) row-major

The 7-bit rule is NOT checked here: ``cython_kernels`` (the Python layer) does
it.  On AVX2 without VNNI FBGEMM adds adjacent u8*s8 products in int16 with
saturation (``vpmaddubsw``), so 8-bit activations give silently wrong sums.

Threading: with ``batch >= threads`` each OpenMP thread (torch's libgomp)
runs whole GEMMs; with fewer matrices than threads each GEMM is split with
FBGEMM's own ``thread_id``/``num_threads`` partition.  B is packed per call
(packing is part of the measured cost).
"""

from cython.parallel cimport parallel, prange, threadid
from libc.stdint cimport int8_t, int32_t, uint8_t, uint32_t
from libcpp.vector cimport vector

from cython_kernels._fbgemm cimport (
    DoNothingF32,
    DoNothingI32,
    MemCopyI32,
    PackAMatrix,
    PackAWithRowOffset,
    PackBMatrix,
    ReQuantizeForFloatPerChannel,
    fbgemmForceIsa,
    fbgemmHasAvx2Support,
    fbgemmHasAvx512Support,
    fbgemmHasAvx512VnniSupport,
    fbgemmInstructionSet,
    fbgemmPacked,
    fbgemmSupportedCPU,
    inst_set_t,
    matrix_op_t,
)

ctypedef PackBMatrix[int8_t, int32_t] PackB

cdef extern from *:
    """
    static int attnbench_cpu_has_avx2_fma(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    """
    int attnbench_cpu_has_avx2_fma() nogil


# --- CPU facts ---------------------------------------------------------------

# Index = the C++ enum value of fbgemm::inst_set_t (Utils.h).
_ISA_NAMES = ("anyarch", "avx2", "avx512", "avx512_ymm", "avx512_vnni",
              "avx512_vnni_ymm", "sve")


cdef str _isa_name(inst_set_t isa):
    cdef int i = <int>isa
    return _ISA_NAMES[i] if 0 <= i < len(_ISA_NAMES) else f"unknown({i})"


def cpu_supported() -> bool:
    """True if FBGEMM can run here (x86-64 with AVX2); initialises cpuinfo."""
    return fbgemmSupportedCPU()


def cpu_has_avx2_fma() -> bool:
    """True if the CPU has AVX2 and FMA (needed by ``_attention``, which is compiled for them)."""
    return attnbench_cpu_has_avx2_fma() != 0


def cpu_features() -> dict:
    """FBGEMM's view of the CPU and the ISA its u8s8 GEMM dispatches to."""
    supported = fbgemmSupportedCPU()  # must come first: it initialises cpuinfo
    return {
        "supported": supported,
        "avx2": fbgemmHasAvx2Support(),
        "avx512": fbgemmHasAvx512Support(),
        "avx512_vnni": fbgemmHasAvx512VnniSupport(),
        "isa": _isa_name(fbgemmInstructionSet()),
    }


def force_isa(name: str) -> str:
    """Force FBGEMM's kernel ISA for the whole process; returns the ISA now used.

    ``name``: "avx2", "avx512", "avx512_vnni", ... or "auto" to undo.  FBGEMM
    ignores an ISA the CPU lacks.  Process-global and not thread-safe: call it
    before any GEMM runs (tests use a subprocess).  Equivalent to setting
    ``FBGEMM_ENABLE_INSTRUCTIONS`` (AVX2, AVX512, AVX512_E1) before the first
    GEMM.
    """
    wanted = "anyarch" if name == "auto" else name
    if wanted not in _ISA_NAMES:
        raise ValueError(f"unknown ISA {name!r}; expected 'auto' or one of {_ISA_NAMES}")
    fbgemmSupportedCPU()
    cdef int index = _ISA_NAMES.index(wanted)
    fbgemmForceIsa(<inst_set_t>index)
    return _isa_name(fbgemmInstructionSet())


# --- one GEMM (or one thread's share of it) ----------------------------------

cdef int _s32_part(const uint8_t* a, PackB* pb, int32_t* c,
                   int m, int n, int k, int tid, int nthreads) except -1 nogil:
    cdef DoNothingI32 done
    cdef MemCopyI32* out = new MemCopyI32(done)
    cdef PackAMatrix[uint8_t, int32_t]* pa = NULL
    try:
        pa = new PackAMatrix[uint8_t, int32_t](
            matrix_op_t.NoTranspose, m, k, a, k, NULL, 1)
        # C doubles as the accumulation buffer, so memCopy copies nothing.
        fbgemmPacked(pa[0], pb[0], c, c, <uint32_t>n, out[0], tid, nthreads)
    finally:
        del pa
        del out
    return 0


cdef int _f32_part(const uint8_t* a, PackB* pb, float* c,
                   int m, int n, int k,
                   float a_scale, int32_t a_zero_point,
                   const float* b_scale, const int32_t* b_zero_points,
                   const int32_t* b_row_sums,
                   int tid, int nthreads) except -1 nogil:
    cdef DoNothingF32 done
    cdef ReQuantizeForFloatPerChannel* out = NULL
    cdef PackAWithRowOffset[uint8_t, int32_t]* pa = NULL
    try:
        # row_offsets = NULL: B is symmetric, so FBGEMM skips the term
        # row_sum(A) * B_zero_point.  col_offsets are B's row sums (the
        # column sums of B^T) for the A-zero-point correction.
        out = new ReQuantizeForFloatPerChannel(
            done, a_scale, b_scale, a_zero_point, b_zero_points,
            NULL, b_row_sums, NULL, <uint32_t>n)
        pa = new PackAWithRowOffset[uint8_t, int32_t](
            matrix_op_t.NoTranspose, <uint32_t>m, <uint32_t>k, a, <uint32_t>k,
            NULL, 1, NULL)
        # In place: the int32 accumulators live in C and are overwritten with
        # floats block by block.
        fbgemmPacked(pa[0], pb[0], c, <int32_t*>c, <uint32_t>n, out[0],
                     tid, nthreads)
    finally:
        del pa
        del out
    return 0


cdef inline PackB* _pack_b(const int8_t* b, int n, int k) except NULL nogil:
    # b is (N, K) row-major = B^T, hence Transpose with ld = K.
    return new PackB(matrix_op_t.Transpose, k, n, b, k, NULL, 1)


cdef inline void _row_sums(const int8_t* b, int n, int k, int32_t* sums) noexcept nogil:
    cdef int j, t
    cdef int32_t s
    for j in range(n):
        s = 0
        for t in range(k):
            s = s + b[<Py_ssize_t>j * k + t]
        sums[j] = s


cdef int _s32_one(const uint8_t* a, const int8_t* b, int32_t* c,
                  int m, int n, int k) except -1 nogil:
    cdef PackB* pb = _pack_b(b, n, k)
    try:
        _s32_part(a, pb, c, m, n, k, 0, 1)
    finally:
        del pb
    return 0


cdef int _f32_one(const uint8_t* a, const int8_t* b, float* c, int m, int n, int k,
                  float a_scale, int32_t a_zero_point, const float* b_scale,
                  const int32_t* b_zero_points) except -1 nogil:
    cdef vector[int32_t] sums
    sums.resize(n)
    _row_sums(b, n, k, sums.data())
    cdef PackB* pb = _pack_b(b, n, k)
    try:
        _f32_part(a, pb, c, m, n, k, a_scale, a_zero_point, b_scale,
                  b_zero_points, sums.data(), 0, 1)
    finally:
        del pb
    return 0


def _check_shapes(Py_ssize_t batch, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                  b_shape, out_shape, int threads):
    # Memory safety only; the Python layer gives the helpful messages.
    if b_shape != (batch, n, k) or out_shape != (batch, m, n):
        raise ValueError(f"shape mismatch: a {(batch, m, k)}, b {b_shape}, out {out_shape}")
    if threads < 1:
        raise ValueError("threads must be >= 1")
    if max(m, n, k) >= 2**31 // 128:
        raise ValueError("dimensions too large for FBGEMM's int32 indexing")


# --- public kernels ----------------------------------------------------------

def gemm_u8s8_s32(const uint8_t[:, :, ::1] a, const int8_t[:, :, ::1] b,
                  int32_t[:, :, ::1] out, int threads) -> None:
    """out[p] = a[p] @ b[p].T exactly in int32 (a: (B,M,K) u8, b: (B,N,K) s8)."""
    cdef Py_ssize_t batch = a.shape[0], p
    cdef int m = a.shape[1], k = a.shape[2], n = b.shape[1], tid = 0
    cdef PackB* pb
    _check_shapes(batch, m, n, k, (b.shape[0], b.shape[1], b.shape[2]),
                  (out.shape[0], out.shape[1], out.shape[2]), threads)
    if batch == 0 or m == 0 or n == 0:
        return
    if k == 0:
        out[:, :, :] = 0
        return
    with nogil:
        if batch >= threads:
            for p in prange(batch, num_threads=threads, schedule="static"):
                _s32_one(&a[p, 0, 0], &b[p, 0, 0], &out[p, 0, 0], m, n, k)
        else:
            for p in range(batch):
                pb = _pack_b(&b[p, 0, 0], n, k)
                try:
                    with parallel(num_threads=threads):
                        tid = threadid()
                        _s32_part(&a[p, 0, 0], pb, &out[p, 0, 0], m, n, k,
                                  tid, threads)
                finally:
                    del pb


def gemm_u8s8_f32(const uint8_t[:, :, ::1] a, const int8_t[:, :, ::1] b,
                  const float[::1] a_scale, const int32_t[::1] a_zero_point,
                  const float[:, ::1] b_scale, float[:, :, ::1] out,
                  int threads) -> None:
    """out[p] = a_scale[p] * b_scale[p, j] * ((a[p] - a_zero_point[p]) @ b[p].T)[i, j].

    Dequantized inside FBGEMM's output pipeline (ReQuantizeForFloat).  A has
    one scale/zero point per matrix (FBGEMM's limit); B is symmetric with one
    scale per row of b (per output column).
    """
    cdef Py_ssize_t batch = a.shape[0], p
    cdef int m = a.shape[1], k = a.shape[2], n = b.shape[1], tid = 0
    cdef PackB* pb
    cdef vector[int32_t] sums
    cdef vector[int32_t] zeros
    _check_shapes(batch, m, n, k, (b.shape[0], b.shape[1], b.shape[2]),
                  (out.shape[0], out.shape[1], out.shape[2]), threads)
    if a_scale.shape[0] != batch or a_zero_point.shape[0] != batch \
            or (b_scale.shape[0], b_scale.shape[1]) != (batch, n):
        raise ValueError("scale/zero-point shapes do not match the batch")
    if batch == 0 or m == 0 or n == 0:
        return
    if k == 0:
        out[:, :, :] = 0
        return
    zeros.resize(n, 0)  # B zero points: symmetric B
    with nogil:
        if batch >= threads:
            for p in prange(batch, num_threads=threads, schedule="static"):
                _f32_one(&a[p, 0, 0], &b[p, 0, 0], &out[p, 0, 0], m, n, k,
                         a_scale[p], a_zero_point[p], &b_scale[p, 0], zeros.data())
        else:
            sums.resize(n)
            for p in range(batch):
                _row_sums(&b[p, 0, 0], n, k, sums.data())
                pb = _pack_b(&b[p, 0, 0], n, k)
                try:
                    with parallel(num_threads=threads):
                        tid = threadid()
                        _f32_part(&a[p, 0, 0], pb, &out[p, 0, 0], m, n, k,
                                  a_scale[p], a_zero_point[p], &b_scale[p, 0],
                                  zeros.data(), sums.data(), tid, threads)
                finally:
                    del pb
