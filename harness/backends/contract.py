"""The backend contract: what a plugin implements (:class:`Backend`), and a configured, possibly composed
backend (:class:`ResolvedBackend`).

This module's docstrings, with :mod:`harness.hookspecs`, are the plugin API: a backend can be written from
them alone. The names a third-party plugin may import are listed in :data:`harness.PLUGIN_API`.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping

from ..errors import ParamError, SpecError
from .params import Param, format_value

if TYPE_CHECKING:  # this module never imports torch, so listing plugins stays fast (``attnbench backends``)
    import torch

MaskKind = Literal["bool", "additive"]
AttentionOutput = tuple["torch.Tensor", "torch.Tensor | None"]


class Backend:
    """Base class of attention backends. Subclass it and register the class with the ``register_backends`` hook.

    A backend changes how a BERT-family model computes attention in one or both of two ways:

    * a **whole-model transform**, :meth:`prepare` (e.g. dynamic int8 quantization of ``nn.Linear``);
    * an **attention function**, :meth:`attention`, called by every self-attention layer in place of dense
      attention. A backend that does not override :meth:`attention` keeps the reference's dense SDPA.

    **Class attributes** a subclass sets:

    * ``name`` — unique spec name: lower-case letters, digits and ``-`` (e.g. ``"topk"``); users write
      ``name:param=value,...`` (see :func:`harness.parse_spec`).
    * ``description`` — one line for ``attnbench backends``.
    * ``params`` — tuple of :class:`~harness.Param`; validated values arrive in ``self.values`` (a dict).
    * ``mask_kind`` — the padding mask :meth:`attention` receives (see there): ``"bool"`` or ``"additive"``.
      An instance may set ``self.mask_kind`` in :meth:`check_values` when it depends on a parameter.
    * ``dtypes`` — the floating dtypes :meth:`attention` accepts for q/k/v, by torch name (default
      ``("float32",)``; e.g. ``("float32", "bfloat16", "float16")``; ``torch.dtype`` objects are accepted too,
      but names keep the plugin module importable without torch, which ``attnbench backends`` relies on to
      list plugins fast: import torch inside methods or lazily). The
      harness refuses any other dtype with a ``TypeError`` before calling it. The output has the input's
      dtype. An instance may narrow it in :meth:`check_values` (e.g. an int8 scorer that takes float32 only).
    * ``devices`` — the device types the backend runs on (default ``("cpu",)``; e.g. ``("cpu", "cuda")``). On
      a device outside it, or a run ``--dtype`` outside ``dtypes``, the harness lists the backend as
      unavailable with the reason, before asking :meth:`unavailable_reason`. An instance may narrow it in
      :meth:`check_values`. On CUDA, :meth:`attention` receives CUDA tensors and must allocate on
      ``query.device``.

    **Methods** a subclass may override: :meth:`check_values`, :meth:`unavailable_reason`, :meth:`prepare`,
    :meth:`attention`, :meth:`run_facts`, :meth:`fidelity_stats`.

    **Rules every backend follows** (:mod:`harness.testing` checks each of them: ``check_backend`` and
    ``parametrize_with_checks`` run the checks in a plugin's own tests; the harness applies the cheap ones —
    output layout and dtype, finite outputs — before it measures, and refuses a backend that breaks them):

    * Padding never influences valid positions: the output rows of valid queries depend only on valid keys.
    * Every mask is honoured, not only padding: a query never attends a key its mask row masks (ModernBERT's
      local layers pass a sliding window; a backend that cannot honour a mask raises ``ValueError`` saying
      so, never silently attends outside it). ``attnbench models PATH`` shows the masks a checkpoint passes.
    * Scores are ``(q · k) · scaling`` with the ``scaling`` argument; the same inputs give the same output,
      and q, k, v and the mask are never modified.
    * Non-finite inputs never become finite outputs (the finiteness rule): if any q, k or v value of a
      sequence's real (non-padding) tokens is NaN or infinite, its output over those tokens must not be all
      finite (or the function raises, saying so); if they are all finite, the output must be finite.
      Evaluation checks every call (``attention_interface.check_finite``, never in timed calls) and an eval
      cell that breaks the rule, or whose logits are non-finite, fails with the reason.
    * Parameters that cannot apply are refused in :meth:`check_values` (a :class:`~harness.ParamError` that
      says how to fix the spec), not silently ignored.
    * A configuration that cannot run on this machine says why in :meth:`unavailable_reason`; the harness
      skips it with that reason (asv reports it as skipped). Never fake a result.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    mask_kind: ClassVar[MaskKind] = "bool"
    dtypes: ClassVar[tuple[str, ...]] = ("float32",)
    devices: ClassVar[tuple[str, ...]] = ("cpu",)

    def __init__(self, **values: Any) -> None:
        """Validate parameter values (Python-typed, e.g. ``k=8``); missing ones take their defaults.

        :raises ParamError: unknown parameter, missing required parameter, or a value out of its range.
        """
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

    @classmethod
    def has_attention(cls) -> bool:
        """Whether this backend class overrides :meth:`attention` (otherwise dense SDPA is used)."""
        return cls.attention is not Backend.attention

    def check_values(self) -> None:
        """Override to check constraints between parameters (``self.values``); raise :class:`~harness.ParamError`
        with a message that says how to fix the spec. May set ``self.mask_kind``."""

    @classmethod
    def unavailable_reason(cls, values: Mapping[str, Any] | None = None) -> str | None:
        """Why this backend cannot run on this machine, or ``None`` when it can.

        The one availability question of the contract, asked at two levels:

        * ``values is None`` — the backend as a whole (``attnbench backends`` lists it): answer only for
          reasons that stop every configuration (a missing compiled extension, a CPU feature, a torch build
          without a quantized engine).
        * ``values`` given (a configured instance's ``self.values``) — this configuration; override to answer
          for reasons that depend on a parameter (e.g. ``topk:scorer=fbgemm`` needs the extension while the
          default scorer runs everywhere).

        Return one line that says what is missing and, where possible, how to get it. Must be cheap and must
        not raise. The harness asks before measuring and skips the configuration with this reason.
        """
        return None

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Transform the model before evaluation; return the model to evaluate (the same object or a new one).

        :param model: a private deep copy of the dense model (a transformers ``PreTrainedModel``, or the
            embedded default's wrapper around one), in ``eval()`` mode, float32, on the CPU. In-place changes
            are fine: the dense reference is never touched. The harness moves the returned model to the run's
            device and dtype afterwards (``model.to(device, dtype)``; nothing is moved for CPU float32).

        May: replace or wrap submodules (quantized ``nn.Linear``, fused layers), change weights' storage.
        Must not: change the model's inputs or outputs (shapes, label order), its tokenizer, its attention
        implementation (the harness selects :meth:`attention` after ``prepare``), or put it in training mode.
        Raise ``ValueError`` with a clear message when the model has nothing this backend can transform.
        """
        return model

    def attention(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                  **kwargs: Any) -> AttentionOutput:
        """Compute self-attention for one layer (transformers' ``AttentionInterface`` signature).

        The harness registers this method with ``transformers.AttentionInterface`` (and a matching padding-mask
        builder with ``AttentionMaskInterface``, so that padding reaches it) and selects it on the model.

        :param module: the calling attention module (``BertSelfAttention``, ``ModernBertAttention``, …: whatever
            the architecture calls it; attributes ``is_causal``, ``training``, ``config``, often ``scaling``);
            the attention-core timings pass the module of the model's first attention call.
        :param query: ``(batch, heads, q_len, head_dim)``; ``key``, ``value``: ``(batch, heads, k_len,
            head_dim)``, with as many heads as ``query`` (for grouped-query attention, as EuroBERT's, the harness
            repeats the key/value heads first, as transformers' ``repeat_kv`` does). One of :attr:`dtypes` (the
            run's ``--dtype``, on its ``--device``), possibly non-contiguous views; self-attention, so
            ``q_len == k_len``.
        :param attention_mask: ``None`` when nothing is masked (no padding and no window); otherwise
            ``(batch, 1, q_len, k_len)``, broadcast over heads, of this backend's ``mask_kind``:
            ``"bool"`` — ``torch.bool``, ``True`` = attend (built by transformers' ``sdpa_mask``);
            ``"additive"`` — the query's float dtype, ``0`` to attend and the dtype's minimum to mask
            (``eager_mask``). A padding mask is the same for every query row; a sliding-window mask
            (ModernBERT's local layers: query ``i`` attends keys within the window around ``i``) and any other
            mask transformers builds differ between rows, and must be honoured row by row. The rows of padded
            query positions are computed but ignored by the harness.
        :param kwargs: further options of the call, e.g. ``sliding_window`` (transformers' window size for the
            flash kernels; the mask already encodes it) — a backend may ignore them.
        :param scaling: the softmax scale (``head_dim ** -0.5`` for BERT); ``None`` means that default.
        :param dropout: attention dropout probability; ``0.0`` in evaluation. An inference-only backend
            raises ``NotImplementedError`` for a non-zero value.
        :returns: ``(output, weights)``: ``output`` of shape ``(batch, q_len, heads, head_dim)`` (note the
            transposition) in the query's dtype; ``weights`` ``(batch, heads, q_len, k_len)`` or ``None``
            (return ``None`` unless you have them anyway).
        :raises TypeError: for a mask kind the backend does not implement (say which it takes). Dtypes outside
            :attr:`dtypes` never arrive: the harness refuses them first.
        """
        raise NotImplementedError(f"{self.name} has no attention function (it uses dense SDPA)")

    def run_facts(self) -> dict[str, str]:
        """Facts about this configured backend recorded with every result row (e.g. ``{"fbgemm_isa": "avx2"}``):
        what a reader needs to interpret a number that the spec string alone does not say."""
        return {}

    def fidelity_stats(self, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
                       scaling: float) -> dict[str, float] | None:
        """Optional extra fidelity figures of :meth:`attention` on one layer's real inputs.

        Called by the harness's fidelity pass with the arguments :meth:`attention` received (same shapes,
        mask of this backend's ``mask_kind``). Return per-name means over the valid query rows (e.g.
        ``{"topk_recall": 0.93}``); the harness averages them over layers and batches, weighted by rows,
        and stores them as ``fidelity`` rows. ``None``: nothing extra.
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


def ask_unavailable_reason(cls: type[Backend], values: Mapping[str, Any] | None = None) -> str | None:
    """``cls.unavailable_reason(values)``; plugins written before the ``values`` argument existed override it
    without one, and are asked without it."""
    method = cls.unavailable_reason
    try:
        inspect.signature(method).bind(values)
    except TypeError:
        return method()
    return method(values)


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
        with_attention = [p for p in self.parts if p.has_attention()]
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
        return next((p for p in self.parts if p.has_attention()), None)

    @property
    def mask_kind(self) -> MaskKind:
        part = self.attention_part
        return part.mask_kind if part is not None else "bool"

    def unavailable_reason(self, placement: Any = None) -> str | None:
        """Why this configuration cannot run here (the first part's :meth:`Backend.unavailable_reason`
        for its values, prefixed with the part's name), or ``None``.

        With a ``placement`` (:class:`harness.devices.Placement`: the run's device and dtype), each part's
        declared ``devices`` and ``dtypes`` are checked first (:func:`harness.devices.placement_reason`)."""
        for part in self.parts:
            reason = None
            if placement is not None:
                from ..devices import placement_reason

                reason = placement_reason(part, placement)
            if reason is None:
                from .torch_state import kept_torch_state

                with kept_torch_state(self.spec, "unavailable_reason"):
                    reason = ask_unavailable_reason(type(part), part.values)
            if reason:
                return f"{part.name}: {reason}"
        return None

    @property
    def devices(self) -> tuple[str, ...]:
        """Device types every part runs on."""
        from ..devices import backend_devices

        common = backend_devices(self.parts[0])
        for part in self.parts[1:]:
            common = tuple(d for d in common if d in backend_devices(part))
        return common

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Each part's transform in turn; torch settings a part changes are restored after it
        (:func:`harness.backends.torch_state.kept_torch_state`)."""
        from .torch_state import kept_torch_state

        for part in self.parts:
            with kept_torch_state(self.spec, "prepare"):
                model = part.prepare(model)
        return model

    def run_facts(self) -> dict[str, str]:
        """The parts' :meth:`Backend.run_facts`, plus ``torch_state_restored`` when a call into this backend
        changed a process-wide torch setting that the harness then restored."""
        from .torch_state import restorations

        facts: dict[str, str] = {}
        for part in self.parts:
            facts.update(part.run_facts())
        restored = restorations(self.spec)
        if restored:
            facts["torch_state_restored"] = "; ".join(f"{k}: {v}" for k, v in sorted(restored.items()))
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
