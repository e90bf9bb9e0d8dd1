# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True
# distutils: language = c++
"""Fused top-k sparse self-attention with int8 selection scores on FBGEMM (thin layer: ``ops`` validates).

Compiled with AVX2 and FMA: import it only after checking the CPU (``_loader`` does).  For every
(batch, head) -- one OpenMP task each -- and in blocks of ``ROWS`` query rows::

    K  -> s8 (symmetric; optionally minus K's mean over valid keys), per token or one scale per head
    Q  -> 7-bit u8 (asymmetric), per token or one scale/zero point per head (the 7-bit rule)
    A  =  int32 Q K^T (FBGEMM, exact)
    R  =  ranking value per key: per head, the exact integer A - zp * sum(K codes); per token, the
          float (A - zp * sum(K codes)) * kscale mapped to an order-preserving int32.  Masked keys
          get INT32_MIN; keys at or beyond ``n_keys[b]`` are never read.
    selection: per row, the k largest R of valid keys, ties to the lower key index (no sorting):
          1. lane-wise maxima of ceil(k / 8) groups of vectors give >= k "chunk maxima" (each a
             distinct element), so their minimum L is a lower bound of the k-th largest R;
          2. one AVX2 compaction pass collects the indices and values with R >= L (movemask +
             permute table);
          3. the k-th largest value T among these few candidates: bisection on [L, max] counting
             with AVX2 compares, stopping at the first threshold with exactly k candidates above;
             then the candidates > T and the first ones == T in index order.
          With fewer valid keys than k, every valid key is selected.
    exact  s_j = (q . k_j) * scaling in float32 for the selected keys only (read in place),
    softmax over them, out = sum_j p_j v_j written straight into the (batch, seq, heads, dim) output.

No gathered copies of K or V.  Non-finite inputs (detected from their bits): a query row holding NaN or
infinity gets a NaN output row; a NaN/infinity in the key or value of a valid key makes the whole head's
output NaN (as dense attention would).  A row without any valid key gives 0.
"""

from cython.parallel cimport parallel, prange
from libc.stdint cimport int8_t, int32_t, uint8_t, uint32_t, INT32_MIN
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy
from posix.time cimport CLOCK_THREAD_CPUTIME_ID, clock_gettime, timespec

from cython_kernels._avx cimport *
from cython_kernels._fbgemm cimport DoNothingI32, MemCopyI32, PackAMatrix, fbgemmPacked, matrix_op_t
from cython_kernels._packing cimport *
from cython_kernels._rows cimport _rint, _s8_row, _u7_row
from cython_kernels._simd cimport *


cdef extern from "immintrin.h" nogil:
    __m256i _mm256_cmpgt_epi32(__m256i a, __m256i b)
    __m256i _mm256_max_epi32(__m256i a, __m256i b)
    __m256i _mm256_min_epi32(__m256i a, __m256i b)
    __m256i _mm256_setzero_si256()
    __m256i _mm256_set1_epi8(char a)
    __m256i _mm256_add_epi64(__m256i a, __m256i b)
    __m256i _mm256_sad_epu8(__m256i a, __m256i b)
    __m256i _mm256_blendv_epi8(__m256i a, __m256i b, __m256i mask)
    __m256i _mm256_srai_epi32(__m256i a, int count)
    __m256i _mm256_xor_si256(__m256i a, __m256i b)
    __m256 _mm256_permute2f128_ps(__m256 a, __m256 b, int imm)
    __m256 _mm256_blend_ps(__m256 a, __m256 b, int imm)
    __m256 _mm256_div_ps(__m256 a, __m256 b)
    __m256 _mm256_fnmadd_ps(__m256 a, __m256 b, __m256 c)


cdef enum:
    ROWS = 64      # query rows per block
    PREFETCH = 8

cdef enum Phase:
    QUANTIZE, GEMM_QK, SELECT, EXACT_SCORES, SOFTMAX, V_SUM, N_PHASES

PHASES = ("quantize", "gemm_qk", "select", "exact_scores", "softmax", "v_sum")

cdef float LOG2E = 1.4426950408889634

# Compaction table: for an 8-bit mask, the lane indices of its set bits first (in order).
cdef int32_t _COMPACT[256][8]
for _m in range(256):
    _c = 0
    for _l in range(8):
        if _m >> _l & 1:
            _COMPACT[_m][_c] = _l
            _c += 1
    for _l in range(_c, 8):
        _COMPACT[_m][_l] = 0

cdef uint8_t _POPCOUNT[256]
for _m in range(256):
    _POPCOUNT[_m] = bin(_m).count("1")


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline double _lap(double* prof, int phase, double start) noexcept nogil:
    cdef double now
    if prof == NULL:
        return 0
    now = _now()
    prof[phase] += now - start
    return now


cdef inline float _nan() noexcept nogil:
    cdef uint32_t bits = 0x7FC00000u
    cdef float f
    memcpy(&f, &bits, 4)
    return f


cdef inline bint _row_special(const float* x, int n) noexcept nogil:
    """True if x[0:n] holds NaN or infinity (from the bits)."""
    cdef __m256i special = _mm256_set1_epi32(0)
    cdef const uint32_t* bits = <const uint32_t*>x
    cdef uint32_t s = 0
    cdef int c, j
    for c in range(n // 8):
        special = _mm256_or_si256(special, _special_bits(_mm256_loadu_ps(x + 8 * c)))
    for j in range(n // 8 * 8, n):
        s = s | ((bits[j] & 0x7F800000u) + 0x00800000u)
    return _mm256_movemask_ps(_mm256_castsi256_ps(special)) != 0 or (s & 0x80000000u) != 0


# ---------------------------------------------------------------------------------------------------
# Selection


cdef inline int _count_above(const int32_t* x, int nvec, int32_t thr) noexcept nogil:
    """Number of x[0:8 * nvec] > thr."""
    cdef __m256i t = _mm256_set1_epi32(thr)
    cdef int v, c = 0
    for v in range(nvec):
        c += _POPCOUNT[_mm256_movemask_ps(_mm256_castsi256_ps(
            _mm256_cmpgt_epi32(_mm256_loadu_si256(<const __m256i*>(x + 8 * v)), t)))]
    return c


cdef struct Rank:
    # How _select_row turns a row of int32 Q.K^T into ranking values (in place, during its first pass).
    int mode                # RAW: the row already holds them; HEAD: A - zk; TOKEN: bits of (A - zp * ksum) * kscale
    const int32_t* zk       # (ld,) zp * ksum (HEAD)
    const float* ksum       # (ld,) K code sums as floats (TOKEN)
    const float* kscale     # (ld,) K scales (TOKEN)
    const int32_t* keymask  # (ld,) -1 valid, 0 masked (HEAD, TOKEN)
    float zp                # the row's Q zero point (TOKEN)

cdef enum:
    RAW, HEAD, TOKEN


cdef inline __m256i _rank_vec(int mode, __m256i a, int j, const int32_t* zk, const float* ksum, const float* kscale,
                              const int32_t* keymask, __m256 zp) noexcept nogil:
    cdef __m256 f
    cdef __m256i bits
    if mode == RAW:
        return a
    if mode == HEAD:
        a = _mm256_sub_epi32(a, _mm256_loadu_si256(<const __m256i*>(zk + j)))
    else:
        # A - zp * ksum is exact in float (integers below 2**24), so the fused multiply-add is too.
        f = _mm256_fnmadd_ps(zp, _mm256_loadu_ps(ksum + j), _mm256_cvtepi32_ps(a))
        bits = _mm256_castps_si256(_mm256_mul_ps(f, _mm256_loadu_ps(kscale + j)))
        # negative floats: flip the magnitude bits, so that the signed int32 order is the float order
        a = _mm256_xor_si256(bits, _mm256_and_si256(_mm256_srai_epi32(bits, 31), _mm256_set1_epi32(0x7FFFFFFF)))
    return _mm256_blendv_epi8(_mm256_set1_epi32(INT32_MIN), a, _mm256_loadu_si256(<const __m256i*>(keymask + j)))


cdef inline void _rank_pass(int mode, int32_t* r, int nvec, int groups, int gsize, const Rank* rk,
                            __m256i* lo_out, __m256i* hi_out) noexcept nogil:
    """Rank r in place (mode is a constant at each call site, so each loop is specialised) and reduce
    it to lane-wise group maxima: lo_out = their minimum, hi_out = their maximum."""
    cdef const int32_t* zk = rk.zk
    cdef const float* ksum = rk.ksum
    cdef const float* kscale = rk.kscale
    cdef const int32_t* keymask = rk.keymask
    cdef __m256 zp = _mm256_set1_ps(rk.zp)
    cdef __m256i minv = _mm256_set1_epi32(INT32_MIN), mx, mx2, x, lo_v = _mm256_set1_epi32(0x7FFFFFFF), hi_v = minv
    cdef int g, v, end
    for g in range(groups):
        mx = minv
        mx2 = minv
        v = g * gsize
        end = min((g + 1) * gsize, nvec)
        while v + 1 < end:
            x = _rank_vec(mode, _mm256_loadu_si256(<const __m256i*>(r + 8 * v)), 8 * v, zk, ksum, kscale, keymask, zp)
            _mm256_storeu_si256(<__m256i*>(r + 8 * v), x)
            mx = _mm256_max_epi32(mx, x)
            x = _rank_vec(mode, _mm256_loadu_si256(<const __m256i*>(r + 8 * v + 8)), 8 * v + 8, zk, ksum, kscale,
                          keymask, zp)
            _mm256_storeu_si256(<__m256i*>(r + 8 * v + 8), x)
            mx2 = _mm256_max_epi32(mx2, x)
            v += 2
        if v < end:
            x = _rank_vec(mode, _mm256_loadu_si256(<const __m256i*>(r + 8 * v)), 8 * v, zk, ksum, kscale, keymask, zp)
            _mm256_storeu_si256(<__m256i*>(r + 8 * v), x)
            mx = _mm256_max_epi32(mx, x)
        mx = _mm256_max_epi32(mx, mx2)
        lo_v = _mm256_min_epi32(lo_v, mx)
        hi_v = _mm256_max_epi32(hi_v, mx)
    lo_out[0] = lo_v
    hi_out[0] = hi_v


cdef int _select_row(int32_t* r, int ld, int k, int32_t* cand, int32_t* cv, int32_t* sel, const Rank* rk) noexcept nogil:
    """Indices of the k largest of r[0:ld] (INT32_MIN = not selectable, at least k+1 selectable entries
    assumed), ties to the lower index, written to sel in increasing index order; returns k.  The first
    pass turns r into ranking values (rk; INT32_MIN for masked keys).

    ld is a multiple of 8; cand and cv hold ld + 8 entries; sel k + 8.  No sorting:
    1. lower bound: groups of vectors reduced lane-wise to 8 maxima each; with at least k such maxima
       (distinct elements), their minimum L has at least k elements >= L;
    2. compaction (movemask + permute table): the indices and values of the elements >= L;
    3. the k-th largest value T among those: bisection on the value range [L, max] by counting with
       AVX2 compares, stopping as soon as some threshold has exactly k candidates at or above it;
    4. the candidates > T, then the first ones == T in index order (lower key index first)."""
    cdef int nvec = ld // 8, groups, g, v, c, i, gsize, n_gt, need, got, cvec, cnt
    cdef __m256i mx, mx2, hi_v, perm, lo_v, x, lvec, idx, step = _mm256_set1_epi32(8), minv = _mm256_set1_epi32(INT32_MIN)
    cdef int32_t low, t, x_i
    cdef int eq, take
    cdef long long lo, hi, mid
    cdef int cl, ch, step_
    cdef unsigned int mask
    cdef int32_t lanes[8]
    # 1. ceil(k / 8) groups give >= k lane maxima (fewer if the row is short: then no bound).
    groups = (k + 7) // 8
    gsize = (nvec + groups - 1) // groups
    if rk.mode == HEAD:
        _rank_pass(HEAD, r, nvec, groups, gsize, rk, &lo_v, &hi_v)
    elif rk.mode == TOKEN:
        _rank_pass(TOKEN, r, nvec, groups, gsize, rk, &lo_v, &hi_v)
    else:
        _rank_pass(RAW, r, nvec, groups, gsize, rk, &lo_v, &hi_v)
    _mm256_storeu_si256(<__m256i*>lanes, lo_v)
    low = lanes[0]
    for i in range(1, 8):
        low = lanes[i] if lanes[i] < low else low
    _mm256_storeu_si256(<__m256i*>lanes, hi_v)
    hi = lanes[0]
    for i in range(1, 8):
        hi = lanes[i] if lanes[i] > hi else hi
    if low == INT32_MIN:  # an empty group or a lane of masked keys: no bound, every valid key is a candidate
        low = INT32_MIN + 1
    # 2. Compaction: indices and values of r >= low, in index order.
    lvec = _mm256_set1_epi32(low - 1)
    idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)
    c = 0
    for v in range(nvec):
        x = _mm256_loadu_si256(<const __m256i*>(r + 8 * v))
        mask = <unsigned int>_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(x, lvec)))
        perm = _mm256_loadu_si256(<const __m256i*>_COMPACT[mask])
        _mm256_storeu_si256(<__m256i*>(cand + c), _mm256_permutevar8x32_epi32(idx, perm))
        _mm256_storeu_si256(<__m256i*>(cv + c), _mm256_permutevar8x32_epi32(x, perm))
        c += _POPCOUNT[mask]
        idx = _mm256_add_epi32(idx, step)
    for i in range(c, (c + 7) // 8 * 8):
        cv[i] = INT32_MIN
    cvec = (c + 7) // 8
    # 3. Largest T in [low, max] with count(>= T) >= k (count(>= low) = c >= k).  Interpolation between
    #    the counts at the ends of the bracket, every other step a plain bisection (so at most twice
    #    as many steps as bisection alone; usually far fewer).
    lo = low
    cl = c      # count(>= lo) >= k
    ch = 0      # count(> hi) < k
    t = INT32_MIN
    step_ = 0
    while lo < hi:
        if step_ & 1 or cl <= ch:
            mid = lo + (hi - lo + 1) // 2
        else:
            mid = lo + ((hi - lo) * (cl - k) + (cl - ch) - 1) // (cl - ch)
            mid = lo + 1 if mid <= lo else (hi if mid > hi else mid)
        step_ += 1
        cnt = _count_above(cv, cvec, <int32_t>(mid - 1))
        if cnt == k:  # exactly k at or above mid: that is the selection
            t = <int32_t>mid
            break
        if cnt > k:
            lo = mid
            cl = cnt
        else:
            hi = mid - 1
            ch = cnt
    got = 0
    if t != INT32_MIN:  # compaction of the candidates >= t (exactly k; sel has room for k + 8)
        lvec = _mm256_set1_epi32(t - 1)
        for v in range(cvec):
            mask = <unsigned int>_mm256_movemask_ps(_mm256_castsi256_ps(
                _mm256_cmpgt_epi32(_mm256_loadu_si256(<const __m256i*>(cv + 8 * v)), lvec)))
            _mm256_storeu_si256(<__m256i*>(sel + got), _mm256_permutevar8x32_epi32(
                _mm256_loadu_si256(<const __m256i*>(cand + 8 * v)), _mm256_loadu_si256(<const __m256i*>_COMPACT[mask])))
            got += _POPCOUNT[mask]
        return got
    t = <int32_t>lo
    # 4. Ties at t go to the lower key index (branch-free).
    need = k - _count_above(cv, cvec, t)
    for i in range(c):
        x_i = cv[i]
        eq = x_i == t
        take = (x_i > t) | (eq & (need > 0))
        sel[got] = cand[i]
        got += take
        need -= take & eq
    return got


def select_rows(const int32_t[:, ::1] scores, const uint8_t[::1] valid, int k, int32_t[:, ::1] index,
                int32_t[::1] count) -> None:
    """The kernel's selection on given int32 scores (rows, n): index[i, :count[i]] (ascending) are the
    k largest valid scores of row i, ties to the lower index.  Valid scores must be > INT32_MIN."""
    cdef int rows = scores.shape[0], n = scores.shape[1], ld = (n + 7) // 8 * 8, nvalid = 0, i, j, got
    if valid.shape[0] != n or index.shape[0] != rows or count.shape[0] != rows or index.shape[1] < min(k, n):
        raise ValueError("shapes")
    cdef int32_t* r = <int32_t*>malloc((ld + 8) * sizeof(int32_t))
    cdef int32_t* cand = <int32_t*>malloc((ld + 8) * sizeof(int32_t))
    cdef int32_t* cv = <int32_t*>malloc((ld + 8) * sizeof(int32_t))
    cdef int32_t* sel = <int32_t*>malloc((k + 8) * sizeof(int32_t))
    cdef Rank rk
    rk.mode = RAW
    if r == NULL or cand == NULL or cv == NULL or sel == NULL:
        free(r); free(cand); free(cv); free(sel)
        raise MemoryError()
    for j in range(n):
        nvalid += valid[j] != 0
    with nogil:
        for i in range(rows):
            if nvalid <= k:
                count[i] = 0
                for j in range(n):
                    if valid[j]:
                        index[i, count[i]] = j
                        count[i] += 1
                continue
            for j in range(n):
                r[j] = scores[i, j] if valid[j] else INT32_MIN
            for j in range(n, ld):
                r[j] = INT32_MIN
            got = _select_row(r, ld, k, cand, cv, sel, &rk)
            for j in range(got):
                index[i, j] = sel[j]
            count[i] = got
    free(r); free(cand); free(cv); free(sel)


# ---------------------------------------------------------------------------------------------------
# The fused kernel


cdef struct Work:
    int8_t* kq          # (keys, dim) K codes
    int32_t* ksum       # (keys32,) row sums of K codes
    float* ksumf        # (keys32,) the same as floats
    int32_t* zk         # (keys32,) Q zero point * ksum (per-head scales)
    float* kscale       # (keys32,) K scales (per token)
    int32_t* keymask    # (keys32,) -1 valid, 0 masked/padding
    int32_t* valid_idx  # (keys,) indices of the valid keys
    float* kmean        # (dim,)
    float* tmp          # (dim,)
    uint8_t* qq         # (ROWS, dim) Q codes
    int32_t* qzp        # (ROWS,)
    uint8_t* qbad       # (ROWS,) 1 = non-finite query row
    int32_t* acc        # (ROWS, keys32) Q K^T, then ranking values in place
    int32_t* cand       # (keys32 + 8,)
    int32_t* sel_tmp    # (keys32 + 8,)
    int32_t* sel        # (ROWS, kk) selected key indices
    int32_t* nsel       # (ROWS,)
    float* s            # (ROWS, kk + 8) exact scores, then weights
    float* rowscale     # (ROWS,)
    Packed kp
    bint own_packing
    double prof[<int>N_PHASES]


cdef void _free(Work* w) noexcept nogil:
    if w == NULL:
        return
    _free_packed(&w.kp)
    free(w.kq); free(w.ksum); free(w.ksumf); free(w.zk); free(w.kscale); free(w.keymask); free(w.valid_idx); free(w.kmean); free(w.tmp)
    free(w.qq); free(w.qzp); free(w.qbad); free(w.acc); free(w.cand); free(w.sel_tmp); free(w.sel); free(w.nsel)
    free(w.s); free(w.rowscale)
    free(w)


cdef Work* _new_work(Py_ssize_t keys32, Py_ssize_t dim, Py_ssize_t kk) except NULL nogil:
    cdef Work* w = <Work*>calloc(1, sizeof(Work))
    if w != NULL:
        w.kq = <int8_t*>malloc(keys32 * dim + 32)
        w.ksum = <int32_t*>malloc(keys32 * sizeof(int32_t))
        w.ksumf = <float*>malloc(keys32 * sizeof(float))
        w.zk = <int32_t*>malloc(keys32 * sizeof(int32_t))
        w.kscale = <float*>malloc(keys32 * sizeof(float))
        w.keymask = <int32_t*>malloc(keys32 * sizeof(int32_t))
        w.valid_idx = <int32_t*>malloc(keys32 * sizeof(int32_t))
        w.kmean = <float*>malloc((dim + 8) * sizeof(float))
        w.tmp = <float*>malloc((dim + 8) * sizeof(float))
        w.qq = <uint8_t*>malloc(ROWS * dim + 32)
        w.qzp = <int32_t*>malloc(ROWS * sizeof(int32_t))
        w.qbad = <uint8_t*>malloc(ROWS)
        w.acc = <int32_t*>malloc(ROWS * keys32 * sizeof(int32_t))
        w.cand = <int32_t*>malloc((keys32 + 8) * sizeof(int32_t))
        w.sel_tmp = <int32_t*>malloc((keys32 + 8) * sizeof(int32_t))
        w.sel = <int32_t*>malloc((ROWS * kk + 8) * sizeof(int32_t))
        w.nsel = <int32_t*>malloc(ROWS * sizeof(int32_t))
        w.s = <float*>malloc(ROWS * (kk + 8) * sizeof(float))
        w.rowscale = <float*>malloc(ROWS * sizeof(float))
    if not (w and w.kq and w.ksum and w.ksumf and w.zk and w.kscale and w.keymask and w.valid_idx and w.kmean and w.tmp and w.qq
            and w.qzp and w.qbad and w.acc and w.cand and w.sel_tmp and w.sel and w.nsel and w.s and w.rowscale):
        _free(w)
        with gil:
            raise MemoryError("topk attention buffers")
    return w


cdef struct Head:
    const float* q
    const float* k
    const float* v
    float* out
    Py_ssize_t q_rs, k_rs, v_rs, out_rs
    const uint8_t* valid   # (keys,) 1 = attend
    int rows, keys, keys32, dim, topk, kk   # kk = min(topk, keys32): the stride of sel
    float scaling
    bint smooth_k, per_token
    # per-head quantization (per_token False)
    float q_inv, q_zp, k_inv


cdef inline void _u7_given(const float* x, uint8_t* q, int n, float inv, float zpf) noexcept nogil:
    # The codes of _rows._u7_row for a given 1/scale and zero point.
    cdef __m256 inv_v = _mm256_set1_ps(inv), zp_v = _mm256_set1_ps(zpf), zero = _mm256_setzero_ps()
    cdef __m256 top = _mm256_set1_ps(127), v
    cdef __m256 codes[4]
    cdef float t
    cdef int c, j
    for c in range(n // 8):
        v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * c), inv_v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
        codes[c % 4] = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(v, zp_v), zero), top)
        if c % 4 == 3:
            _store_codes32(codes[0], codes[1], codes[2], codes[3], <int8_t*>(q + 8 * (c - 3)), True)
    for c in range(n // 32 * 4, n // 8):
        _store_codes(codes[c % 4], <int8_t*>(q + 8 * c))
    for j in range(n // 8 * 8, n):
        t = _rint(x[j] * inv) + zpf
        t = t if t > 0 else <float>0.0
        t = t if t < 127 else <float>127.0
        q[j] = <uint8_t>(<int32_t>t)


cdef inline void _s8_given(const float* x, const float* sub, int8_t* q, int n, float inv) noexcept nogil:
    # The codes of _rows._s8_row of (x - sub) for a given 1/scale.
    cdef __m256 inv_v = _mm256_set1_ps(inv), lo = _mm256_set1_ps(-127), hi = _mm256_set1_ps(127), v
    cdef __m256 codes[4]
    cdef float t
    cdef int c, j
    for c in range(n // 8):
        v = _mm256_sub_ps(_mm256_loadu_ps(x + 8 * c), _mm256_loadu_ps(sub + 8 * c))
        v = _mm256_round_ps(_mm256_mul_ps(v, inv_v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
        codes[c % 4] = _mm256_min_ps(_mm256_max_ps(v, lo), hi)
        if c % 4 == 3:
            _store_codes32(codes[0], codes[1], codes[2], codes[3], q + 8 * (c - 3), False)
    for c in range(n // 32 * 4, n // 8):
        _store_codes(codes[c % 4], q + 8 * c)
    for j in range(n // 8 * 8, n):
        t = _rint((x[j] - sub[j]) * inv)
        t = t if t > -127 else <float>-127.0
        t = t if t < 127 else <float>127.0
        q[j] = <int8_t>(<int32_t>t)


cdef inline int32_t _code_sum(const int8_t* q, int n) noexcept nogil:
    # Sum of n int8 codes: bytes biased to unsigned, summed by vpsadbw.
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


cdef inline void _minmax_abs(const float* x, const float* sub, int n, __m256* lo, __m256* hi, __m256* amax) noexcept nogil:
    # Lane-wise min, max and max |x - sub| over x[0:n] (n % 8 == 0); sub may be NULL.
    cdef __m256 v, absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF))
    cdef int c
    for c in range(n // 8):
        v = _mm256_loadu_ps(x + 8 * c)
        if sub != NULL:
            v = _mm256_sub_ps(v, _mm256_loadu_ps(sub + 8 * c))
        lo[0] = _mm256_min_ps(lo[0], v)
        hi[0] = _mm256_max_ps(hi[0], v)
        amax[0] = _mm256_max_ps(amax[0], _mm256_and_ps(v, absmask))


cdef int _prepare_head(Head* h, Work* w) noexcept nogil:
    """Key mask, valid key list, K codes, scales and sums; per-head Q parameters.  Returns the number of
    valid keys whose k or v row holds NaN or infinity (the head is then all NaN)."""
    cdef int j, d, nvalid = 0, bad = 0, i
    cdef const float* row
    cdef float amax, a, lo, hi, scale, inv, zpf
    cdef __m256 lo_v, hi_v, amax_v
    for j in range(h.keys):
        w.keymask[j] = -1 if h.valid[j] else 0
        if h.valid[j]:
            w.valid_idx[nvalid] = j
            nvalid += 1
            if _row_special(h.k + j * h.k_rs, h.dim) or _row_special(h.v + j * h.v_rs, h.dim):
                bad += 1
    for j in range(h.keys, h.keys32):
        w.keymask[j] = 0
        w.ksum[j] = 0
        w.kscale[j] = 0
    if bad:
        return bad
    for d in range(h.dim):
        w.kmean[d] = 0
    if h.smooth_k and nvalid:
        for i in range(nvalid):
            row = h.k + w.valid_idx[i] * h.k_rs
            for d in range(h.dim):
                w.kmean[d] += row[d]
        for d in range(h.dim):
            w.kmean[d] = w.kmean[d] / nvalid
    if h.per_token:
        for j in range(h.keys):
            row = h.k + j * h.k_rs
            _prefetch_row(row + PREFETCH * h.k_rs, h.dim)
            if h.valid[j]:
                if h.dim % 8 == 0:
                    _s8_row_avx(row, w.kmean, w.kq + j * h.dim, h.dim, &w.kscale[j])
                else:
                    for d in range(h.dim):
                        w.tmp[d] = row[d] - w.kmean[d]
                    _s8_row(w.tmp, w.kq + j * h.dim, h.dim, &w.kscale[j])
            else:
                for d in range(h.dim):
                    w.kq[j * h.dim + d] = 0
                w.kscale[j] = 0
    else:
        # One K scale over the valid keys, one Q scale and zero point over the valid finite query rows.
        amax = 0
        lo_v = _mm256_setzero_ps()
        hi_v = _mm256_setzero_ps()
        amax_v = _mm256_setzero_ps()
        for i in range(nvalid):
            row = h.k + w.valid_idx[i] * h.k_rs
            if h.dim % 8 == 0:
                _minmax_abs(row, w.kmean, h.dim, &lo_v, &hi_v, &amax_v)
                continue
            for d in range(h.dim):
                a = row[d] - w.kmean[d]
                a = a if a >= 0 else -a
                amax = a if a > amax else amax
        a = _hmax(amax_v)
        amax = a if a > amax else amax
        scale = amax / <float>127.0
        inv = <float>1.0 / scale if scale > 0 else <float>0.0
        if not (scale > 0) or inv > <float>3.0e38:
            inv = 1
        h.k_inv = inv
        for j in range(h.keys):
            if h.valid[j]:
                _s8_given(h.k + j * h.k_rs, w.kmean, w.kq + j * h.dim, h.dim, inv)
            else:
                for d in range(h.dim):
                    w.kq[j * h.dim + d] = 0
            w.kscale[j] = 1
        lo = 0
        hi = 0
        lo_v = _mm256_setzero_ps()
        hi_v = _mm256_setzero_ps()
        for i in range(h.rows):
            if i < h.keys and h.valid[i]:
                row = h.q + i * h.q_rs
                if _row_special(row, h.dim):
                    continue
                if h.dim % 8 == 0:
                    _minmax_abs(row, NULL, h.dim, &lo_v, &hi_v, &amax_v)
                    continue
                for d in range(h.dim):
                    lo = row[d] if row[d] < lo else lo
                    hi = row[d] if row[d] > hi else hi
        a = _hmin(lo_v)
        lo = a if a < lo else lo
        a = _hmax(hi_v)
        hi = a if a > hi else hi
        scale = (hi - lo) / <float>127.0
        inv = <float>1.0 / scale if scale > 0 else <float>0.0
        if not (scale > 0) or inv > <float>3.0e38:
            inv = 1
        zpf = _rint(-lo * inv)
        zpf = zpf if zpf > 0 else <float>0.0
        zpf = zpf if zpf < 127 else <float>127.0
        h.q_inv = inv
        h.q_zp = zpf
    for j in range(h.keys):
        w.ksum[j] = _code_sum(w.kq + j * h.dim, h.dim)
    for j in range(h.keys32):
        w.ksumf[j] = <float>w.ksum[j]
        w.zk[j] = 0 if h.per_token else <int32_t>h.q_zp * w.ksum[j]
    return 0


cdef int _gemm_s32(const uint8_t* a, int lda, PackB* pb, int32_t* c, int ldc, int m, int n, int k) except -1 nogil:
    cdef DoNothingI32 done
    cdef MemCopyI32* out = new MemCopyI32(done)
    cdef PackAMatrix[uint8_t, int32_t]* pa = NULL
    try:
        pa = new PackAMatrix[uint8_t, int32_t](matrix_op_t.NoTranspose, m, k, a, lda, NULL, 1)
        fbgemmPacked(pa[0], pb[0], c, c, <uint32_t>ldc, out[0], 0, 1)
    finally:
        del pa
        del out
    return 0


cdef inline __m256 _hsum8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6,
                          __m256 a7) noexcept nogil:
    # Lane l of the result = horizontal sum of a_l.
    cdef __m256 s01 = _mm256_hadd_ps(a0, a1), s23 = _mm256_hadd_ps(a2, a3)
    cdef __m256 s45 = _mm256_hadd_ps(a4, a5), s67 = _mm256_hadd_ps(a6, a7)
    cdef __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67)
    # s0123 = [a0 a1 a2 a3 | a0 a1 a2 a3] partial (low/high 128-bit halves)
    return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31))


cdef inline float _dot(const float* a, const float* b, int n) noexcept nogil:
    cdef __m256 acc = _mm256_setzero_ps()
    cdef float s = 0
    cdef int c, j
    for c in range(n // 8):
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + 8 * c), _mm256_loadu_ps(b + 8 * c), acc)
    s = _hsum(acc)
    for j in range(n // 8 * 8, n):
        s += a[j] * b[j]
    return s


cdef void _exact_scores(const Head* h, const float* qrow, const int32_t* sel, int n, float* s, float mult) noexcept nogil:
    """s[t] = (q . k_sel[t]) * mult for t < n (8 keys at a time for dim 32/64-style widths)."""
    cdef int t, c, l, nd = h.dim // 8
    cdef __m256 acc[8]
    cdef __m256 qv[8]
    cdef const float* kr
    cdef __m256 m = _mm256_set1_ps(mult)
    t = 0
    if h.dim % 8 == 0 and nd <= 8:
        for c in range(nd):
            qv[c] = _mm256_loadu_ps(qrow + 8 * c)
        while t + 8 <= n:
            for l in range(8):
                kr = h.k + sel[t + l] * h.k_rs
                acc[l] = _mm256_mul_ps(qv[0], _mm256_loadu_ps(kr))
                for c in range(1, nd):
                    acc[l] = _mm256_fmadd_ps(qv[c], _mm256_loadu_ps(kr + 8 * c), acc[l])
            _mm256_storeu_ps(s + t, _mm256_mul_ps(_hsum8(acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6],
                                                         acc[7]), m))
            t += 8
    for t in range(t, n):
        s[t] = _dot(qrow, h.k + sel[t] * h.k_rs, h.dim) * mult


cdef float _softmax(float* s, int n) noexcept nogil:
    """s (base-2 scores) -> 2**(s - max s) in place, padded to a multiple of 8; returns the sum over n."""
    cdef float mx = s[0], total = 0
    cdef int t
    cdef __m256 m, e, tot = _mm256_setzero_ps()
    for t in range(1, n):
        mx = s[t] if s[t] > mx else mx
    for t in range(n, (n + 7) // 8 * 8):
        s[t] = -1e30
    m = _mm256_set1_ps(mx)
    for t in range(0, n, 8):
        e = _exp2_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + t), m))
        tot = _mm256_add_ps(tot, e)
        _mm256_storeu_ps(s + t, e)
    return _hsum(tot)


cdef void _v_sum(const Head* h, const int32_t* sel, const float* p, int n, float scale, float* o) noexcept nogil:
    cdef int t, c, d, nd = h.dim // 8
    cdef __m256 acc[8]
    cdef __m256 pv
    cdef const float* vr
    if h.dim % 8 == 0 and nd <= 8:
        for c in range(nd):
            acc[c] = _mm256_setzero_ps()
        for t in range(n):
            vr = h.v + sel[t] * h.v_rs
            pv = _mm256_set1_ps(p[t])
            for c in range(nd):
                acc[c] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr + 8 * c), acc[c])
        pv = _mm256_set1_ps(scale)
        for c in range(nd):
            _mm256_storeu_ps(o + 8 * c, _mm256_mul_ps(acc[c], pv))
        return
    for d in range(h.dim):
        o[d] = 0
    for t in range(n):
        vr = h.v + sel[t] * h.v_rs
        for d in range(h.dim):
            o[d] += p[t] * vr[d]
    for d in range(h.dim):
        o[d] *= scale


cdef int _block(const Head* h, Work* w, int nvalid, int start, int rows, double* prof) except -1 nogil:
    cdef Rank rk
    cdef int i, d, ld = h.keys32, kk = h.kk, sstride = h.kk + 8, bad = 0, n
    cdef float qscale, total, nan = _nan()
    cdef const float* qrow
    cdef float* o
    cdef double t = _now() if prof != NULL else 0
    for i in range(rows):
        qrow = h.q + (start + i) * h.q_rs
        _prefetch_row(qrow + PREFETCH * h.q_rs, h.dim)
        w.qbad[i] = 0
        if h.per_token:
            if h.dim % 8 == 0:
                w.qbad[i] = _u7_row_avx(qrow, w.qq + i * h.dim, h.dim, &qscale, &w.qzp[i])
            else:
                w.qbad[i] = _u7_row(qrow, w.qq + i * h.dim, h.dim, &qscale, &w.qzp[i])
        else:
            w.qbad[i] = _row_special(qrow, h.dim)
            w.qzp[i] = <int32_t>h.q_zp
            if not w.qbad[i]:
                _u7_given(qrow, w.qq + i * h.dim, h.dim, h.q_inv, h.q_zp)
        if w.qbad[i]:
            w.qzp[i] = 0
            for d in range(h.dim):
                w.qq[i * h.dim + d] = 0
            bad += 1
    t = _lap(prof, QUANTIZE, t)
    if nvalid > h.topk:
        _gemm_s32(w.qq, h.dim, w.kp.mat, w.acc, ld, rows, h.keys, h.dim)
        t = _lap(prof, GEMM_QK, t)
        rk.mode = TOKEN if h.per_token else HEAD
        rk.zk, rk.ksum, rk.kscale, rk.keymask = w.zk, w.ksumf, w.kscale, w.keymask
        for i in range(rows):
            rk.zp = <float>w.qzp[i]
            w.nsel[i] = _select_row(w.acc + i * ld, ld, h.topk, w.cand, w.sel_tmp, w.sel + i * kk, &rk)
        t = _lap(prof, SELECT, t)
    for i in range(rows):
        if nvalid > h.topk:
            n = w.nsel[i]
            _exact_scores(h, h.q + (start + i) * h.q_rs, w.sel + i * kk, n, w.s + i * sstride, h.scaling * LOG2E)
        else:
            n = nvalid
            _exact_scores(h, h.q + (start + i) * h.q_rs, w.valid_idx, n, w.s + i * sstride, h.scaling * LOG2E)
        w.nsel[i] = n
    t = _lap(prof, EXACT_SCORES, t)
    for i in range(rows):
        total = _softmax(w.s + i * sstride, w.nsel[i])
        w.rowscale[i] = <float>1.0 / total
    t = _lap(prof, SOFTMAX, t)
    for i in range(rows):
        o = h.out + (start + i) * h.out_rs
        if w.qbad[i]:
            for d in range(h.dim):
                o[d] = nan
            continue
        _v_sum(h, w.sel + i * kk if nvalid > h.topk else w.valid_idx, w.s + i * sstride, w.nsel[i],
               w.rowscale[i], o)
    _lap(prof, V_SUM, t)
    return bad


cdef int _head(Head* h, Work* w, double* prof) except -1 nogil:
    """Top-k attention of one (batch, head); returns the number of non-finite rows found."""
    cdef int bad, start, i, d, j, nvalid = 0
    cdef float nan = _nan()
    cdef double t
    for j in range(h.keys):
        nvalid += h.valid[j] != 0
    if nvalid == 0:  # no key at all: output 0
        for i in range(h.rows):
            for d in range(h.dim):
                h.out[i * h.out_rs + d] = 0
        return 0
    t = _now() if prof != NULL else 0
    bad = _prepare_head(h, w)
    if bad:  # a valid key's k or v is not finite: like dense attention, every output of the head is NaN
        for i in range(h.rows):
            for d in range(h.dim):
                h.out[i * h.out_rs + d] = nan
        return bad
    if nvalid > h.topk:
        if not _pack(&w.kp, matrix_op_t.Transpose, h.dim, h.keys, w.kq, h.dim, w.own_packing):
            _put_transposed(&w.kp, w.kq, h.keys, h.dim)
    _lap(prof, QUANTIZE, t)
    for start in range((h.rows + ROWS - 1) // ROWS):
        bad += _block(h, w, nvalid, start * ROWS, min(<int>ROWS, h.rows - start * ROWS), prof)
    return bad


cdef struct Batch:
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
    int heads, seq, dim, topk
    float scaling
    bint smooth_k, per_token


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
    h.topk = a.topk
    h.kk = min(a.topk, (a.seq + 31) // 32 * 32)
    h.scaling, h.smooth_k, h.per_token = a.scaling, a.smooth_k, a.per_token
    cdef double* prof = NULL
    if profile:
        prof = w.prof
    return _head(&h, w, prof)


def topk_attention(const float[:, :, :, :] q, const float[:, :, :, :] k, const float[:, :, :, :] v,
                   const uint8_t[:, ::1] key_valid, const int32_t[::1] n_keys, float[:, :, :, :] out,
                   float scaling, int topk, bint per_token, bint smooth_k, bint own_packing, int threads,
                   double[::1] profile=None) -> int:
    """out[b, h] = top-k attention of q[b, h] over keys k[b, h, :n_keys[b]] (see the module docstring).

    q, k, v, out: (batch, heads, seq, dim) float32, last axis contiguous, other strides >= 0.
    key_valid: (batch, seq) 1 = attend; n_keys: (batch,) in 0..seq, no valid key at or beyond it.
    Returns the number of non-finite rows found (their outputs are NaN, see the module docstring).
    """
    cdef Py_ssize_t batch = q.shape[0], heads = q.shape[1], seq = q.shape[2], dim = q.shape[3]
    cdef Py_ssize_t t, bad = 0, i, seq32
    cdef Batch a
    cdef Work* w
    cdef bint profiling = profile is not None
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
    if threads < 1 or topk < 1:
        raise ValueError("threads and topk must be >= 1")
    if batch * heads == 0 or seq == 0 or dim == 0:
        return 0
    if seq >= 2**31 // 1024 or dim >= 2**12:
        raise ValueError("seq or dim too large")
    a.q, a.k, a.v, a.out = &q[0, 0, 0, 0], &k[0, 0, 0, 0], &v[0, 0, 0, 0], &out[0, 0, 0, 0]
    for i in range(3):
        a.qs[i] = q.strides[i] // sizeof(float)
        a.ks[i] = k.strides[i] // sizeof(float)
        a.vs[i] = v.strides[i] // sizeof(float)
        a.os[i] = out.strides[i] // sizeof(float)
    a.valid, a.valid_rs, a.n_keys = &key_valid[0, 0], key_valid.strides[0], &n_keys[0]
    a.heads, a.seq, a.dim, a.topk = heads, seq, dim, topk
    a.scaling, a.smooth_k, a.per_token = scaling, smooth_k, per_token
    seq32 = (seq + 31) // 32 * 32
    with nogil, parallel(num_threads=threads):
        w = _new_work(seq32, dim, min(topk, seq32))
        w.own_packing = own_packing
        for t in prange(batch * heads, schedule="dynamic"):
            bad += _task(&a, t, w, profiling)
        if profiling:
            with gil:
                for i in range(N_PHASES):
                    profile[i] += w.prof[i]
        _free(w)
    return bad
