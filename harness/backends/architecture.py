"""Whether attnbench can swap a model's attention, found by watching the model's own attention calls.

A backend replaces attention through transformers' ``AttentionInterface``: the model's attention modules look
their attention function up by ``config._attn_implementation`` and call it with ``(module, query, key, value,
attention_mask, scaling=..., dropout=..., **kwargs)``. An architecture whose modules compute attention
themselves (DeBERTa, MPNet, RoFormer, Megatron-BERT in transformers 5.x) never makes that call, so no backend
can be swapped in.

:func:`probe_attention` answers the question for any model, without a list of architecture names: it selects a
recording attention function, runs one small forward pass, and keeps what every call received — the calling
module, the number of query and key/value heads, the head dimension, the softmax scale, the mask and the
options transformers passed (``sliding_window`` on ModernBERT's local layers). The attention modules, the
shapes of the attention-core speed cases and the masks a backend must honour all come from there.
:func:`attention_calls` is the same recording, for any measurement that needs every call's output (the
fidelity pass).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from ..errors import ModelError

#: Architectures whose ``*ForSequenceClassification`` the test matrix runs with every built-in backend.
TESTED_ARCHITECTURES = ("BERT", "RoBERTa", "XLM-RoBERTa", "DistilBERT", "ALBERT", "ELECTRA", "ModernBERT",
                        "EuroBERT")

#: Options of an attention call kept in :attr:`AttentionCall.options` (scalars only: tensors are per batch).
_SCALARS = (bool, int, float, str, type(None))

Recorder = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", dict,
                     torch.Tensor], None]


def implementation_of(model: torch.nn.Module) -> str:
    """The attention implementation name the model has selected (``config._attn_implementation``)."""
    return getattr(model.config, "_attn_implementation", None) or "eager"


@contextmanager
def attention_calls(model: torch.nn.Module, record: Recorder) -> Iterator[None]:
    """Call ``record(module, query, key, value, attention_mask, kwargs, output)`` after every attention call
    of ``model`` while the context is open.

    The model keeps computing attention with its current implementation (the backend selected with
    :func:`~harness.backends.attention_interface.attach`, or SDPA); a model on transformers' ``eager`` path
    is recorded through SDPA, which agrees with it to rounding. ``output`` is the attention output
    ``(batch, q_len, heads, head_dim)``, before the output projection. The previous implementation is
    selected again on exit.
    """
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    current = implementation_of(model)
    inner = ALL_ATTENTION_FUNCTIONS._global_mapping.get(current) if current != "eager" else None
    builder = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(current) if inner is not None else None
    if inner is None or builder is None:
        inner, builder = sdpa_attention_forward, sdpa_mask

    def recording(module, query, key, value, attention_mask, *args, **kwargs):
        result = inner(module, query, key, value, attention_mask, *args, **kwargs)
        record(module, query, key, value, attention_mask, kwargs, result[0])
        return result

    # One registration per context: concurrent or nested recordings never share a function.
    name = f"{current}+recorded@{id(recording):x}"
    AttentionInterface.register(name, recording)
    AttentionMaskInterface.register(name, builder)
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(current)
        # the recording function holds what it recorded: unregister it, or every recording stays alive
        AttentionInterface._global_mapping.pop(name, None)
        AttentionMaskInterface._global_mapping.pop(name, None)


@dataclass(frozen=True)
class AttentionCall:
    """One attention call of a forward pass, as the model made it.

    ``heads`` query heads and ``kv_heads`` key/value heads (fewer with grouped-query attention) of
    ``head_dim`` features; ``scaling`` the softmax scale passed (``None``: ``head_dim ** -0.5``); ``mask``:
    ``"none"``, ``"key-padding"`` (the same keys masked for every query) or ``"per-query"`` (a mask that
    differs between query rows, e.g. a sliding window); ``options``: the scalar keyword arguments of the call
    (``dropout``, ``sliding_window``, …); ``path``: the module's name in the probed model.
    """

    module: torch.nn.Module = field(compare=False, repr=False)
    path: str
    module_type: str
    heads: int
    kv_heads: int
    head_dim: int
    q_len: int
    k_len: int
    scaling: float | None
    mask: str
    options: dict[str, Any] = field(compare=False)

    @property
    def sliding_window(self) -> int | None:
        """The ``sliding_window`` option (transformers' window size for the flash kernels), if the call has one."""
        value = self.options.get("sliding_window")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def replay_options(self) -> dict[str, Any]:
        """The keyword arguments to call an attention function as this call did (its scalar options)."""
        return dict(self.options)


def mask_kind(attention_mask: torch.Tensor | None) -> str:
    """``"none"``, ``"key-padding"`` or ``"per-query"`` for a ``(batch, 1, q_len, k_len)`` bool or additive mask."""
    if attention_mask is None:
        return "none"
    rows = attention_mask[:, :, :1, :].expand_as(attention_mask)
    return "key-padding" if torch.equal(attention_mask, rows) else "per-query"


@dataclass
class AttentionProfile:
    """What :func:`probe_attention` saw: the architecture and its attention calls, in call order."""

    architecture: str
    model_type: str
    calls: list[AttentionCall]
    batch_size: int
    seq_len: int
    reason: str | None = None

    @property
    def swappable(self) -> bool:
        """Whether a backend can replace the model's attention (``reason`` says why not)."""
        return self.reason is None

    @property
    def modules(self) -> list[torch.nn.Module]:
        """The modules that call the attention function, in call order, each once."""
        seen: dict[int, torch.nn.Module] = {}
        for call in self.calls:
            seen.setdefault(id(call.module), call.module)
        return list(seen.values())

    @property
    def first(self) -> AttentionCall:
        """The first attention call (the one the attention-core speed cells replay)."""
        if not self.calls:
            raise ModelError(self.reason or f"{self.architecture} made no attention call")
        return self.calls[0]

    def masks(self) -> dict[str, int]:
        """How many calls received each mask kind (``none``, ``key-padding``, ``per-query``)."""
        counts: dict[str, int] = {}
        for call in self.calls:
            counts[call.mask] = counts.get(call.mask, 0) + 1
        return counts


def probe_inputs(model: torch.nn.Module, batch_size: int = 2, seq_len: int = 16) -> dict[str, torch.Tensor]:
    """A small batch of token ids valid for ``model``'s vocabulary: ``batch_size`` sequences of ``seq_len``
    int64 ids, every sequence after the first padded to about 60 % of the length (so that masks appear)."""
    config = model.config
    vocab = int(getattr(config, "vocab_size", 0) or 1000)
    limit = getattr(config, "max_position_embeddings", None)
    seq_len = max(2, min(seq_len, int(limit) - 2 if isinstance(limit, int) and limit > 4 else seq_len))
    low = 1000 if vocab > 2000 else 0  # above the special tokens of a BERT-like vocabulary
    ids = low + (torch.arange(batch_size * seq_len).view(batch_size, seq_len) * 7919) % (vocab - low)
    attention_mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    attention_mask[1:, max(1, seq_len * 3 // 5):] = 0
    pad = getattr(config, "pad_token_id", None)
    ids = ids.masked_fill(attention_mask == 0, int(pad) if isinstance(pad, int) and 0 <= pad < vocab else 0)
    inputs = {"input_ids": ids, "attention_mask": attention_mask}
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        inputs["token_type_ids"] = torch.zeros_like(ids)
    return inputs


def probe_attention(model: torch.nn.Module, *, batch_size: int = 2, seq_len: int = 16) -> AttentionProfile:
    """Run one forward pass of ``model`` on :func:`probe_inputs` and record every attention call.

    ``model`` is a transformers ``PreTrainedModel`` (or a wrapper with ``config`` and
    ``set_attn_implementation``) in eval mode. Never raises for a model that cannot work: the profile's
    ``reason`` says why (no call reached the attention interface, the forward failed, or a call is not
    self-attention). ``seq_len`` longer than a sliding window shows the window as a ``per-query`` mask.
    """
    from transformers.utils import logging as hf_logging

    architecture = type(model).__name__
    if architecture == "PooledClassifier" and hasattr(model, "encoder"):
        architecture = type(model.encoder).__name__
    model_type = str(getattr(model.config, "model_type", "unknown"))
    calls: list[AttentionCall] = []
    paths = {id(module): name for name, module in model.named_modules()}

    def record(module, query, key, value, attention_mask, kwargs, output) -> None:
        options = {k: v for k, v in kwargs.items() if isinstance(v, _SCALARS)}
        calls.append(AttentionCall(module, paths.get(id(module), ""), type(module).__name__, int(query.shape[1]), int(key.shape[1]),
                                   int(query.shape[-1]), int(query.shape[2]), int(key.shape[2]),
                                   kwargs.get("scaling"), mask_kind(attention_mask), options))

    inputs = probe_inputs(model, batch_size, seq_len)
    length = int(inputs["input_ids"].shape[1])
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # transformers logs, rather than raises, for a model it cannot switch
    try:
        with attention_calls(model, record), torch.inference_mode():
            model(**inputs)
    except Exception as exc:  # the model is the user's: any failure is a reason, not a crash
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return AttentionProfile(architecture, model_type, calls, batch_size, length,
                                f"{architecture}: a forward pass through transformers' attention interface failed "
                                f"({type(exc).__name__}: {first[:200]})")
    finally:
        hf_logging.set_verbosity(verbosity)
    reason = None
    if not calls:
        reason = (f"{architecture} computes attention in its own modules, not through transformers' attention "
                  "interface, so no backend can replace it")
    elif any(c.q_len != c.k_len for c in calls):
        reason = f"{architecture} makes attention calls whose queries and keys differ in length (not self-attention)"
    return AttentionProfile(architecture, model_type, calls, batch_size, length, reason)


def supported_message() -> str:
    """The sentence that names what attnbench supports (for refusals and ``attnbench models``)."""
    return ("attnbench supports encoders that call the interface, such as "
            + ", ".join(TESTED_ARCHITECTURES[:-1]) + " and " + TESTED_ARCHITECTURES[-1])


def require_swappable(model: torch.nn.Module, source: str) -> AttentionProfile:
    """:func:`probe_attention`, raising :class:`~harness.errors.ModelError` in one line when no backend can
    replace the model's attention (before anything is measured)."""
    profile = probe_attention(model)
    if not profile.swappable:
        raise ModelError(f"model {source!r}: {profile.reason}; {supported_message()} "
                         f"(check one with: attnbench models PATH)")
    return profile
