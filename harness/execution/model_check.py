"""``attnbench models``: can attnbench swap a checkpoint's attention, and which backends apply to it?

For each checkpoint, :func:`check_model` loads it (nothing is measured or stored), watches one forward pass
through transformers' attention interface (:func:`~harness.backends.architecture.probe_attention`: the
attention calls, heads, head dimension and masks), then tries every backend spec on it: the backend's
availability here, its ``prepare`` on a copy of the model, and a forward pass with its attention on the same
small padded batch. A backend applies when all three succeed; otherwise the first failure is its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..backends.contract import Backend, ResolvedBackend
from ..backends.architecture import AttentionProfile, probe_attention, probe_inputs, supported_message

if TYPE_CHECKING:
    from .. import Registry

#: Probe length: long enough that a sliding window of a base-size ModernBERT (128 tokens) shows in the masks.
PROBE_SEQ_LEN = 256


@dataclass
class BackendVerdict:
    """Whether one backend spec applies to the checkpoint (``reason`` says why not)."""

    spec: str
    applies: bool
    replaces_attention: bool
    reason: str | None = None


@dataclass
class ModelCheck:
    """The answer for one checkpoint: its attention profile and a verdict per backend spec."""

    source: str
    profile: AttentionProfile
    backends: list[BackendVerdict] = field(default_factory=list)

    @property
    def swappable(self) -> bool:
        return self.profile.swappable

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no tensors or modules)."""
        profile = self.profile
        return {"model": self.source, "architecture": profile.architecture, "model_type": profile.model_type,
                "swappable": profile.swappable, "reason": profile.reason,
                "attention_calls": len(profile.calls),
                "heads": sorted({c.heads for c in profile.calls}), "kv_heads": sorted({c.kv_heads for c in profile.calls}),
                "head_dim": sorted({c.head_dim for c in profile.calls}),
                "masks": profile.masks(), "sliding_windows": sliding_windows(profile),
                "probe": {"batch_size": profile.batch_size, "seq_len": profile.seq_len},
                "backends": [vars(v) for v in self.backends]}


def sliding_windows(profile: AttentionProfile) -> dict[str, list[int]]:
    """``{window: [call indices]}`` for the calls that passed a ``sliding_window`` option (ModernBERT's local
    layers), keyed by the window as a string (JSON keys)."""
    windows: dict[str, list[int]] = {}
    for index, call in enumerate(profile.calls):
        if call.sliding_window is not None:
            windows.setdefault(str(call.sliding_window), []).append(index)
    return windows


def default_specs(registry: Registry) -> list[str]:
    """One spec per registered backend: its defaults, a required parameter filled with a placeholder value
    (an int 8 within its bounds, a float at its lower bound or 1, the first choice, ``False``)."""
    specs = []
    for name in sorted(registry.backends):
        cls: type[Backend] = registry.backends[name].cls
        args = []
        for param in cls.params:
            if not param.required:
                continue
            if param.choices:
                value: Any = param.choices[0]
            elif param.type is int:
                value = int(min(max(8, param.min if param.min is not None else 8),
                                param.max if param.max is not None else 8))
            elif param.type is float:
                value = param.min if param.min is not None else 1.0
            elif param.type is bool:
                value = False
            else:
                value = ""
            args.append(f"{param.name}={value}")
        specs.append(name + (":" + ",".join(args) if args else ""))
    return specs


def load_checkpoint(source: str) -> torch.nn.Module:
    """The ``*ForSequenceClassification`` checkpoint at ``source`` (``embedded``: the packaged encoder), loaded
    with its own attention implementation, in eval mode.

    :raises ModelError: when it cannot be loaded.
    """
    from transformers import AutoModel, AutoModelForSequenceClassification

    from ..models.embedded import embedded_model_dir
    from ..models.loading import EMBEDDED, _load_pretrained

    if source == EMBEDDED:
        return _load_pretrained(AutoModel, str(embedded_model_dir())).eval()
    return _load_pretrained(AutoModelForSequenceClassification, source).eval()


def backend_verdict(model: torch.nn.Module, backend: ResolvedBackend, seq_len: int) -> BackendVerdict:
    """Try ``backend`` on ``model`` (a dense model that calls the attention interface): availability, its
    ``prepare`` on a copy, and a forward pass on :func:`probe_inputs` with its attention selected."""
    from .eval_cells import prepare_model

    replaces = backend.attention_part is not None
    reason = backend.unavailable_reason()
    if reason:
        return BackendVerdict(backend.spec, False, replaces, f"unavailable here: {reason}")
    try:
        prepared = prepare_model(model, backend)
    except Exception as exc:  # a backend's own words on why it cannot transform this model
        return BackendVerdict(backend.spec, False, replaces, f"cannot prepare the model: {_one_line(exc)}")
    try:
        with torch.inference_mode():
            prepared(**probe_inputs(prepared, seq_len=seq_len))
    except Exception as exc:
        return BackendVerdict(backend.spec, False, replaces, f"fails on this model's attention calls: {_one_line(exc)}")
    return BackendVerdict(backend.spec, True, replaces)


def check_model(source: str, registry: Registry, specs: list[str] | None = None,
                seq_len: int = PROBE_SEQ_LEN) -> ModelCheck:
    """Load ``source``, probe its attention (a batch of 2 × ``seq_len`` tokens, one sequence padded) and give a
    verdict per backend spec (default :func:`default_specs`). Backends are tried only on a swappable model.

    :raises ModelError: the checkpoint cannot be loaded. :raises SpecError: a spec is malformed.
    """
    backends = [registry.resolve(spec) for spec in (specs or default_specs(registry))]
    model = load_checkpoint(source)
    profile = probe_attention(model, seq_len=seq_len)
    check = ModelCheck(source, profile)
    if profile.swappable:
        model.set_attn_implementation("sdpa")
        check.backends = [backend_verdict(model, backend, seq_len) for backend in backends]
    return check


def format_check(check: ModelCheck) -> str:
    """The human-readable report of one :class:`ModelCheck` (several lines, ending with a newline)."""
    profile = check.profile
    lines = [f"{check.source}: {profile.architecture} (model_type {profile.model_type})"]
    if not profile.swappable:
        lines.append(f"  NOT SUPPORTED: {profile.reason}")
        lines.append(f"  {supported_message()}")
        return "\n".join(lines) + "\n"
    calls = profile.calls
    heads = "/".join(str(h) for h in sorted({c.heads for c in calls}))
    kv = "/".join(str(h) for h in sorted({c.kv_heads for c in calls}))
    dims = "/".join(str(d) for d in sorted({c.head_dim for c in calls}))
    lines.append(f"  attention swappable: {len(calls)} attention call(s) per forward through transformers' "
                 f"attention interface ({calls[0].module_type})")
    lines.append(f"  heads {heads}" + (f", key/value heads {kv} (grouped-query: repeated for backends)"
                                       if kv != heads else "") + f", head dim {dims}")
    masks = profile.masks()
    described = ", ".join(f"{n} call(s) {kind}" for kind, n in sorted(masks.items()))
    lines.append(f"  masks on a padded batch of {profile.batch_size} x {profile.seq_len} tokens: {described}")
    for window, indices in sliding_windows(profile).items():
        lines.append(f"  sliding window {window} (transformers' size) on call(s) {', '.join(map(str, indices))}: "
                     "a backend must not attend outside it")
    for verdict in check.backends:
        kind = "replaces attention" if verdict.replaces_attention else "whole-model transform, attention stays SDPA"
        status = "applies" if verdict.applies else f"does not apply: {verdict.reason}"
        lines.append(f"  {verdict.spec} ({kind}): {status}")
    return "\n".join(lines) + "\n"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")
