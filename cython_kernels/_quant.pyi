"""Stubs for the ``cython_kernels._quant`` extension (see _quant.pyx for the exact arithmetic)."""

import numpy as np
import numpy.typing as npt

def quantize_u7_rows(
    x: npt.NDArray[np.float32],  # (rows, n)
    q: npt.NDArray[np.uint8],  # (rows, n), 0..127
    scale: npt.NDArray[np.float32],  # (rows,)
    zero_point: npt.NDArray[np.int32],  # (rows,)
    threads: int,
) -> int: ...  # number of rows holding NaN or infinity
def quantize_s8_rows(
    x: npt.NDArray[np.float32],  # (rows, n)
    q: npt.NDArray[np.int8],  # (rows, n), -127..127
    scale: npt.NDArray[np.float32],  # (rows,)
    threads: int,
) -> int: ...  # number of rows holding NaN or infinity
def max_u8(x: npt.NDArray[np.uint8]) -> int: ...  # flat
def dequantize_s32(
    c: npt.NDArray[np.int32],  # (batch, M, N)
    b: npt.NDArray[np.int8],  # (batch, N, K)
    a_scale: npt.NDArray[np.float32],  # (batch, M)
    a_zero_point: npt.NDArray[np.int32],  # (batch, M)
    b_scale: npt.NDArray[np.float32],  # (batch, N)
    out: npt.NDArray[np.float32],  # (batch, M, N)
    threads: int,
) -> None: ...
def s8_scale(amax: float) -> tuple[float, float]: ...  # (scale, 1 / scale), float32 values
def u7_scale(lo: float, hi: float) -> tuple[float, float, float]: ...  # (scale, 1 / scale, zero point)
