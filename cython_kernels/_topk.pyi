"""Stubs for the ``cython_kernels._topk`` extension (see _topk.pyx for the scheme).

Thin layer: shapes are checked for memory safety only; ``cython_kernels.topk_attention_u8s8`` and
``cython_kernels.topk_select`` validate and document the arguments.  Compiled for AVX2 + FMA: import only
after a CPU check (``_loader``).
"""

import numpy as np
import numpy.typing as npt

PHASES: tuple[str, ...]

def topk_attention(
    q: npt.NDArray[np.float32],  # (batch, heads, seq, dim), last axis contiguous
    k: npt.NDArray[np.float32],  # same
    v: npt.NDArray[np.float32],  # same
    key_valid: npt.NDArray[np.uint8],  # (batch, seq) 0/1, C-contiguous
    n_keys: npt.NDArray[np.int32],  # (batch,) keys to process (last valid + 1)
    out: npt.NDArray[np.float32],  # (batch, heads, seq, dim) view of a (batch, seq, heads, dim) array
    scaling: float,
    topk: int,
    per_token: bool,  # per-token scales (granularity=token), else one per (batch, head)
    smooth_k: bool,
    own_packing: bool,  # write FBGEMM's packed K layout directly (``_attention.own_packing()``)
    threads: int,
    profile: npt.NDArray[np.float64] | None = None,  # (len(PHASES),), thread CPU seconds added per phase
    seq_scales: npt.NDArray[np.float32] | None = None,  # (batch, 3): 1/K scale, 1/Q scale, Q zero point per sequence
    k_factor: int = 1,  # select topk * k_factor candidates, keep the topk of largest exact score
) -> int: ...  # non-finite rows found (their outputs are NaN)
def topk_attention_scores(
    q: npt.NDArray[np.float32],  # (batch, heads, seq, dim), last axis contiguous
    k: npt.NDArray[np.float32],  # same
    v: npt.NDArray[np.float32],  # same
    key_valid: npt.NDArray[np.uint8],  # (batch, seq) 0/1, C-contiguous
    n_keys: npt.NDArray[np.int32],  # (batch,) keys to process (last valid + 1)
    scores: npt.NDArray[np.int32],  # (batch, heads, seq, seq), last axis contiguous: int32, or float32 bits
    out: npt.NDArray[np.float32],  # (batch, heads, seq, dim) view of a (batch, seq, heads, dim) array
    scaling: float,
    topk: int,
    float_scores: bool,  # scores hold float32 bit patterns, ranked by their ordered int32 mapping
    threads: int,
    profile: npt.NDArray[np.float64] | None = None,  # (len(PHASES),), thread CPU seconds added per phase
    k_factor: int = 1,  # as topk_attention
) -> int: ...  # non-finite query rows and key/value rows found (their outputs are NaN)
def select_rows(
    scores: npt.NDArray[np.int32],  # (rows, n), C-contiguous
    valid: npt.NDArray[np.uint8],  # (n,)
    k: int,
    index: npt.NDArray[np.int32],  # (rows, >= min(k, n)) out: selected indices, ascending
    count: npt.NDArray[np.int32],  # (rows,) out: how many were selected
    float_scores: bool = False,  # scores hold float32 bit patterns
) -> None: ...
