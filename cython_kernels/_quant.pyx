# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True
# distutils: language = c++
"""Quantize / dequantize loops around the GEMMs (thin layer: no dtype checks).

Each row of a 2-D C-contiguous float32 array gets its own parameters; the
Python layer reshapes (..., R, K) to rows of K (per token) or rows of R*K
(per matrix).  All arithmetic is float32, in this order, so that a NumPy
float32 reference reproduces the codes exactly::

    u7 asymmetric:  lo = min(0, min x)   hi = max(0, max x)
                    scale = (hi - lo) / 127    inv = 1 / scale
                    zero_point = clip(rint(-lo * inv), 0, 127)
                    q = clip(rint(x * inv) + zero_point, 0, 127)
    s8 symmetric:   scale = max|x| / 127       inv = 1 / scale
                    q = clip(rint(x * inv), -127, 127)

``rint`` rounds half to even.  A row whose range is zero (or whose 1/scale
exceeds 3e38) gets scale 1 and zero point 0.  Rows holding NaN or
infinity are counted and returned (their outputs are unspecified) so the
caller can raise.
"""

from cython.parallel cimport prange, threadid
from libc.stdint cimport int8_t, int32_t, uint8_t, uint32_t
from libcpp.vector cimport vector

from cython_kernels._rows cimport _s8_row, _s8_scale, _u7_row, _u7_scale


def s8_scale(float amax) -> tuple[float, float]:
    """(scale, 1 / scale) of the s8 rule for a group with maximum magnitude amax (float32 arithmetic)."""
    cdef float inv
    cdef float scale = _s8_scale(amax, &inv)
    return scale, inv


def u7_scale(float lo, float hi) -> tuple[float, float, float]:
    """(scale, 1 / scale, zero point) of the 7-bit rule for a group with range [lo, hi] (lo <= 0 <= hi)."""
    cdef float inv, zpf
    cdef float scale = _u7_scale(lo, hi, &inv, &zpf)
    return scale, inv, zpf


def quantize_u7_rows(const float[:, ::1] x, uint8_t[:, ::1] q,
                     float[::1] scale, int32_t[::1] zero_point,
                     int threads) -> int:
    """Asymmetric 7-bit (0..127) codes per row; returns the number of non-finite rows."""
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1], i
    cdef Py_ssize_t bad = 0
    if (q.shape[0], q.shape[1]) != (rows, n) or scale.shape[0] != rows or zero_point.shape[0] != rows:
        raise ValueError("output shapes do not match x")
    if rows == 0:
        return 0
    if n == 0:
        scale[:] = 1
        zero_point[:] = 0
        return 0
    for i in prange(rows, nogil=True, num_threads=threads, schedule="static"):
        bad += _u7_row(&x[i, 0], &q[i, 0], n, &scale[i], &zero_point[i])
    return bad


def quantize_s8_rows(const float[:, ::1] x, int8_t[:, ::1] q, float[::1] scale,
                     int threads) -> int:
    """Symmetric int8 (-127..127) codes per row; returns the number of non-finite rows."""
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1], i
    cdef Py_ssize_t bad = 0
    if (q.shape[0], q.shape[1]) != (rows, n) or scale.shape[0] != rows:
        raise ValueError("output shapes do not match x")
    if rows == 0:
        return 0
    if n == 0:
        scale[:] = 1
        return 0
    for i in prange(rows, nogil=True, num_threads=threads, schedule="static"):
        bad += _s8_row(&x[i, 0], &q[i, 0], n, &scale[i])
    return bad


def max_u8(const uint8_t[::1] x) -> int:
    """Largest value of a flat uint8 array (0 if empty)."""
    cdef uint8_t m = 0, v
    cdef Py_ssize_t j
    with nogil:
        for j in range(x.shape[0]):
            v = x[j]
            m = v if v > m else m
    return m


cdef void _dequant_matrix(const int32_t* c, const int8_t* b, const float* a_scale,
                          const int32_t* a_zp, const float* b_scale, float* out,
                          Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                          int32_t* b_sums) noexcept nogil:
    cdef Py_ssize_t i, j, t
    cdef int32_t s, z
    cdef float sa
    for j in range(n):
        s = 0
        for t in range(k):
            s = s + b[j * k + t]
        b_sums[j] = s
    for i in range(m):
        sa = a_scale[i]
        z = a_zp[i]
        for j in range(n):
            out[i * n + j] = <float>(c[i * n + j] - z * b_sums[j]) * (sa * b_scale[j])


def dequantize_s32(const int32_t[:, :, ::1] c, const int8_t[:, :, ::1] b,
                   const float[:, ::1] a_scale, const int32_t[:, ::1] a_zero_point,
                   const float[:, ::1] b_scale, float[:, :, ::1] out,
                   int threads) -> None:
    """out[p,i,j] = float32(c[p,i,j] - a_zp[p,i] * sum_k b[p,j,k]) * (a_scale[p,i] * b_scale[p,j]).

    Per-row (per-token) A scales and zero points, per-row B scales, B symmetric.
    """
    cdef Py_ssize_t batch = c.shape[0], m = c.shape[1], n = c.shape[2], k = b.shape[2], p
    cdef vector[int32_t] sums
    if ((b.shape[0], b.shape[1]) != (batch, n) or (a_scale.shape[0], a_scale.shape[1]) != (batch, m)
            or (a_zero_point.shape[0], a_zero_point.shape[1]) != (batch, m)
            or (b_scale.shape[0], b_scale.shape[1]) != (batch, n) or (out.shape[0], out.shape[1], out.shape[2]) != (batch, m, n)):
        raise ValueError("shape mismatch")
    if batch == 0 or m == 0 or n == 0:
        return
    if k == 0:
        out[:, :, :] = 0
        return
    sums.resize(n * threads)
    for p in prange(batch, nogil=True, num_threads=threads, schedule="static"):
        _dequant_matrix(&c[p, 0, 0], &b[p, 0, 0], &a_scale[p, 0], &a_zero_point[p, 0],
                        &b_scale[p, 0], &out[p, 0, 0], m, n, k,
                        sums.data() + n * threadid())
