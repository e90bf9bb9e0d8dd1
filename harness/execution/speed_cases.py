"""Speed cases: the callables that the runner and the asv suite time.

A speed case is one backend applied to one model at a fixed ``batch × seq_len`` shape: the whole forward
on real tokens without padding, and the attention core alone on random ``(batch, heads, seq, head_dim)``
q/k/v with no mask. The runner times many cases interleaved; asv times one per process.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import torch

from ..backends.attention_interface import attention_function
from ..backends.architecture import AttentionCall, probe_attention
from ..backends.contract import ResolvedBackend
from ..devices import Placement, move_batch
from ..tasks.data import DataSource
from ..tasks.encoding import EncodedSplit, encode, fixed_shape_inputs
from ..errors import SpecError
from .forward import logits_of
from .eval_cells import prepare_model
from ..models.loading import TaskModels, load_task_models
from ..registry.registry import Registry, load_registry

SPEED_TASK = "sst2"  # whose tokens fill the fixed-shape batches of speed cases built outside a run


def random_qkv(config, batch_size: int, seq_len: int, seed: int = 0,
               placement: Placement | None = None, *, call: AttentionCall | None = None) -> tuple[torch.Tensor, ...]:
    """Seeded normal q, k, v of the model's attention shape: q ``(batch, heads, seq_len, head_dim)``, k and v
    ``(batch, kv_heads, seq_len, head_dim)`` (drawn on the CPU in float32, so every device and dtype sees the
    same values, then moved and cast to ``placement``).

    ``call``: the model's first attention call as :func:`~harness.backends.architecture.probe_attention` saw
    it, which gives the heads, key/value heads and head dimension; without it they come from ``config``
    (``num_attention_heads``, ``num_key_value_heads``, ``head_dim`` or ``hidden_size // heads``).
    """
    if call is not None:
        heads, kv_heads, head_dim = call.heads, call.kv_heads, call.head_dim
    else:
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    generator = torch.Generator().manual_seed(seed)
    qkv = tuple(torch.randn(batch_size, n, seq_len, head_dim, generator=generator)
                for n in (heads, kv_heads, kv_heads))
    if placement is None or placement.is_default:
        return qkv
    return tuple(t.to(device=placement.torch_device, dtype=placement.torch_dtype) for t in qkv)


def forward_call(model: torch.nn.Module, inputs: dict[str, torch.Tensor], forward_kwargs: dict) -> Callable[[], object]:
    def call() -> object:
        with torch.inference_mode():
            return logits_of(model(**inputs, **forward_kwargs))
    return call


_FIRST_CALLS: "weakref.WeakKeyDictionary[torch.nn.Module, AttentionCall]" = weakref.WeakKeyDictionary()


def first_attention_call(model: torch.nn.Module) -> AttentionCall:
    """The first attention call of ``model`` (a dense model, never modified: see :func:`probe_attention`),
    probed once per model object.

    :raises ModelError: when the model makes no call through transformers' attention interface.
    """
    call = _FIRST_CALLS.get(model)
    if call is None:
        call = _FIRST_CALLS[model] = probe_attention(model).first
    return call


def attention_core_call(backend: ResolvedBackend, model: torch.nn.Module, qkv: tuple[torch.Tensor, ...],
                        call: AttentionCall | None = None) -> Callable[[], object]:
    """The backend's attention function alone, called as the model's first attention layer calls it: with
    its module and options (``scaling``, ``sliding_window``, …), no mask and no dropout.

    ``call`` is that first call, probed on the dense model (:func:`first_attention_call`); ``model`` may be
    a prepared copy of it, whose module of the same name is passed. Without ``call``, ``model`` is probed.
    """
    call = call if call is not None else first_attention_call(model)
    module = _same_module(model, call)
    fn = attention_function(backend)
    options = {**call.replay_options(), "dropout": 0.0}
    q, k, v = qkv

    def run() -> object:
        with torch.inference_mode():
            return fn(module, q, k, v, None, **options)
    return run


def _same_module(model: torch.nn.Module, call: AttentionCall) -> torch.nn.Module:
    """The call's module if it belongs to ``model``, else ``model``'s module at the same path (a prepared deep
    copy of the probed model), else the probed module itself."""
    if any(candidate is call.module for candidate in model.modules()):
        return call.module
    try:
        return model.get_submodule(call.path)
    except AttributeError:
        return call.module


def unavailable(registry: Registry, spec: str) -> str | None:
    """Why ``spec`` cannot run with this installation: unavailable here, or unknown to this version of
    attnbench (asv runs today's benchmarks against older commits, which may predate a backend)."""
    try:
        return registry.resolve(spec).unavailable_reason()
    except SpecError as exc:
        return f"not available in this version of attnbench: {exc}"


@dataclass
class SpeedCase:
    """A prepared model and fixed inputs for one backend; :attr:`forward` and :attr:`attention_core` are timed."""

    backend: ResolvedBackend
    model: torch.nn.Module
    forward: Callable[[], object]
    attention_core: Callable[[], object]


def build_speed_case(backend: ResolvedBackend, models: TaskModels, task, encoded: EncodedSplit, *,
                     batch_size: int, seq_len: int, prepared: torch.nn.Module,
                     placement: Placement | None = None) -> SpeedCase:
    """``prepared`` is already at ``placement`` (device and dtype); the inputs are moved there."""
    inputs = move_batch(fixed_shape_inputs(encoded, batch_size, seq_len), placement)
    base = models.model(task)
    call = first_attention_call(base)
    qkv = random_qkv(base.config, batch_size, seq_len, placement=placement, call=call)
    return SpeedCase(backend, prepared, forward_call(prepared, inputs, models.forward_kwargs(task)),
                     attention_core_call(backend, prepared, qkv, call))


def speed_case(spec: str, *, seq_len: int = 128, batch_size: int = 8, threads: int | None = None,
               model: list[str] | None = None, registry: Registry | None = None) -> SpeedCase:
    """One backend spec ready to time, on the embedded default (or ``model``), for asv and scripts.

    Raises :class:`NotImplementedError` with the reason when the backend cannot run on this machine
    (asv reports that as a skipped benchmark).
    """
    if threads:
        torch.set_num_threads(threads)
    registry = registry or load_registry()
    reason = unavailable(registry, spec)
    if reason:
        raise NotImplementedError(reason)
    backend = registry.resolve(spec)
    task = registry.task(SPEED_TASK)
    models = load_task_models(model, [task])
    encoded = encode(task, DataSource.parse("sample").load(task), models.tokenizer(task), models.max_length(task))
    prepared = prepare_model(models.model(task), backend)
    return build_speed_case(backend, models, task, encoded, batch_size=batch_size, seq_len=seq_len,
                            prepared=prepared)
