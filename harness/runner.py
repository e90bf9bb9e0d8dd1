"""The runner: one measurement run of backends × tasks, written to the results store.

For each base model (the embedded default serves every task with one encoder), each backend gets a deep
copy, its whole-model transform and its attention function; the dense SDPA reference is always prepared.
Per task it records the task's metrics and the agreement with the reference on the same inputs; per
backend, the latency of the whole forward and of the attention core at a fixed shape (interleaved across
backends, warmed up, repeated, raw samples kept) and the peak memory of one forward.
Rows are written to the store after every task, so finished work survives an interrupted run.
"""

from __future__ import annotations

import copy
import io
import json
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .attention import attach
from .backend import ResolvedBackend
from .data import DataSource
from .encoding import EncodedSplit, encode
from .errors import UserError
from .evaluate import agreement, predict
from .fidelity import METRICS as FIDELITY_METRICS
from .fidelity import attention_fidelity, fidelity_batches, reference_outputs
from .measure import Timing, cpu_count, peak_allocated_bytes, time_interleaved
from .models import TaskModels, load_task_models, parse_model_args
from .paths import DEFAULT_STORE
from .provenance import cpu_facts, git_commit, library_versions, machine_id
from .registry import Registry, load_registry
from .spec import expand_grid
from .speed import build_speed_case
from .store import write_rows
from .tasks import Task

REFERENCE = "dense"


@dataclass
class RunSpec:
    """Everything that defines a run; the CLI, the Python API and asv all build one of these."""

    backends: list[str] = field(default_factory=lambda: [REFERENCE])
    tasks: list[str] | None = None          # None: every registered task (or the tasks named in ``model``)
    model: list[str] | None = None          # see harness.models; None: the embedded default
    data: str = "sample"                    # "sample", "hub" or a directory
    limit: int | None = None                # evaluate at most this many examples per task
    eval_batch_size: int = 32
    batch_size: int = 8                     # latency shape: batch × seq_len
    seq_len: int = 128
    threads: int | None = None              # None: every core available to this process
    repeats: int = 10
    warmup: int = 2
    fidelity_examples: int = 64             # examples per task for the attention-fidelity pass (0: skip)
    store: Path | None = DEFAULT_STORE      # None: do not write
    progress: bool = True

    def validate(self) -> None:
        for name in ("eval_batch_size", "batch_size", "seq_len", "repeats"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be >= 1, got {self.limit}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be >= 1, got {self.threads}")
        if self.warmup < 0:
            raise UserError(f"--warmup must be >= 0, got {self.warmup}")
        if self.fidelity_examples < 0:
            raise UserError(f"--fidelity-examples must be >= 0, got {self.fidelity_examples}")


@dataclass
class RunResult:
    run_id: str
    rows: pd.DataFrame
    files: list[Path]
    skipped: dict[str, str]


def _new_run_id(now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def resolve_backends(registry: Registry, specs: list[str]) -> list[ResolvedBackend]:
    """Expand grids, resolve every spec (raising on the first bad one) and drop duplicates."""
    resolved: dict[str, ResolvedBackend] = {}
    for text in specs:
        for concrete in expand_grid(text):
            backend = registry.resolve(concrete)
            resolved.setdefault(backend.spec, backend)
    return list(resolved.values())


def resolve_tasks(registry: Registry, names: list[str] | None, model_sources: dict[str, str]) -> list[Task]:
    if names is None:
        per_task = [k for k in model_sources if k != "*"]
        names = per_task if per_task and "*" not in model_sources else list(registry.tasks)
    for key in model_sources:
        if key != "*" and key not in registry.tasks and key not in {e.task.config for e in registry.tasks.values()}:
            registry.task(key)  # raises with the valid names
    return [registry.task(name) for name in dict.fromkeys(names)]


def prepare_model(base: torch.nn.Module, backend: ResolvedBackend) -> torch.nn.Module:
    """A private copy of ``base`` with the backend's transform and attention; the base is never modified."""
    model = backend.prepare(copy.deepcopy(base))
    attach(model, backend)
    return model.eval()


def serialized_size(model: torch.nn.Module) -> int:
    """Bytes of the model's state dict as ``torch.save`` writes it (counts packed int8 weights correctly)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


class _Rows:
    """Builds tidy rows sharing the run's common fields."""

    def __init__(self, common: dict[str, Any]) -> None:
        self.common = common

    def __call__(self, backend: ResolvedBackend, category: str, metric: str, value: float, unit: str,
                 direction: str, **fields: Any) -> dict[str, Any]:
        extra = backend.run_facts()
        return {**self.common, "plugin": backend.plugin, "plugin_dist": backend.plugin_dist,
                "plugin_version": backend.plugin_version, "backend": backend.spec, "backend_name": backend.name,
                "backend_params": backend.params_json, "category": category, "metric": metric,
                "value": float(value), "unit": unit, "direction": direction,
                "extra": json.dumps(extra, sort_keys=True) if extra else None, **fields}


def run(spec: RunSpec, registry: Registry | None = None, *, log: Callable[[str], None] | None = None) -> RunResult:
    """Execute a run and write its rows to ``spec.store`` (unless ``None``). Returns every row as a DataFrame.

    Raises :class:`~harness.UserError` for bad specs, tasks, models or data before any measurement starts.
    """
    log = log or (lambda message: print(message, file=sys.stderr))
    spec.validate()
    registry = registry or load_registry()
    for failure in registry.failures:
        log(f"warning: {failure}")
    backends = resolve_backends(registry, spec.backends)
    reference = registry.resolve(REFERENCE)
    skipped = {b.spec: reason for b in backends if (reason := b.unavailable_reason())}
    for name, reason in skipped.items():
        log(f"skipping backend {name}: {reason}")
    backends = [b for b in backends if b.spec not in skipped]
    if not backends:
        raise UserError("none of the requested backends is available on this machine")
    model_sources = parse_model_args(spec.model)
    tasks = resolve_tasks(registry, spec.tasks, model_sources)
    source = DataSource.parse(spec.data)
    threads = spec.threads or cpu_count()
    torch.set_num_threads(threads)

    now = datetime.now(timezone.utc)
    run_id = _new_run_id(now)
    commit = git_commit()
    meta = {"run_id": run_id, "timestamp": now.isoformat(), "machine": machine_id(), "cpu": cpu_facts(),
            "commit": commit.sha, "dirty": commit.dirty, "threads": threads, "versions": library_versions(),
            "spec": {**asdict(spec), "store": str(spec.store) if spec.store else None},
            "argv": sys.argv, "skipped": skipped}
    rows = _Rows({"run_id": run_id, "timestamp": now, "source": "harness", "commit": commit.sha,
                  "dirty": commit.dirty, "machine": machine_id(), "cpu": json.dumps(cpu_facts(), sort_keys=True),
                  "threads": threads, "versions": json.dumps(library_versions(), sort_keys=True),
                  "data_source": source.label})
    log(f"run {run_id}: {len(backends)} backend(s) × {len(tasks)} task(s), {threads} thread(s), data {source.label}")

    models = load_task_models(spec.model, tasks)
    all_rows: list[dict[str, Any]] = []
    files: list[Path] = []

    def emit(new_rows: list[dict[str, Any]]) -> None:
        all_rows.extend(new_rows)
        if spec.store is not None and new_rows:
            files.extend(write_rows(spec.store, new_rows, meta))

    groups: dict[int, list[Task]] = {}
    for task in tasks:
        groups.setdefault(id(models.model(task)), []).append(task)
    timed = False
    for group in groups.values():
        base = models.model(group[0])
        prepared = {b.spec: prepare_model(base, b) for b in [reference, *backends]}
        for task in group:
            encoded = _load_encoded(task, source, models, spec.limit)
            if not timed:
                emit(_measure_speed(spec, models, task, encoded, backends, prepared, rows, log))
                timed = True
            emit(_evaluate_task(spec, models, task, encoded, reference, backends, prepared, rows))
        del prepared
    return RunResult(run_id, pd.DataFrame(all_rows), files, skipped)


def _load_encoded(task: Task, source: DataSource, models: TaskModels, limit: int | None) -> EncodedSplit:
    rows = source.load(task)
    excluded = models.excluded_idx(task)
    if len(excluded):
        keep = ~np.isin(np.asarray(list(rows["idx"])), excluded)
        rows = rows.select(np.flatnonzero(keep))
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    if len(rows) == 0:
        raise UserError(f"task {task.name!r}: no examples to evaluate")
    return encode(task, rows, models.tokenizer(task), models.max_length(task))


def _evaluate_task(spec: RunSpec, models: TaskModels, task: Task, encoded: EncodedSplit,
                   reference: ResolvedBackend, backends: list[ResolvedBackend],
                   prepared: dict[str, torch.nn.Module], rows: _Rows) -> list[dict[str, Any]]:
    kwargs = models.forward_kwargs(task)
    common = {"model": models.name(task), "task": task.name, "split": task.split, "n_examples": len(encoded),
              "batch_size": spec.eval_batch_size}
    ref_logits = predict(prepared[reference.spec], encoded, spec.eval_batch_size, kwargs,
                         desc=f"{task.name} {reference.spec} (reference)", progress=spec.progress)
    out = []
    for backend in tqdm(backends, desc=task.name, unit="backend", leave=False, disable=not spec.progress):
        if backend.spec == reference.spec:
            logits = ref_logits
        else:
            logits = predict(prepared[backend.spec], encoded, spec.eval_batch_size, kwargs,
                             desc=f"{task.name} {backend.spec}", progress=spec.progress)
        predictions = task.predictions(logits)
        for metric in task.metrics:
            out.append(rows(backend, "quality", metric.name, metric.fn(encoded.labels, predictions), "score",
                            metric.direction, **common))
        if backend.spec != reference.spec:
            for name, value in agreement(ref_logits, logits, task.is_regression).items():
                direction = "higher" if name == "agreement" else "lower"
                out.append(rows(backend, "agreement", name, value, "ratio" if name == "agreement" else "logit",
                                direction, **common))
    others = [b for b in backends if b.spec != reference.spec]
    if spec.fidelity_examples and others:
        batches = fidelity_batches(encoded, spec.fidelity_examples, spec.eval_batch_size)
        ref_outputs = reference_outputs(prepared[reference.spec], batches, kwargs)
        fid_common = {**common, "n_examples": min(spec.fidelity_examples, len(encoded))}
        for backend in others:
            figures = attention_fidelity(prepared[backend.spec], backend, batches, ref_outputs, kwargs)
            for name, value in figures.items():
                unit, direction = FIDELITY_METRICS.get(name, ("ratio", "higher"))
                out.append(rows(backend, "fidelity", name, value, unit, direction, **fid_common))
    return out


def _measure_speed(spec: RunSpec, models: TaskModels, task: Task, encoded: EncodedSplit,
                   backends: list[ResolvedBackend], prepared: dict[str, torch.nn.Module], rows: _Rows,
                   log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Forward and attention-core latency (interleaved across backends) and memory, at batch × seq_len."""
    common = {"model": models.name(task), "task": None, "split": None, "n_examples": spec.batch_size,
              "batch_size": spec.batch_size, "seq_len": spec.seq_len}
    cases = {b.spec: build_speed_case(b, models, task, encoded, batch_size=spec.batch_size, seq_len=spec.seq_len,
                                      prepared=prepared[b.spec]) for b in backends}
    rounds = (spec.warmup + spec.repeats) * 2
    with tqdm(total=rounds, desc=f"timing {spec.batch_size}x{spec.seq_len}", unit="round", leave=False,
              disable=not spec.progress) as bar:
        started = time.perf_counter()
        forward_times = time_interleaved({name: case.forward for name, case in cases.items()},
                                         repeats=spec.repeats, warmup=spec.warmup, on_round=lambda: bar.update(1))
        bar.update(spec.warmup)
        core_times = time_interleaved({name: case.attention_core for name, case in cases.items()},
                                      repeats=spec.repeats * 3, warmup=spec.warmup, on_round=lambda: bar.update(1 / 3))
        bar.update(spec.warmup)
    log(f"timing took {time.perf_counter() - started:.1f}s")

    out = []
    for backend in backends:
        for metric, timing in (("latency_forward", forward_times[backend.spec]),
                               ("latency_attention_core", core_times[backend.spec])):
            out.append(_timing_row(rows, backend, metric, timing, common))
        case = cases[backend.spec]
        out.append(rows(backend, "memory", "peak_memory_forward", peak_allocated_bytes(case.forward), "bytes",
                        "lower", **common))
        out.append(rows(backend, "memory", "model_size", serialized_size(case.model), "bytes", "lower", **common))
    return out


def _timing_row(rows: _Rows, backend: ResolvedBackend, metric: str, timing: Timing,
                common: dict[str, Any]) -> dict[str, Any]:
    row = rows(backend, "speed", metric, timing.median, "s", "lower", **common)
    row["samples"] = list(timing.samples)
    return row
