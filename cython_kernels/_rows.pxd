# cython: language_level=3
# distutils: language = c++
"""Row quantizers shared by ``_quant`` and ``_attention`` (inline, nogil; no checks).

The exact float32 arithmetic is documented in ``_quant.pyx``; both extensions
compile these same lines, so a code computed in a fused kernel equals the one
``quantize_u7_asym`` / ``quantize_s8_sym`` return for the same row.  Build
with ``-ffp-contract=off``: a fused multiply-add would change rounding.
"""

from libc.math cimport fabsf
from libc.stdint cimport int8_t, int32_t, uint8_t, uint32_t


cdef inline float _rint(float v) noexcept nogil:
    # Round half to even: adding and removing 1.5 * 2**23 leaves no fraction
    # bits under the default rounding mode.  Exact for |v| < 2**22, and
    # v is within +-(127 + 1) here.  (Plain SSE2 adds vectorize; rintf would not.)
    return (v + <float>12582912.0) - <float>12582912.0


cdef inline uint32_t _exponent_carry(uint32_t bits) noexcept nogil:
    # The exponent field is all ones only for NaN and +-inf; adding one to it
    # then carries into the top bit.  Integer-only, so -ffinite-math-only
    # cannot optimise the test away.
    return (bits & 0x7F800000u) + 0x00800000u


cdef inline float _s8_scale(float amax, float* inv_out) noexcept nogil:
    """The s8 rule: scale = amax / 127 and inv = 1 / scale (float32); scale and inv 1 for an all-zero
    group or one whose inverse would overflow.  Every s8 quantizer of the package (this file, ``_avx.pxd``,
    ``_topk``, and NumPy through ``_quant.s8_scale``) takes its scale from here."""
    cdef float scale = amax / <float>127.0
    cdef float inv = <float>1.0 / scale if scale > 0 else <float>0.0
    if not (scale > 0) or inv > <float>3.0e38:
        scale = 1
        inv = 1
    inv_out[0] = inv
    return scale


cdef inline float _u7_scale(float lo, float hi, float* inv_out, float* zpf_out) noexcept nogil:
    """The 7-bit rule for a group whose range [lo, hi] includes 0: scale = (hi - lo) / 127, inv = 1 / scale,
    zero point clip(rint(-lo * inv), 0, 127) (float32, half to even); scale and inv 1 for an all-zero group
    or one whose inverse would overflow.  Every u7 quantizer of the package takes its parameters from here."""
    cdef float scale = (hi - lo) / <float>127.0
    cdef float inv = <float>1.0 / scale if scale > 0 else <float>0.0
    cdef float zpf
    if not (scale > 0) or inv > <float>3.0e38:
        scale = 1
        inv = 1
    zpf = _rint(-lo * inv)
    zpf = zpf if zpf > 0 else <float>0.0
    zpf = zpf if zpf < 127 else <float>127.0
    inv_out[0] = inv
    zpf_out[0] = zpf
    return scale


cdef inline bint _u7_row(const float* x, uint8_t* q, Py_ssize_t n,
                         float* scale_out, int32_t* zp_out) noexcept nogil:
    cdef const uint32_t* bits = <const uint32_t*>x
    cdef uint32_t special = 0
    cdef float lo = 0, hi = 0, v, scale, inv, zpf, t
    cdef Py_ssize_t j
    for j in range(n):
        v = x[j]
        lo = v if v < lo else lo
        hi = v if v > hi else hi
        special = special | _exponent_carry(bits[j])
    if special & 0x80000000u:
        scale_out[0] = 0
        zp_out[0] = 0
        return True
    scale = _u7_scale(lo, hi, &inv, &zpf)
    for j in range(n):
        t = _rint(x[j] * inv) + zpf
        t = t if t > 0 else <float>0.0
        t = t if t < 127 else <float>127.0
        q[j] = <uint8_t>(<int32_t>t)
    scale_out[0] = scale
    zp_out[0] = <int32_t>zpf
    return False


cdef inline bint _s8_row(const float* x, int8_t* q, Py_ssize_t n,
                         float* scale_out) noexcept nogil:
    cdef const uint32_t* bits = <const uint32_t*>x
    cdef uint32_t special = 0
    cdef float amax = 0, a, scale, inv, t
    cdef Py_ssize_t j
    for j in range(n):
        a = fabsf(x[j])
        amax = a if a > amax else amax
        special = special | _exponent_carry(bits[j])
    if special & 0x80000000u:
        scale_out[0] = 0
        return True
    scale = _s8_scale(amax, &inv)
    for j in range(n):
        t = _rint(x[j] * inv)
        t = t if t > -127 else <float>-127.0
        t = t if t < 127 else <float>127.0
        q[j] = <int8_t>(<int32_t>t)
    scale_out[0] = scale
    return False
