# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True
# distutils: language = c++
"""Fused int8 self-attention on FBGEMM (thin layer: the Python side validates).

Compiled with AVX2 and FMA enabled: import it only after checking the CPU
(``_loader`` does).  For every (batch, head) -- one OpenMP task each -- and
in blocks of ``ROWS`` query rows, so that scores never leave the cache::

    K  -> s8 per token (symmetric; optionally minus K's mean over valid keys)
    V  -> s8 per token (symmetric)                                   (pv_int8)
    Q  -> 7-bit u8 per token (asymmetric), the 7-bit rule of the GEMMs
    S  =  dequantized int32 Q K^T (FBGEMM, exact) * scaling; masked keys -1e30
    E  =  exp(S - rowmax S)           masked keys: exactly 0
    out = (E V) / rowsum(E)

P.V in int8 (``pv_int8``): the weights times V's per-token scales,
W[j] = E[j] * vscale[j], are coded as u8 with one scale per row,
``s = max(max W / 255, maxpair / 257)`` where ``maxpair`` is the largest sum
``W[2t] + W[2t+1]``.  Every code is <= 255 and every aligned pair of codes
sums to <= 258, so with |V codes| <= 127 the int16 pair sums of AVX2's
``vpmaddubsw`` stay <= 258 * 127 = 32766: exact on every ISA.  FBGEMM pairs
K indices (2t, 2t+1): its packing interleaves 4 rows from index 0.
P.V in float: MKL's sgemm on E and V as given (no copy of V).

Keys at or beyond ``n_keys[b]`` are skipped (trailing padding costs nothing);
masked keys before it get weight 0.  A row with no valid key gives 0.
Score rows are padded to a multiple of 32 keys with weight-0 entries.
The row quantizers give the codes of ``_quant`` (``_rows.pxd``; AVX2 versions
for head_dim % 8 == 0), with the same flags (finite math: masks use -1e30,
never infinity; NaN and infinity in q, k or v are detected from their bits).
"""

from cython.parallel cimport parallel, prange
from libc.stdint cimport int8_t, int32_t, uint8_t, uint32_t
from libc.stdlib cimport calloc, free, malloc
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from cython_kernels._avx cimport *
from cython_kernels._blas cimport sgemm_
from cython_kernels._fbgemm cimport DoNothingI32, MemCopyI32, PackAMatrix, fbgemmInstructionSet, fbgemmPacked, matrix_op_t
from cython_kernels._packing cimport *
from cython_kernels._rows cimport _s8_row, _u7_row
from cython_kernels._simd cimport *

cdef enum:
    ROWS = 64      # query rows per block: int32 + float scores of 64 x 512 keys stay in L2
    PREFETCH = 8   # rows ahead: q/k/v rows are a stride of heads * dim floats apart, which the
                   # hardware prefetchers do not follow across pages

cdef enum Phase:
    # Indices of the optional per-phase timings (seconds summed over threads).
    QUANTIZE_KV, PACK_KV, QUANTIZE_Q, GEMM_QK, SOFTMAX, QUANTIZE_P, GEMM_PV, OUTPUT, N_PHASES

PHASES = ("quantize_kv", "pack_kv", "quantize_q", "gemm_qk", "softmax", "quantize_p", "gemm_pv", "output")

cdef float MASKED = -1e30  # score of a masked key: finite, far below any real score
cdef float LOG2E = 1.4426950408889634  # scores are kept in base 2: exp(s) = 2**(s * log2(e))


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline double _lap(double* prof, int phase, double start) noexcept nogil:
    """Add the time since ``start`` to ``prof[phase]`` (if profiling); return the new start."""
    cdef double now
    if prof == NULL:
        return 0
    now = _now()
    prof[phase] += now - start
    return now


cdef int _packing_matches(matrix_op_t trans, int k, int n) except -1 nogil:
    """1 if _put/_put_transposed write what FBGEMM's PackBMatrix writes for a k x n B, else 0."""
    cdef int8_t* codes = <int8_t*>malloc(k * n)
    cdef Packed mine
    cdef PackB* ref = NULL
    cdef int r, c, same = 1
    cdef Py_ssize_t off
    mine.mat = NULL
    mine.row_offset = NULL
    mine.col_offset = NULL
    if codes == NULL:
        with gil:
            raise MemoryError()
    try:
        for r in range(k * n):
            codes[r] = <int8_t>((r * 37 + 11) % 255 - 127)
        # FBGEMM packs the codes; ours overwrites a copy of that buffer packed from zeros.
        ref = new PackB(trans, k, n, codes, k if trans == matrix_op_t.Transpose else n, NULL, 1)
        for r in range(k * n):
            codes[r] = 0
        _pack(&mine, trans, k, n, codes, k if trans == matrix_op_t.Transpose else n, False)
        for r in range(k * n):
            codes[r] = <int8_t>((r * 37 + 11) % 255 - 127)
        if trans == matrix_op_t.Transpose:
            _put_transposed(&mine, codes, n, k)
        else:
            _put(&mine, codes, k, n)
        if mine.kcb != ref.blockRowSize() or mine.ncb != ref.blockColSize() or mine.kcb % 4:
            same = 0
        for r in range((k + 3) // 4 * 4):
            for c in range(n):
                off = _packed_offset(&mine, r, c)
                if mine.buf[off] != ref.getBuf(0, 0)[off]:
                    same = 0
    finally:
        del ref
        _free_packed(&mine)
        free(codes)
    return same


# Per FBGEMM ISA (inst_set_t index): -1 unchecked, 0 FBGEMM packs every head, 1 own packing.
cdef int _own_packing[16]
for _i in range(16):
    _own_packing[_i] = -1


def own_packing() -> bool:
    """Whether the kernel writes FBGEMM's packed B layout itself (checked once per ISA against
    FBGEMM's own packing on odd shapes); otherwise FBGEMM packs K and V for every head."""
    cdef int isa = <int>fbgemmInstructionSet()
    if not 0 <= isa < 16:
        return False
    if _own_packing[isa] < 0:
        ok = True
        for k, n in ((32, 37), (7, 70), (300, 33), (64, 16), (520, 9)):
            for trans in (matrix_op_t.Transpose, matrix_op_t.NoTranspose):
                ok = ok and _packing_matches(trans, k, n) == 1
        _own_packing[isa] = 1 if ok else 0
    return _own_packing[isa] == 1


def use_fbgemm_packing(enabled: bool) -> None:
    """Make FBGEMM pack K and V for every head (True) or re-enable own packing after its check (False),
    for the ISA in use.  For tests and measurements: both give the same results."""
    cdef int isa = <int>fbgemmInstructionSet()
    if 0 <= isa < 16:
        _own_packing[isa] = 0 if enabled else -1


cdef struct Work:
    # One thread's buffers, sized for at most `keys` keys and `dim` channels.
    float* bias         # (keys,) 0 or MASKED
    int8_t* kq          # (keys, dim) K codes
    int32_t* ksum       # (keys,) row sums of K codes (Q zero-point correction)
    float* kscale       # (keys,) K scales * scaling
    int8_t* vq          # (keys, dim) V codes
    float* vscale       # (keys,) V scales per token
    float* tmp          # (dim,) a smoothed K row, V channel maxima
    float* kmean        # (dim,)
    uint8_t* qq         # (ROWS, dim) Q codes
    float* qscale       # (ROWS,)
    int32_t* qzp        # (ROWS,)
    int32_t* acc        # (ROWS, keys) Q K^T
    float* e            # (ROWS, keys) exp(S - max)
    uint8_t* pq         # (ROWS, keys) P codes
    float* rowscale     # (ROWS,)
    float* pair_scale   # (ROWS,) P code scales
    int32_t* pv         # (ROWS, dim) P V
    Packed kp           # K codes as FBGEMM's B (dim x keys)
    Packed vp           # V codes as FBGEMM's B (keys x dim)
    bint own_packing
    double prof[<int>N_PHASES]


cdef void _free(Work* w) noexcept nogil:
    if w == NULL:
        return
    _free_packed(&w.kp)
    _free_packed(&w.vp)
    free(w.bias); free(w.kq); free(w.ksum); free(w.kscale); free(w.vq); free(w.vscale); free(w.tmp)
    free(w.kmean); free(w.qq); free(w.qscale); free(w.qzp); free(w.acc); free(w.e); free(w.pq)
    free(w.rowscale); free(w.pair_scale); free(w.pv)
    free(w)


cdef Work* _new_work(Py_ssize_t keys, Py_ssize_t dim) except NULL nogil:
    cdef Work* w = <Work*>calloc(1, sizeof(Work))
    if w != NULL:
        w.bias = <float*>malloc(keys * sizeof(float))
        w.kq = <int8_t*>malloc(keys * dim)
        w.ksum = <int32_t*>malloc(keys * sizeof(int32_t))
        w.kscale = <float*>malloc(keys * sizeof(float))
        w.vq = <int8_t*>malloc(keys * dim)
        w.vscale = <float*>malloc(keys * sizeof(float))
        w.tmp = <float*>malloc(dim * sizeof(float))
        w.kmean = <float*>malloc(dim * sizeof(float))
        w.qq = <uint8_t*>malloc(ROWS * dim)
        w.qscale = <float*>malloc(ROWS * sizeof(float))
        w.qzp = <int32_t*>malloc(ROWS * sizeof(int32_t))
        w.acc = <int32_t*>malloc(ROWS * keys * sizeof(int32_t))
        w.e = <float*>malloc(ROWS * keys * sizeof(float))
        w.pq = <uint8_t*>malloc(ROWS * keys)
        w.rowscale = <float*>malloc(ROWS * sizeof(float))
        w.pair_scale = <float*>malloc(ROWS * sizeof(float))
        w.pv = <int32_t*>malloc(ROWS * dim * sizeof(int32_t))
    if not (w and w.bias and w.kq and w.ksum and w.kscale and w.vq and w.vscale and w.tmp and w.kmean and w.qq
            and w.qscale and w.qzp and w.acc and w.e and w.pq and w.rowscale and w.pair_scale and w.pv):
        _free(w)
        with gil:
            raise MemoryError("attention buffers")
    return w


cdef struct Head:
    # One (batch, head): row i of q is q + i * q_rs (floats), and so on.
    const float* q
    const float* k
    const float* v
    float* out
    Py_ssize_t q_rs, k_rs, v_rs, out_rs
    const uint8_t* valid   # (keys,) 1 = attend
    int rows, keys, keys32, dim   # keys32: keys rounded up to 32, the row stride of the score buffers
    float scaling
    bint pv_int8, smooth_k


cdef int _quantize_k(const Head* h, Work* w) noexcept nogil:
    """Bias, K codes, scales (times scaling) and row sums; returns the number of non-finite rows."""
    cdef int j, d, valid = 0, bad = 0
    cdef const float* row
    cdef int32_t s
    for j in range(h.keys):
        w.bias[j] = 0 if h.valid[j] else MASKED
    for j in range(h.keys, h.keys32):  # padding of the score rows: weight 0
        w.bias[j] = MASKED
        w.kscale[j] = 0
        w.ksum[j] = 0
    for d in range(h.dim):
        w.kmean[d] = 0
    if h.smooth_k:
        for j in range(h.keys):
            if h.valid[j]:
                valid += 1
                row = h.k + j * h.k_rs
                for d in range(h.dim):
                    w.kmean[d] += row[d]
        if valid:
            for d in range(h.dim):
                w.kmean[d] = w.kmean[d] / valid
    for j in range(h.keys):
        row = h.k + j * h.k_rs
        _prefetch_row(row + PREFETCH * h.k_rs, h.dim)
        if h.dim % 8 == 0:
            bad += _s8_row_avx(row, w.kmean, w.kq + j * h.dim, h.dim, &w.kscale[j])
        else:
            for d in range(h.dim):
                w.tmp[d] = row[d] - w.kmean[d]
            bad += _s8_row(w.tmp, w.kq + j * h.dim, h.dim, &w.kscale[j])
        w.kscale[j] = w.kscale[j] * (h.scaling * LOG2E)
        s = 0
        for d in range(h.dim):
            s = s + w.kq[j * h.dim + d]
        w.ksum[j] = s
    return bad


cdef int _quantize_v(const Head* h, Work* w) noexcept nogil:
    """V codes and scales per token (the s8 quantizer of K); returns the number of non-finite rows.

    A per-token scale cannot leave the sum over tokens of P.V, so _softmax_row folds it into the
    weights before they are coded: an outlier token does not coarsen the codes of the others.
    """
    cdef int j, d, bad = 0
    cdef const float* row
    for d in range(h.dim):
        w.tmp[d] = 0
    for j in range(h.keys):
        row = h.v + j * h.v_rs
        _prefetch_row(row + PREFETCH * h.v_rs, h.dim)
        if h.dim % 8 == 0:
            bad += _s8_row_avx(row, w.tmp, w.vq + j * h.dim, h.dim, &w.vscale[j])
        else:
            bad += _s8_row(row, w.vq + j * h.dim, h.dim, &w.vscale[j])
    for j in range(h.keys, h.keys32):
        w.vscale[j] = 0
    return bad


cdef float _softmax_row(const int32_t* acc, const Work* w, int keys32, int32_t zp, float qscale, float* e,
                        const float* vscale, float* pair_scale) noexcept nogil:
    """exp(S[j] - max S) = 2**(S'[j] - max S') for one query row of keys32 entries, S' = S * log2(e);
    returns their sum (0 if no key is valid).

    Without vscale, e[j] holds the weights.  With vscale (pv_int8), e[j] holds the weight times V's
    per-token scale, and pair_scale receives max(max e / 255, max_t (e[2t] + e[2t+1]) / 257): the
    scale with which _code_row codes e.
    """
    cdef __m256i zp_v = _mm256_set1_epi32(zp)
    cdef __m256 qs = _mm256_set1_ps(qscale), m = _mm256_set1_ps(MASKED), total, pairs, single, a, b
    cdef float row_max
    cdef int j
    for j in range(0, keys32, 8):  # S' and its max
        a = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_loadu_si256(<const __m256i*>(acc + j)),
                                                _mm256_mullo_epi32(zp_v, _mm256_loadu_si256(<const __m256i*>(w.ksum + j)))))
        a = _mm256_fmadd_ps(a, _mm256_mul_ps(qs, _mm256_loadu_ps(w.kscale + j)), _mm256_loadu_ps(w.bias + j))
        _mm256_storeu_ps(e + j, a)
        m = _mm256_max_ps(m, a)
    row_max = _hmax(m)
    if row_max <= MASKED * <float>0.5:
        for j in range(keys32):
            e[j] = 0
        pair_scale[0] = 1
        return 0
    m = _mm256_set1_ps(row_max)
    total = _mm256_setzero_ps()
    pairs = _mm256_setzero_ps()
    single = _mm256_setzero_ps()
    for j in range(0, keys32, 16):
        a = _exp2_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(e + j), m))
        b = _exp2_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(e + j + 8), m))
        total = _mm256_add_ps(total, _mm256_add_ps(a, b))
        if vscale != NULL:
            a = _mm256_mul_ps(a, _mm256_loadu_ps(vscale + j))
            b = _mm256_mul_ps(b, _mm256_loadu_ps(vscale + j + 8))
            pairs = _mm256_max_ps(pairs, _mm256_hadd_ps(a, b))
            single = _mm256_max_ps(single, _mm256_max_ps(a, b))
        _mm256_storeu_ps(e + j, a)
        _mm256_storeu_ps(e + j + 8, b)
    if vscale != NULL:
        pair_scale[0] = _hmax(pairs) / <float>257.0
        row_max = _hmax(single) / <float>255.0
        pair_scale[0] = pair_scale[0] if pair_scale[0] > row_max else row_max
        if not (pair_scale[0] > 0):  # every weighted V row is zero
            pair_scale[0] = 1
    return _hsum(total)


cdef void _code_row(const float* e, int keys32, float scale, uint8_t* codes) noexcept nogil:
    """u8 codes of e / scale for one row of keys32 (a multiple of 32) entries.

    With scale from _softmax_row every code is <= 255 and every aligned pair of codes sums to <= 258:
    rounding adds at most 0.5 to each (round half to even, cvtps).
    """
    cdef __m256 inv = _mm256_set1_ps(<float>1.0 / scale), top = _mm256_set1_ps(255)
    cdef int j
    for j in range(0, keys32, 32):
        _store_codes32(_mm256_min_ps(_mm256_mul_ps(_mm256_loadu_ps(e + j), inv), top),
                       _mm256_min_ps(_mm256_mul_ps(_mm256_loadu_ps(e + j + 8), inv), top),
                       _mm256_min_ps(_mm256_mul_ps(_mm256_loadu_ps(e + j + 16), inv), top),
                       _mm256_min_ps(_mm256_mul_ps(_mm256_loadu_ps(e + j + 24), inv), top),
                       <int8_t*>(codes + j), True)


cdef int _gemm_s32(const uint8_t* a, int lda, PackB* pb, int32_t* c, int ldc, int m, int n, int k) except -1 nogil:
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


cdef int _block(const Head* h, Work* w, PackB* kp, PackB* vp, int start, int rows, double* prof) except -1 nogil:
    """Attention of query rows [start, start + rows) of one head, written to h.out."""
    cdef int i, d, bad = 0, ld = h.keys32
    cdef float total, max_pair
    cdef float* o = h.out + start * h.out_rs
    cdef float alpha = 1, beta = 0
    cdef int m_, n_, k_, lda, ldb, ldc
    cdef double t = _now() if prof != NULL else 0
    for i in range(rows):
        _prefetch_row(h.q + (start + i + PREFETCH) * h.q_rs, h.dim)
        if h.dim % 8 == 0:
            bad += _u7_row_avx(h.q + (start + i) * h.q_rs, w.qq + i * h.dim, h.dim, &w.qscale[i], &w.qzp[i])
        else:
            bad += _u7_row(h.q + (start + i) * h.q_rs, w.qq + i * h.dim, h.dim, &w.qscale[i], &w.qzp[i])
    t = _lap(prof, QUANTIZE_Q, t)
    _gemm_s32(w.qq, h.dim, kp, w.acc, ld, rows, h.keys, h.dim)
    t = _lap(prof, GEMM_QK, t)
    for i in range(rows):
        total = _softmax_row(w.acc + i * ld, w, ld, w.qzp[i], w.qscale[i], w.e + i * ld,
                             w.vscale if h.pv_int8 else NULL, &w.pair_scale[i])
        w.rowscale[i] = <float>1.0 / total if total > 0 else 0
    t = _lap(prof, SOFTMAX, t)
    if h.pv_int8:
        for i in range(rows):
            _code_row(w.e + i * ld, ld, w.pair_scale[i], w.pq + i * ld)
            w.rowscale[i] *= w.pair_scale[i]
        t = _lap(prof, QUANTIZE_P, t)
        _gemm_s32(w.pq, ld, vp, w.pv, h.dim, rows, h.dim, h.keys)
        t = _lap(prof, GEMM_PV, t)
        for i in range(rows):
            for d in range(h.dim):
                o[i * h.out_rs + d] = <float>w.pv[i * h.dim + d] * w.rowscale[i]
    else:
        # Column-major view: out^T (dim x rows) = V^T (dim x keys) . E^T (keys x rows).
        m_, n_, k_ = h.dim, rows, h.keys
        lda, ldb, ldc = <int>h.v_rs, ld, <int>h.out_rs
        sgemm_("N", "N", &m_, &n_, &k_, &alpha, h.v, &lda, w.e, &ldb, &beta, o, &ldc)
        t = _lap(prof, GEMM_PV, t)
        for i in range(rows):
            for d in range(h.dim):
                o[i * h.out_rs + d] *= w.rowscale[i]
    _lap(prof, OUTPUT, t)
    return bad


cdef int _head(const Head* h, Work* w, double* prof) except -1 nogil:
    """Attention of one (batch, head); returns the number of non-finite q/k rows (and 1 for a bad v)."""
    cdef int bad, start, i, d
    cdef double t
    if h.keys == 0:  # no key at all: output 0
        for i in range(h.rows):
            for d in range(h.dim):
                h.out[i * h.out_rs + d] = 0
        return 0
    t = _now() if prof != NULL else 0
    bad = _quantize_k(h, w)
    if h.pv_int8:
        bad += _quantize_v(h, w)
    t = _lap(prof, QUANTIZE_KV, t)
    # K codes are (keys, dim) = B^T of Q K^T; V codes are (keys, dim) = B of P V.
    # _pack returns 0 when it kept the previous head's buffer: then this head's codes are written into it.
    if not _pack(&w.kp, matrix_op_t.Transpose, h.dim, h.keys, w.kq, h.dim, w.own_packing):
        _put_transposed(&w.kp, w.kq, h.keys, h.dim)
    if h.pv_int8 and not _pack(&w.vp, matrix_op_t.NoTranspose, h.keys, h.dim, w.vq, h.dim, w.own_packing):
        _put(&w.vp, w.vq, h.keys, h.dim)
    _lap(prof, PACK_KV, t)
    for start in range((h.rows + ROWS - 1) // ROWS):
        bad += _block(h, w, w.kp.mat, w.vp.mat, start * ROWS, min(<int>ROWS, h.rows - start * ROWS), prof)
    return bad


cdef struct Batch:
    # Shared, read-only description of the whole call (pointers; strides in floats).
    const float* q
    const float* k
    const float* v
    float* out
    Py_ssize_t qs[3]
    Py_ssize_t ks[3]
    Py_ssize_t vs[3]
    Py_ssize_t os[3]
    const uint8_t* valid
    Py_ssize_t valid_rs
    const int32_t* n_keys
    int heads, seq, dim
    float scaling
    bint pv_int8, smooth_k


cdef int _task(const Batch* a, Py_ssize_t t, Work* w, bint profile) except -1 nogil:
    cdef Py_ssize_t b = t // a.heads, hh = t % a.heads
    cdef Head h
    h.q = a.q + b * a.qs[0] + hh * a.qs[1]
    h.k = a.k + b * a.ks[0] + hh * a.ks[1]
    h.v = a.v + b * a.vs[0] + hh * a.vs[1]
    h.out = a.out + b * a.os[0] + hh * a.os[1]
    h.q_rs, h.k_rs, h.v_rs, h.out_rs = a.qs[2], a.ks[2], a.vs[2], a.os[2]
    h.valid = a.valid + b * a.valid_rs
    h.rows, h.keys, h.dim = a.seq, a.n_keys[b], a.dim
    h.keys32 = (h.keys + 31) // 32 * 32
    h.scaling, h.pv_int8, h.smooth_k = a.scaling, a.pv_int8, a.smooth_k
    cdef double* prof = NULL
    if profile:
        prof = w.prof
    return _head(&h, w, prof)


def attention_u8s8(const float[:, :, :, :] q, const float[:, :, :, :] k, const float[:, :, :, :] v,
                   const uint8_t[:, ::1] key_valid, const int32_t[::1] n_keys, float[:, :, :, :] out,
                   float scaling, bint pv_int8, bint smooth_k, int threads, double[::1] profile=None) -> int:
    """out[b, h] = attention of q[b, h] over keys k[b, h, :n_keys[b]] (see the module docstring).

    q, k, v, out: (batch, heads, seq, dim) float32, last axis contiguous, other strides >= 0.
    key_valid: (batch, seq) 1 = attend, 0 = masked; n_keys: (batch,) in 0..seq.
    profile: optional float64 (len(PHASES),) to which the seconds spent in each phase (summed over
    threads) are added.  Returns the number of rows of q and k (plus v heads) holding NaN or infinity.
    """
    cdef Py_ssize_t batch = q.shape[0], heads = q.shape[1], seq = q.shape[2], dim = q.shape[3]
    cdef Py_ssize_t t, bad = 0, i
    cdef Batch a
    cdef Work* w
    cdef bint profiling = profile is not None, own
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
    if profiling and profile.shape[0] != N_PHASES:
        raise ValueError(f"profile must have {N_PHASES} entries")
    if threads < 1:
        raise ValueError("threads must be >= 1")
    if batch * heads == 0 or seq == 0 or dim == 0:
        return 0
    if seq >= 2**31 // 1024 or dim >= 2**16:
        raise ValueError("seq or dim too large")
    a.q, a.k, a.v, a.out = &q[0, 0, 0, 0], &k[0, 0, 0, 0], &v[0, 0, 0, 0], &out[0, 0, 0, 0]
    for i in range(3):
        a.qs[i] = q.strides[i] // sizeof(float)
        a.ks[i] = k.strides[i] // sizeof(float)
        a.vs[i] = v.strides[i] // sizeof(float)
        a.os[i] = out.strides[i] // sizeof(float)
    a.valid, a.valid_rs, a.n_keys = &key_valid[0, 0], key_valid.strides[0], &n_keys[0]
    a.heads, a.seq, a.dim = heads, seq, dim
    a.scaling, a.pv_int8, a.smooth_k = scaling, pv_int8, smooth_k
    own = own_packing()
    with nogil, parallel(num_threads=threads):
        w = _new_work((seq + 31) // 32 * 32, dim)
        w.own_packing = own
        for t in prange(batch * heads, schedule="dynamic"):
            bad += _task(&a, t, w, profiling)
        if profiling:
            with gil:
                for i in range(N_PHASES):
                    profile[i] += w.prof[i]
        _free(w)
    return bad
