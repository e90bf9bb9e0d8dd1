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

Two kernels share these steps.  The materialising one (``online=False``) computes a block's whole
score rows (64 x keys) before its softmax.  The online one (``online=True``, the default of
``ops.attention_u8s8``) walks the keys in blocks of ``key_block()`` keys with FlashAttention's online
softmax: per block, int32 Q K^T of 64 rows x the block, the block maximum m_b of each row's base-2
scores, m' = max(m, m_b), alpha = 2**(m - m'), weights 2**(S' - m') (with pv_int8: times V's token
scales, coded as u8 with the pair rule above, one scale per row and block), sum = sum * alpha + the
block's sum, o = o * alpha + the block's P.V; out = o / sum, written once.  No buffer is wider than a
key block, whatever the sequence length.

Masks: ``key_valid`` (batch, seq) masks keys for every query; the optional ``row_mask``
(batch, seq, seq) masks per query row (sliding windows, causal masks).  A masked key never gets
weight: its score is -1e30 and its weight exactly 0.  Keys at or beyond ``n_keys[b]`` are skipped
(trailing padding costs nothing).  A row with no allowed key gives 0, as dense SDPA does.
Score rows are padded to a multiple of 32 keys with weight-0 entries.
The row quantizers give the codes of ``_quant`` (``_rows.pxd``; AVX2 versions
for head_dim % 8 == 0), with the same flags (finite math: masks use -1e30,
never infinity; NaN and infinity in q, k or v are detected from their bits).
"""

from cython.parallel cimport parallel, prange
from libc.stdint cimport int8_t, int32_t, uint8_t, uint32_t
from libc.stdlib cimport calloc, free, malloc
from posix.time cimport CLOCK_THREAD_CPUTIME_ID, clockid_t

from cython_kernels._avx cimport *
from cython_kernels._blas cimport sgemm_
from libc.math cimport exp2f
from libc.string cimport memcpy

from cython_kernels._fbgemm cimport DoNothingI32, MemCopyI32, PackAMatrix, fbgemmInstructionSet, fbgemmPacked, matrix_op_t
from cython_kernels._fused cimport (Arena, HeadView, Views, _arena_alloc, _gemm_s32, _head_view, _key_mean, _lap,
                                    _now, _take, _views)
from cython_kernels._packing cimport *
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


cdef clockid_t CLOCK = CLOCK_THREAD_CPUTIME_ID  # of the per-phase timings (CPU time of each thread: robust to load)

# Keys per block of the online kernel (a multiple of 32): Q.K^T, softmax and P.V of 64 query rows x
# this many keys stay in L2 (64 x 512 int32 scores and float weights: 256 KiB). Each further block costs
# about 4 us per 64 query rows in FBGEMM calls and row bookkeeping (measured): at BERT lengths one block.
cdef int _key_block = 512


def key_block() -> int:
    """Keys per block of the online kernel."""
    return _key_block


def set_key_block(int keys) -> None:
    """Set the keys per block of the online kernel (a multiple of 32, 32..4096; for measurements and
    tests: results differ only by the rounding of P's codes, which are scaled per block)."""
    global _key_block
    if keys < 32 or keys > 4096 or keys % 32:
        raise ValueError(f"key block must be a multiple of 32 in 32..4096, got {keys}")
    _key_block = keys


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
    # The online kernel: per block of key_block keys, K and V codes as FBGEMM's B, and per query row the
    # running maximum (base 2), running sum, the factor that rescales the previous blocks, and the output.
    int n_blocks
    Packed* kb          # (n_blocks,) K codes of keys [key_block * b, key_block * (b + 1))  (dim x block)
    Packed* vb          # (n_blocks,) V codes of the same keys (block x dim)
    float* run_max      # (ROWS,)
    float* run_sum      # (ROWS,)
    float* alpha        # (ROWS,)
    float* o            # (ROWS, dim)
    char* arena         # the one allocation that holds every buffer above
    bint own_packing
    double prof[<int>N_PHASES]


cdef void _free(Work* w) noexcept nogil:
    cdef int b
    if w == NULL:
        return
    _free_packed(&w.kp)
    _free_packed(&w.vp)
    if w.kb != NULL:
        for b in range(w.n_blocks):
            _free_packed(&w.kb[b])
            _free_packed(&w.vb[b])
    free(w.arena)
    free(w)


cdef void _layout(Work* w, Arena* a, Py_ssize_t keys, Py_ssize_t wide, Py_ssize_t dim) noexcept nogil:
    # Every buffer of a Work, as slices of one arena (sizes in the struct's comments).
    w.bias = <float*>_take(a, keys * sizeof(float))
    w.kq = <int8_t*>_take(a, keys * dim)
    w.ksum = <int32_t*>_take(a, keys * sizeof(int32_t))
    w.kscale = <float*>_take(a, keys * sizeof(float))
    w.vq = <int8_t*>_take(a, keys * dim)
    w.vscale = <float*>_take(a, keys * sizeof(float))
    w.tmp = <float*>_take(a, dim * sizeof(float))
    w.kmean = <float*>_take(a, dim * sizeof(float))
    w.qq = <uint8_t*>_take(a, ROWS * dim)
    w.qscale = <float*>_take(a, ROWS * sizeof(float))
    w.qzp = <int32_t*>_take(a, ROWS * sizeof(int32_t))
    w.acc = <int32_t*>_take(a, ROWS * wide * sizeof(int32_t))
    w.e = <float*>_take(a, ROWS * wide * sizeof(float))
    w.pq = <uint8_t*>_take(a, ROWS * wide)
    w.rowscale = <float*>_take(a, ROWS * sizeof(float))
    w.pair_scale = <float*>_take(a, ROWS * sizeof(float))
    w.pv = <int32_t*>_take(a, ROWS * dim * sizeof(int32_t))
    w.kb = <Packed*>_take(a, w.n_blocks * sizeof(Packed))
    w.vb = <Packed*>_take(a, w.n_blocks * sizeof(Packed))
    w.run_max = <float*>_take(a, ROWS * sizeof(float))
    w.run_sum = <float*>_take(a, ROWS * sizeof(float))
    w.alpha = <float*>_take(a, ROWS * sizeof(float))
    w.o = <float*>_take(a, ROWS * dim * sizeof(float))


cdef Work* _new_work(Py_ssize_t keys, Py_ssize_t dim) except NULL nogil:
    # keys: a multiple of 32; score buffers hold ROWS rows of max(keys, key block) entries.
    cdef Work* w = <Work*>calloc(1, sizeof(Work))
    cdef Py_ssize_t wide = keys if keys > _key_block else _key_block
    cdef Arena a
    a.base = NULL
    a.used = 0
    if w != NULL:
        w.n_blocks = <int>((keys + _key_block - 1) // _key_block)
        _layout(w, &a, keys, wide, dim)
        if _arena_alloc(&a):
            _layout(w, &a, keys, wide, dim)
            w.arena = a.base
        else:
            w.kb = NULL
    if w == NULL or w.arena == NULL:
        _free(w)
        with gil:
            raise MemoryError("attention buffers")
    return w


cdef struct Head:
    HeadView io    # pointers, strides and sizes of one (batch, head)
    float scaling
    bint pv_int8, smooth_k, online
    const uint8_t* rmask   # (rows, seq) 1 = attend, row stride rmask_rs bytes; NULL: keys as io.valid
    Py_ssize_t rmask_rs


cdef int _quantize_k(const Head* h, Work* w) noexcept nogil:
    """Bias, K codes, scales (times scaling) and row sums; returns the number of non-finite rows."""
    cdef int j, d, bad = 0
    cdef const float* row
    for j in range(h.io.keys):
        w.bias[j] = 0 if h.io.valid[j] else MASKED
    for j in range(h.io.keys, h.io.keys32):  # padding of the score rows: weight 0
        w.bias[j] = MASKED
        w.kscale[j] = 0
        w.ksum[j] = 0
    if h.smooth_k:
        _key_mean(h.io.k, h.io.k_rs, h.io.valid, h.io.keys, h.io.dim, w.kmean)
    else:
        for d in range(h.io.dim):
            w.kmean[d] = 0
    for j in range(h.io.keys):
        row = h.io.k + j * h.io.k_rs
        _prefetch_row(row + PREFETCH * h.io.k_rs, h.io.dim)
        bad += _s8_row_any(row, w.kmean, w.tmp, w.kq + j * h.io.dim, h.io.dim, &w.kscale[j])
        w.kscale[j] = w.kscale[j] * (h.scaling * LOG2E)
        w.ksum[j] = _code_sum(w.kq + j * h.io.dim, h.io.dim)
    return bad


cdef int _quantize_v(const Head* h, Work* w) noexcept nogil:
    """V codes and scales per token (the s8 quantizer of K); returns the number of non-finite rows.

    A per-token scale cannot leave the sum over tokens of P.V, so _softmax_row folds it into the
    weights before they are coded: an outlier token does not coarsen the codes of the others.
    """
    cdef int j, d, bad = 0
    cdef const float* row
    for d in range(h.io.dim):
        w.tmp[d] = 0
    for j in range(h.io.keys):
        row = h.io.v + j * h.io.v_rs
        _prefetch_row(row + PREFETCH * h.io.v_rs, h.io.dim)
        # sub = tmp (zeros); kmean, free once K is quantized, is the scratch row of odd dims
        bad += _s8_row_any(row, w.tmp, w.kmean, w.vq + j * h.io.dim, h.io.dim, &w.vscale[j])
    for j in range(h.io.keys, h.io.keys32):
        w.vscale[j] = 0
    return bad


cdef inline __m256 _scores8(const int32_t* acc, const int32_t* ksum, const float* kscale, const float* bias,
                            __m256i zp_v, __m256 qs) noexcept nogil:
    """8 base-2 scores (acc - zp * ksum) * qscale * kscale + bias (bias 0 or MASKED)."""
    cdef __m256 a = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_loadu_si256(<const __m256i*>acc),
                                                        _mm256_mullo_epi32(zp_v, _mm256_loadu_si256(<const __m256i*>ksum))))
    return _mm256_fmadd_ps(a, _mm256_mul_ps(qs, _mm256_loadu_ps(kscale)), _mm256_loadu_ps(bias))


cdef inline __m256 _row_mask8(__m256 s, const uint8_t* mask, int avail) noexcept nogil:
    """s with MASKED in the lanes whose mask byte is 0; of mask only the first avail (< 8: the row's
    end) bytes are read, the lanes beyond keep s (they are padding keys, masked by the key bias)."""
    cdef uint8_t tail[8]
    cdef int l
    cdef __m128i bytes_
    if avail >= 8:
        bytes_ = _mm_loadl_epi64(<const __m128i*>mask)
    else:
        for l in range(8):
            tail[l] = mask[l] if l < avail else 1
        bytes_ = _mm_loadl_epi64(<const __m128i*>tail)
    cdef __m256i zero = _mm256_cmpeq_epi32(_mm256_cvtepu8_epi32(bytes_), _mm256_setzero_si256())
    return _mm256_blendv_ps(s, _mm256_set1_ps(MASKED), _mm256_castsi256_ps(zero))


cdef inline float _scores_row(const int32_t* acc, const int32_t* ksum, const float* kscale, const float* bias,
                              int n32, int32_t zp, float qscale, const uint8_t* mask, int mask_avail,
                              float* e) noexcept nogil:
    """e[0:n32] = the base-2 scores of one query row (masked keys MASKED); returns their maximum.
    mask: the row's mask bytes for these keys (NULL: the key bias alone), mask_avail of them readable."""
    cdef __m256i zp_v = _mm256_set1_epi32(zp)
    cdef __m256 qs = _mm256_set1_ps(qscale), m = _mm256_set1_ps(MASKED), a
    cdef int j
    for j in range(0, n32, 8):
        a = _scores8(acc + j, ksum + j, kscale + j, bias + j, zp_v, qs)
        if mask != NULL:
            a = _row_mask8(a, mask + j, mask_avail - j)
        _mm256_storeu_ps(e + j, a)
        m = _mm256_max_ps(m, a)
    return _hmax(m)


cdef inline float _exp_row(float* e, int n32, float row_max, const float* vscale, float* pair_scale) noexcept nogil:
    """e[j] = 2**(e[j] - row_max) (times vscale[j] with vscale) for n32 (a multiple of 16) entries; returns
    the sum of the weights 2**(e[j] - row_max).  With vscale, pair_scale receives
    max(max e / 255, max_t (e[2t] + e[2t+1]) / 257) (1 if all are 0): the scale with which _code_row codes e."""
    cdef __m256 m = _mm256_set1_ps(row_max), total = _mm256_setzero_ps(), pairs = _mm256_setzero_ps()
    cdef __m256 single = _mm256_setzero_ps(), a, b
    cdef float top
    cdef int j
    for j in range(0, n32, 16):
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
        top = _hmax(single) / <float>255.0
        pair_scale[0] = pair_scale[0] if pair_scale[0] > top else top
        if not (pair_scale[0] > 0):  # every weighted V row is zero
            pair_scale[0] = 1
    return _hsum(total)


cdef float _softmax_row(const int32_t* acc, const Work* w, int keys32, int32_t zp, float qscale, float* e,
                        const float* vscale, float* pair_scale, const uint8_t* mask, int mask_avail) noexcept nogil:
    """exp(S[j] - max S) = 2**(S'[j] - max S') for one query row of keys32 entries, S' = S * log2(e);
    returns their sum (0 if no key is allowed).

    Without vscale, e[j] holds the weights.  With vscale (pv_int8), e[j] holds the weight times V's
    per-token scale, and pair_scale receives max(max e / 255, max_t (e[2t] + e[2t+1]) / 257): the
    scale with which _code_row codes e.  mask: the row's mask bytes (NULL: key padding only).
    """
    cdef float row_max = _scores_row(acc, w.ksum, w.kscale, w.bias, keys32, zp, qscale, mask, mask_avail, e)
    cdef int j
    if row_max <= MASKED * <float>0.5:
        for j in range(keys32):
            e[j] = 0
        pair_scale[0] = 1
        return 0
    return _exp_row(e, keys32, row_max, vscale, pair_scale)


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


cdef int _block(const Head* h, Work* w, PackB* kp, PackB* vp, int start, int rows, double* prof) except -1 nogil:
    """Attention of query rows [start, start + rows) of one head, written to h.io.out."""
    cdef int i, d, bad = 0, ld = h.io.keys32
    cdef float total, max_pair
    cdef float* o = h.io.out + start * h.io.out_rs
    cdef float alpha = 1, beta = 0
    cdef int m_, n_, k_, lda, ldb, ldc
    cdef double t = _now(CLOCK) if prof != NULL else 0
    for i in range(rows):
        _prefetch_row(h.io.q + (start + i + PREFETCH) * h.io.q_rs, h.io.dim)
        bad += _u7_row_any(h.io.q + (start + i) * h.io.q_rs, w.qq + i * h.io.dim, h.io.dim, &w.qscale[i], &w.qzp[i])
    t = _lap(prof, QUANTIZE_Q, t, CLOCK)
    _gemm_s32(w.qq, h.io.dim, kp, w.acc, ld, rows, h.io.keys, h.io.dim)
    t = _lap(prof, GEMM_QK, t, CLOCK)
    for i in range(rows):
        total = _softmax_row(w.acc + i * ld, w, ld, w.qzp[i], w.qscale[i], w.e + i * ld,
                             w.vscale if h.pv_int8 else NULL, &w.pair_scale[i],
                             h.rmask + (start + i) * h.rmask_rs if h.rmask != NULL else NULL, h.io.keys)
        w.rowscale[i] = <float>1.0 / total if total > 0 else 0
    t = _lap(prof, SOFTMAX, t, CLOCK)
    if h.pv_int8:
        for i in range(rows):
            _code_row(w.e + i * ld, ld, w.pair_scale[i], w.pq + i * ld)
            w.rowscale[i] *= w.pair_scale[i]
        t = _lap(prof, QUANTIZE_P, t, CLOCK)
        _gemm_s32(w.pq, ld, vp, w.pv, h.io.dim, rows, h.io.dim, h.io.keys)
        t = _lap(prof, GEMM_PV, t, CLOCK)
        for i in range(rows):
            for d in range(h.io.dim):
                o[i * h.io.out_rs + d] = <float>w.pv[i * h.io.dim + d] * w.rowscale[i]
    else:
        # Column-major view: out^T (dim x rows) = V^T (dim x keys) . E^T (keys x rows).
        m_, n_, k_ = h.io.dim, rows, h.io.keys
        lda, ldb, ldc = <int>h.io.v_rs, ld, <int>h.io.out_rs
        sgemm_("N", "N", &m_, &n_, &k_, &alpha, h.io.v, &lda, w.e, &ldb, &beta, o, &ldc)
        t = _lap(prof, GEMM_PV, t, CLOCK)
        for i in range(rows):
            for d in range(h.io.dim):
                o[i * h.io.out_rs + d] *= w.rowscale[i]
    _lap(prof, OUTPUT, t, CLOCK)
    return bad


cdef void _online_row(Work* w, int i, int j0, int kb32, const uint8_t* mask, int mask_avail,
                      bint pv_int8) noexcept nogil:
    """One query row i of the online softmax over keys [j0, j0 + kb32): weights into w.e's row i (base-2
    scores minus the new running maximum, exponentiated; times V's token scales and with their code scale
    in w.pair_scale[i] for pv_int8, else pair_scale 1), the rescaling factor of the previous blocks in
    w.alpha[i], and the running maximum and sum updated.  A block without an allowed key: weights 0,
    alpha 1, pair_scale 0."""
    cdef int ld = _key_block, d
    cdef float* e = w.e + i * ld
    cdef float bmax = _scores_row(w.acc + i * ld, w.ksum + j0, w.kscale + j0, w.bias + j0, kb32, w.qzp[i],
                                  w.qscale[i], mask, mask_avail, e)
    cdef float m_old = w.run_max[i], m_new, total
    if bmax <= MASKED * <float>0.5:
        for d in range(kb32):
            e[d] = 0
        w.alpha[i] = 1
        w.pair_scale[i] = 0
        return
    m_new = bmax if bmax > m_old else m_old
    w.alpha[i] = exp2f(m_old - m_new) if m_old > MASKED * <float>0.5 else 0
    w.run_max[i] = m_new
    total = _exp_row(e, kb32, m_new, w.vscale + j0 if pv_int8 else NULL, &w.pair_scale[i])
    w.run_sum[i] = w.run_sum[i] * w.alpha[i] + total


cdef inline int _gemm_s32_a(PackAMatrix[uint8_t, int32_t]* pa, PackB* pb, int32_t* c, int ldc) except -1 nogil:
    # c = A . B for an A packed once (the Q codes of a row block, reused for every key block).
    cdef DoNothingI32 done
    cdef MemCopyI32* out = new MemCopyI32(done)
    try:
        fbgemmPacked(pa[0], pb[0], c, c, <uint32_t>ldc, out[0], 0, 1)
    finally:
        del out
    return 0


cdef int _online_block(const Head* h, Work* w, int start, int rows, double* prof) except -1 nogil:
    """Attention of query rows [start, start + rows) of one head by key blocks with an online softmax
    (running maximum and sum per row, as FlashAttention); written to h.io.out once.

    Per key block: int32 Q.K^T of rows x block (FBGEMM, Q packed once per row block), base-2 scores and
    their block maximum, m' = max(m, block max), alpha = 2**(m - m'), weights 2**(S' - m') (times V's
    token scales and coded as u8 per row and block with pv_int8), sum = sum * alpha + block sum, then
    o = o * alpha + P.V of the block.  At the end out = o / sum (0 for a row without an allowed key).
    """
    cdef int i, d, blk, j0, kb, kb32, bad = 0, ld = _key_block, dim = h.io.dim
    cdef float total
    cdef float* orow
    cdef const int32_t* pv
    cdef float* out = h.io.out + start * h.io.out_rs
    cdef float one = 1, zero = 0
    cdef int m_, n_, k_, lda, ldb, ldc
    cdef const uint8_t* mrow
    cdef PackAMatrix[uint8_t, int32_t]* pa = NULL
    cdef double t = _now(CLOCK) if prof != NULL else 0
    for i in range(rows):
        _prefetch_row(h.io.q + (start + i + PREFETCH) * h.io.q_rs, dim)
        bad += _u7_row_any(h.io.q + (start + i) * h.io.q_rs, w.qq + i * dim, dim, &w.qscale[i], &w.qzp[i])
        w.run_max[i] = MASKED
        w.run_sum[i] = 0
    for i in range(rows * dim):
        w.o[i] = 0
    t = _lap(prof, QUANTIZE_Q, t, CLOCK)
    try:
        pa = new PackAMatrix[uint8_t, int32_t](matrix_op_t.NoTranspose, rows, dim, w.qq, dim, NULL, 1)
        for blk in range((h.io.keys + ld - 1) // ld):
            j0 = blk * ld
            kb = min(ld, h.io.keys - j0)
            kb32 = (kb + 31) // 32 * 32
            _gemm_s32_a(pa, w.kb[blk].mat, w.acc, ld)
            t = _lap(prof, GEMM_QK, t, CLOCK)
            for i in range(rows):
                mrow = h.rmask + (start + i) * h.rmask_rs + j0 if h.rmask != NULL else NULL
                _online_row(w, i, j0, kb32, mrow, h.io.keys - j0, h.pv_int8)
            t = _lap(prof, SOFTMAX, t, CLOCK)
            if h.pv_int8:
                for i in range(rows):
                    if w.pair_scale[i] > 0:
                        _code_row(w.e + i * ld, kb32, w.pair_scale[i], w.pq + i * ld)
                    else:
                        for d in range(kb32):
                            w.pq[i * ld + d] = 0
                t = _lap(prof, QUANTIZE_P, t, CLOCK)
                _gemm_s32(w.pq, ld, w.vb[blk].mat, w.pv, dim, rows, dim, kb)
                t = _lap(prof, GEMM_PV, t, CLOCK)
                for i in range(rows):
                    orow = w.o + i * dim
                    pv = w.pv + i * dim
                    for d in range(dim):
                        orow[d] = orow[d] * w.alpha[i] + <float>pv[d] * w.pair_scale[i]
                t = _lap(prof, OUTPUT, t, CLOCK)
            else:
                for i in range(rows):
                    if w.alpha[i] != 1:
                        orow = w.o + i * dim
                        for d in range(dim):
                            orow[d] = orow[d] * w.alpha[i]
                t = _lap(prof, OUTPUT, t, CLOCK)
                # Column-major view: o^T (dim x rows) += V_blk^T (dim x kb) . E^T (kb x rows).
                m_, n_, k_ = dim, rows, kb
                lda, ldb, ldc = <int>h.io.v_rs, ld, dim
                sgemm_("N", "N", &m_, &n_, &k_, &one, h.io.v + j0 * h.io.v_rs, &lda, w.e, &ldb, &one, w.o, &ldc)
                t = _lap(prof, GEMM_PV, t, CLOCK)
    finally:
        del pa
    for i in range(rows):
        total = <float>1.0 / w.run_sum[i] if w.run_sum[i] > 0 else 0
        orow = w.o + i * dim
        for d in range(dim):
            out[i * h.io.out_rs + d] = orow[d] * total
    _lap(prof, OUTPUT, t, CLOCK)
    return bad


cdef int _pack_blocks(const Head* h, Work* w) except -1 nogil:
    """K (and with pv_int8 V) codes of each key block as FBGEMM's B; a block keeps its buffer from head to
    head while its shape does not change (own packing)."""
    cdef int blk, j0, kb, ld = _key_block, dim = h.io.dim
    for blk in range((h.io.keys + ld - 1) // ld):
        j0 = blk * ld
        kb = min(ld, h.io.keys - j0)
        if not _pack(&w.kb[blk], matrix_op_t.Transpose, dim, kb, w.kq + j0 * dim, dim, w.own_packing):
            _put_transposed(&w.kb[blk], w.kq + j0 * dim, kb, dim)
        if h.pv_int8 and not _pack(&w.vb[blk], matrix_op_t.NoTranspose, kb, dim, w.vq + j0 * dim, dim, w.own_packing):
            _put(&w.vb[blk], w.vq + j0 * dim, kb, dim)
    return 0


cdef int _head(const Head* h, Work* w, double* prof) except -1 nogil:
    """Attention of one (batch, head); returns the number of non-finite q/k rows (and 1 for a bad v)."""
    cdef int bad, start, i, d
    cdef double t
    if h.io.keys == 0:  # no key at all: output 0
        for i in range(h.io.rows):
            for d in range(h.io.dim):
                h.io.out[i * h.io.out_rs + d] = 0
        return 0
    t = _now(CLOCK) if prof != NULL else 0
    bad = _quantize_k(h, w)
    if h.pv_int8:
        bad += _quantize_v(h, w)
    t = _lap(prof, QUANTIZE_KV, t, CLOCK)
    # K codes are (keys, dim) = B^T of Q K^T; V codes are (keys, dim) = B of P V.
    # _pack returns 0 when it kept the previous head's buffer: then this head's codes are written into it.
    if h.online:
        _pack_blocks(h, w)
        _lap(prof, PACK_KV, t, CLOCK)
        for start in range((h.io.rows + ROWS - 1) // ROWS):
            bad += _online_block(h, w, start * ROWS, min(<int>ROWS, h.io.rows - start * ROWS), prof)
        return bad
    if not _pack(&w.kp, matrix_op_t.Transpose, h.io.dim, h.io.keys, w.kq, h.io.dim, w.own_packing):
        _put_transposed(&w.kp, w.kq, h.io.keys, h.io.dim)
    if h.pv_int8 and not _pack(&w.vp, matrix_op_t.NoTranspose, h.io.keys, h.io.dim, w.vq, h.io.dim, w.own_packing):
        _put(&w.vp, w.vq, h.io.keys, h.io.dim)
    _lap(prof, PACK_KV, t, CLOCK)
    for start in range((h.io.rows + ROWS - 1) // ROWS):
        bad += _block(h, w, w.kp.mat, w.vp.mat, start * ROWS, min(<int>ROWS, h.io.rows - start * ROWS), prof)
    return bad


cdef struct Batch:
    # Shared, read-only description of the whole call.
    Views io
    float scaling
    bint pv_int8, smooth_k, online
    const uint8_t* rmask      # (batch, rows, seq) 1 = attend, strides rmask_bs / rmask_rs bytes; or NULL
    Py_ssize_t rmask_bs, rmask_rs


cdef int _task(const Batch* a, Py_ssize_t t, Work* w, bint profile) except -1 nogil:
    cdef Head h
    _head_view(&a.io, t, &h.io)
    h.scaling, h.pv_int8, h.smooth_k, h.online = a.scaling, a.pv_int8, a.smooth_k, a.online
    h.rmask = a.rmask + (t // a.io.heads) * a.rmask_bs if a.rmask != NULL else NULL
    h.rmask_rs = a.rmask_rs
    cdef double* prof = NULL
    if profile:
        prof = w.prof
    return _head(&h, w, prof)


def attention_u8s8(const float[:, :, :, :] q, const float[:, :, :, :] k, const float[:, :, :, :] v,
                   const uint8_t[:, ::1] key_valid, const int32_t[::1] n_keys, float[:, :, :, :] out,
                   float scaling, bint pv_int8, bint smooth_k, int threads, double[::1] profile=None,
                   const uint8_t[:, :, :] row_mask=None, bint online=False) -> int:
    """out[b, h] = attention of q[b, h] over keys k[b, h, :n_keys[b]] (see the module docstring).

    q, k, v, out: (batch, heads, seq, dim) float32, last axis contiguous, other strides >= 0.
    key_valid: (batch, seq) 1 = attend, 0 = masked; n_keys: (batch,) in 0..seq.
    row_mask: optional (batch, seq, seq) 0/1 bytes, last axis contiguous, other strides >= 0 (0 for a
    broadcast axis): query i of sequence b attends to key j only if row_mask[b, i, j] and key_valid[b, j].
    online: the online-softmax kernel (key blocks; no score row wider than a block) instead of the
    materialising one (whole score rows per block of query rows).
    profile: optional float64 (len(PHASES),) to which the seconds spent in each phase (summed over
    threads) are added.  Returns the number of rows of q and k (plus v heads) holding NaN or infinity.
    """
    cdef Py_ssize_t t, bad = 0, i
    cdef Batch a
    cdef Work* w
    cdef bint profiling = profile is not None, own
    if not _views(&a.io, q, k, v, key_valid, n_keys, out, profile, N_PHASES, threads, 2**16):
        return 0
    a.scaling, a.pv_int8, a.smooth_k, a.online = scaling, pv_int8, smooth_k, online
    a.rmask = NULL
    a.rmask_bs, a.rmask_rs = 0, 0
    if row_mask is not None:
        if (row_mask.shape[0], row_mask.shape[1], row_mask.shape[2]) != (a.io.batch, a.io.seq, a.io.seq):
            raise ValueError(f"row_mask must be (batch, seq, seq) = {(a.io.batch, a.io.seq, a.io.seq)}")
        if row_mask.strides[2] != 1 or row_mask.strides[0] < 0 or row_mask.strides[1] < 0:
            raise ValueError("row_mask's last axis must be contiguous and its strides >= 0")
        a.rmask, a.rmask_bs, a.rmask_rs = &row_mask[0, 0, 0], row_mask.strides[0], row_mask.strides[1]
    own = own_packing()
    with nogil, parallel(num_threads=threads):
        w = _new_work((a.io.seq + 31) // 32 * 32, a.io.dim)
        w.own_packing = own
        for t in prange(<Py_ssize_t>a.io.batch * a.io.heads, schedule="dynamic"):
            bad += _task(&a, t, w, profiling)
        if profiling:
            with gil:
                for i in range(N_PHASES):
                    profile[i] += w.prof[i]
        _free(w)
    return bad
