# cython: language_level=3
# distutils: language = c++
"""What the fused kernels ``_attention`` and ``_topk`` share (inline; cimport only from AVX2-compiled modules).

* ``Views`` and ``_views``: the memory-safety checks of their thin Python entry points on the
  (batch, heads, seq, dim) q/k/v/out views, the key mask, the trailing-key counts and the profile, and
  the raw pointers and element strides the ``nogil`` loops use (``_head_view`` for one (batch, head));
* ``_key_mean``: K's mean over the valid keys (``smooth_k``);
* ``_gemm_s32``: one exact int32 Q.K^T block on FBGEMM into a strided buffer;
* ``_now`` / ``_lap``: the optional per-phase timings, on a given clock;
* ``Arena`` / ``_take`` / ``_arena_alloc``: a thread's buffers as 64-byte aligned slices of one zeroed
  allocation (a kernel lists its buffers once, in a layout function run twice: to size, then to place).
"""

from libc.stdint cimport int32_t, uint8_t, uint32_t
from libc.stdlib cimport calloc
from posix.time cimport clock_gettime, clockid_t, timespec

from cython_kernels._fbgemm cimport DoNothingI32, MemCopyI32, PackAMatrix, PackBMatrix, fbgemmPacked, matrix_op_t
from libc.stdint cimport int8_t


cdef struct Views:
    # One call's q, k, v, out (batch, heads, seq, dim) as pointers and strides in floats; read-only.
    const float* q
    const float* k
    const float* v
    float* out
    Py_ssize_t qs[3]
    Py_ssize_t ks[3]
    Py_ssize_t vs[3]
    Py_ssize_t os[3]
    const uint8_t* valid      # (batch, seq) 1 = attend, row stride valid_rs bytes
    Py_ssize_t valid_rs
    const int32_t* n_keys     # (batch,) keys to process: no valid key at or beyond n_keys[b]
    int batch, heads, seq, dim


cdef struct HeadView:
    # One (batch, head) of Views: row i of q is q + i * q_rs (floats), and so on.
    const float* q
    const float* k
    const float* v
    float* out
    Py_ssize_t q_rs, k_rs, v_rs, out_rs
    const uint8_t* valid   # (keys,)
    int rows, keys, keys32, dim   # keys32: keys rounded up to 32, the row stride of score buffers


cdef inline int _views(Views* a, const float[:, :, :, :] q, const float[:, :, :, :] k, const float[:, :, :, :] v,
                       const uint8_t[:, ::1] key_valid, const int32_t[::1] n_keys, float[:, :, :, :] out,
                       double[::1] profile, int n_phases, int threads, Py_ssize_t max_dim) except -1:
    """Check the arguments of a fused kernel for memory safety and fill ``a``; ValueError if they do not fit.
    Returns 0 when there is nothing to compute (an empty axis), else 1."""
    cdef Py_ssize_t batch = q.shape[0], heads = q.shape[1], seq = q.shape[2], dim = q.shape[3], i
    shape = (batch, heads, seq, dim)
    for name, other in (("k", (k.shape[0], k.shape[1], k.shape[2], k.shape[3])),
                        ("v", (v.shape[0], v.shape[1], v.shape[2], v.shape[3])),
                        ("out", (out.shape[0], out.shape[1], out.shape[2], out.shape[3]))):
        if other != shape:
            raise ValueError(f"{name} shape {other} != q shape {shape}")
    if (dim > 1 and (q.strides[3] != sizeof(float) or k.strides[3] != sizeof(float) or v.strides[3] != sizeof(float)
                     or out.strides[3] != sizeof(float))):
        raise ValueError("the last axis of q, k, v and out must be contiguous")
    if (key_valid.shape[0], key_valid.shape[1]) != (batch, seq) or n_keys.shape[0] != batch:
        raise ValueError("key_valid must be (batch, seq) and n_keys (batch,)")
    for i in range(batch):
        if not 0 <= n_keys[i] <= seq:
            raise ValueError("n_keys out of range")
    if profile is not None and profile.shape[0] != n_phases:
        raise ValueError(f"profile must have {n_phases} entries")
    if threads < 1:
        raise ValueError("threads must be >= 1")
    if batch * heads == 0 or seq == 0 or dim == 0:
        return 0
    if seq >= 2**31 // 1024 or dim >= max_dim:
        raise ValueError("seq or dim too large")
    a.q, a.k, a.v, a.out = &q[0, 0, 0, 0], &k[0, 0, 0, 0], &v[0, 0, 0, 0], &out[0, 0, 0, 0]
    for i in range(3):
        a.qs[i] = q.strides[i] // sizeof(float)
        a.ks[i] = k.strides[i] // sizeof(float)
        a.vs[i] = v.strides[i] // sizeof(float)
        a.os[i] = out.strides[i] // sizeof(float)
    a.valid, a.valid_rs, a.n_keys = &key_valid[0, 0], key_valid.strides[0], &n_keys[0]
    a.batch, a.heads, a.seq, a.dim = batch, heads, seq, dim
    return 1


cdef inline void _head_view(const Views* a, Py_ssize_t t, HeadView* h) noexcept nogil:
    """h = task t of a: (batch t // heads, head t % heads)."""
    cdef Py_ssize_t b = t // a.heads, hh = t % a.heads
    h.q = a.q + b * a.qs[0] + hh * a.qs[1]
    h.k = a.k + b * a.ks[0] + hh * a.ks[1]
    h.v = a.v + b * a.vs[0] + hh * a.vs[1]
    h.out = a.out + b * a.os[0] + hh * a.os[1]
    h.q_rs, h.k_rs, h.v_rs, h.out_rs = a.qs[2], a.ks[2], a.vs[2], a.os[2]
    h.valid = a.valid + b * a.valid_rs
    h.rows, h.keys, h.dim = a.seq, a.n_keys[b], a.dim
    h.keys32 = (h.keys + 31) // 32 * 32


cdef inline int _key_mean(const float* k, Py_ssize_t k_rs, const uint8_t* valid, int keys, int dim,
                          float* mean) noexcept nogil:
    """mean[0:dim] = the mean of the rows j < keys of k with valid[j] (0 without any); returns their number."""
    cdef int j, d, n = 0
    cdef const float* row
    for d in range(dim):
        mean[d] = 0
    for j in range(keys):
        if valid[j]:
            n += 1
            row = k + j * k_rs
            for d in range(dim):
                mean[d] += row[d]
    if n:
        for d in range(dim):
            mean[d] = mean[d] / n
    return n


cdef inline int _gemm_s32(const uint8_t* a, int lda, PackBMatrix[int8_t, int32_t]* pb, int32_t* c, int ldc, int m,
                          int n, int k) except -1 nogil:
    # c (m x n, row stride ldc) = a (m x k, row stride lda) . B, exact in int32.
    cdef DoNothingI32 done
    cdef MemCopyI32* out = new MemCopyI32(done)
    cdef PackAMatrix[uint8_t, int32_t]* pa = NULL
    try:
        pa = new PackAMatrix[uint8_t, int32_t](matrix_op_t.NoTranspose, m, k, a, lda, NULL, 1)
        fbgemmPacked(pa[0], pb[0], c, c, <uint32_t>ldc, out[0], 0, 1)  # C doubles as the int32 buffer
    finally:
        del pa
        del out
    return 0


cdef inline double _now(clockid_t clock) noexcept nogil:
    cdef timespec ts
    clock_gettime(clock, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline double _lap(double* prof, int phase, double start, clockid_t clock) noexcept nogil:
    """Add the time since ``start`` to ``prof[phase]`` (if profiling); return the new start."""
    cdef double now
    if prof == NULL:
        return 0
    now = _now(clock)
    prof[phase] += now - start
    return now


cdef struct Arena:
    char* base    # NULL while sizing
    size_t used   # bytes laid out so far


cdef inline void* _take(Arena* a, size_t nbytes) noexcept nogil:
    """The next 64-byte aligned slice of ``nbytes`` bytes (NULL while sizing, when ``a.base`` is NULL)."""
    cdef size_t start = (a.used + 63) & ~(<size_t>63)
    a.used = start + nbytes
    return a.base + start if a.base != NULL else NULL


cdef inline int _arena_alloc(Arena* a) noexcept nogil:
    """After a sizing pass: one zeroed allocation for ``a.used`` bytes, ready for the placing pass.
    Returns 0 when out of memory (``a.base`` stays NULL)."""
    a.base = <char*>calloc(1, a.used + 64)
    a.used = 0
    return a.base != NULL
