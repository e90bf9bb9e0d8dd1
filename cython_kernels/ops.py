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
from ._loader import load, load_extra

_gemm, _quant, _attention, UNAVAILABLE_REASON = load()
AVAILABLE: bool = UNAVAILABLE_REASON is None
_topk, TOPK_UNAVAILABLE_REASON = load_extra("_topk") if AVAILABLE else (None, UNAVAILABLE_REASON)
#: Whether the fused top-k kernel (:func:`topk_attention_u8s8`) can run here.
TOPK_AVAILABLE: bool = TOPK_UNAVAILABLE_REASON is None

Array = Any  # numpy.ndarray or torch.Tensor
Per = Literal["row", "matrix"]
ACodes = Literal["u7", "u8_pairs"]


def _require() -> None:
    if not AVAILABLE:
        raise RuntimeError(f"cython_kernels is unavailable: {UNAVAILABLE_REASON}")


def cpu_features() -> dict[str, Any]:
    """FBGEMM's CPU facts: supported, avx2, avx512, avx512_vnni and the GEMM ISA in use."""
    _require()
    return _gemm.cpu_features()


def _gemm_operands(a: Array, b: Array, a_codes: ACodes = "u7") -> tuple[np.ndarray, np.ndarray]:
    a_np = arr.to_numpy(a, "a", np.uint8, ndim=3)
    b_np = arr.to_numpy(b, "b", np.int8, ndim=3)
    (batch, _, k), (b_batch, _, b_k) = a_np.shape, b_np.shape
    if b_batch != batch:
        raise ValueError(f"a and b must have the same batch size: a {a_np.shape}, b {b_np.shape}")
    if b_k != k:
        raise ValueError(
            f"a is (batch, M, K) = {a_np.shape} and b must be (batch, N, K) (B transposed), "
            f"but b is {b_np.shape}: K differs ({k} vs {b_k})"
        )
    if k > arr.MAX_K:
        raise ValueError(f"K = {k} is too large for exact int32 accumulation (max {arr.MAX_K})")
    if a_codes == "u7":
        arr.check_seven_bit(a_np, "a", _quant.max_u8)
    elif a_codes == "u8_pairs":
        arr.check_pair_sums(a_np, b_np)
    else:
        raise ValueError(f"a_codes must be 'u7' or 'u8_pairs', got {a_codes!r}")
    return a_np, b_np


def gemm_u8s8_s32(a: Array, b: Array, *, out: Array | None = None, threads: int | None = None,
                  a_codes: ACodes = "u7") -> Array:
    """Exact batched ``a @ b.T`` in int32 (FBGEMM, packing included).

    ``a``: uint8 (batch, M, K) with values 0..127; ``b``: int8 (batch, N, K).
    ``a_codes="u8_pairs"`` admits 8-bit ``a`` whose aligned pairs ``a[..., 2t] + a[..., 2t+1]`` are
    all <= 258, with ``b`` in -127..127 (``_arrays.PAIR_RULE``): exact on AVX2 too.
    Returns int32 (batch, M, N), bit-exact against an int64 reference.
    ``out``: optional C-contiguous int32 (batch, M, N) array to write into.
    """
    _require()
    a_np, b_np = _gemm_operands(a, b, a_codes)
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


PV = Literal["int8", "float"]
#: Phases of :func:`attention_u8s8`'s optional profile, in order (seconds summed over threads).
ATTENTION_PHASES: tuple[str, ...] = (
    "quantize_kv", "pack_kv", "quantize_q", "gemm_qk", "softmax", "quantize_p", "gemm_pv", "output")


def _attention_input(x: Array, name: str) -> np.ndarray:
    """A float32 (B, H, S, D) NumPy view of ``x``, copied only if its last axis is not contiguous."""
    torch = arr._torch()
    if arr.is_tensor(x):
        if x.device.type != "cpu" or x.dtype != torch.float32:
            raise TypeError(f"{name} must be a float32 CPU tensor, got {x.dtype} on {x.device}")
        if x.ndim == 4 and x.stride(-1) != 1 and x.shape[-1] > 1:
            x = x.contiguous()
        x_np = x.detach().numpy()
    elif isinstance(x, np.ndarray):
        if x.dtype != np.float32:
            raise TypeError(f"{name} must have dtype float32, got {x.dtype.name}")
        x_np = x
        if x.ndim == 4 and x.strides[-1] != 4 and x.shape[-1] > 1:
            x_np = np.ascontiguousarray(x)
    else:
        raise TypeError(f"{name} must be a numpy.ndarray or a torch.Tensor, got {type(x).__name__}")
    if x_np.ndim != 4:
        raise ValueError(f"{name} must be 4-D (batch, heads, seq, head_dim), got shape {tuple(x_np.shape)}")
    if any(st < 0 for st in x_np.strides):
        x_np = np.ascontiguousarray(x_np)
    return x_np


def _key_valid(key_valid: Array | None, batch: int, seq: int) -> np.ndarray:
    """``key_valid`` as C-contiguous uint8 (batch, seq) of 0/1; all ones for None."""
    if key_valid is None:
        return np.ones((batch, seq), np.uint8)
    if arr.is_tensor(key_valid):
        kv = key_valid.detach().cpu().numpy()
    elif isinstance(key_valid, np.ndarray):
        kv = key_valid
    else:
        raise TypeError(f"key_valid must be a numpy.ndarray or a torch.Tensor, got {type(key_valid).__name__}")
    if kv.dtype not in (np.bool_, np.uint8) or kv.shape != (batch, seq):
        raise ValueError(f"key_valid must be bool or uint8 of shape {(batch, seq)}, got {kv.dtype.name} {kv.shape}")
    return (kv != 0).astype(np.uint8)


def _attention_call(q, k, v, key_valid, scaling, profile, phases):
    """Validated inputs of a fused attention kernel: float32 ``(batch, heads, seq, dim)`` views of q, k, v, the
    key-validity mask and trailing-valid-key counts, the softmax scale, and the ``(batch, seq, heads, dim)``
    output (a tensor when q is one) with its NumPy view. Raises ``TypeError``/``ValueError``."""
    q_np, k_np, v_np = (_attention_input(x, name) for x, name in ((q, "q"), (k, "k"), (v, "v")))
    if not q_np.shape == k_np.shape == v_np.shape:
        raise ValueError(f"q, k and v must have the same shape (self-attention), got "
                         f"{q_np.shape}, {k_np.shape}, {v_np.shape}")
    batch, heads, seq, dim = q_np.shape
    valid = _key_valid(key_valid, batch, seq)
    any_valid = valid.any(axis=1)
    n_keys = np.where(any_valid, seq - np.argmax(valid[:, ::-1], axis=1), 0).astype(np.int32)
    scale = dim ** -0.5 if scaling is None else float(scaling)
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scaling must be finite and > 0, got {scaling!r}")
    if profile is not None and (not isinstance(profile, np.ndarray) or profile.dtype != np.float64
                                or profile.shape != (len(phases),)):
        raise ValueError(f"profile must be a float64 array of shape ({len(phases)},)")
    if arr.is_tensor(q):
        out = arr._torch().empty((batch, seq, heads, dim), dtype=arr._torch().float32)
        out_np = out.numpy()
    else:
        out = out_np = np.empty((batch, seq, heads, dim), np.float32)
    return q_np, k_np, v_np, valid, n_keys, scale, out, out_np


def _row_mask(mask: Array, batch: int, seq: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A general attention mask as ``(key_valid, row_mask)``: ``key_valid`` uint8 (batch, seq), 1 for keys
    some query may attend to, and ``row_mask`` a uint8 (batch, seq, seq) view (no copy for a bool or uint8
    input with a contiguous last axis), or None when every query row allows the same keys (a key-padding
    mask, which the kernels take through ``key_valid`` alone)."""
    if arr.is_tensor(mask):
        if mask.dtype not in (arr._torch().bool, arr._torch().uint8):
            raise ValueError(f"mask must be bool or uint8, got {mask.dtype}")
        m = mask.detach().cpu().numpy()
    elif isinstance(mask, np.ndarray):
        m = mask
    else:
        raise TypeError(f"mask must be a numpy.ndarray or a torch.Tensor, got {type(mask).__name__}")
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.dtype not in (np.bool_, np.uint8) or m.shape != (batch, seq, seq):
        raise ValueError(f"mask must be bool or uint8 of shape {(batch, 1, seq, seq)} or {(batch, seq, seq)} "
                         f"(True = attend), got {m.dtype.name} {m.shape}")
    if m.dtype == np.uint8 and m.size and m.max() > 1:
        m = m != 0
    if seq and m.strides[-1] != m.itemsize or any(st < 0 for st in m.strides):
        m = np.ascontiguousarray(m)
    m = m.view(np.uint8)
    valid = m.any(axis=1).astype(np.uint8)
    if m.strides[1] == 0 or not seq or bool((m == m[:, :1, :]).all()):
        return np.ascontiguousarray(m[:, 0] if seq else valid), None
    return valid, m


KERNELS: tuple[str, ...] = ("online", "materialize")
Kernel = Literal["online", "materialize"]


def attention_u8s8(
    q: Array,
    k: Array,
    v: Array,
    key_valid: Array | None = None,
    *,
    mask: Array | None = None,
    scaling: float | None = None,
    pv: PV = "int8",
    smooth_k: bool = False,
    kernel: Kernel = "online",
    threads: int | None = None,
    profile: np.ndarray | None = None,
) -> Array:
    """Self-attention with Q.K^T in int8 (and P.V in int8 or float), fused per (batch, head).

    ``q``, ``k``, ``v``: float32 (batch, heads, seq, head_dim), any strides with a contiguous last
    axis (the transposed views attention layers hold are read in place).  ``key_valid``: bool or
    uint8 (batch, seq), True = attend (a key-padding mask), or None for all keys.  ``mask`` instead:
    any bool or uint8 mask of shape (batch, 1, seq, seq) or (batch, seq, seq), True = attend (sliding
    windows, causal masks; broadcast views are read without a copy); a query row with no allowed key
    gives 0, as dense SDPA does.
    Returns float32 (batch, seq, heads, head_dim), C-contiguous (a torch tensor if ``q`` is one).

    ``kernel="online"`` (default) walks the keys in blocks of ``_attention.key_block()`` keys with an
    online softmax (running maximum and sum per row, FlashAttention's recurrence) and writes each output
    row once; ``kernel="materialize"`` computes whole score rows per block of 64 queries first.  At up to
    512 keys both do the same work; they differ only in how P's codes are scaled (per row and key block).

    Per (batch, head) and block of 64 query rows, on FBGEMM (``_attention.pyx`` has the details):
    Q as 7-bit u8 per token (asymmetric), K as s8 per token (symmetric; ``smooth_k`` subtracts K's
    mean over the valid keys first, which shifts each score row by a constant and leaves softmax
    unchanged), exact int32 Q.K^T, dequantized scores times ``scaling`` (default head_dim**-0.5),
    softmax in float with masked keys at weight exactly 0, then P.V:

    * ``pv="int8"``: V as s8 per token; the weights exp(S - max) times V's token scales are coded
      as u8 with one scale per row chosen so that every aligned pair of codes sums to <= 258, and
      P.V runs as an int32 GEMM: exact on AVX2 (``_arrays.PAIR_RULE``) as on VNNI;
    * ``pv="float"``: MKL sgemm on the float weights and V.

    Every scale comes from one (batch, head) and its valid keys only, so a sequence's result does not
    depend on the other sequences of the batch or on trailing padding.  NaN or infinity in a row of
    q, k or v that the kernel reads raise ValueError (keys after a sequence's last allowed key are never
    read).  ``profile``: optional float64 array of ``len(ATTENTION_PHASES)`` to which each phase's CPU
    time (seconds, summed over threads) is added.  Raises ValueError for a bad ``pv``, ``kernel``, mask
    or shape, or both ``key_valid`` and ``mask``; TypeError for non-float32 inputs.
    """
    _require()
    if pv not in ("int8", "float"):
        raise ValueError(f"pv must be 'int8' or 'float', got {pv!r}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be 'online' or 'materialize', got {kernel!r}")
    if mask is not None and key_valid is not None:
        raise ValueError("give key_valid (a key-padding mask) or mask (any mask), not both")
    row_mask = None
    if mask is not None:
        shape = tuple(q.shape)
        if len(shape) != 4:
            raise ValueError(f"q must be 4-D (batch, heads, seq, head_dim), got shape {shape}")
        key_valid, row_mask = _row_mask(mask, shape[0], shape[2])
    q_np, k_np, v_np, valid, n_keys, scale, out, out_np = _attention_call(q, k, v, key_valid, scaling, profile,
                                                                          ATTENTION_PHASES)
    bad = _attention.attention_u8s8(q_np, k_np, v_np, valid, n_keys, out_np.transpose(0, 2, 1, 3), scale,
                                    pv == "int8", bool(smooth_k), arr.threads_arg(threads), profile,
                                    row_mask, kernel == "online")
    if bad:
        raise ValueError(f"q, k or v contains NaN or infinity ({bad} row(s) affected)")
    return out


def own_packing() -> bool:
    """Whether the attention kernel writes FBGEMM's packed layout itself for the ISA in use (checked
    against FBGEMM's own packing once per ISA); if not, FBGEMM packs K and V for every head."""
    _require()
    return bool(_attention.own_packing())


#: Phases of :func:`topk_attention_u8s8`'s optional profile, in order (seconds summed over threads).
TOPK_PHASES: tuple[str, ...] = ("quantize", "gemm_qk", "select", "exact_scores", "rerank", "softmax", "v_sum")


def _require_topk() -> None:
    if not TOPK_AVAILABLE:
        raise RuntimeError(f"the fused top-k kernel is unavailable: {TOPK_UNAVAILABLE_REASON}")


def _sequence_scales(q: np.ndarray, k: np.ndarray, valid: np.ndarray, smooth_k: bool) -> np.ndarray:
    """float32 (batch, 3): per sequence the 1/scale of K and the 1/scale and zero point of Q, one scale shared by
    all heads (``granularity="tensor"``), over the sequence's valid tokens, with the scale rules of
    ``quantize_s8_sym`` / ``quantize_u7_asym`` (``_rows.pxd``'s, through ``_quant``). Non-finite elements count as 0 (as the
    unfused scorer's inputs), so a poisoned head does not spoil the other heads' grid."""
    batch = q.shape[0]
    result = np.empty((batch, 3), np.float32)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for b in range(batch):
            tokens = np.flatnonzero(valid[b])
            kb = k[b][:, tokens]                                   # (heads, valid tokens, dim)
            kb = np.where(np.isfinite(kb), kb, np.float32(0))
            if smooth_k and tokens.size:
                kb = kb - (kb.sum(axis=1, keepdims=True, dtype=np.float32) / np.float32(tokens.size))
            amax = np.float32(np.abs(kb).max()) if kb.size else np.float32(0)
            qb = q[b][:, tokens]
            qb = np.where(np.isfinite(qb), qb, np.float32(0))
            lo = min(np.float32(0), np.float32(qb.min())) if qb.size else np.float32(0)
            hi = max(np.float32(0), np.float32(qb.max())) if qb.size else np.float32(0)
            _, q_inv, zero_point = _quant.u7_scale(lo, hi)  # the kernels' own rules (_rows.pxd)
            result[b] = (_quant.s8_scale(amax)[1], q_inv, zero_point)
    return result


def topk_attention_u8s8(
    q: Array,
    k: Array,
    v: Array,
    key_valid: Array | None = None,
    *,
    topk: int,
    scaling: float | None = None,
    granularity: Literal["token", "head", "tensor"] = "token",
    smooth_k: bool = False,
    k_factor: int = 1,
    threads: int | None = None,
    profile: np.ndarray | None = None,
) -> Array:
    """Top-k sparse self-attention, fused per (batch, head): int8 selection scores, exact softmax over the
    ``topk`` selected keys of every query (``_topk.pyx`` has the scheme).

    ``q``, ``k``, ``v``: float32 (batch, heads, seq, head_dim), any strides with a contiguous last axis.
    ``key_valid``: bool or uint8 (batch, seq), True = attend, or None. Returns float32
    (batch, seq, heads, head_dim), C-contiguous (a torch tensor if ``q`` is one).

    Selection: Q as 7-bit u8 (asymmetric) and K as s8 (symmetric; ``smooth_k`` subtracts K's mean over the
    valid keys), one scale per token (``granularity="token"``), per (batch, head) over its valid tokens
    (``"head"``) or per sequence over its valid tokens in all heads (``"tensor"``: computed here, with the
    arithmetic of ``quantize_u7_asym``/``quantize_s8_sym``); exact int32 Q.K^T on FBGEMM; per query the
    ``topk`` best *valid* keys, ties to the lower key index (all valid keys when there are fewer). Then exact
    float32 scores ``q.k * scaling`` (default head_dim**-0.5) for those keys only, softmax, and the weighted
    sum of their V rows. With ``topk`` >= the number of valid keys this is dense attention. A row without a
    valid key gives 0.

    ``k_factor`` > 1 re-ranks (as FAISS's ``IndexRefine``): the int8 scores select ``topk * k_factor``
    candidates, and of those the ``topk`` with the largest exact scores (ties to the lower key index) are
    kept; with ``topk`` < valid keys <= ``topk * k_factor`` every valid key is a candidate.

    Non-finite inputs propagate like dense attention (no exception): a query row holding NaN or infinity
    gives a NaN output row; NaN or infinity in the k or v row of a valid key gives NaN in every output of
    that (batch, head). Padding keys are never read for scores. ``profile``: optional float64 array of
    ``len(TOPK_PHASES)`` to which the seconds of each phase (summed over threads) are added.
    Raises ``ValueError`` for a bad ``topk``, ``k_factor``, ``granularity`` or shape, ``TypeError`` for
    non-float32 inputs.
    """
    _require_topk()
    _check_topk(topk, k_factor)
    if granularity not in ("token", "head", "tensor"):
        raise ValueError(f"granularity must be 'token', 'head' or 'tensor', got {granularity!r}")
    q_np, k_np, v_np, valid, n_keys, scale, out, out_np = _attention_call(q, k, v, key_valid, scaling, profile,
                                                                          TOPK_PHASES)
    seq_scales = _sequence_scales(q_np, k_np, valid, bool(smooth_k)) if granularity == "tensor" else None
    _topk.topk_attention(q_np, k_np, v_np, valid, n_keys, out_np.transpose(0, 2, 1, 3), scale, int(topk),
                         granularity == "token", bool(smooth_k), bool(_attention.own_packing()),
                         arr.threads_arg(threads), profile, seq_scales, int(k_factor))
    return out


def _check_topk(topk: object, k_factor: object = 1) -> None:
    for name, value in (("topk", topk), ("k_factor", k_factor)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _selection_scores(scores: Array, ndim: int) -> tuple[np.ndarray, bool]:
    """``scores`` as an int32 NumPy view with a contiguous last axis, and whether it holds float32 bits."""
    if arr.is_tensor(scores) and scores.dtype not in (arr._torch().float32, arr._torch().int32):
        raise TypeError(f"scores must be a float32 or int32 tensor, got {scores.dtype}")  # before .numpy() (bf16)
    s = arr.as_array(scores, "scores")
    if s.dtype not in (np.float32, np.int32):
        raise TypeError(f"scores must have dtype float32 or int32, got {s.dtype.name}")
    if s.ndim != ndim:
        raise ValueError(f"scores must be {ndim}-D, got shape {s.shape}")
    if s.ndim and s.shape[-1] > 1 and s.strides[-1] != s.itemsize or any(st < 0 for st in s.strides):
        s = np.ascontiguousarray(s)
    return s.view(np.int32), s.dtype == np.float32


def topk_attention_scores(
    q: Array,
    k: Array,
    v: Array,
    key_valid: Array | None,
    scores: Array,
    *,
    topk: int,
    scaling: float | None = None,
    k_factor: int = 1,
    threads: int | None = None,
    profile: np.ndarray | None = None,
) -> Array:
    """Top-k sparse self-attention with given selection scores, fused per (batch, head): the select, exact
    scores, softmax and V sum of :func:`topk_attention_u8s8`, with the keys ranked by ``scores`` instead of
    int8 Q.K^T (the ``topk`` backend's fake-quantized scorer computes them in torch).

    ``q``, ``k``, ``v``, ``key_valid``, ``scaling``, the result and non-finite inputs: as
    :func:`topk_attention_u8s8`. ``scores``: (batch, heads, seq, seq), float32 or int32, any strides
    (copied once unless the last axis is contiguous); only the scores of valid keys are read. float32 scores
    rank by value with -0.0 == +0.0; NaN ranks above +inf with the sign bit clear and below -inf with it
    set (the order of their int32 bits, as ``plugins.topk.select_keys`` ranks them). Per query row, the
    ``topk`` best valid keys, ties to the lower key index; ``k_factor`` > 1 ranks ``topk * k_factor``
    candidates by ``scores`` and keeps the ``topk`` with the largest exact scores, as
    :func:`topk_attention_u8s8` does. Raises ``ValueError`` for a bad ``topk``, ``k_factor`` or shape,
    ``TypeError`` for other dtypes.
    """
    _require_topk()
    _check_topk(topk, k_factor)
    q_np, k_np, v_np, valid, n_keys, scale, out, out_np = _attention_call(q, k, v, key_valid, scaling, profile,
                                                                          TOPK_PHASES)
    s, float_scores = _selection_scores(scores, 4)
    batch, heads, seq, _ = q_np.shape
    if s.shape != (batch, heads, seq, seq):
        raise ValueError(f"scores must have shape {(batch, heads, seq, seq)}, got {s.shape}")
    _topk.topk_attention_scores(q_np, k_np, v_np, valid, n_keys, s, out_np.transpose(0, 2, 1, 3), scale,
                                int(topk), float_scores, arr.threads_arg(threads), profile, int(k_factor))
    return out


def topk_select(scores: Array, key_valid: Array | None, topk: int) -> tuple[np.ndarray, np.ndarray]:
    """The fused kernels' selection alone, on given ``scores`` (rows, n) (for tests).

    ``scores``: int32 (valid scores must be > INT32_MIN, the kernel's mark of masked keys) or float32 (ranked
    as :func:`topk_attention_scores` ranks them). Returns ``(index, count)``: int32 (rows, min(topk, n)) and
    (rows,); ``index[i, :count[i]]`` are, in increasing order, the ``topk`` largest scores of row i among the
    valid keys (``key_valid`` (n,), None = all), ties to the lower index; all valid keys when there are at
    most ``topk``.
    """
    _require_topk()
    _check_topk(topk)
    s, float_scores = _selection_scores(scores, 2)
    s = np.ascontiguousarray(s)
    rows, n = s.shape
    valid = np.ones(n, np.uint8) if key_valid is None else (np.asarray(key_valid) != 0).astype(np.uint8)
    if valid.shape != (n,):
        raise ValueError(f"key_valid must have shape ({n},), got {valid.shape}")
    if not float_scores and (s[:, valid.astype(bool)] == np.iinfo(np.int32).min).any():
        raise ValueError("valid scores must be > INT32_MIN")
    index = np.full((rows, max(1, min(topk, n))), -1, np.int32)
    count = np.zeros(rows, np.int32)
    if n:
        _topk.select_rows(s, valid, int(topk), index, count, float_scores)
    return index, count
