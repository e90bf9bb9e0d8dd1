# distutils: language = c++
"""The AVX2 intrinsics the attention kernel uses (declarations only).

GCC vectorizes the element-wise loops of ``_attention`` by itself, but not
float sum reductions without ``-ffast-math``-style flags (which would also
break the exact rounding of the quantizers), and it vectorizes loops of 32
elements poorly.  Row reductions and per-token quantization are therefore
written with these.  Only modules compiled with ``-mavx2 -mfma`` may cimport
this, and only after a CPU check.
"""

cdef extern from "immintrin.h" nogil:
    ctypedef struct __m256:
        pass
    ctypedef struct __m256i:
        pass
    ctypedef struct __m128i:
        pass

    int _MM_FROUND_TO_NEAREST_INT
    int _MM_FROUND_NO_EXC

    __m256 _mm256_loadu_ps(const float* p)
    void _mm256_storeu_ps(float* p, __m256 a)
    __m256 _mm256_set1_ps(float a)
    __m256 _mm256_setzero_ps()
    __m256 _mm256_add_ps(__m256 a, __m256 b)
    __m256 _mm256_sub_ps(__m256 a, __m256 b)
    __m256 _mm256_mul_ps(__m256 a, __m256 b)
    __m256 _mm256_max_ps(__m256 a, __m256 b)
    __m256 _mm256_min_ps(__m256 a, __m256 b)
    __m256 _mm256_and_ps(__m256 a, __m256 b)
    __m256 _mm256_hadd_ps(__m256 a, __m256 b)  # pairwise sums of a and b, interleaved by 128-bit lane
    __m256 _mm256_round_ps(__m256 a, int mode)
    __m256i _mm256_cvtps_epi32(__m256 a)        # rounds with the current mode (nearest even)
    __m256i _mm256_cvttps_epi32(__m256 a)       # truncates
    __m256 _mm256_cvtepi32_ps(__m256i a)
    __m256 _mm256_fmadd_ps(__m256 a, __m256 b, __m256 c)  # a * b + c, one rounding
    __m256i _mm256_loadu_si256(const __m256i* p)
    __m256i _mm256_mullo_epi32(__m256i a, __m256i b)
    __m256i _mm256_sub_epi32(__m256i a, __m256i b)
    __m256i _mm256_slli_epi32(__m256i a, int count)
    __m256 _mm256_castsi256_ps(__m256i a)
    __m256i _mm256_castps_si256(__m256 a)
    __m256i _mm256_set1_epi32(int a)
    __m256i _mm256_and_si256(__m256i a, __m256i b)
    __m256i _mm256_or_si256(__m256i a, __m256i b)
    __m256i _mm256_add_epi32(__m256i a, __m256i b)
    __m256i _mm256_packs_epi32(__m256i a, __m256i b)   # int32 -> int16, saturating, per 128-bit lane
    __m256i _mm256_packs_epi16(__m256i a, __m256i b)   # int16 -> int8, saturating, per 128-bit lane
    __m256i _mm256_packus_epi16(__m256i a, __m256i b)  # int16 -> uint8, saturating, per 128-bit lane
    __m256i _mm256_permutevar8x32_epi32(__m256i a, __m256i idx)
    __m256 _mm256_permutevar8x32_ps(__m256 a, __m256i idx)
    __m256i _mm256_setr_epi32(int e0, int e1, int e2, int e3, int e4, int e5, int e6, int e7)
    void _mm256_storeu_si256(__m256i* p, __m256i a)
    int _mm256_movemask_ps(__m256 a)

    __m256i _mm256_cmpgt_epi32(__m256i a, __m256i b)
    __m256i _mm256_cmpeq_epi32(__m256i a, __m256i b)
    __m256i _mm256_max_epi32(__m256i a, __m256i b)
    __m256i _mm256_min_epi32(__m256i a, __m256i b)
    __m256i _mm256_setzero_si256()
    __m256i _mm256_set1_epi8(char a)
    __m256i _mm256_add_epi64(__m256i a, __m256i b)
    __m256i _mm256_sad_epu8(__m256i a, __m256i b)
    __m256i _mm256_blendv_epi8(__m256i a, __m256i b, __m256i mask)
    __m256i _mm256_srai_epi32(__m256i a, int count)
    __m256i _mm256_xor_si256(__m256i a, __m256i b)
    __m256i _mm256_maskload_epi32(const int* p, __m256i mask)  # lanes with mask's top bit clear: 0, not read
    __m256 _mm256_permute2f128_ps(__m256 a, __m256 b, int imm)
    __m256 _mm256_blend_ps(__m256 a, __m256 b, int imm)
    __m256 _mm256_div_ps(__m256 a, __m256 b)
    __m256 _mm256_fnmadd_ps(__m256 a, __m256 b, __m256 c)  # c - a * b, one rounding
    __m256i _mm256_shuffle_epi32(__m256i a, int imm)         # within each 128-bit lane
    __m256i _mm256_permute2x128_si256(__m256i a, __m256i b, int imm)
    int _mm256_cvtsi256_si32(__m256i a)                      # lane 0

    __m128i _mm_loadu_si128(const __m128i* p)
    void _mm_storeu_si128(__m128i* p, __m128i a)
    __m128i _mm_setzero_si128()
    __m128i _mm_unpacklo_epi8(__m128i a, __m128i b)
    __m128i _mm_unpackhi_epi8(__m128i a, __m128i b)
    __m128i _mm_unpacklo_epi16(__m128i a, __m128i b)
    __m128i _mm_unpackhi_epi16(__m128i a, __m128i b)
    __m128i _mm_loadl_epi64(const __m128i* p)               # 8 bytes into the low half, high half 0
    __m256i _mm256_cvtepu8_epi32(__m128i a)                  # the low 8 bytes, zero-extended
    __m256 _mm256_blendv_ps(__m256 a, __m256 b, __m256 mask)  # b where mask's top bit is set, else a


cdef extern from *:
    void __builtin_prefetch(const void* addr) nogil
