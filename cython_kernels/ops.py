"""Public kernels: validated wrappers around the ``_gemm`` and ``_quant`` extensions.

Conventions shared by every function:

* Arrays are NumPy arrays or CPU torch tensors; the result has the kind of the
  main input (``a``, ``c`` or ``x``).  Non-C-contiguous inputs are copied once.
* GEMM layout, per batch index ``p`` (batch = batch x heads in attention)::

      a: uint8 (batch, M, K)   7-bit codes 0..127, row-major
      b: int8  (batch, N, K)   B transposed (keys as (seq, head_dim)), -128..127
      c: (batch, M, N),  c[p] = a[p] @ b[p].T

* The 7-bit rule: ``a`` values above 127 are rejected with ValueError on every
  CPU (see ``_arrays.SEVEN_BIT_RULE``), because AVX2 machines without VNNI would
  saturate silently.  With 7-bit ``a`` the int32 result is exact on all ISAs.
* ``threads`` defaults to ``torch.get_num_threads()``; the batch is split across
  OpenMP threads (FBGEMM splits a single GEMM when batch < threads).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from . import _arrays as arr
from ._loader import load

_gemm, _quant, UNAVAILABLE_REASON = load()
AVAILABLE: bool = UNAVAILABLE_REASON is None

Array = Any  # numpy.ndarray or torch.Tensor
Per = Literal["row", "matrix"]


def _require() -> None:
    if not AVAILABLE:
        raise RuntimeError(f"cython_kernels is unavailable: {UNAVAILABLE_REASON}")


def cpu_features() -> dict[str, Any]:
    """FBGEMM's CPU facts: supported, avx2, avx512, avx512_vnni and the GEMM ISA in use."""
    _require()
    return _gemm.cpu_features()


def _gemm_operands(a: Array, b: Array) -> tuple[np.ndarray, np.ndarray]:
    a_np = arr.to_numpy(a, "a", np.uint8, ndim=3)
    b_np = arr.to_numpy(b, "b", np.int8, ndim=3)
    (batch, m, k), (b_batch, n, b_k) = a_np.shape, b_np.shape
    if b_batch != batch:
        raise ValueError(f"a and b must have the same batch size: a {a_np.shape}, b {b_np.shape}")
    if b_k != k:
        raise ValueError(
            f"a is (batch, M, K) = {a_np.shape} and b must be (batch, N, K) (B transposed), "
            f"but b is {b_np.shape}: K differs ({k} vs {b_k})"
        )
    if k > arr.MAX_K:
        raise ValueError(f"K = {k} is too large for exact int32 accumulation (max {arr.MAX_K})")
    arr.check_seven_bit(a_np, "a", _quant.max_u8)
    return a_np, b_np


def gemm_u8s8_s32(a: Array, b: Array, *, out: Array | None = None, threads: int | None = None) -> Array:
    """Exact batched ``a @ b.T`` in int32 (FBGEMM, packing included).

    ``a``: uint8 (batch, M, K) with values 0..127; ``b``: int8 (batch, N, K).
    Returns int32 (batch, M, N), bit-exact against an int64 reference.
    ``out``: optional C-contiguous int32 (batch, M, N) array to write into.
    """
    _require()
    a_np, b_np = _gemm_operands(a, b)
    batch, m, _ = a_np.shape
    c = arr.output(out, "out", (batch, m, b_np.shape[1]), np.int32)
    _gemm.gemm_u8s8_s32(a_np, b_np, c, arr.threads_arg(threads))
    return out if out is not None else arr.like(c, arr.is_tensor(a))


def gemm_u8s8_f32(
    a: Array,
    b: Array,
    a_scale: Array | float,
    a_zero_point: Array | int,
    b_scale: Array | float,
    *,
    out: Array | None = None,
    threads: int | None = None,
) -> Array:
    """Batched GEMM dequantized to float32 inside FBGEMM's output pipeline.

    out[p, i, j] = a_scale[p] * b_scale[p, j] * sum_k (a[p, i, k] - a_zero_point[p]) * b[p, j, k]

    ``a``: uint8 (batch, M, K), 0..127, asymmetric with ONE scale and zero point
    per matrix: FBGEMM's ReQuantizeForFloat takes a scalar A scale/zero point,
    so per-token A parameters are not possible here (use ``gemm_u8s8_s32`` and
    ``dequantize_s32`` for those).  ``a_scale``: scalar or (batch,) float > 0;
    ``a_zero_point``: scalar or (batch,) int in 0..127.
    ``b``: int8 (batch, N, K), symmetric (zero point 0); ``b_scale``: scalar,
    (batch,) or (batch, N) (one scale per row of b, e.g. per key token).
    Returns float32 (batch, M, N); error vs a float64 evaluation of the same
    formula is float32 rounding only (a few ulp).
    """
    _require()
    a_np, b_np = _gemm_operands(a, b)
    batch, m, _ = a_np.shape
    n = b_np.shape[1]
    sa = arr.params(a_scale, "a_scale", np.float32, batch)
    za = arr.params(a_zero_point, "a_zero_point", np.int32, batch)
    sb = arr.params(b_scale, "b_scale", np.float32, batch, n)
    arr.check_scale(sa, "a_scale")
    arr.check_scale(sb, "b_scale")
    if za.size and (za.min() < 0 or za.max() > 127):
        raise ValueError(f"a_zero_point must be in 0..127 (7-bit codes), got {za.min()}..{za.max()}")
    c = arr.output(out, "out", (batch, m, n), np.float32)
    _gemm.gemm_u8s8_f32(a_np, b_np, sa, za, sb, c, arr.threads_arg(threads))
    return out if out is not None else arr.like(c, arr.is_tensor(a))


def dequantize_s32(
    c: Array,
    b: Array,
    a_scale: Array | float,
    a_zero_point: Array | int,
    b_scale: Array | float,
    *,
    out: Array | None = None,
    threads: int | None = None,
) -> Array:
    """Dequantize an int32 ``gemm_u8s8_s32`` result, with per-row (per-token) A parameters.

    out[p, i, j] = float32(c[p, i, j] - a_zero_point[p, i] * sum_k b[p, j, k])
                   * (a_scale[p, i] * b_scale[p, j])

    ``c``: int32 (batch, M, N); ``b``: the int8 (batch, N, K) operand (its row
    sums give the zero-point correction); ``a_scale`` / ``a_zero_point``:
    scalar, (batch,) or (batch, M); ``b_scale``: scalar, (batch,) or (batch, N).
    Returns float32 (batch, M, N).
    """
    _require()
    c_np = arr.to_numpy(c, "c", np.int32, ndim=3)
    b_np = arr.to_numpy(b, "b", np.int8, ndim=3)
    batch, m, n = c_np.shape
    if b_np.shape[:2] != (batch, n):
        raise ValueError(f"b must be (batch, N, K) = ({batch}, {n}, K) to match c {c_np.shape}, got {b_np.shape}")
    sa = arr.params(a_scale, "a_scale", np.float32, batch, m)
    za = arr.params(a_zero_point, "a_zero_point", np.int32, batch, m)
    sb = arr.params(b_scale, "b_scale", np.float32, batch, n)
    arr.check_scale(sa, "a_scale")
    arr.check_scale(sb, "b_scale")
    result = arr.output(out, "out", (batch, m, n), np.float32)
    _quant.dequantize_s32(c_np, b_np, sa, za, sb, result, arr.threads_arg(threads))
    return out if out is not None else arr.like(result, arr.is_tensor(c))


def _rows(x: Array, per: Per) -> tuple[np.ndarray, tuple[int, ...]]:
    """x as 2-D rows to quantize, and the shape of the per-row parameters."""
    if per not in ("row", "matrix"):
        raise ValueError(f"per must be 'row' (per token) or 'matrix' (per head), got {per!r}")
    x_np = arr.to_numpy(x, "x", np.float32)
    lead = 1 if per == "row" else 2
    if x_np.ndim < lead:
        raise ValueError(f"x must have at least {lead} dimension(s) for per={per!r}, got shape {x_np.shape}")
    param_shape = x_np.shape[: x_np.ndim - lead]
    width = int(np.prod(x_np.shape[x_np.ndim - lead :]))
    return x_np.reshape(-1, width), param_shape


def _nonfinite_error(bad: int) -> ValueError:
    return ValueError(f"x contains NaN or infinity ({bad} row(s) affected); cannot choose a finite scale")


def quantize_u7_asym(x: Array, *, per: Per = "row", threads: int | None = None) -> tuple[Array, Array, Array]:
    """Asymmetric 7-bit quantization of float32 ``x`` (..., R, K) -> (q, scale, zero_point).

    ``per="row"``: one scale/zero point per row (per token), shapes x.shape[:-1];
    ``per="matrix"``: per (R, K) matrix (per head), shapes x.shape[:-2].
    In float32, with round-half-to-even (``np.rint``)::

        lo, hi = min(0, min x), max(0, max x);  scale = (hi - lo) / 127;  inv = 1 / scale
        zero_point = clip(rint(-lo * inv), 0, 127)
        q = clip(rint(x * inv) + zero_point, 0, 127)            (uint8, 0..127)

    so x ~= (q - zero_point) * scale, 0.0 is exact, and ``q`` obeys the 7-bit
    rule.  An all-zero group gets scale 1, zero point 0.  NaN/inf raise ValueError.
    """
    _require()
    rows, shape = _rows(x, per)
    q = np.empty(rows.shape, np.uint8)
    scale = np.empty(rows.shape[0], np.float32)
    zero_point = np.empty(rows.shape[0], np.int32)
    bad = _quant.quantize_u7_rows(rows, q, scale, zero_point, arr.threads_arg(threads))
    if bad:
        raise _nonfinite_error(bad)
    as_tensor = arr.is_tensor(x)
    x_shape = tuple(x.shape)
    return (
        arr.like(q.reshape(x_shape), as_tensor),
        arr.like(scale.reshape(shape), as_tensor),
        arr.like(zero_point.reshape(shape), as_tensor),
    )


def quantize_s8_sym(x: Array, *, per: Per = "row", threads: int | None = None) -> tuple[Array, Array]:
    """Symmetric int8 quantization of float32 ``x`` (..., R, K) -> (q, scale).

    ``per`` as in ``quantize_u7_asym``.  In float32, round-half-to-even::

        scale = max|x| / 127;  q = clip(rint(x / scale), -127, 127)   (int8; -128 unused)

    where ``x / scale`` is computed as ``x * (1 / scale)``.  An all-zero group
    gets scale 1.  NaN/inf raise ValueError.
    """
    _require()
    rows, shape = _rows(x, per)
    q = np.empty(rows.shape, np.int8)
    scale = np.empty(rows.shape[0], np.float32)
    bad = _quant.quantize_s8_rows(rows, q, scale, arr.threads_arg(threads))
    if bad:
        raise _nonfinite_error(bad)
    as_tensor = arr.is_tensor(x)
    return arr.like(q.reshape(tuple(x.shape)), as_tensor), arr.like(scale.reshape(shape), as_tensor)
