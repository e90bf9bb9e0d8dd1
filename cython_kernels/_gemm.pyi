"""Stubs for the ``cython_kernels._gemm`` extension (see _gemm.pyx).

Thin layer: shapes are checked for memory safety only; dtypes come from the
buffer types; the 7-bit rule on ``a`` is NOT checked (``cython_kernels`` does).
All arrays are C-contiguous; ``out`` is written in place.
"""

import numpy as np
import numpy.typing as npt

def cpu_supported() -> bool: ...
def cpu_has_avx2_fma() -> bool: ...
def cpu_features() -> dict[str, bool | str]: ...
def force_isa(name: str) -> str: ...
def gemm_u8s8_s32(
    a: npt.NDArray[np.uint8],  # (batch, M, K)
    b: npt.NDArray[np.int8],  # (batch, N, K)
    out: npt.NDArray[np.int32],  # (batch, M, N)
    threads: int,
) -> None: ...
def gemm_u8s8_f32(
    a: npt.NDArray[np.uint8],  # (batch, M, K)
    b: npt.NDArray[np.int8],  # (batch, N, K)
    a_scale: npt.NDArray[np.float32],  # (batch,)
    a_zero_point: npt.NDArray[np.int32],  # (batch,)
    b_scale: npt.NDArray[np.float32],  # (batch, N)
    out: npt.NDArray[np.float32],  # (batch, M, N)
    threads: int,
) -> None: ...
