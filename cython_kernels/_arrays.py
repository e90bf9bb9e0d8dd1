"""Input checking and NumPy/torch conversion shared by the public functions.

Every array crosses into the extensions as a C-contiguous NumPy array.  CPU
torch tensors are viewed zero-copy through ``Tensor.numpy()``; inputs that are
not C-contiguous (e.g. ``k.transpose(...)`` views) are copied once with
``np.ascontiguousarray``.  Results are returned as the kind of the main input.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

# Largest K for which every u7 x s8 dot product (and its zero-point
# correction) fits in int32: 127 * 128 * K < 2**31.
MAX_K = 131072

SEVEN_BIT_RULE = (
    "activations (uint8) must be 7-bit codes in 0..127. On x86 CPUs with AVX2 but without "
    "AVX512-VNNI, FBGEMM's u8 x s8 kernel adds adjacent products in int16 with saturation "
    "(vpmaddubsw), so 8-bit codes give silently wrong sums (tens of thousands off); the result "
    "would depend on the CPU. Quantize with cython_kernels.quantize_u7_asym() (0..127, like "
    "PyTorch's reduce_range=True), or map 8-bit codes to 7 bits (halve the codes and the zero "
    "point, double the scale)."
)


def _torch() -> Any:
    return sys.modules.get("torch")


def is_tensor(x: object) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def as_array(x: object, name: str) -> np.ndarray:
    """``x`` as a NumPy array, a view of a CPU tensor's memory (any dtype and strides; TypeError for a tensor
    on another device, a quantized tensor, or anything but an ndarray or a tensor)."""
    if is_tensor(x):
        if x.device.type != "cpu":
            raise TypeError(f"{name} is on {x.device}; the kernels run on the CPU: pass {name}.cpu()")
        if x.is_quantized:
            raise TypeError(f"{name} is a quantized tensor; pass its integer codes ({name}.int_repr())")
        return x.detach().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a numpy.ndarray or a torch.Tensor, got {type(x).__name__}")


def to_numpy(x: object, name: str, dtype: np.dtype, ndim: int | tuple[int, ...] | None = None) -> np.ndarray:
    """``x`` as a C-contiguous array of exactly ``dtype`` (TypeError/ValueError otherwise)."""
    dtype = np.dtype(dtype)
    arr = as_array(x, name)
    if arr.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype.name}, got {arr.dtype.name}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if arr.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{name} must be {want}, got shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr)


def like(result: np.ndarray, as_tensor: bool) -> Any:
    """Return ``result`` as a torch tensor (sharing memory) if the input was one."""
    return _torch().from_numpy(result) if as_tensor else result


def output(out: object, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A fresh array, or the caller's ``out`` checked for shape, dtype, layout and writability."""
    if out is None:
        return np.empty(shape, dtype)
    arr = out.detach().numpy() if is_tensor(out) and out.device.type == "cpu" else out
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a CPU numpy.ndarray or torch.Tensor, got {type(out).__name__}")
    if arr.dtype != np.dtype(dtype) or arr.shape != shape:
        raise ValueError(f"{name} must be {np.dtype(dtype).name} of shape {shape}, got {arr.dtype.name} {arr.shape}")
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        raise ValueError(f"{name} must be C-contiguous and writable")
    return arr


def threads_arg(threads: int | None) -> int:
    """``threads`` or, if None, torch's intra-op thread count."""
    if threads is None:
        torch = _torch()
        return max(1, int(torch.get_num_threads())) if torch is not None else 1
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    return int(threads)


def params(value: object, name: str, dtype: np.dtype, batch: int, n: int | None = None) -> np.ndarray:
    """Per-matrix or per-row parameters expanded to a C-contiguous (batch,) or (batch, n) array.

    Accepts a scalar, a (batch,) array (one value per matrix) and, when ``n`` is
    given, a (batch, n) array (one value per row).
    """
    if is_tensor(value):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric, got {arr.dtype}")
    cast = arr.astype(dtype, copy=False)
    if np.dtype(dtype).kind in "iu" and not np.array_equal(cast, arr):
        raise ValueError(f"{name} must hold integers representable as {np.dtype(dtype).name}")
    shapes = [(), (batch,)] + ([(batch, n)] if n is not None else [])
    if cast.shape not in shapes:
        raise ValueError(f"{name} must have shape {' or '.join(map(str, shapes))}, got {cast.shape}")
    target = (batch,) if n is None else (batch, n)
    if cast.ndim == 1 and n is not None:
        cast = cast[:, None]
    return np.ascontiguousarray(np.broadcast_to(cast, target))


def check_scale(scale: np.ndarray, name: str) -> None:
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError(f"{name} must be finite and > 0")


def check_seven_bit(a: np.ndarray, name: str, max_u8: Any) -> None:
    """Reject uint8 codes above 127 (see SEVEN_BIT_RULE)."""
    if a.size and (top := int(max_u8(a.reshape(-1)))) > 127:
        raise ValueError(f"{name} holds values up to {top}, but {SEVEN_BIT_RULE}")


PAIR_RULE = (
    "with a_codes='u8_pairs', a may use all of 0..255 only if every aligned pair a[..., 2t] + a[..., 2t+1] "
    "is <= 258 and b is in -127..127: then each int16 pair sum of AVX2's vpmaddubsw is at most "
    "258 * 127 = 32766 and cannot saturate (a row-normalised softmax coded with a scale of at least "
    "max-pair-sum / 257 satisfies it)"
)


def check_pair_sums(a: np.ndarray, b: np.ndarray, name: str = "a") -> None:
    """Reject operands that could saturate FBGEMM's AVX2 kernel with 8-bit ``a`` (see PAIR_RULE)."""
    if b.size and (low := int(b.min())) < -127:
        raise ValueError(f"b holds {low}, but {PAIR_RULE}")
    k = a.shape[-1]
    if a.size and k > 1:
        pairs = a[..., 0 : k - 1 : 2].astype(np.uint16) + a[..., 1:k:2]
        if (top := int(pairs.max())) > 258:
            raise ValueError(f"{name} has an aligned pair summing to {top}, but {PAIR_RULE}")
