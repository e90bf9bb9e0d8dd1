"""Stubs for the ``cython_kernels._attention`` extension (see _attention.pyx for the scheme).

Thin layer: shapes are checked for memory safety only; ``cython_kernels.attention_u8s8``
validates and documents the arguments.  Compiled for AVX2 + FMA: import only after a CPU check.
"""

import numpy as np
import numpy.typing as npt

PHASES: tuple[str, ...]

def own_packing() -> bool: ...
def key_block() -> int: ...  # keys per block of the online kernel
def set_key_block(keys: int) -> None: ...  # a multiple of 32 in 32..4096; ValueError otherwise
def use_fbgemm_packing(enabled: bool) -> None: ...
def attention_u8s8(
    q: npt.NDArray[np.float32],  # (batch, heads, seq, dim), last axis contiguous
    k: npt.NDArray[np.float32],  # same
    v: npt.NDArray[np.float32],  # same
    key_valid: npt.NDArray[np.uint8],  # (batch, seq) 0/1, C-contiguous
    n_keys: npt.NDArray[np.int32],  # (batch,) keys to process (last valid + 1)
    out: npt.NDArray[np.float32],  # (batch, heads, seq, dim) view of a (batch, seq, heads, dim) array
    scaling: float,
    pv_int8: bool,
    smooth_k: bool,
    threads: int,
    profile: npt.NDArray[np.float64] | None = None,  # (len(PHASES),), CPU seconds added per phase
    row_mask: npt.NDArray[np.uint8] | None = None,  # (batch, seq, seq) 0/1, last axis contiguous, strides >= 0
    online: bool = False,  # the online-softmax kernel (key blocks) instead of the materialising one
) -> int: ...  # rows of q/k/v holding NaN or infinity
