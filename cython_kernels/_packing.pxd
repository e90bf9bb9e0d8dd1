# cython: language_level=3
# distutils: language = c++
"""Writing FBGEMM's packed B layout directly (inline, nogil; cimport only from AVX2-compiled modules).

FBGEMM packs B (k x n, k the reduction dimension) into blocks of KCB x NCB bytes whose rows are
interleaved by 4 (``PackBMatrix::addr``). Its own packing loop costs about 1 ns per byte, as much as
an attention head's Q.K^T; a ``Packed`` keeps one PackBMatrix per shape and rewrites its buffer with
the codes of each head instead. ``_attention.own_packing()`` checks the layout against FBGEMM's once
per ISA and falls back to FBGEMM's packing if they differ.
"""

from libc.stdint cimport int8_t, int32_t, uint8_t, uint32_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from cython_kernels._fbgemm cimport PackBMatrix, matrix_op_t
from cython_kernels._simd cimport *

ctypedef PackBMatrix[int8_t, int32_t] PackB


cdef struct Packed:
    # A PackBMatrix kept for one shape (k x n, k the reduction dimension) whose buffer is rewritten
    # in place for every head (own packing), or rebuilt by FBGEMM for every head.
    PackB* mat
    int k, n
    int kcb, ncb, block_cols
    int8_t* buf
    Py_ssize_t* row_offset   # ((k + 3) // 4,) offset of rows 4g..4g+3 in the buffer
    Py_ssize_t* col_offset   # (n,) offset of column c


cdef inline Py_ssize_t _packed_offset(const Packed* p, int r, int c) noexcept nogil:
    # Offset of B[r, c] in the packed buffer: PackBMatrix<int8_t, int32_t>::addr with a row
    # interleave of 4 (all of FBGEMM's int32-accumulating ISAs).  own_packing() checks it.
    return (((r // p.kcb) * p.block_cols + c // p.ncb) * p.kcb * p.ncb
            + (r % p.kcb // 4) * p.ncb * 4 + (c % p.ncb) * 4 + r % 4)


cdef inline void _free_packed(Packed* p) noexcept nogil:
    del p.mat
    free(p.row_offset)
    free(p.col_offset)
    p.mat = NULL
    p.row_offset = NULL
    p.col_offset = NULL


cdef inline int _pack(Packed* p, matrix_op_t trans, int k, int n, const int8_t* src, int ld, bint own) except -1 nogil:
    """Make p hold B (k x n) packed from src; with own, FBGEMM packs only when the shape changes.

    Returns 1 if FBGEMM packed src, 0 if p kept its buffer (the caller writes the codes with _put*).
    """
    cdef int g, c
    if own and p.mat != NULL and p.k == k and p.n == n:
        return 0
    _free_packed(p)
    p.mat = new PackB(trans, k, n, src, ld, NULL, 1)
    p.k, p.n = k, n
    p.kcb, p.ncb, p.block_cols = p.mat.blockRowSize(), p.mat.blockColSize(), p.mat.blockCols()
    p.buf = p.mat.getBuf(0, 0)
    p.row_offset = <Py_ssize_t*>malloc(((k + 3) // 4) * sizeof(Py_ssize_t))
    p.col_offset = <Py_ssize_t*>malloc(n * sizeof(Py_ssize_t))
    if p.row_offset == NULL or p.col_offset == NULL:
        _free_packed(p)
        with gil:
            raise MemoryError()
    for g in range((k + 3) // 4):
        p.row_offset[g] = _packed_offset(p, 4 * g, 0)
    for c in range(n):
        p.col_offset[c] = _packed_offset(p, 0, c)
    return 1


cdef inline uint32_t _word(const int8_t* x, Py_ssize_t stride, int count) noexcept nogil:
    # Bytes x[0], x[stride], ... (count <= 4, missing ones 0) as one little-endian word.
    cdef uint32_t word = 0
    cdef int l
    for l in range(count):
        word = word | ((<uint32_t>(<uint8_t>x[l * stride])) << (8 * l))
    return word


cdef inline void _put_transposed(Packed* p, const int8_t* codes, int n, int k) noexcept nogil:
    """Write B = codes^T into p's buffer; codes is (n, k) row-major (rows of K, i.e. keys)."""
    cdef int c, g, full = k // 4
    cdef uint32_t word
    for c in range(n):
        for g in range(full):
            memcpy(&word, codes + c * k + 4 * g, 4)
            (<uint32_t*>(p.buf + p.row_offset[g] + p.col_offset[c]))[0] = word
        if k % 4:
            (<uint32_t*>(p.buf + p.row_offset[full] + p.col_offset[c]))[0] = _word(codes + c * k + 4 * full, 1, k % 4)


cdef inline void _put(Packed* p, const int8_t* codes, int k, int n) noexcept nogil:
    """Write B = codes into p's buffer; codes is (k, n) row-major (rows of V, i.e. keys)."""
    cdef int c, g, count, l
    cdef const int8_t* rows[4]
    cdef int8_t* dst
    cdef __m128i r0, r1, r2, r3, lo, hi
    cdef int8_t zeros[16]
    memset(zeros, 0, 16)
    for g in range((k + 3) // 4):
        count = min(4, k - 4 * g)
        dst = p.buf + p.row_offset[g]
        c = 0
        if p.ncb % 16 == 0:
            # 16 channels of 4 keys at a time: interleave the 4 rows' bytes into 16 words; a block of
            # NCB columns holds consecutive words, so 4 channels go in one 16-byte store.
            for l in range(4):
                rows[l] = codes + (4 * g + l) * n if l < count else zeros
            while c + 16 <= n:
                r0 = _mm_loadu_si128(<const __m128i*>(rows[0] + (c if count > 0 else 0)))
                r1 = _mm_loadu_si128(<const __m128i*>(rows[1] + (c if count > 1 else 0)))
                r2 = _mm_loadu_si128(<const __m128i*>(rows[2] + (c if count > 2 else 0)))
                r3 = _mm_loadu_si128(<const __m128i*>(rows[3] + (c if count > 3 else 0)))
                lo = _mm_unpacklo_epi8(r0, r1)
                hi = _mm_unpacklo_epi8(r2, r3)
                _mm_storeu_si128(<__m128i*>(dst + p.col_offset[c]), _mm_unpacklo_epi16(lo, hi))
                _mm_storeu_si128(<__m128i*>(dst + p.col_offset[c + 4]), _mm_unpackhi_epi16(lo, hi))
                lo = _mm_unpackhi_epi8(r0, r1)
                hi = _mm_unpackhi_epi8(r2, r3)
                _mm_storeu_si128(<__m128i*>(dst + p.col_offset[c + 8]), _mm_unpacklo_epi16(lo, hi))
                _mm_storeu_si128(<__m128i*>(dst + p.col_offset[c + 12]), _mm_unpackhi_epi16(lo, hi))
                c += 16
        for c in range(c, n):
            (<uint32_t*>(dst + p.col_offset[c]))[0] = _word(codes + 4 * g * n + c, n, count)
