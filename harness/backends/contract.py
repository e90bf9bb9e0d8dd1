"""The backend contract: what a plugin implements, and a configured (possibly composed) backend.

A backend changes how a BERT-family model computes attention, in one or both of two ways:

* a **whole-model transform** — :meth:`Backend.prepare` receives a private copy of the model and
  returns the model to evaluate (e.g. dynamic int8 quantization of ``nn.Linear``);
* an **attention function** — :meth:`Backend.attention`, with transformers' ``AttentionInterface``
  signature; the harness registers it (and a matching padding-mask builder) with transformers and
  selects it on the model copy with ``set_attn_implementation``.

Backends without an attention function run with the dense SDPA attention of the reference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

import torch

from ..errors import ParamError, SpecError
from .params import Param, format_value

MaskKind = Literal["bool", "additive"]


class Backend:
    """Base class of attention backends. Subclass it and register the class with ``register_backends``.

    Class attributes a subclass sets:

    * ``name`` — unique spec name (lower-case letters, digits, ``-``), e.g. ``"topk"``.
    * ``description`` — one line for ``attnbench backends``.
    * ``params`` — tuple of :class:`~harness.Param`; values arrive validated in ``self.values``.
    * ``mask_kind`` — padding mask the attention function receives: ``"bool"`` (``True`` = attend,
      shape ``(batch, 1, q_len, k_len)``, built by transformers' ``sdpa_mask``) or ``"additive"``
      (float, ``0`` or the dtype's minimum, built by ``eager_mask``). The mask is ``None`` when no
      sequence in the batch has padding. An instance may set ``self.mask_kind`` in :meth:`check_values`
      when it depends on a parameter.

    Methods a subclass may override: :meth:`unavailable_reason`, :meth:`availability`, :meth:`prepare`,
    :meth:`attention`, :meth:`run_facts`, :meth:`fidelity_stats`.

    Finiteness rule: an attention function must never turn non-finite inputs into finite outputs. If any q,
    k or v value of a sequence's real (non-padding) tokens is NaN or infinite, its output over those tokens
    must not be all finite (or the function raises, saying so); if they are all finite, the output must be
    finite. Evaluation checks every call (``attention_interface.check_finite``, never in timed calls) and
    an eval cell that breaks the rule, or whose logits are non-finite, fails with the reason.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    mask_kind: ClassVar[MaskKind] = "bool"
    #: Set by a subclass that defines an attention function (the method below); ``None`` means "use dense SDPA".
    attention: ClassVar[Callable[..., tuple[torch.Tensor, torch.Tensor | None]] | None] = None

    def __init__(self, **values: Any) -> None:
        """Validate parameter values (Python-typed); missing ones take their defaults."""
        declared = {p.name: p for p in self.params}
        unknown = set(values) - set(declared)
        if unknown:
            raise ParamError(f"{self.name}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                             f"{self.name} takes {_param_list(self.params)}")
        missing = [p.name for p in self.params if p.required and p.name not in values]
        if missing:
            example = ",".join(f"{name}=..." for name in missing)
            raise ParamError(f"{self.name}: parameter(s) {', '.join(missing)} required, e.g. '{self.name}:{example}'")
        self.values: dict[str, Any] = {
            p.name: p.validate(values[p.name], backend=self.name) if p.name in values else p.default
            for p in self.params}
        self.check_values()

    def check_values(self) -> None:
        """Override to check constraints between parameters; raise :class:`~harness.ParamError`."""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why no configuration of this backend can run on this machine (missing extension, CPU feature), or
        ``None``. Shown by ``attnbench backends``."""
        return None

    def availability(self) -> str | None:
        """Why *this configuration* cannot run here, or ``None``. Defaults to :meth:`unavailable_reason`;
        override when it depends on a parameter (e.g. an optional native scorer)."""
        return type(self).unavailable_reason()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Transform a private copy of the model before evaluation; return the model to use.

        The harness passes a deep copy, so in-place changes are fine; the dense reference is never touched.
        """
        return model

    def run_facts(self) -> dict[str, str]:
        """Facts about this configured backend worth recording with every result (e.g. the int8 engine)."""
        return {}

    def fidelity_stats(self, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
                       scaling: float) -> dict[str, float] | None:
        """Optional extra fidelity figures of the attention function on one layer's real inputs.

        Called by the harness's fidelity pass with the arguments the attention function received (same
        shapes, mask of this backend's ``mask_kind``). Return per-name means over the valid query rows
        (e.g. ``{"topk_recall": 0.93}``); the harness averages them over layers and batches, weighted by rows.
        """
        return None

    @property
    def spec(self) -> str:
        """Canonical spec: name, required and non-default parameters in declaration order (``topk:k=8,bits=4``)."""
        args = [f"{p.name}={format_value(self.values[p.name])}" for p in self.params
                if p.required or self.values[p.name] != p.default]
        return self.name + (":" + ",".join(args) if args else "")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec}>"


def _param_list(params: tuple[Param, ...]) -> str:
    return ", ".join(p.describe() for p in params) if params else "no parameters"


@dataclass(frozen=True)
class PluginInfo:
    """Where a backend or task came from: plugin name and the distribution that installed it.

    A field the plugin's metadata does not state (``None`` or empty) is recorded as ``"unknown"``.
    """

    name: str
    dist: str
    version: str

    def __post_init__(self) -> None:
        for field_ in ("name", "dist", "version"):
            value = getattr(self, field_)
            if not isinstance(value, str) or not value.strip():
                object.__setattr__(self, field_, "unknown" if value is None or not str(value).strip() else str(value))


@dataclass(frozen=True)
class ResolvedBackend:
    """A backend spec resolved to configured :class:`Backend` instances (one, or several composed with ``+``).

    At most one part has an attention function; whole-model transforms apply left to right.
    """

    parts: tuple[Backend, ...]
    plugins: tuple[PluginInfo, ...]

    def __post_init__(self) -> None:
        with_attention = [p for p in self.parts if type(p).attention is not None]
        if len(with_attention) > 1:
            names = " and ".join(repr(p.name) for p in with_attention)
            raise SpecError(f"cannot compose {names}: both replace the attention function; compose at most one "
                            "attention backend with whole-model transforms, e.g. 'dynamic-quant+topk:k=16'")

    @property
    def spec(self) -> str:
        return "+".join(part.spec for part in self.parts)

    @property
    def name(self) -> str:
        return "+".join(part.name for part in self.parts)

    @property
    def params_json(self) -> str:
        """All parameter values, defaults included, as canonical JSON (sorted keys; composite: keyed by part)."""
        if len(self.parts) == 1:
            return json.dumps(self.parts[0].values, sort_keys=True)
        return json.dumps({p.name: p.values for p in self.parts}, sort_keys=True)

    @property
    def attention_part(self) -> Backend | None:
        return next((p for p in self.parts if type(p).attention is not None), None)

    @property
    def mask_kind(self) -> MaskKind:
        part = self.attention_part
        return part.mask_kind if part is not None else "bool"

    def unavailable_reason(self) -> str | None:
        for part in self.parts:
            reason = part.availability()
            if reason:
                return f"{part.name}: {reason}"
        return None

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        for part in self.parts:
            model = part.prepare(model)
        return model

    def run_facts(self) -> dict[str, str]:
        facts: dict[str, str] = {}
        for part in self.parts:
            facts.update(part.run_facts())
        return facts

    @property
    def plugin(self) -> str:
        return "+".join(dict.fromkeys(p.name for p in self.plugins))

    @property
    def plugin_dist(self) -> str:
        return "+".join(dict.fromkeys(p.dist for p in self.plugins))

    @property
    def plugin_version(self) -> str:
        return "+".join(dict.fromkeys(p.version for p in self.plugins))
