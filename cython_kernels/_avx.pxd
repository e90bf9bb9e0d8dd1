# cython: language_level=3
# distutils: language = c++
"""AVX2 row helpers of the attention kernel (inline, nogil; cimport only from AVX2-compiled modules).

The row quantizers give exactly the codes, scales and zero points of ``_rows._s8_row`` /
``_rows._u7_row`` (same float32 operations; rounding half to even; min/max are exact in any
order), eight lanes at a time, for rows whose length is a multiple of 8.
"""

from libc.stdint cimport int8_t, int32_t, uint8_t, uint32_t

from cython_kernels._rows cimport _exponent_carry, _rint, _s8_row, _s8_scale, _u7_row, _u7_scale
from cython_kernels._simd cimport *


cdef inline void _prefetch_row(const float* row, int n) noexcept nogil:
    # Prefetching past the end of an array is harmless (no fault).
    cdef int c
    for c in range(0, n, 16):
        __builtin_prefetch(row + c)


cdef inline float _hmax(__m256 v) noexcept nogil:
    cdef float lanes[8]
    cdef float m
    cdef int l
    _mm256_storeu_ps(lanes, v)
    m = lanes[0]
    for l in range(1, 8):
        m = lanes[l] if lanes[l] > m else m
    return m


cdef inline float _hmin(__m256 v) noexcept nogil:
    cdef float lanes[8]
    cdef float m
    cdef int l
    _mm256_storeu_ps(lanes, v)
    m = lanes[0]
    for l in range(1, 8):
        m = lanes[l] if lanes[l] < m else m
    return m


cdef inline float _hsum(__m256 v) noexcept nogil:
    cdef float lanes[8]
    cdef float total = 0
    cdef int l
    _mm256_storeu_ps(lanes, v)
    for l in range(8):
        total += lanes[l]
    return total


cdef inline __m256i _special_bits(__m256 v) noexcept nogil:
    # Top bit set in a lane iff it holds NaN or infinity (_rows._exponent_carry, 8 lanes).
    return _mm256_add_epi32(_mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7F800000)),
                            _mm256_set1_epi32(0x00800000))


cdef inline bint _row_special(const float* x, int n) noexcept nogil:
    """True if x[0:n] holds NaN or infinity (from the bits)."""
    cdef __m256i special = _mm256_set1_epi32(0)
    cdef const uint32_t* bits = <const uint32_t*>x
    cdef uint32_t s = 0
    cdef int c, j
    for c in range(n // 8):
        special = _mm256_or_si256(special, _special_bits(_mm256_loadu_ps(x + 8 * c)))
    for j in range(n // 8 * 8, n):
        s = s | _exponent_carry(bits[j])
    return _mm256_movemask_ps(_mm256_castsi256_ps(special)) != 0 or (s & 0x80000000u) != 0


cdef inline int32_t _code_sum(const int8_t* q, int n) noexcept nogil:
    """Sum of n int8 codes: bytes biased to unsigned, summed by vpsadbw."""
    cdef __m256i acc = _mm256_setzero_si256(), bias = _mm256_set1_epi8(-128)
    cdef long long parts[4]
    cdef int32_t s = 0
    cdef int c, j
    for c in range(n // 32):
        acc = _mm256_add_epi64(acc, _mm256_sad_epu8(_mm256_xor_si256(
            _mm256_loadu_si256(<const __m256i*>(q + 32 * c)), bias), _mm256_setzero_si256()))
    _mm256_storeu_si256(<__m256i*>parts, acc)
    s = <int32_t>(parts[0] + parts[1] + parts[2] + parts[3]) - 128 * (n // 32 * 32)
    for j in range(n // 32 * 32, n):
        s += q[j]
    return s


cdef inline void _store_codes(__m256 a, int8_t* q) noexcept nogil:
    # 8 integer-valued floats in -128..255 -> 8 bytes (int8 or uint8 bit patterns).
    cdef int32_t lanes[8]
    cdef int l
    _mm256_storeu_si256(<__m256i*>lanes, _mm256_cvtps_epi32(a))
    for l in range(8):
        q[l] = <int8_t>lanes[l]


cdef inline void _store_codes32(__m256 a, __m256 b, __m256 c, __m256 d, int8_t* q, bint unsigned_) noexcept nogil:
    # 32 integer-valued floats in -128..255 -> 32 bytes in order (int8, or uint8 when unsigned_).
    cdef __m256i ab = _mm256_packs_epi32(_mm256_cvtps_epi32(a), _mm256_cvtps_epi32(b))
    cdef __m256i cd = _mm256_packs_epi32(_mm256_cvtps_epi32(c), _mm256_cvtps_epi32(d))
    cdef __m256i bytes_ = _mm256_packus_epi16(ab, cd) if unsigned_ else _mm256_packs_epi16(ab, cd)
    # The packs work per 128-bit lane: 4-byte groups come out as a0 b0 c0 d0 a1 b1 c1 d1.
    _mm256_storeu_si256(<__m256i*>q, _mm256_permutevar8x32_epi32(bytes_, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)))


cdef inline __m256 _s8_code_vec(const float* x, const float* sub, __m256 inv) noexcept nogil:
    # 8 codes of _rows._s8_row as floats: clamp(round_half_even((x - sub) * inv), -127, 127).
    cdef __m256 v = _mm256_sub_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(sub))
    v = _mm256_round_ps(_mm256_mul_ps(v, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
    return _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-127)), _mm256_set1_ps(127))


cdef inline void _s8_codes(const float* x, const float* sub, int8_t* q, int n, float inv) noexcept nogil:
    """The codes of _rows._s8_row of (x - sub) for a given 1/scale (any n; AVX2 for the first n // 8 * 8:
    32 at a time, four registers packed into one store)."""
    cdef __m256 inv_v = _mm256_set1_ps(inv)
    cdef float t
    cdef int c = 0, j
    while c + 32 <= n:
        _store_codes32(_s8_code_vec(x + c, sub + c, inv_v), _s8_code_vec(x + c + 8, sub + c + 8, inv_v),
                       _s8_code_vec(x + c + 16, sub + c + 16, inv_v), _s8_code_vec(x + c + 24, sub + c + 24, inv_v),
                       q + c, False)
        c += 32
    while c + 8 <= n:
        _store_codes(_s8_code_vec(x + c, sub + c, inv_v), q + c)
        c += 8
    for j in range(c, n):
        t = _rint((x[j] - sub[j]) * inv)
        t = t if t > -127 else <float>-127.0
        t = t if t < 127 else <float>127.0
        q[j] = <int8_t>(<int32_t>t)


cdef inline __m256 _u7_code_vec(const float* x, __m256 inv, __m256 zp) noexcept nogil:
    # 8 codes of _rows._u7_row as floats: clamp(round_half_even(x * inv) + zp, 0, 127).
    cdef __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x), inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
    return _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(v, zp), _mm256_setzero_ps()), _mm256_set1_ps(127))


cdef inline void _u7_codes(const float* x, uint8_t* q, int n, float inv, float zpf) noexcept nogil:
    """The codes of _rows._u7_row for a given 1/scale and zero point (any n; AVX2 for the first n // 8 * 8,
    32 at a time)."""
    cdef __m256 inv_v = _mm256_set1_ps(inv), zp_v = _mm256_set1_ps(zpf)
    cdef float t
    cdef int c = 0, j
    while c + 32 <= n:
        _store_codes32(_u7_code_vec(x + c, inv_v, zp_v), _u7_code_vec(x + c + 8, inv_v, zp_v),
                       _u7_code_vec(x + c + 16, inv_v, zp_v), _u7_code_vec(x + c + 24, inv_v, zp_v),
                       <int8_t*>(q + c), True)
        c += 32
    while c + 8 <= n:
        _store_codes(_u7_code_vec(x + c, inv_v, zp_v), <int8_t*>(q + c))
        c += 8
    for j in range(c, n):
        t = _rint(x[j] * inv) + zpf
        t = t if t > 0 else <float>0.0
        t = t if t < 127 else <float>127.0
        q[j] = <uint8_t>(<int32_t>t)


cdef inline bint _s8_row_avx(const float* x, const float* sub, int8_t* q, int n, float* scale_out) noexcept nogil:
    """_rows._s8_row of (x - sub) for n % 8 == 0, bit-identical codes and scale (AVX2)."""
    cdef __m256 amax = _mm256_setzero_ps(), v
    cdef __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF))
    cdef __m256i special = _mm256_set1_epi32(0)
    cdef float scale, inv
    cdef int c
    for c in range(n // 8):
        v = _mm256_sub_ps(_mm256_loadu_ps(x + 8 * c), _mm256_loadu_ps(sub + 8 * c))
        special = _mm256_or_si256(special, _special_bits(v))
        amax = _mm256_max_ps(amax, _mm256_and_ps(v, absmask))
    if _mm256_movemask_ps(_mm256_castsi256_ps(special)):
        scale_out[0] = 0
        return True
    scale = _s8_scale(_hmax(amax), &inv)
    _s8_codes(x, sub, q, n, inv)
    scale_out[0] = scale
    return False


cdef inline bint _u7_row_avx(const float* x, uint8_t* q, int n, float* scale_out, int32_t* zp_out) noexcept nogil:
    """_rows._u7_row for n % 8 == 0, bit-identical codes, scale and zero point (AVX2)."""
    cdef __m256 vmin = _mm256_setzero_ps(), vmax = _mm256_setzero_ps(), v
    cdef __m256i special = _mm256_set1_epi32(0)
    cdef float lo, hi, scale, inv, zpf
    cdef int c
    for c in range(n // 8):
        v = _mm256_loadu_ps(x + 8 * c)
        special = _mm256_or_si256(special, _special_bits(v))
        vmin = _mm256_min_ps(vmin, v)
        vmax = _mm256_max_ps(vmax, v)
    if _mm256_movemask_ps(_mm256_castsi256_ps(special)):
        scale_out[0] = 0
        zp_out[0] = 0
        return True
    scale = _u7_scale(_hmin(vmin), _hmax(vmax), &inv, &zpf)
    _u7_codes(x, q, n, inv, zpf)
    scale_out[0] = scale
    zp_out[0] = <int32_t>zpf
    return False


cdef inline __m256 _exp2_nonpositive(__m256 x) noexcept nogil:
    # 2**x for x <= 0 (degree-6 polynomial on [-0.5, 0.5], relative error < 2e-7), exactly 0 for
    # x < -126.5: x is clamped to -127, where n = -127 makes the bit pattern of 2**n zero.
    cdef __m256 xc = _mm256_max_ps(x, _mm256_set1_ps(-127))
    cdef __m256i n = _mm256_cvttps_epi32(_mm256_sub_ps(xc, _mm256_set1_ps(0.5)))  # round: xc <= 0
    cdef __m256 f = _mm256_sub_ps(xc, _mm256_cvtepi32_ps(n))                       # in [-0.5, 0.5]
    cdef __m256 p = _mm256_set1_ps(1.535336188319500e-4)
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3))
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3))
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2))
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1))
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1))
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0))
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23)))


cdef inline bint _s8_row_any(const float* x, const float* sub, float* tmp, int8_t* q, int n, float* scale_out) noexcept nogil:
    """_rows._s8_row of (x - sub) for any n: the AVX2 version when n % 8 == 0, else through tmp (n floats)."""
    cdef int d
    if n % 8 == 0:
        return _s8_row_avx(x, sub, q, n, scale_out)
    for d in range(n):
        tmp[d] = x[d] - sub[d]
    return _s8_row(tmp, q, n, scale_out)


cdef inline bint _u7_row_any(const float* x, uint8_t* q, int n, float* scale_out, int32_t* zp_out) noexcept nogil:
    """_rows._u7_row for any n: the AVX2 version when n % 8 == 0."""
    if n % 8 == 0:
        return _u7_row_avx(x, q, n, scale_out, zp_out)
    return _u7_row(x, q, n, scale_out, zp_out)
