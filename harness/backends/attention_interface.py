"""Attaching a backend's attention function to a transformers model.

transformers (5.x) looks attention functions up by ``config._attn_implementation`` in
``AttentionInterface`` — and, separately, builds the padding mask with the function registered under the
same name in ``AttentionMaskInterface``. A name registered only in the first receives
``attention_mask=None`` and silently attends to padding (verified with transformers 5.x), so both are always registered.

Every backend is registered twice: under its plain name, selected on the model by :func:`attach` and used
by the timed speed cells, and under a *checked* name (:func:`checked_name`) that evaluation selects with
:func:`finite_checked`. The checked function calls the same attention and then enforces the finiteness rule
of :class:`~harness.backends.contract.Backend` (:func:`check_finite`), so timed calls never pay for it;
the seconds the checks take are counted (:class:`CheckTimer`) so that evaluation can leave them out of its
throughput figures.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from ..devices import torch_dtypes
from .contract import ResolvedBackend
from .torch_state import kept_threads

REFERENCE_IMPLEMENTATION = "sdpa"
_MASK_BUILDERS = {"bool": sdpa_mask, "additive": eager_mask}

AttentionFn = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def implementation_name(backend: ResolvedBackend) -> str:
    """The transformers implementation name of the backend's attention (``"sdpa"`` if it has none)."""
    part = backend.attention_part
    if part is None:
        return REFERENCE_IMPLEMENTATION
    # One name per configured instance: stateful backends must not share a registration.
    return f"attnbench:{part.spec}@{id(part):x}"


def attention_function(backend: ResolvedBackend) -> AttentionFn:
    """The callable that computes attention for this backend (transformers' SDPA if it has none).

    It refuses q/k/v of a dtype outside the backend's declared ``dtypes`` with a ``TypeError`` that names them,
    before the backend sees them (one tuple lookup per call), and restores torch's thread count if the call
    changed it (:func:`harness.backends.torch_state.kept_threads`).

    With grouped-query attention (fewer key/value heads than query heads, as EuroBERT's), key and value are
    repeated to the query's heads first (as transformers' ``repeat_kv`` does), so a backend always receives
    q, k and v with the same number of heads.
    """
    part = backend.attention_part
    if part is None:
        return sdpa_attention_forward
    inner, dtypes, spec = part.attention, torch_dtypes(part.dtypes), part.spec
    backend_spec = backend.spec

    def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        if query.dtype not in dtypes or key.dtype != query.dtype or value.dtype != query.dtype:
            raise TypeError(f"backend {spec!r} takes query, key and value of one dtype among "
                            f"{', '.join(str(d).removeprefix('torch.') for d in dtypes)}; got "
                            f"{', '.join(str(t.dtype).removeprefix('torch.') for t in (query, key, value))}")
        if key.shape[1] != query.shape[1]:
            key, value = expand_kv_heads(key, query.shape[1]), expand_kv_heads(value, query.shape[1])
        with kept_threads(backend_spec, "attention"):
            return inner(module, query, key, value, attention_mask, *args, **kwargs)

    return attention


@dataclass
class CheckTimer:
    """Seconds spent in :func:`check_finite` by one checked registration since :func:`finite_checked` began."""

    seconds: float = 0.0


_TIMERS: dict[str, CheckTimer] = {}


def checked_name(backend: ResolvedBackend) -> str:
    """The transformers implementation name of the backend's attention with the finiteness check."""
    name = implementation_name(backend)
    return ("attnbench:" + name if name == REFERENCE_IMPLEMENTATION else name) + "+checked"


def attach(model: torch.nn.Module, backend: ResolvedBackend) -> str:
    """Register the backend's attention and mask builder with transformers and select it on ``model``.

    ``model`` is a transformers ``PreTrainedModel`` or any module with ``set_attn_implementation``.
    Also registers the checked variant (:func:`checked_name`) that :func:`finite_checked` selects.
    Returns the implementation name.
    """
    name = implementation_name(backend)
    if name != REFERENCE_IMPLEMENTATION:
        AttentionInterface.register(name, attention_function(backend))
        AttentionMaskInterface.register(name, _MASK_BUILDERS[backend.mask_kind])
    timer = _TIMERS.setdefault(checked_name(backend), CheckTimer())
    AttentionInterface.register(checked_name(backend),
                                checked_attention(attention_function(backend), backend.spec, timer))
    AttentionMaskInterface.register(checked_name(backend), _MASK_BUILDERS[backend.mask_kind])
    model.set_attn_implementation(name)
    return name


@contextmanager
def finite_checked(model: torch.nn.Module, backend: ResolvedBackend) -> Iterator[CheckTimer]:
    """Evaluate ``model`` (prepared with :func:`attach`) with the finiteness check on every attention call.

    Yields the :class:`CheckTimer` of the checks made inside the block. Raises
    :class:`NonFiniteAttentionError` from the first call that breaks the rule.
    """
    timer = _TIMERS.setdefault(checked_name(backend), CheckTimer())
    timer.seconds = 0.0
    model.set_attn_implementation(checked_name(backend))
    try:
        yield timer
    finally:
        model.set_attn_implementation(implementation_name(backend))


class NonFiniteAttentionError(RuntimeError):
    """A backend's attention output broke the finiteness rule (see :class:`~harness.backends.contract.Backend`)."""


def valid_tokens(attention_mask: torch.Tensor | None, batch: int, seq_len: int) -> torch.Tensor:
    """``(batch, seq_len)`` bool, True for the tokens some query attends to (the real, non-padding tokens).

    ``attention_mask`` is a bool mask (True = attend), an additive float mask (0 or a very negative value) of
    shape ``(batch, 1, q_len, k_len)`` (or ``(batch, k_len)``), or ``None`` (every token is real).
    """
    if attention_mask is None:
        return torch.ones(batch, seq_len, dtype=torch.bool)
    attend = attention_mask if attention_mask.dtype == torch.bool else \
        attention_mask > torch.finfo(attention_mask.dtype).min / 2
    if attend.ndim == 4:
        attend = attend.any(dim=2)[:, 0]
    return attend.expand(batch, seq_len)


def check_finite(spec: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, output: torch.Tensor) -> None:
    """Enforce the finiteness rule on one attention call, sequence by sequence, over its real tokens.

    ``query``/``key``/``value`` are ``(batch, heads, seq, head_dim)`` and ``output`` is
    ``(batch, seq, heads, head_dim)`` (self-attention: query and key positions coincide). A sequence whose
    real tokens' q, k or v hold a NaN or an infinity must get an output that is not all finite over its real
    tokens; a sequence whose inputs are finite must get a finite output.

    :raises NonFiniteAttentionError: naming the backend and the sequences that break the rule.
    """
    batch, _, seq_len, _ = query.shape
    tokens = valid_tokens(attention_mask, batch, seq_len).to(query.device)                   # (batch, seq)
    inputs_finite = torch.stack([torch.isfinite(t).all(dim=-1).all(dim=1) for t in (query, key, value)]).all(0)
    inputs_bad = (~inputs_finite & tokens).any(dim=-1)                                         # (batch,)
    outputs_finite = (torch.isfinite(output).flatten(2).all(dim=-1) | ~tokens).all(dim=-1)    # (batch,)
    hidden = (inputs_bad & outputs_finite).nonzero().flatten().tolist()
    produced = (~inputs_bad & ~outputs_finite).nonzero().flatten().tolist()
    if hidden:
        raise NonFiniteAttentionError(
            f"backend {spec!r} returned an all-finite attention output for sequence(s) {hidden} of a batch whose "
            "q/k/v hold NaN or infinity there: a backend must not turn non-finite inputs into finite outputs")
    if produced:
        raise NonFiniteAttentionError(
            f"backend {spec!r} returned NaN or infinity in the attention output for sequence(s) {produced} of a "
            "batch whose q/k/v are finite there")


def checked_attention(fn: AttentionFn, spec: str, timer: CheckTimer | None = None) -> AttentionFn:
    """``fn`` followed by :func:`check_finite` on its output (its time added to ``timer``); for evaluation,
    never for timing."""

    def checked(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        result = fn(module, query, key, value, attention_mask, *args, **kwargs)
        started = time.perf_counter()
        try:
            check_finite(spec, query, key, value, attention_mask, result[0])
        finally:
            if timer is not None:
                timer.seconds += time.perf_counter() - started
        return result

    return checked


def expand_kv_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(batch, kv_heads, seq, head_dim)`` key or value repeated to ``(batch, heads, seq, head_dim)``: each
    key/value head serves ``heads // kv_heads`` consecutive query heads (grouped-query attention).

    :raises ValueError: when ``heads`` is not a multiple of ``kv_heads``.
    """
    kv_heads = x.shape[1]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot share {kv_heads} key/value heads evenly")
    return x.repeat_interleave(heads // kv_heads, dim=1)


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules of a transformers model that call the attention interface, in call order (found by one small
    forward pass, :func:`harness.backends.architecture.probe_attention`; empty for a model that bypasses it)."""
    from .architecture import probe_attention

    return probe_attention(model).modules
