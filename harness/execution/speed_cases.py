"""Speed cases: the callables that the runner and the asv suite time.

A speed case is one backend applied to one model at a fixed ``batch × seq_len`` shape: the whole forward
on real tokens without padding, and the attention core alone on random ``(batch, heads, seq, head_dim)``
q/k/v with no mask. The runner times many cases interleaved; asv times one per process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..backends.attention_interface import attention_function, attention_modules
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
               placement: Placement | None = None) -> tuple[torch.Tensor, ...]:
    """Seeded normal q, k, v of the model's attention shape ``(batch, heads, seq_len, head_dim)`` (drawn on the
    CPU in float32, so every device and dtype sees the same values, then moved and cast to ``placement``)."""
    heads = config.num_attention_heads
    generator = torch.Generator().manual_seed(seed)
    qkv = tuple(torch.randn(batch_size, heads, seq_len, config.hidden_size // heads, generator=generator)
                for _ in range(3))
    if placement is None or placement.is_default:
        return qkv
    return tuple(t.to(device=placement.torch_device, dtype=placement.torch_dtype) for t in qkv)


def forward_call(model: torch.nn.Module, inputs: dict[str, torch.Tensor], forward_kwargs: dict) -> Callable[[], object]:
    def call() -> object:
        with torch.inference_mode():
            return logits_of(model(**inputs, **forward_kwargs))
    return call


def attention_core_call(backend: ResolvedBackend, model: torch.nn.Module,
                        qkv: tuple[torch.Tensor, ...]) -> Callable[[], object]:
    """The backend's attention function alone, called as its first attention layer would call it."""
    fn, module = attention_function(backend), attention_modules(model)[0]
    q, k, v = qkv

    def call() -> object:
        with torch.inference_mode():
            return fn(module, q, k, v, None, scaling=module.scaling, dropout=0.0)
    return call


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
    qkv = random_qkv(models.model(task).config, batch_size, seq_len, placement=placement)
    return SpeedCase(backend, prepared, forward_call(prepared, inputs, models.forward_kwargs(task)),
                     attention_core_call(backend, prepared, qkv))


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
