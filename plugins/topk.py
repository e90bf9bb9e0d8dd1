"""``topk``: sparse attention that keeps the ``k`` best keys per query, chosen with low-precision scores.

1. Approximate scores, by one of two ``scorer`` s. ``fake``: Q and K are fake-quantized to ``bits`` bits
   (symmetric) and multiplied in float. ``fbgemm``: Q is quantized to 7-bit u8 (asymmetric) and K to s8
   (symmetric) and Q·Kᵀ really runs in int8 on FBGEMM (``cython_kernels``); its precision is fixed, so
   ``bits`` must stay 8. Either way there is one scale per sequence, per head or per token
   (``granularity``), computed from the sequence's own valid tokens only, so a result never depends on the
   other sequences of a batch or on how much padding it has. ``smooth_k`` first subtracts K's mean over the
   valid tokens: every score of a row shifts by the same constant, so the exact ranking is unchanged, but the
   quantization grid fits the spread of K better.
2. The approximate scores select the ``k`` best *allowed* keys per query: a key the attention mask masks for
   that query (padding, or outside ModernBERT's sliding window) is never selected; ties go to the lower key
   index. With fewer than ``k`` allowed keys, every allowed key is selected, so with ``k`` ≥ the window the
   result is dense attention restricted to the window.
   With ``k_factor`` F > 1, step 2 selects ``F · k`` candidates instead, and of those the ``k`` with the
   largest exact scores ``(q · k_j) · scaling`` are kept (ties to the lower key index): candidates from a
   coarse index re-ranked at full precision, as FAISS's ``IndexRefine`` (``k_factor``) does. It buys recall
   of the exact top-k where low-precision scores leave near-ties (``tools/topk_fidelity_long.py``), for
   ``F · k`` exact scores instead of ``k``.
3. Exact full-precision scores are computed only for the selected keys (gathered, so the cost scales with
   ``k``), then softmax and the weighted sum of V over them. With ``k`` ≥ the valid length this is dense
   attention.

The native kernels below take a key-padding mask only (the same keys masked for every query row). A mask
that differs between query rows (a sliding window, or any mask transformers builds) runs the torch steps with
the whole mask (``select_keys``, ``refine_keys``, ``sparse_attention``), whatever the ``scorer``.

Where ``cython_kernels`` is built (``ck.TOPK_AVAILABLE``), steps 2 and 3 run natively, per (batch, head), in
``cython_kernels/_topk.pyx``: an exact AVX2 top-k select (no sort, no 64-bit keys), then exact float32 scores,
softmax and V sum over the selected keys only, read in place and written straight into the
``(batch, seq, heads, dim)`` output (no gathered copies of K or V):

* ``scorer=fbgemm`` (any ``granularity`` and ``k_factor``): all three steps fused in
  ``cython_kernels.topk_attention_u8s8`` (same quantizers; with ``granularity=tensor`` the per-sequence scales
  are computed in ``ops`` and passed in; re-ranking in place, no extra pass over the keys);
* ``scorer=fake`` (any ``bits`` and ``granularity``; float32 CPU inputs): step 1 stays in torch as described;
  ``cython_kernels.topk_attention_scores`` ranks the float scores by an order-preserving int32 mapping of their
  bits (-0.0 ties with +0.0; NaN as ``select_keys`` ranks it), so the selection is that of ``select_keys``,
  ties included. Other dtypes and devices use the torch steps above (``select_keys``, ``refine_keys``,
  ``sparse_attention``). Re-ranking ranks exact scores as each path computes them in float32: two keys whose
  exact scores differ only by rounding may be ordered differently by the native and the torch path.

Non-finite inputs: a NaN/inf query row gives a NaN output row, a NaN/inf key or value of a real token makes its
head's output NaN (as in dense attention); the scores are computed from finite copies. ``fidelity_stats`` and
``approximate_scores`` always use the torch steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from harness import REQUIRED, Backend, Param, ParamError, hookimpl

if TYPE_CHECKING:  # torch and the kernels are imported where used: listing plugins stays torch-free
    import torch

GRANULARITIES = ("tensor", "head", "token")
SCORERS = ("fake", "fbgemm")
FBGEMM_BITS = 8  # the only `bits` the fbgemm scorer accepts: 7-bit Q (the 7-bit rule), 8-bit K


def key_validity(attention_mask: torch.Tensor | None, query: torch.Tensor) -> torch.Tensor:
    """``(batch, 1, 1, k_len)`` bool, True for the real keys (those some query may attend), from a bool mask
    (True = attend) or None. For a key-padding mask these are exactly the keys every real query attends; a
    mask that differs between query rows (a sliding window) needs :func:`allowed_keys` as well."""
    import torch

    batch, _, _, _ = query.shape
    if attention_mask is None:
        return torch.ones(batch, 1, 1, query.shape[2], dtype=torch.bool, device=query.device)
    if attention_mask.dtype != torch.bool:
        raise TypeError("topk expects a bool attention mask (mask_kind='bool')")
    # any() over the query rows: exact for padded query rows too, whose rows may differ
    return attention_mask.any(dim=2, keepdim=True).expand(batch, 1, 1, attention_mask.shape[-1])


def allowed_keys(attention_mask: torch.Tensor | None, valid_keys: torch.Tensor) -> torch.Tensor | None:
    """The keys each query may attend, ``(batch, 1, q_len, k_len)`` bool, or ``None`` when the mask is a pure
    key-padding mask (every real query row attends exactly the real keys ``valid_keys``, ``(batch, 1, 1,
    k_len)``), so that ``valid_keys`` says it all. Rows of padded queries (self-attention: the positions of
    the keys that are not real) are not compared: their output is ignored.
    """
    if attention_mask is None:
        return None
    real_queries = valid_keys.transpose(-1, -2)                              # (batch, 1, q_len, 1)
    if bool(((attention_mask == valid_keys) | ~real_queries).all()):
        return None
    return attention_mask


SCORE_CHUNK_BYTES = 16 << 20  # the native fake-scorer path's score buffer (see TopK._native_attention)


def fake_quantize(x: torch.Tensor, bits: int, granularity: str, valid_tokens: torch.Tensor) -> torch.Tensor:
    """Round ``x`` (batch, heads, tokens, dim) to a symmetric ``bits``-bit grid and back to float.

    ``valid_tokens`` (batch, 1, tokens, 1) excludes padding from the scale. Scales: one per sequence
    (``tensor``), per sequence and head (``head``) or per token row (``token``).
    """
    import torch

    qmax = 2 ** (bits - 1) - 1
    magnitude = x.abs().masked_fill(~valid_tokens, 0)
    dims = {"tensor": (1, 2, 3), "head": (2, 3), "token": (3,)}[granularity]
    scale = magnitude.amax(dim=dims, keepdim=True).clamp(min=torch.finfo(x.dtype).tiny) / qmax
    return (x / scale).round_().clamp_(-qmax, qmax).mul_(scale)  # one new tensor, then in place


def fbgemm_scores(query: torch.Tensor, key: torch.Tensor, valid_tokens: torch.Tensor, granularity: str) -> torch.Tensor:
    """Q·Kᵀ ``(batch, heads, q_len, k_len)`` computed in int8 by FBGEMM: Q as 7-bit u8 (asymmetric), K as s8.

    Padding tokens (``valid_tokens`` False, ``(batch, 1, tokens, 1)``) are zeroed first, which leaves every
    scale to the valid tokens (both quantizers keep 0 exact); their own scores are meaningless.
    """
    import cython_kernels as ck

    b, h, s, d = query.shape
    weights = valid_tokens.to(query.dtype)
    q = (query * weights).reshape(b * h, s, d)
    k = (key * weights).reshape(b * h, s, d)
    if granularity == "token":
        qq, q_scale, q_zero = ck.quantize_u7_asym(q, per="row")
        kq, k_scale = ck.quantize_s8_sym(k, per="row")
        return ck.dequantize_s32(ck.gemm_u8s8_s32(qq, kq), kq, q_scale, q_zero, k_scale).view(b, h, s, s)
    if granularity == "head":
        qq, q_scale, q_zero = ck.quantize_u7_asym(q, per="matrix")
        kq, k_scale = ck.quantize_s8_sym(k, per="matrix")
    else:  # one scale per sequence, shared by its heads
        qq, q_scale, q_zero = ck.quantize_u7_asym(q.view(b, h * s, d), per="matrix")
        kq, k_scale = ck.quantize_s8_sym(k.view(b, h * s, d), per="matrix")
        qq, kq = qq.view(b * h, s, d), kq.view(b * h, s, d)
        q_scale, q_zero, k_scale = (x.repeat_interleave(h) for x in (q_scale, q_zero, k_scale))
    return ck.gemm_u8s8_f32(qq, kq, q_scale, q_zero, k_scale).view(b, h, s, s)


def nonfinite_heads(key: torch.Tensor, value: torch.Tensor, valid_keys: torch.Tensor) -> torch.Tensor | None:
    """``(batch, heads, 1, 1)`` bool, True where a real token's key or value holds NaN or an infinity; ``None``
    when every real token's key and value are finite (the usual case: no extra work afterwards)."""
    import torch

    finite = torch.isfinite(key).all(dim=-1) & torch.isfinite(value).all(dim=-1)        # (batch, heads, k_len)
    bad = (~finite & valid_keys[:, :, 0]).any(dim=-1)[..., None, None]
    return bad if bool(bad.any()) else None


def all_finite(*tensors: torch.Tensor) -> bool:
    """True only if every element of every tensor is finite: one sum each (a NaN or an infinity makes a sum
    non-finite; a sum that merely overflows gives False, which only sends the caller to the exact checks)."""
    import torch

    return bool(torch.isfinite(torch.stack([x.sum(dtype=torch.float32) for x in tensors]).sum()))


def _finite(x: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def _ordered_keys(scores: torch.Tensor, valid_keys: torch.Tensor) -> torch.Tensor:
    """int64 keys that sort like ``scores``, unique per row: ties rank the lower key index first.

    The float32 bit pattern becomes a signed integer of the same order (negative floats: minus their
    magnitude bits, so -0.0 equals +0.0); it is scaled by the row length and the reversed key index fills
    the remainder. Padding keys get the smallest key. Integer work in place: this runs on every score.
    """
    import torch

    keys = scores.float().contiguous().view(torch.int32).to(torch.int64)
    sign = keys >> 63
    keys &= 0x7FFFFFFF
    keys ^= sign
    keys -= sign
    k_len = scores.shape[-1]
    keys *= k_len
    keys += torch.arange(k_len - 1, -1, -1, dtype=torch.int64, device=scores.device)
    return keys.masked_fill_(~valid_keys, torch.iinfo(torch.int64).min)


def select_keys(scores: torch.Tensor, valid_keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` highest-scoring valid keys of every query row, ties broken towards the lower key index.

    :param scores: ``(batch, heads, q_len, k_len)``.
    :param valid_keys: ``(batch, 1, 1, k_len)`` bool (the real keys), or ``(batch, 1, q_len, k_len)`` (the keys
        each query row may attend, e.g. a sliding window).
    :returns: ``(index, selected)``, both ``(batch, heads, q_len, min(k, k_len))``, in no particular order.
        ``selected`` is False in the slots of a row that has fewer than ``k`` valid keys: those slots are
        empty (their index points at a masked key and must carry no weight).
    """
    k = min(k, scores.shape[-1])
    index = _ordered_keys(scores, valid_keys).topk(k, dim=-1, sorted=False).indices
    selected = valid_keys.expand_as(scores).gather(-1, index)
    return index, selected


def refine_keys(query: torch.Tensor, key: torch.Tensor, index: torch.Tensor, selected: torch.Tensor, k: int,
                scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Of the candidate keys ``(index, selected)`` of :func:`select_keys`, ``(batch, heads, q_len, c)``, the
    ``k`` with the highest exact scores ``(q · k_j) · scaling`` (ties to the lower key index; empty slots
    never chosen over a candidate): re-ranking low-precision candidates at full precision, as FAISS's
    ``IndexRefine`` does (its ``k_factor``). Returns ``(index, selected)`` ``(batch, heads, q_len, min(k, c))``;
    with ``c <= k`` the candidates themselves.
    """
    if index.shape[-1] <= k:
        return index, selected
    index, order = index.sort(dim=-1)  # candidate position order = key order: ties go to the lower position
    selected = selected.gather(-1, order)
    exact = (query.unsqueeze(-2) * _gather_rows(key, index)).sum(-1) * scaling
    best = _ordered_keys(exact, selected).topk(k, dim=-1, sorted=False).indices
    return index.gather(-1, best), selected.gather(-1, best)


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x`` (b, h, k_len, d) gathered at ``index`` (b, h, q_len, k) → (b, h, q_len, k, d).

    Rows are copied whole with ``index_select`` on the flattened (b·h·k_len, d) view: much faster than a
    ``gather`` with the index broadcast over ``d``.
    """
    import torch

    b, h, k_len, d = x.shape
    offsets = torch.arange(b * h, dtype=index.dtype, device=index.device).view(b, h, 1, 1) * k_len
    rows = (index + offsets).reshape(-1)
    return x.reshape(b * h * k_len, d).index_select(0, rows).view(*index.shape, d)


def sparse_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, index: torch.Tensor,
                     selected: torch.Tensor, scaling: float) -> torch.Tensor:
    """Exact softmax attention restricted to the selected keys: ``(batch, heads, q_len, dim)`` (a row with no
    selected key gives zeros)."""
    import torch

    scores = (query.unsqueeze(-2) * _gather_rows(key, index)).sum(-1) * scaling
    weights = torch.softmax(scores.masked_fill(~selected, float("-inf")), dim=-1)
    # a query row that may attend no key at all (a padded query outside every window) gets 0, not NaN
    weights = weights.masked_fill(~selected.any(-1, keepdim=True), 0.0)
    return (weights.unsqueeze(-1) * _gather_rows(value, index)).sum(-2)


class TopK(Backend):
    name = "topk"
    description = "top-k sparse attention: keys chosen with low-precision scores, exact softmax over them"
    params = (
        Param("k", int, REQUIRED, "keys kept per query", min=1),
        Param("bits", int, 8, "bits of the fake-quantized Q and K used for selection (scorer=fake)", min=2, max=16),
        Param("granularity", str, "head", "quantization scale per sequence, head or token",
              choices=GRANULARITIES),
        Param("smooth_k", bool, False, "subtract K's mean over tokens before quantizing"),
        Param("scorer", str, "fake", "selection scores fake-quantized in float, or int8 on FBGEMM (7-bit Q, 8-bit K)",
              choices=SCORERS),
        Param("k_factor", int, 1, "candidates per query = k_factor * k by the low-precision scores, re-ranked "
              "by exact scores to the k best (FAISS IndexRefine)", min=1, max=16),
    )

    dtypes = ("float32", "float64", "bfloat16", "float16")
    devices = ("cpu", "cuda")  # the fake scorer is plain torch ops

    def check_values(self) -> None:
        if self.values["scorer"] == "fbgemm":
            self.dtypes = ("float32",)  # FBGEMM's quantizers take float32
            self.devices = ("cpu",)  # and run on the CPU
        if self.values["scorer"] == "fbgemm" and self.values["bits"] != FBGEMM_BITS:
            k, bits = self.values["k"], self.values["bits"]
            raise ParamError(f"topk: scorer=fbgemm scores with FBGEMM's fixed 7-bit Q and 8-bit K, so bits={bits} "
                             f"cannot apply; write 'topk:k={k},scorer=fbgemm' (no bits) or "
                             f"'topk:k={k},bits={bits}' (the fake scorer)")

    @classmethod
    def unavailable_reason(cls, values=None) -> str | None:
        """``scorer=fbgemm`` needs the compiled kernels; the fake scorer (and so the backend) runs everywhere."""
        import cython_kernels as ck

        if values is not None and values["scorer"] == "fbgemm" and not ck.AVAILABLE:
            return f"scorer=fbgemm needs cython_kernels: {ck.UNAVAILABLE_REASON}"
        return None

    def run_facts(self) -> dict[str, str]:
        import cython_kernels as ck

        if self.values["scorer"] == "fbgemm" and ck.AVAILABLE:
            return {"fbgemm_isa": str(ck.cpu_features()["isa"])}
        return {}

    def fused(self) -> bool:
        """Whether :meth:`attention` runs the fused int8 kernel (``scorer=fbgemm``, any granularity)."""
        import cython_kernels as ck

        return self.values["scorer"] == "fbgemm" and ck.TOPK_AVAILABLE

    def native(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
        """Whether :meth:`attention` hands the ``fake`` scorer's scores to the native select and sparse
        attention (``cython_kernels.topk_attention_scores``): float32 CPU self-attention with the kernel built."""
        import torch

        import cython_kernels as ck

        return (self.values["scorer"] == "fake" and ck.TOPK_AVAILABLE
                and all(x.dtype == torch.float32 and x.device.type == "cpu" for x in (query, key, value))
                and query.shape == key.shape == value.shape)

    def approximate_scores(self, query: torch.Tensor, key: torch.Tensor, valid_keys: torch.Tensor,
                           out: torch.Tensor | None = None) -> torch.Tensor:
        """Low-precision scores used only for ranking (no softmax scaling: it does not change the order),
        ``(batch, heads, q_len, k_len)`` float32. ``out``: a buffer of that shape for the fake scorer's
        product (the fbgemm scorer ignores it)."""
        import torch

        valid_tokens = valid_keys.transpose(-1, -2)  # self-attention: query and key positions coincide
        if self.values["smooth_k"]:
            weights = valid_tokens.to(key.dtype)
            mean = (key * weights).sum(dim=2, keepdim=True) / weights.sum(dim=2, keepdim=True).clamp(min=1)
            key = key - mean
        bits, granularity = self.values["bits"], self.values["granularity"]
        if self.values["scorer"] == "fbgemm":
            return fbgemm_scores(query, key, valid_tokens, granularity)
        q = fake_quantize(query, bits, granularity, valid_tokens)
        k = fake_quantize(key, bits, granularity, valid_tokens)
        return torch.matmul(q, k.transpose(-1, -2), out=out)

    def select(self, approximate: torch.Tensor, query: torch.Tensor, key: torch.Tensor, valid_keys: torch.Tensor,
               scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The torch steps' selection, ``(index, selected)`` as :func:`select_keys` returns them: the
        ``k_factor · k`` best valid keys by the ``approximate`` scores, re-ranked by exact scores to ``k``
        (:func:`refine_keys`; with ``k_factor=1`` the ``k`` best by the approximate scores)."""
        k, factor = self.values["k"], self.values["k_factor"]
        index, selected = select_keys(approximate, valid_keys, k * factor)
        return refine_keys(query, key, index, selected, k, scaling)  # (k_factor=1: the candidates as they are)

    def attention(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                  **kwargs) -> tuple[torch.Tensor, None]:
        import torch

        import cython_kernels as ck

        scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
        valid_keys = key_validity(attention_mask, query)
        allowed = allowed_keys(attention_mask, valid_keys)
        if allowed is not None:  # a mask that differs between query rows: the torch steps honour it whole
            return self._masked_attention(query, key, value, valid_keys, allowed, scaling), None
        if self.fused():
            return ck.topk_attention_u8s8(query, key, value, valid_keys[:, 0, 0, :], topk=self.values["k"],
                                          scaling=scaling, granularity=self.values["granularity"],
                                          smooth_k=self.values["smooth_k"], k_factor=self.values["k_factor"]), None
        finite_inputs = all_finite(query, key, value)
        poisoned = None if finite_inputs else nonfinite_heads(key, value, valid_keys)
        finite_inputs = finite_inputs or (poisoned is None and bool(torch.isfinite(query).all()))
        if self.native(query, key, value):  # same selection, ties included; NaN rows and heads as below
            return self._native_attention(query, key, value, valid_keys, scaling, finite_inputs), None
        approximate = self.approximate_scores(query if finite_inputs else _finite(query),
                                              key if finite_inputs else _finite(key), valid_keys)
        index, selected = self.select(approximate, query, key, valid_keys, scaling)
        out = sparse_attention(query, key, value, index, selected, scaling)
        if poisoned is not None:  # like dense: a bad key or value reaches every query of its head
            out = out.masked_fill(poisoned, float("nan"))
        return out.transpose(1, 2).contiguous(), None

    def _masked_attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          valid_keys: torch.Tensor, allowed: torch.Tensor, scaling: float) -> torch.Tensor:
        """The torch steps under a mask that differs between query rows (``allowed``, ``(batch, 1, q_len,
        k_len)``, e.g. a sliding window): scales from the real tokens (``valid_keys``), selection among each
        row's allowed keys only. Returns ``(batch, q_len, heads, head_dim)``."""
        import torch

        finite_inputs = all_finite(query, key, value)
        poisoned = None if finite_inputs else nonfinite_heads(key, value, valid_keys)
        finite_inputs = finite_inputs or (poisoned is None and bool(torch.isfinite(query).all()))
        approximate = self.approximate_scores(query if finite_inputs else _finite(query),
                                              key if finite_inputs else _finite(key), valid_keys)
        index, selected = self.select(approximate, query, key, allowed, scaling)
        out = sparse_attention(query, key, value, index, selected, scaling)
        if poisoned is not None:
            out = out.masked_fill(poisoned, float("nan"))
        return out.transpose(1, 2).contiguous()

    def _native_attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          valid_keys: torch.Tensor, scaling: float, finite_inputs: bool) -> torch.Tensor:
        """The fake scorer's scores handed to the native select and sparse attention, a few sequences at a
        time: every scale is per sequence, head or token, so each chunk's scores are those of the whole
        batch. The chunk's score buffer (at most ``SCORE_CHUNK_BYTES``) is reused, and stays below glibc's
        largest mmap threshold (32 MiB), so it is not page-faulted in again on every call: whole-batch scores
        (100 MB at 8 x 12 heads x 512²) cost more in page faults than the product itself."""
        import torch

        import cython_kernels as ck

        batch, heads, length, _ = query.shape
        step = max(1, min(batch, SCORE_CHUNK_BYTES // max(1, heads * length * length * 4)))
        buffer = torch.empty((step, heads, length, length), dtype=torch.float32)
        out = torch.empty((batch, length, heads, query.shape[-1]), dtype=torch.float32)
        for start in range(0, batch, step):
            part = slice(start, start + step)
            q, k, valid = query[part], key[part], valid_keys[part]
            scores = self.approximate_scores(q if finite_inputs else _finite(q), k if finite_inputs else _finite(k),
                                             valid, out=buffer[:q.shape[0]])
            out[part] = ck.topk_attention_scores(q, k, value[part], valid[:, 0, 0, :], scores,
                                                 topk=self.values["k"], scaling=scaling,
                                                 k_factor=self.values["k_factor"])
        return out

    def fidelity_stats(self, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
                       scaling: float) -> dict[str, float]:
        """Recall of the exact top-k (valid keys only), the share of exact softmax mass on the chosen keys, and
        the share of query rows with more than ``k`` valid keys (``topk_rows_longer``: only there does the
        selection drop keys; on the other rows every valid key is chosen, so recall is exactly 1 and the mass 1,
        and the recall over the longer rows alone is ``1 - (1 - topk_recall) / topk_rows_longer``). Means over
        the valid query rows."""
        import torch

        valid_keys = key_validity(attention_mask, query)
        allowed = allowed_keys(attention_mask, valid_keys)
        allowed = valid_keys if allowed is None else allowed     # the keys each query row may attend
        k = self.values["k"]
        chosen, chosen_ok = self.select(self.approximate_scores(query, key, valid_keys), query, key, allowed,
                                        scaling)
        exact_scores = (query @ key.transpose(-1, -2)) * scaling
        best, best_ok = select_keys(exact_scores, allowed, k)
        hit = torch.zeros_like(exact_scores, dtype=torch.bool).scatter_(-1, best, best_ok)
        found = (hit.gather(-1, chosen) & chosen_ok).sum(-1).float()
        recall = found / best_ok.sum(-1).clamp(min=1).float()
        probs = torch.softmax(exact_scores.masked_fill(~allowed, float("-inf")), dim=-1)
        mass = (probs.gather(-1, chosen) * chosen_ok).sum(-1)
        rows = valid_keys.squeeze(2).squeeze(1).unsqueeze(1).expand(-1, query.shape[1], -1)  # valid query rows
        longer = (allowed.sum(-1) > k).expand(-1, query.shape[1], query.shape[2]).float()
        return {"topk_recall": float(recall[rows].mean()), "topk_mass": float(mass[rows].mean()),
                "topk_rows_longer": float(longer[rows].mean())}


@hookimpl
def register_backends(register: Callable[[type[Backend]], None]) -> None:
    register(TopK)
