# distutils: language = c++
"""Declarations of the part of FBGEMM that the kernels use (no code).

FBGEMM is not built here: the torch CPU wheel ships its headers in
``torch/include/fbgemm/`` and exports the explicit template instances declared
below from ``libtorch_cpu.so`` (checked with ``nm -D --defined-only``).  Only
instances that torch exports may be used, which is why the output pipelines
are declared as concrete classes rather than as templates:

* ``fbgemmPacked<PackAMatrix<u8,i32>, PackBMatrix<s8,i32>, int32, memCopy<>>``
* ``fbgemmPacked<PackAWithRowOffset<u8,i32>, PackBMatrix<s8,i32>, float,
  ReQuantizeForFloat<false, OUT_CHANNEL>>`` (``ReQuantizeForFloat`` is not
  exported with a plain ``PackAMatrix``).
"""

from libc.stdint cimport int8_t, int32_t, uint8_t, uint32_t
from libcpp cimport bool


cdef extern from "fbgemm/Fbgemm.h" namespace "fbgemm" nogil:
    cdef enum class matrix_op_t:
        NoTranspose
        Transpose

    cdef enum class inst_set_t:
        anyarch
        avx2
        avx512
        avx512_ymm
        avx512_vnni
        avx512_vnni_ymm
        sve

    # --- CPU detection -----------------------------------------------------
    # fbgemmSupportedCPU() initialises cpuinfo; the fbgemmHas*() queries
    # answer False until it has been called once.
    bool fbgemmSupportedCPU()
    bool fbgemmHasAvx2Support()
    bool fbgemmHasAvx512Support()
    bool fbgemmHasAvx512VnniSupport()
    inst_set_t fbgemmInstructionSet()
    # Process-global; packing and kernels must see the same ISA.
    void fbgemmForceIsa(inst_set_t isa)

    # --- packing -------------------------------------------------------------
    cdef cppclass PackAMatrix[T, accT]:
        # (trans, nRow, nCol, smat, ld, pmat=nullptr, groups=1)
        PackAMatrix(matrix_op_t, int32_t, int32_t, const T*, int32_t,
                    T*, int) except +

    cdef cppclass PackAWithRowOffset[T, accT]:
        # (trans, nRow, nCol, smat, ld, pmat=nullptr, groups=1, row_offset=nullptr)
        PackAWithRowOffset(matrix_op_t, uint32_t, uint32_t, const T*, uint32_t,
                           T*, int, int32_t*) except +

    cdef cppclass PackBMatrix[T, accT]:
        # (trans, nRow=K, nCol=N, smat, ld, pmat=nullptr, groups=1); packs in
        # the constructor.
        PackBMatrix(matrix_op_t, int32_t, int32_t, const T*, int32_t,
                    T*, int) except +
        # Layout of the packed buffer (inline accessors of PackMatrix): blocks
        # of blockRowSize() (KCB) x blockColSize() (NCB), blockCols() per
        # block row; see _attention._packed_offset.
        int32_t blockRowSize()
        int32_t blockColSize()
        int32_t blockCols()
        T* getBuf(int32_t, int32_t)

    # --- output pipelines ----------------------------------------------------
    cdef cppclass DoNothingI32 "fbgemm::DoNothing<std::int32_t, std::int32_t>":
        DoNothingI32()

    cdef cppclass DoNothingF32 "fbgemm::DoNothing<float, float>":
        DoNothingF32()

    # memCopy<int32, int32, DoNothing<int32, int32>>: a no-op when C_buffer == C.
    cdef cppclass MemCopyI32 "fbgemm::memCopy<std::int32_t, std::int32_t>":
        MemCopyI32(DoNothingI32&)

    # ReQuantizeForFloat<FUSE_RELU=false, OUT_CHANNEL>:
    #   out[i, j] = (acc[i, j] - Aq_zero_point * col_offsets[j]
    #                - row_offsets[i] * Bq_zero_point[j])
    #               * Aq_scale * Bq_scale[j] (+ bias[j])
    # Aq_scale and Aq_zero_point are scalars: one A quantization per GEMM.
    cdef cppclass ReQuantizeForFloatPerChannel "fbgemm::ReQuantizeForFloat<false, fbgemm::QuantizationGranularity::OUT_CHANNEL>":
        ReQuantizeForFloatPerChannel(
            DoNothingF32& nextop,
            float Aq_scale,
            const float* Bq_scale,
            int32_t Aq_zero_point,
            const int32_t* Bq_zero_point,
            const int32_t* row_offsets,
            const int32_t* col_offsets,
            const float* bias,
            uint32_t nCol,
        )

    # --- GEMM ----------------------------------------------------------------
    # One template in C++; the two exported instances that are used here.
    # C_buffer may alias C (in-place accumulation); each thread_id of
    # num_threads computes its share of the rows/columns of C.
    void fbgemmPacked(
        PackAMatrix[uint8_t, int32_t]& packA,
        PackBMatrix[int8_t, int32_t]& packB,
        int32_t* C,
        int32_t* C_buffer,
        uint32_t ldc,
        const MemCopyI32& outProcess,
        int thread_id,
        int num_threads,
    ) except +
    void fbgemmPacked(
        PackAWithRowOffset[uint8_t, int32_t]& packA,
        PackBMatrix[int8_t, int32_t]& packB,
        float* C,
        int32_t* C_buffer,
        uint32_t ldc,
        const ReQuantizeForFloatPerChannel& outProcess,
        int thread_id,
        int num_threads,
    ) except +
