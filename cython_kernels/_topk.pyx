# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True
# distutils: language = c++
"""Fused top-k sparse self-attention (thin layer: ``ops`` validates).

Compiled with AVX2 and FMA: import it only after checking the CPU (``_loader`` does).  For every
(batch, head) -- one OpenMP task each -- and in blocks of ``ROWS`` query rows, two entries:

``topk_attention`` (int8 selection scores on FBGEMM)::

    K  -> s8 (symmetric; optionally minus K's mean over valid keys), per token or one scale per head
          (or one given scale per sequence)
    Q  -> 7-bit u8 (asymmetric), per token or one scale/zero point per head (the 7-bit rule)
    A  =  int32 Q K^T (FBGEMM, exact)
    R  =  ranking value per key: per head, the exact integer A - zp * sum(K codes); per token, the
          float (A - zp * sum(K codes)) * kscale mapped to an order-preserving int32.

``topk_attention_scores`` (given selection scores, e.g. the fake-quantized float scores of
``topk:scorer=fake``)::

    R  =  the given int32 scores, or the given float32 scores mapped to an order-preserving int32
          (the bits for x >= 0, minus the magnitude bits for x < 0: -0.0 ties with +0.0, NaN with the
          sign bit clear ranks above +inf, with it set below -inf).

Then, the same code for both:

    selection: per row, the k largest R of valid keys, ties to the lower key index (no sorting; masked
          keys get INT32_MIN, keys at or beyond ``n_keys[b]`` are never read):
          1. lane-wise maxima of ceil(k / 8) groups of vectors give >= k "chunk maxima" (each a
             distinct element), so their minimum L is a lower bound of the k-th largest R (this pass
             also computes R from the GEMM output or the given scores);
          2. one AVX2 compaction pass collects the indices and values with R >= L (movemask +
             permute table);
          3. the k-th largest value T among these few candidates: bisection on [L, max] counting
             with AVX2 compares, stopping at the first threshold with exactly k candidates above;
             then the candidates > T and the first ones == T in index order.
          With fewer valid keys than k, every valid key is selected.
    exact  s_j = (q . k_j) * scaling in float32 for the selected keys only (read in place);
    re-rank (k_factor > 1: the selection above took topk * k_factor candidates): the topk candidates of
          largest s_j (ties to the lower key index), ranked on their ordered bits by pairwise counting (up
          to 64 candidates; steps 3-4 beyond), the rest dropped;
    softmax over them, out = sum_j p_j v_j written straight into the (batch, seq, heads, dim) output.

No gathered copies of K or V.  Non-finite inputs (detected from their bits): a query row holding NaN or
infinity gets a NaN output row; a NaN/infinity in the key or value of a valid key makes the whole head's
output NaN (as dense attention would).  A row without any valid key gives 0.
"""

from cython.parallel cimport parallel, prange
from libc.stdint cimport int8_t, int32_t, uint8_t, uint32_t, INT32_MIN
from libc.math cimport ceil
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy
from posix.time cimport CLOCK_THREAD_CPUTIME_ID, clockid_t

from cython_kernels._avx cimport *
from cython_kernels._fbgemm cimport matrix_op_t
from cython_kernels._fused cimport (Arena, HeadView, Views, _arena_alloc, _gemm_s32, _head_view, _key_mean, _lap,
                                    _now, _take, _views)
from cython_kernels._packing cimport *
from cython_kernels._rows cimport _rint, _s8_scale, _u7_scale
from cython_kernels._simd cimport *


cdef enum:
    ROWS = 64      # query rows per block
    PREFETCH = 8

cdef enum Phase:
    QUANTIZE, GEMM_QK, SELECT, EXACT_SCORES, RERANK, SOFTMAX, V_SUM, N_PHASES

PHASES = ("quantize", "gemm_qk", "select", "exact_scores", "rerank", "softmax", "v_sum")

cdef clockid_t CLOCK = CLOCK_THREAD_CPUTIME_ID  # of the per-phase timings (CPU time of each thread)
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


cdef inline float _nan() noexcept nogil:
    cdef uint32_t bits = 0x7FC00000u
    cdef float f
    memcpy(&f, &bits, 4)
    return f


# ---------------------------------------------------------------------------------------------------
# Selection


cdef inline __m256i _fold_lanes(__m256i v, int op) noexcept nogil:
    # Every lane = the sum (op 0), minimum (1) or maximum (2) of v's eight lanes (three shuffle steps).
    cdef __m256i x = _mm256_permute2x128_si256(v, v, 1)
    if op == 0:
        v = _mm256_add_epi32(v, x)
        v = _mm256_add_epi32(v, _mm256_shuffle_epi32(v, 0x4E))
        return _mm256_add_epi32(v, _mm256_shuffle_epi32(v, 0xB1))
    if op == 1:
        v = _mm256_min_epi32(v, x)
        v = _mm256_min_epi32(v, _mm256_shuffle_epi32(v, 0x4E))
        return _mm256_min_epi32(v, _mm256_shuffle_epi32(v, 0xB1))
    v = _mm256_max_epi32(v, x)
    v = _mm256_max_epi32(v, _mm256_shuffle_epi32(v, 0x4E))
    return _mm256_max_epi32(v, _mm256_shuffle_epi32(v, 0xB1))


cdef inline int _count_above(const int32_t* x, int nvec, int32_t thr) noexcept nogil:
    """Number of x[0:8 * nvec] > thr (the compare masks, -1 per hit, subtracted lane-wise, summed once)."""
    cdef __m256i t = _mm256_set1_epi32(thr), acc = _mm256_setzero_si256()
    cdef int v
    for v in range(nvec):
        acc = _mm256_sub_epi32(acc, _mm256_cmpgt_epi32(_mm256_loadu_si256(<const __m256i*>(x + 8 * v)), t))
    return _mm256_cvtsi256_si32(_fold_lanes(acc, 0))


cdef enum Mode:
    # How _select_row's first pass turns its source row into ranking values.
    HEAD,    # int32 Q.K^T (in place): A - zk
    TOKEN,   # int32 Q.K^T (in place): the ordered bits of (A - zp * ksum) * kscale
    INT,     # given int32 scores (read with the key mask: masked and trailing keys are never read)
    FLOAT    # given float32 scores (the same, then their ordered bits)


cdef struct Rank:
    int mode                # Mode
    const int32_t* zk       # (ld,) zp * ksum (HEAD)
    const float* ksum       # (ld,) K code sums as floats (TOKEN)
    const float* kscale     # (ld,) K scales (TOKEN)
    const int32_t* keymask  # (ld,) -1 valid, 0 masked (all modes)
    float zp                # the row's Q zero point (TOKEN)


cdef inline __m256i _ordered(__m256i bits) noexcept nogil:
    # float32 bits -> int32 of the same order: x >= 0 keeps its bits, x < 0 becomes minus its magnitude
    # bits (so -0.0 == +0.0; never INT32_MIN).
    cdef __m256i sign = _mm256_srai_epi32(bits, 31)
    return _mm256_sub_epi32(_mm256_xor_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x7FFFFFFF)), sign), sign)


cdef inline __m256i _rank_vec(int mode, const int32_t* src, int j, const int32_t* zk, const float* ksum,
                              const float* kscale, const int32_t* keymask, __m256 zp) noexcept nogil:
    cdef __m256 f
    cdef __m256i a, m = _mm256_loadu_si256(<const __m256i*>(keymask + j))
    if mode == INT or mode == FLOAT:
        a = _mm256_maskload_epi32(<const int*>(src + j), m)
        if mode == FLOAT:
            a = _ordered(a)
    elif mode == HEAD:
        a = _mm256_sub_epi32(_mm256_loadu_si256(<const __m256i*>(src + j)),
                             _mm256_loadu_si256(<const __m256i*>(zk + j)))
    else:
        # A - zp * ksum is exact in float (integers below 2**24), so the fused multiply-add is too.
        f = _mm256_fnmadd_ps(zp, _mm256_loadu_ps(ksum + j),
                             _mm256_cvtepi32_ps(_mm256_loadu_si256(<const __m256i*>(src + j))))
        a = _ordered(_mm256_castps_si256(_mm256_mul_ps(f, _mm256_loadu_ps(kscale + j))))
    return _mm256_blendv_epi8(_mm256_set1_epi32(INT32_MIN), a, m)


cdef inline void _rank_pass(int mode, const int32_t* src, int32_t* r, int nvec, int groups, int gsize,
                            const Rank* rk, __m256i* lo_out, __m256i* hi_out) noexcept nogil:
    """r = the ranking values of src (mode is a constant at each call site, so each loop is specialised;
    src may be r), reduced to lane-wise group maxima: lo_out = their minimum, hi_out = their maximum."""
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
            x = _rank_vec(mode, src, 8 * v, zk, ksum, kscale, keymask, zp)
            _mm256_storeu_si256(<__m256i*>(r + 8 * v), x)
            mx = _mm256_max_epi32(mx, x)
            x = _rank_vec(mode, src, 8 * v + 8, zk, ksum, kscale, keymask, zp)
            _mm256_storeu_si256(<__m256i*>(r + 8 * v + 8), x)
            mx2 = _mm256_max_epi32(mx2, x)
            v += 2
        if v < end:
            x = _rank_vec(mode, src, 8 * v, zk, ksum, kscale, keymask, zp)
            _mm256_storeu_si256(<__m256i*>(r + 8 * v), x)
            mx = _mm256_max_epi32(mx, x)
        mx = _mm256_max_epi32(mx, mx2)
        lo_v = _mm256_min_epi32(lo_v, mx)
        hi_v = _mm256_max_epi32(hi_v, mx)
    lo_out[0] = lo_v
    hi_out[0] = hi_v


cdef int _select_row(const int32_t* src, int32_t* r, int ld, int k, int32_t* cand, int32_t* cv, int32_t* sel,
                     const Rank* rk) noexcept nogil:
    """Indices of the k largest ranking values of src (``rk``; INT32_MIN for masked keys; at least k+1
    valid keys assumed), ties to the lower index, written to sel in increasing index order; returns k.
    The first pass writes the ranking values to r (src may be r).

    ld is a multiple of 8; r has ld entries, cand and cv ld + 8; sel k + 8.  No sorting:
    1. lower bound: groups of vectors reduced lane-wise to 8 maxima each; with at least k such maxima
       (distinct elements), their minimum L has at least k elements >= L;
    2. compaction (movemask + permute table): the indices and values of the elements >= L;
    3.-4. ``_kth_select`` among those: the k-th largest value T by counting, then the candidates > T and
       the first ones == T in index order (lower key index first)."""
    cdef int nvec = ld // 8, groups, v, c, gsize
    cdef __m256i hi_v, perm, lo_v, x, lvec, idx, step = _mm256_set1_epi32(8), minv = _mm256_set1_epi32(INT32_MIN)
    cdef int32_t low
    cdef long long hi
    cdef unsigned int mask
    # 1. ceil(k / 8) groups give >= k lane maxima (fewer if the row is short: then no bound).
    groups = (k + 7) // 8
    gsize = (nvec + groups - 1) // groups
    if rk.mode == HEAD:
        _rank_pass(HEAD, src, r, nvec, groups, gsize, rk, &lo_v, &hi_v)
    elif rk.mode == TOKEN:
        _rank_pass(TOKEN, src, r, nvec, groups, gsize, rk, &lo_v, &hi_v)
    elif rk.mode == INT:
        _rank_pass(INT, src, r, nvec, groups, gsize, rk, &lo_v, &hi_v)
    else:
        _rank_pass(FLOAT, src, r, nvec, groups, gsize, rk, &lo_v, &hi_v)
    low = _mm256_cvtsi256_si32(_fold_lanes(lo_v, 1))
    hi = _mm256_cvtsi256_si32(_fold_lanes(hi_v, 2))
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
    _mm256_storeu_si256(<__m256i*>(cv + c), minv)  # pad the last vector (cv has ld + 8 entries)
    return _kth_select(cand, cv, c, k, low, hi, sel, rk.mode == TOKEN or rk.mode == FLOAT)


cdef inline double _unordered(long long x) noexcept nogil:
    # the float32 whose ordered int32 (``_ordered``) is x
    cdef uint32_t bits = <uint32_t>x if x >= 0 else (<uint32_t>(-x) | 0x80000000u)
    cdef float f
    memcpy(&f, &bits, 4)
    return f


cdef inline long long _ordered_scalar(float f) noexcept nogil:
    cdef int32_t bits
    memcpy(&bits, &f, 4)
    return bits if bits >= 0 else -<long long>(bits & 0x7FFFFFFF)


cdef int _kth_select(const int32_t* cand, const int32_t* cv, int c, int k, int32_t low, long long hi,
                     int32_t* sel, bint floats) noexcept nogil:
    """Of the c values cv (with their indices cand, in increasing order), the indices of the k largest, ties
    to the first, written to sel in order; returns k.  Requires c >= k, every cv[i] in [low, hi], and cv padded
    with INT32_MIN to a multiple of 8 (cand too: any values).  sel has room for k + 8.
    3. the k-th largest value T: interpolation between the counts at the ends of the bracket [low, hi],
       every other step a plain bisection (so at most twice as many steps as bisection alone; usually far
       fewer), counting with AVX2 compares, stopping at the first threshold with exactly k values above.
       With ``floats`` (cv are ordered float32 bits) the interpolation runs on the float values: their bit
       patterns are spaced logarithmically, with a wide empty gap around zero;
    4. the values > T, then the first ones == T (branch-free)."""
    cdef int cvec = (c + 7) // 8, cl, ch, step_, cnt, got, need, i, v, eq, take
    cdef long long lo = low, mid
    cdef double flo, fmid
    cdef int32_t t, x_i
    cdef unsigned int mask
    cdef __m256i lvec
    cl = c      # count(>= lo) >= k
    ch = 0      # count(> hi) < k
    t = INT32_MIN
    step_ = 0
    while lo < hi:
        if step_ & 1 or cl <= ch:
            mid = lo + (hi - lo + 1) // 2
        else:
            # (a double division: a 64-bit integer one costs tens of cycles; any mid in (lo, hi] is correct)
            if floats:
                flo = _unordered(lo)
                fmid = flo + (_unordered(hi) - flo) * (cl - k) / (cl - ch)
                mid = _ordered_scalar(<float>fmid) if fmid == fmid else lo + (hi - lo + 1) // 2
            else:
                mid = lo + <long long>ceil(<double>(hi - lo) * (cl - k) / (cl - ch))
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
    if t != INT32_MIN:  # compaction of the values >= t (exactly k; sel has room for k + 8)
        lvec = _mm256_set1_epi32(t - 1)
        for v in range(cvec):
            mask = <unsigned int>_mm256_movemask_ps(_mm256_castsi256_ps(
                _mm256_cmpgt_epi32(_mm256_loadu_si256(<const __m256i*>(cv + 8 * v)), lvec)))
            _mm256_storeu_si256(<__m256i*>(sel + got), _mm256_permutevar8x32_epi32(
                _mm256_loadu_si256(<const __m256i*>(cand + 8 * v)), _mm256_loadu_si256(<const __m256i*>_COMPACT[mask])))
            got += _POPCOUNT[mask]
        return got
    t = <int32_t>lo
    # 4. Ties at t go to the first (lower key index; branch-free).
    need = k - _count_above(cv, cvec, t)
    for i in range(c):
        x_i = cv[i]
        eq = x_i == t
        take = (x_i > t) | (eq & (need > 0))
        sel[got] = cand[i]
        got += take
        need -= take & eq
    return got


cdef enum:
    RANK_VECS = 8  # re-ranking by pairwise counting up to 8 vectors (64 candidates), else by _kth_select


cdef inline int _rank_select(const int32_t* cv, int n, int k, int32_t* sel, float* s, int32_t* sel_out,
                             float* s_out, const int nv) noexcept nogil:
    """Of cv[:n] (ordered values, n <= 8 * nv, n > k), the k largest, ties to the first: their sel and s
    entries written in order to sel_out and s_out (k + 8 entries each); returns k.  Branch-free in the usual
    case: the rank of i, the number of j that beat it (cv[j] > cv[i]), is counted for 8 i at a time by one
    compare per (j, vector of i); ranks are distinct exactly when they sum to n (n - 1) / 2 over the real
    lanes, else a second pass adds the ties that beat i (cv[j] == cv[i], j < i).  The k of rank < k are kept
    (lanes at or beyond n hold INT32_MIN: rank n, never kept).  Called with a literal nv: the vectors stay
    in registers and the loops unroll."""
    cdef __m256i rank[8]
    cdef __m256i v[8]
    cdef __m256i b, jv, tot, kv = _mm256_set1_epi32(k), tail = _mm256_set1_epi32(n)
    cdef __m256i minv = _mm256_set1_epi32(INT32_MIN), step = _mm256_set1_epi32(8), perm
    cdef __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)
    cdef int I, j, got = 0
    cdef unsigned int mask
    for I in range(nv):
        v[I] = _mm256_blendv_epi8(minv, _mm256_loadu_si256(<const __m256i*>(cv + 8 * I)),
                                  _mm256_cmpgt_epi32(tail, _mm256_add_epi32(idx, _mm256_set1_epi32(8 * I))))
        rank[I] = _mm256_setzero_si256()
    for j in range(n):
        b = _mm256_set1_epi32(cv[j])
        for I in range(nv):
            rank[I] = _mm256_sub_epi32(rank[I], _mm256_cmpgt_epi32(b, v[I]))
    tot = rank[0]
    for I in range(1, nv):
        tot = _mm256_add_epi32(tot, rank[I])
    # without ties: the real lanes' ranks are 0..n-1, each padding lane's is n
    if _mm256_cvtsi256_si32(_fold_lanes(tot, 0)) != n * (n - 1) // 2 + (8 * nv - n) * n:
        for j in range(n):
            b = _mm256_set1_epi32(cv[j])
            jv = _mm256_set1_epi32(j)
            for I in range(nv):
                rank[I] = _mm256_sub_epi32(rank[I], _mm256_and_si256(
                    _mm256_cmpeq_epi32(b, v[I]), _mm256_cmpgt_epi32(_mm256_add_epi32(idx, _mm256_set1_epi32(8 * I)), jv)))
    for I in range(nv):
        mask = <unsigned int>_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(kv, rank[I])))
        perm = _mm256_loadu_si256(<const __m256i*>_COMPACT[mask])
        _mm256_storeu_si256(<__m256i*>(sel_out + got), _mm256_permutevar8x32_epi32(
            _mm256_loadu_si256(<const __m256i*>(sel + 8 * I)), perm))
        _mm256_storeu_ps(s_out + got, _mm256_permutevar8x32_ps(_mm256_loadu_ps(s + 8 * I), perm))
        got += _POPCOUNT[mask]
    return got


cdef int _rerank_row(float* s, int32_t* sel, int n, int k, int32_t* pos, int32_t* cv, int32_t* best) noexcept nogil:
    """Keep the k of the n candidates sel[:n] (increasing key order) with the largest exact scores s[:n],
    ties to the lower key index, compacted in place in sel and s (in key order); returns k (n > k).
    Scores are ranked by their ordered int32 bits (as the given float scores are): by pairwise counting
    (``_rank_select``) up to 64 candidates, else by ``_kth_select``.  sel and s are read up to the end of
    the last vector (n rounded up to 8).  Scratch: pos and cv n + 8 entries (pos: float32 too), best k + 8."""
    cdef int t, nvec = (n + 7) // 8
    cdef __m256i x, lo_v = _mm256_set1_epi32(0x7FFFFFFF), hi_v = _mm256_set1_epi32(INT32_MIN)
    cdef __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), step = _mm256_set1_epi32(8)
    cdef __m256i tail = _mm256_set1_epi32(n), minv = _mm256_set1_epi32(INT32_MIN), real
    cdef float* s_out = <float*>pos
    if nvec <= RANK_VECS:
        for t in range(nvec):
            _mm256_storeu_si256(<__m256i*>(cv + 8 * t), _ordered(_mm256_loadu_si256(<const __m256i*>(s + 8 * t))))
        if nvec == 1:
            k = _rank_select(cv, n, k, sel, s, best, s_out, 1)
        elif nvec == 2:
            k = _rank_select(cv, n, k, sel, s, best, s_out, 2)
        elif nvec == 3:
            k = _rank_select(cv, n, k, sel, s, best, s_out, 3)
        elif nvec == 4:
            k = _rank_select(cv, n, k, sel, s, best, s_out, 4)
        elif nvec == 5:
            k = _rank_select(cv, n, k, sel, s, best, s_out, 5)
        elif nvec == 6:
            k = _rank_select(cv, n, k, sel, s, best, s_out, 6)
        elif nvec == 7:
            k = _rank_select(cv, n, k, sel, s, best, s_out, 7)
        else:
            k = _rank_select(cv, n, k, sel, s, best, s_out, 8)
        # (through scratch: compacting in place could write past n, into the next row's candidates)
        memcpy(sel, best, k * sizeof(int32_t))
        memcpy(s, s_out, k * sizeof(float))
        return k
    for t in range(nvec):
        # lanes at or beyond n: INT32_MIN, outside [min, max] of the real ones, never counted
        real = _mm256_cmpgt_epi32(tail, idx)
        x = _mm256_blendv_epi8(minv, _ordered(_mm256_loadu_si256(<const __m256i*>(s + 8 * t))), real)
        _mm256_storeu_si256(<__m256i*>(cv + 8 * t), x)
        _mm256_storeu_si256(<__m256i*>(pos + 8 * t), idx)
        hi_v = _mm256_max_epi32(hi_v, x)
        lo_v = _mm256_min_epi32(lo_v, _mm256_blendv_epi8(lo_v, x, real))
        idx = _mm256_add_epi32(idx, step)
    k = _kth_select(pos, cv, n, k, _mm256_cvtsi256_si32(_fold_lanes(lo_v, 1)),
                    _mm256_cvtsi256_si32(_fold_lanes(hi_v, 2)), best, True)
    for t in range(k):  # best is increasing and best[t] >= t: forward compaction in place
        sel[t] = sel[best[t]]
        s[t] = s[best[t]]
    return k


def select_rows(const int32_t[:, ::1] scores, const uint8_t[::1] valid, int k, int32_t[:, ::1] index,
                int32_t[::1] count, bint float_scores=False) -> None:
    """The kernel's selection on given scores (rows, n): index[i, :count[i]] (ascending) are the k largest
    valid scores of row i, ties to the lower index.  ``scores`` holds int32 values (> INT32_MIN where
    valid), or with ``float_scores`` the bits of float32 values (ranked by their ordered bits)."""
    cdef int rows = scores.shape[0], n = scores.shape[1], ld = (n + 7) // 8 * 8, nvalid = 0, i, j, got
    if valid.shape[0] != n or index.shape[0] != rows or count.shape[0] != rows or index.shape[1] < min(k, n):
        raise ValueError("shapes")
    if k < 1:
        raise ValueError("k must be >= 1")
    cdef int32_t* r = <int32_t*>malloc((ld + 8) * sizeof(int32_t))
    cdef int32_t* cand = <int32_t*>malloc((ld + 8) * sizeof(int32_t))
    cdef int32_t* cv = <int32_t*>malloc((ld + 8) * sizeof(int32_t))
    cdef int32_t* sel = <int32_t*>malloc((k + 8) * sizeof(int32_t))
    cdef int32_t* keymask = <int32_t*>malloc((ld + 8) * sizeof(int32_t))
    cdef Rank rk
    rk.mode = FLOAT if float_scores else INT
    rk.keymask = keymask
    if r == NULL or cand == NULL or cv == NULL or sel == NULL or keymask == NULL:
        free(r); free(cand); free(cv); free(sel); free(keymask)
        raise MemoryError()
    for j in range(ld):
        keymask[j] = -1 if j < n and valid[j] else 0
        nvalid += keymask[j] != 0
    with nogil:
        for i in range(rows):
            if nvalid <= k:
                count[i] = 0
                for j in range(n):
                    if valid[j]:
                        index[i, count[i]] = j
                        count[i] += 1
                continue
            got = _select_row(&scores[i, 0], r, ld, k, cand, cv, sel, &rk)
            for j in range(got):
                index[i, j] = sel[j]
            count[i] = got
    free(r); free(cand); free(cv); free(sel); free(keymask)


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
    int32_t* best       # (kk + 8,) re-ranking: positions of the k kept candidates
    float* s            # (ROWS, kk + 8) exact scores, then weights
    float* rowscale     # (ROWS,)
    Packed kp
    char* arena         # the one allocation that holds every buffer above
    bint own_packing
    double prof[<int>N_PHASES]


cdef void _free(Work* w) noexcept nogil:
    if w == NULL:
        return
    _free_packed(&w.kp)
    free(w.arena)
    free(w)


cdef void _layout(Work* w, Arena* a, Py_ssize_t keys32, Py_ssize_t dim, Py_ssize_t kk) noexcept nogil:
    # Every buffer of a Work, as slices of one arena (sizes in the struct's comments).
    w.kq = <int8_t*>_take(a, keys32 * dim + 32)
    w.ksum = <int32_t*>_take(a, keys32 * sizeof(int32_t))
    w.ksumf = <float*>_take(a, keys32 * sizeof(float))
    w.zk = <int32_t*>_take(a, keys32 * sizeof(int32_t))
    w.kscale = <float*>_take(a, keys32 * sizeof(float))
    w.keymask = <int32_t*>_take(a, keys32 * sizeof(int32_t))
    w.valid_idx = <int32_t*>_take(a, keys32 * sizeof(int32_t))
    w.kmean = <float*>_take(a, (dim + 8) * sizeof(float))
    w.tmp = <float*>_take(a, (dim + 8) * sizeof(float))
    w.qq = <uint8_t*>_take(a, ROWS * dim + 32)
    w.qzp = <int32_t*>_take(a, ROWS * sizeof(int32_t))
    w.qbad = <uint8_t*>_take(a, ROWS)
    w.acc = <int32_t*>_take(a, ROWS * keys32 * sizeof(int32_t))
    w.cand = <int32_t*>_take(a, (keys32 + 8) * sizeof(int32_t))
    w.sel_tmp = <int32_t*>_take(a, (keys32 + 8) * sizeof(int32_t))
    w.sel = <int32_t*>_take(a, (ROWS * kk + 8) * sizeof(int32_t))
    w.nsel = <int32_t*>_take(a, ROWS * sizeof(int32_t))
    w.best = <int32_t*>_take(a, (kk + 8) * sizeof(int32_t))
    w.s = <float*>_take(a, ROWS * (kk + 8) * sizeof(float))
    w.rowscale = <float*>_take(a, ROWS * sizeof(float))


cdef Work* _new_work(Py_ssize_t keys32, Py_ssize_t dim, Py_ssize_t kk) except NULL nogil:
    cdef Work* w = <Work*>calloc(1, sizeof(Work))
    cdef Arena a
    a.base = NULL
    a.used = 0
    if w != NULL:
        _layout(w, &a, keys32, dim, kk)
        if _arena_alloc(&a):
            _layout(w, &a, keys32, dim, kk)
            w.arena = a.base
    if w == NULL or w.arena == NULL:
        _free(w)
        with gil:
            raise MemoryError("topk attention buffers")
    return w


cdef struct Head:
    HeadView io             # pointers, strides and sizes of one (batch, head)
    int topk, ncand, kk     # keys kept, candidates selected (topk * k_factor), kk = min(ncand, seq rounded
                            # up to 32): the stride of sel
    float scaling
    bint smooth_k, per_token
    const float* seq_scales  # (3,) this sequence's given 1/K scale, 1/Q scale, Q zero point, or NULL
    const int32_t* scores    # given selection scores (NULL: int8 on FBGEMM): row i at scores + i * s_rs
    Py_ssize_t s_rs
    int mode                 # INT or FLOAT (given scores)
    # per-head quantization (per_token False)
    float q_inv, q_zp, k_inv


cdef int _prepare_keys(const Head* h, Work* w, int* nvalid) noexcept nogil:
    """Key mask and the list of valid keys; returns the number of valid keys whose k or v row holds NaN
    or infinity (the head is then all NaN)."""
    cdef int j, n = 0, bad = 0
    for j in range(h.io.keys):
        w.keymask[j] = -1 if h.io.valid[j] else 0
        if h.io.valid[j]:
            w.valid_idx[n] = j
            n += 1
            if _row_special(h.io.k + j * h.io.k_rs, h.io.dim) or _row_special(h.io.v + j * h.io.v_rs, h.io.dim):
                bad += 1
    for j in range(h.io.keys, h.io.keys32):
        w.keymask[j] = 0
    nvalid[0] = n
    return bad


cdef void _quantize_keys(Head* h, Work* w, int nvalid) noexcept nogil:
    """K codes, scales and code sums; per-head Q parameters (all keys finite)."""
    cdef int j, d, i
    cdef const float* row
    cdef float amax, a, lo, hi, scale, inv, zpf
    cdef __m256 lo_v, hi_v, amax_v, v, rlo, rhi, absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF))
    cdef __m256i special
    cdef int c
    for j in range(h.io.keys, h.io.keys32):
        w.ksum[j] = 0
        w.kscale[j] = 0
    if h.smooth_k:
        _key_mean(h.io.k, h.io.k_rs, h.io.valid, h.io.keys, h.io.dim, w.kmean)
    else:
        for d in range(h.io.dim):
            w.kmean[d] = 0
    if h.per_token:
        for j in range(h.io.keys):
            row = h.io.k + j * h.io.k_rs
            _prefetch_row(row + PREFETCH * h.io.k_rs, h.io.dim)
            if h.io.valid[j]:
                _s8_row_any(row, w.kmean, w.tmp, w.kq + j * h.io.dim, h.io.dim, &w.kscale[j])
            else:
                for d in range(h.io.dim):
                    w.kq[j * h.io.dim + d] = 0
                w.kscale[j] = 0
    else:
        if h.seq_scales != NULL:  # one scale per sequence, given
            h.k_inv, h.q_inv, h.q_zp = h.seq_scales[0], h.seq_scales[1], h.seq_scales[2]
        else:
            # One K scale over the valid keys, one Q scale and zero point over the valid finite query rows.
            amax = 0
            lo_v = _mm256_setzero_ps()
            hi_v = _mm256_setzero_ps()
            amax_v = _mm256_setzero_ps()
            for i in range(nvalid):  # (the keys are finite: _prepare_keys checked them)
                row = h.io.k + w.valid_idx[i] * h.io.k_rs
                if h.io.dim % 8 == 0:
                    for c in range(0, h.io.dim, 8):
                        v = _mm256_loadu_ps(row + c)
                        if h.smooth_k:
                            v = _mm256_sub_ps(v, _mm256_loadu_ps(w.kmean + c))
                        amax_v = _mm256_max_ps(amax_v, _mm256_and_ps(v, absmask))
                    continue
                for d in range(h.io.dim):
                    a = row[d] - w.kmean[d]
                    a = a if a >= 0 else -a
                    amax = a if a > amax else amax
            a = _hmax(amax_v)
            amax = a if a > amax else amax
            _s8_scale(amax, &inv)
            h.k_inv = inv
            lo = 0
            hi = 0
            for i in range(min(h.io.rows, h.io.keys)):
                if not h.io.valid[i]:
                    continue
                row = h.io.q + i * h.io.q_rs
                if h.io.dim % 8 == 0:  # one pass: the row's min, max and NaN/infinity bits
                    special = _mm256_setzero_si256()
                    rlo = _mm256_loadu_ps(row)
                    rhi = rlo
                    for c in range(0, h.io.dim, 8):
                        v = _mm256_loadu_ps(row + c)
                        special = _mm256_or_si256(special, _special_bits(v))
                        rlo = _mm256_min_ps(rlo, v)
                        rhi = _mm256_max_ps(rhi, v)
                    if not _mm256_movemask_ps(_mm256_castsi256_ps(special)):
                        lo_v = _mm256_min_ps(lo_v, rlo)
                        hi_v = _mm256_max_ps(hi_v, rhi)
                    continue
                if _row_special(row, h.io.dim):
                    continue
                for d in range(h.io.dim):
                    lo = row[d] if row[d] < lo else lo
                    hi = row[d] if row[d] > hi else hi
            a = _hmin(lo_v)
            lo = a if a < lo else lo
            a = _hmax(hi_v)
            hi = a if a > hi else hi
            _u7_scale(lo, hi, &inv, &zpf)
            h.q_inv = inv
            h.q_zp = zpf
        for j in range(h.io.keys):
            if h.io.valid[j]:
                _s8_codes(h.io.k + j * h.io.k_rs, w.kmean, w.kq + j * h.io.dim, h.io.dim, h.k_inv)
            else:
                for d in range(h.io.dim):
                    w.kq[j * h.io.dim + d] = 0
            w.kscale[j] = 1
    for j in range(h.io.keys):
        w.ksum[j] = _code_sum(w.kq + j * h.io.dim, h.io.dim)
    for j in range(h.io.keys32):
        w.ksumf[j] = <float>w.ksum[j]
        w.zk[j] = 0 if h.per_token else <int32_t>h.q_zp * w.ksum[j]


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


cdef inline void _exact_scores_nd(const float* k, Py_ssize_t k_rs, const float* qrow, const int32_t* sel, int n,
                                  float* s, float mult, const int nd) noexcept nogil:
    """s[t] = (q . k_sel[t]) * mult for t < n // 8 * 8, head dim 8 * nd.  Called with a literal nd (4 or 8):
    after inlining the loops unroll and the accumulators stay in registers."""
    cdef int t = 0, c, l
    cdef __m256 acc[8]
    cdef __m256 qv[8]
    cdef const float* kr
    cdef __m256 m = _mm256_set1_ps(mult)
    for c in range(nd):
        qv[c] = _mm256_loadu_ps(qrow + 8 * c)
    while t + 8 <= n:
        for l in range(8):
            kr = k + sel[t + l] * k_rs
            acc[l] = _mm256_mul_ps(qv[0], _mm256_loadu_ps(kr))
            for c in range(1, nd):
                acc[l] = _mm256_fmadd_ps(qv[c], _mm256_loadu_ps(kr + 8 * c), acc[l])
        _mm256_storeu_ps(s + t, _mm256_mul_ps(_hsum8(acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7]), m))
        t += 8


cdef void _exact_scores(const Head* h, const float* qrow, const int32_t* sel, int n, float* s, float mult) noexcept nogil:
    """s[t] = (q . k_sel[t]) * mult for t < n (8 keys at a time at head dims 32 and 64, else one by one)."""
    cdef int t
    t = 0
    if h.io.dim == 32:
        _exact_scores_nd(h.io.k, h.io.k_rs, qrow, sel, n, s, mult, 4)
        t = n // 8 * 8
    elif h.io.dim == 64:
        _exact_scores_nd(h.io.k, h.io.k_rs, qrow, sel, n, s, mult, 8)
        t = n // 8 * 8
    for t in range(t, n):
        s[t] = _dot(qrow, h.io.k + sel[t] * h.io.k_rs, h.io.dim) * mult


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


cdef inline void _v_sum_nd(const float* v, Py_ssize_t v_rs, const int32_t* sel, const float* p, int n, float scale,
                           float* o, const int nd) noexcept nogil:
    """o = scale * sum_t p[t] v_sel[t] for head dim 8 * nd (literal nd: unrolled, accumulators in registers;
    two accumulator sets halve the FMA dependency chains)."""
    cdef int t = 0, c
    cdef __m256 acc[8]
    cdef __m256 acc2[8]
    cdef __m256 pv, pv2
    cdef const float* vr
    cdef const float* vr2
    for c in range(nd):
        acc[c] = _mm256_setzero_ps()
        acc2[c] = _mm256_setzero_ps()
    while t + 2 <= n:
        vr = v + sel[t] * v_rs
        vr2 = v + sel[t + 1] * v_rs
        pv = _mm256_set1_ps(p[t])
        pv2 = _mm256_set1_ps(p[t + 1])
        for c in range(nd):
            acc[c] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr + 8 * c), acc[c])
            acc2[c] = _mm256_fmadd_ps(pv2, _mm256_loadu_ps(vr2 + 8 * c), acc2[c])
        t += 2
    if t < n:
        vr = v + sel[t] * v_rs
        pv = _mm256_set1_ps(p[t])
        for c in range(nd):
            acc[c] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr + 8 * c), acc[c])
    pv = _mm256_set1_ps(scale)
    for c in range(nd):
        _mm256_storeu_ps(o + 8 * c, _mm256_mul_ps(_mm256_add_ps(acc[c], acc2[c]), pv))


cdef void _v_sum(const Head* h, const int32_t* sel, const float* p, int n, float scale, float* o) noexcept nogil:
    """o = scale * sum_t p[t] v_sel[t] (AVX2 at head dims 32 and 64, else scalar)."""
    cdef int t, d
    cdef const float* vr
    if h.io.dim == 32:
        _v_sum_nd(h.io.v, h.io.v_rs, sel, p, n, scale, o, 4)
        return
    if h.io.dim == 64:
        _v_sum_nd(h.io.v, h.io.v_rs, sel, p, n, scale, o, 8)
        return
    for d in range(h.io.dim):
        o[d] = 0
    for t in range(n):
        vr = h.io.v + sel[t] * h.io.v_rs
        for d in range(h.io.dim):
            o[d] += p[t] * vr[d]
    for d in range(h.io.dim):
        o[d] *= scale


cdef int _select_block(Head* h, Work* w, int start, int rows, double* prof, double t) except -1 nogil:
    """Quantize the block's query rows and select the top-k keys of each into w.sel / w.nsel, from int8
    scores on FBGEMM or from the given scores: the ncand best (with at least ncand + 1 valid keys).  Marks the query rows
    holding NaN or infinity in w.qbad; returns their number."""
    cdef Rank rk
    cdef int i, d, ld = h.io.keys32, bad = 0
    cdef float qscale
    cdef const float* qrow
    for i in range(rows):
        qrow = h.io.q + (start + i) * h.io.q_rs
        _prefetch_row(qrow + PREFETCH * h.io.q_rs, h.io.dim)
        if h.scores != NULL:
            w.qbad[i] = _row_special(qrow, h.io.dim)
        elif h.per_token:
            w.qbad[i] = _u7_row_any(qrow, w.qq + i * h.io.dim, h.io.dim, &qscale, &w.qzp[i])
        else:
            w.qbad[i] = _row_special(qrow, h.io.dim)
            w.qzp[i] = <int32_t>h.q_zp
            if not w.qbad[i]:
                _u7_codes(qrow, w.qq + i * h.io.dim, h.io.dim, h.q_inv, h.q_zp)
        if w.qbad[i] and h.scores == NULL:
            w.qzp[i] = 0
            for d in range(h.io.dim):
                w.qq[i * h.io.dim + d] = 0
        bad += w.qbad[i]
    t = _lap(prof, QUANTIZE, t, CLOCK)
    rk.keymask = w.keymask
    if h.scores == NULL:
        _gemm_s32(w.qq, h.io.dim, w.kp.mat, w.acc, ld, rows, h.io.keys, h.io.dim)
        t = _lap(prof, GEMM_QK, t, CLOCK)
        rk.mode = TOKEN if h.per_token else HEAD
        rk.zk, rk.ksum, rk.kscale = w.zk, w.ksumf, w.kscale
        for i in range(rows):
            rk.zp = <float>w.qzp[i]
            w.nsel[i] = _select_row(w.acc + i * ld, w.acc + i * ld, ld, h.ncand, w.cand, w.sel_tmp,
                                    w.sel + i * h.kk, &rk)
    else:
        rk.mode = h.mode
        for i in range(rows):
            w.nsel[i] = _select_row(h.scores + (start + i) * h.s_rs, w.acc, ld, h.ncand, w.cand, w.sel_tmp,
                                    w.sel + i * h.kk, &rk)
    _lap(prof, SELECT, t, CLOCK)
    return bad


cdef void _attend_block(const Head* h, Work* w, int32_t* sel, int sel_rs, int32_t* nsel, int start,
                        int rows, double* prof) noexcept nogil:
    """Exact scores, softmax and V sum of the block's query rows over keys sel[i * sel_rs : + nsel[i]],
    written to h.out (NaN rows where w.qbad).  A row with more than topk keys (candidates: then sel_rs > 0)
    first keeps the topk of them with the largest exact scores (``_rerank_row``)."""
    cdef int i, d, sstride = h.kk + 8
    cdef float nan = _nan()
    cdef float* o
    cdef double t = _now(CLOCK) if prof != NULL else 0
    for i in range(rows):
        _exact_scores(h, h.io.q + (start + i) * h.io.q_rs, sel + i * sel_rs, nsel[i], w.s + i * sstride,
                      h.scaling * LOG2E)
    t = _lap(prof, EXACT_SCORES, t, CLOCK)
    for i in range(rows):
        if nsel[i] > h.topk:
            nsel[i] = _rerank_row(w.s + i * sstride, sel + i * sel_rs, nsel[i], h.topk, w.cand, w.sel_tmp, w.best)
    t = _lap(prof, RERANK, t, CLOCK)
    for i in range(rows):
        w.rowscale[i] = <float>1.0 / _softmax(w.s + i * sstride, nsel[i])
    t = _lap(prof, SOFTMAX, t, CLOCK)
    for i in range(rows):
        o = h.io.out + (start + i) * h.io.out_rs
        if w.qbad[i]:
            for d in range(h.io.dim):
                o[d] = nan
            continue
        _v_sum(h, sel + i * sel_rs, w.s + i * sstride, nsel[i], w.rowscale[i], o)
    _lap(prof, V_SUM, t, CLOCK)


cdef int _head(Head* h, Work* w, double* prof) except -1 nogil:
    """Top-k attention of one (batch, head); returns the number of non-finite rows found."""
    cdef int bad, start, i, d, rows, nvalid = 0
    cdef float nan = _nan()
    cdef double t = _now(CLOCK) if prof != NULL else 0
    bad = _prepare_keys(h, w, &nvalid)
    if nvalid == 0:  # no key at all: output 0
        for i in range(h.io.rows):
            for d in range(h.io.dim):
                h.io.out[i * h.io.out_rs + d] = 0
        return 0
    if bad:  # a valid key's k or v is not finite: like dense attention, every output of the head is NaN
        for i in range(h.io.rows):
            for d in range(h.io.dim):
                h.io.out[i * h.io.out_rs + d] = nan
        return bad
    if nvalid > h.ncand and h.scores == NULL:
        _quantize_keys(h, w, nvalid)
        if not _pack(&w.kp, matrix_op_t.Transpose, h.io.dim, h.io.keys, w.kq, h.io.dim, w.own_packing):
            _put_transposed(&w.kp, w.kq, h.io.keys, h.io.dim)
    t = _lap(prof, QUANTIZE, t, CLOCK)
    start = 0
    while start < h.io.rows:
        rows = min(<int>ROWS, h.io.rows - start)
        if nvalid > h.ncand:
            bad += _select_block(h, w, start, rows, prof, t)
            _attend_block(h, w, w.sel, h.kk, w.nsel, start, rows, prof)
        else:  # every valid key is a candidate
            for i in range(rows):
                w.qbad[i] = _row_special(h.io.q + (start + i) * h.io.q_rs, h.io.dim)
                w.nsel[i] = nvalid
                bad += w.qbad[i]
                if nvalid > h.topk:  # re-ranked per row in place: a copy each (nvalid <= ncand, kk)
                    memcpy(w.sel + i * h.kk, w.valid_idx, nvalid * sizeof(int32_t))
            if nvalid > h.topk:
                _attend_block(h, w, w.sel, h.kk, w.nsel, start, rows, prof)
            else:
                _attend_block(h, w, w.valid_idx, 0, w.nsel, start, rows, prof)
        t = _now(CLOCK) if prof != NULL else 0
        start += ROWS
    return bad


cdef struct Batch:
    # Shared, read-only description of the whole call.
    Views io
    int topk, ncand
    float scaling
    bint smooth_k, per_token
    const float* seq_scales   # (batch, 3) or NULL
    const int32_t* scores     # (batch, heads, seq, seq) given selection scores, or NULL
    Py_ssize_t ss[3]          # their strides in elements
    int mode                  # INT or FLOAT


cdef int _task(const Batch* a, Py_ssize_t t, Work* w, bint profile) except -1 nogil:
    cdef Py_ssize_t b = t // a.io.heads, hh = t % a.io.heads
    cdef Head h
    _head_view(&a.io, t, &h.io)
    h.topk, h.ncand = a.topk, a.ncand
    h.kk = min(a.ncand, (a.io.seq + 31) // 32 * 32)
    h.scaling, h.smooth_k, h.per_token = a.scaling, a.smooth_k, a.per_token
    h.seq_scales = a.seq_scales + 3 * b if a.seq_scales != NULL else NULL
    h.scores = a.scores + b * a.ss[0] + hh * a.ss[1] if a.scores != NULL else NULL
    h.s_rs = a.ss[2]
    h.mode = a.mode
    cdef double* prof = NULL
    if profile:
        prof = w.prof
    return _head(&h, w, prof)


cdef int _candidates(int topk, int k_factor):
    # topk * k_factor, capped where it cannot matter (more than any sequence's keys)
    return <int>min(<long long>topk * k_factor, 1 << 30)


cdef Py_ssize_t _run(const Batch* a, int threads, bint own_packing, double[::1] profile) except -1:
    cdef Py_ssize_t t, bad = 0, seq32 = (a.io.seq + 31) // 32 * 32
    cdef int i
    cdef Work* w
    cdef bint profiling = profile is not None
    with nogil, parallel(num_threads=threads):
        w = _new_work(seq32, a.io.dim, min(a.ncand, seq32))
        w.own_packing = own_packing
        for t in prange(<Py_ssize_t>a.io.batch * a.io.heads, schedule="dynamic"):
            bad += _task(a, t, w, profiling)
        if profiling:
            with gil:
                for i in range(N_PHASES):
                    profile[i] += w.prof[i]
        _free(w)
    return bad


def topk_attention(const float[:, :, :, :] q, const float[:, :, :, :] k, const float[:, :, :, :] v,
                   const uint8_t[:, ::1] key_valid, const int32_t[::1] n_keys, float[:, :, :, :] out,
                   float scaling, int topk, bint per_token, bint smooth_k, bint own_packing, int threads,
                   double[::1] profile=None, const float[:, ::1] seq_scales=None, int k_factor=1) -> int:
    """out[b, h] = top-k attention of q[b, h] over keys k[b, h, :n_keys[b]], selected with int8 scores on
    FBGEMM (see the module docstring).

    q, k, v, out: (batch, heads, seq, dim) float32, last axis contiguous, other strides >= 0.
    key_valid: (batch, seq) 1 = attend; n_keys: (batch,) in 0..seq, no valid key at or beyond it.
    seq_scales: optional (batch, 3) float32, per sequence the 1/scale of K, the 1/scale and the zero point
    of Q to use instead of per-head ones (per_token False).
    k_factor: the int8 scores select topk * k_factor candidates, re-ranked by exact scores to topk.
    Returns the number of non-finite rows found (their outputs are NaN, see the module docstring).
    """
    cdef Batch a
    if topk < 1 or k_factor < 1:
        raise ValueError("topk and k_factor must be >= 1")
    if not _views(&a.io, q, k, v, key_valid, n_keys, out, profile, N_PHASES, threads, 2**12):
        return 0
    if seq_scales is not None and (seq_scales.shape[0] != a.io.batch or seq_scales.shape[1] != 3 or per_token):
        raise ValueError("seq_scales must be (batch, 3), and only with per_token False")
    a.topk, a.ncand, a.scaling, a.smooth_k, a.per_token = topk, _candidates(topk, k_factor), scaling, smooth_k, per_token
    a.seq_scales = &seq_scales[0, 0] if seq_scales is not None else NULL
    a.scores = NULL
    a.ss[0] = a.ss[1] = a.ss[2] = 0
    a.mode = INT
    return _run(&a, threads, own_packing, profile)


def topk_attention_scores(const float[:, :, :, :] q, const float[:, :, :, :] k, const float[:, :, :, :] v,
                          const uint8_t[:, ::1] key_valid, const int32_t[::1] n_keys, const int32_t[:, :, :, :] scores,
                          float[:, :, :, :] out, float scaling, int topk, bint float_scores, int threads,
                          double[::1] profile=None, int k_factor=1) -> int:
    """out[b, h] = top-k attention of q[b, h] over keys k[b, h, :n_keys[b]], selected with the given scores.

    As ``topk_attention``; scores: (batch, heads, seq, seq) int32, last axis contiguous: int32 ranking
    values, or with ``float_scores`` the bits of float32 scores (ranked by their ordered bits).  Only the
    scores of valid keys below n_keys[b] are read.
    """
    cdef Batch a
    cdef int i
    if topk < 1 or k_factor < 1:
        raise ValueError("topk and k_factor must be >= 1")
    if not _views(&a.io, q, k, v, key_valid, n_keys, out, profile, N_PHASES, threads, 2**12):
        return 0
    if tuple(scores.shape[i] for i in range(4)) != (a.io.batch, a.io.heads, a.io.seq, a.io.seq):
        raise ValueError("scores must be (batch, heads, seq, seq)")
    if a.io.seq > 1 and scores.strides[3] != sizeof(int32_t):
        raise ValueError("the last axis of scores must be contiguous")
    a.topk, a.ncand, a.scaling, a.smooth_k, a.per_token = topk, _candidates(topk, k_factor), scaling, False, False
    a.seq_scales = NULL
    a.scores = &scores[0, 0, 0, 0]
    for i in range(3):
        a.ss[i] = scores.strides[i] // sizeof(int32_t)
    a.mode = FLOAT if float_scores else INT
    return _run(&a, threads, False, profile)
