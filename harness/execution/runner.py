"""The runner: a run of backends × tasks as a set of cells, written to the results store cell by cell.

1. Resolve backend specs (grids expand), tasks, model and data; skip unavailable backends with the reason;
   refuse evaluation data with unlabelled or out-of-range labels before anything is measured.
2. Plan the cells: one *speed* cell per backend at the latency shape, one *eval* cell per backend × task.
   The plan id hashes everything that defines the results; with ``resume``, cells of the latest run of the
   same plan that are already in the store are not run again.
3. Speed cells run here, together: whole-forward and attention-core latency timed round-robin across
   backends (warm-up, repeats, raw samples kept), then peak tensor memory and weight size.
4. Eval cells run on the executor (this process by default): task metrics with 95 % intervals, paired
   changes against the dense reference on the same examples (:mod:`harness.stats`; per-example predictions
   go to the store's predictions table), agreement with the dense
   reference on the same inputs, attention fidelity, throughput. This process writes each cell's rows in
   one atomic file when the cell's result arrives (workers never write), so an interrupted run loses at
   most the cells in flight, never records a partial cell, and never records a cell twice.

Before any of it, what can be refused is: names, the number of cells (:mod:`.precheck`), a store that
cannot be written, a latency shape longer than the model's positions.
"""

from __future__ import annotations

import dataclasses
import io
import sys
import traceback
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..backends.contract import ResolvedBackend
from ..devices import Placement, attention_flops, parse_placement
from .cells import EvalCell, SpeedCell, completed_cells, plan_id
from ..tasks.data import DataSource
from ..errors import UserError
from .eval_cells import EvalContext, EvalSession, adopt_session, measure_eval_cell, prepare_model, store_eval_cell
from .executors import make_executor
from .precheck import DEFAULT_MAX_CELLS, check_cell_budget, count_cells
from .sampling import Clock, Timing, clock_for, cpu_count, peak_memory_bytes, time_interleaved
from ..models.loading import parse_model_args
from ..paths import DEFAULT_STORE
from ..provenance import cpu_facts, git_commit, library_versions, machine_id
from ..registry.registry import Registry, load_registry
from .rows import process_fields, row
from ..backends.spec import expand_grid
from .speed_cases import build_speed_case, first_attention_call
from ..store.parquet import check_writable, parse_store, read_results, write_rows
from ..tasks.contract import Task

REFERENCE = "dense"
__all__ = ["REFERENCE", "RunResult", "RunSpec", "prepare_model", "resolve_backends", "resolve_tasks", "run"]


@dataclass
class RunSpec:
    """Everything that defines a run; the CLI, the Python API and asv all build one of these."""

    backends: list[str] = field(default_factory=lambda: [REFERENCE])
    tasks: list[str] | None = None          # None: every registered task (or the tasks named in ``model``)
    model: list[str] | None = None          # see harness.models.loading; None: the embedded default
    data: str = "sample"                    # "sample", "hub" or a directory
    limit: int | None = None                # evaluate at most this many examples per task
    max_tokens: int | None = 4096           # evaluation batches: padded tokens per batch …
    eval_batch_size: int | None = None      # … and examples per batch (None: no limit)
    batch_size: int = 8                     # latency shape: batch × seq_len
    seq_len: int = 128
    threads: int | None = None              # None: every core available to this process
    repeats: int = 10
    warmup: int = 2
    fidelity_examples: int = 64             # examples per task for the attention-fidelity pass (0: skip)
    speed: bool = True                      # run the speed cells
    executor: str = "local"                 # local, processes:N or dask://HOST:PORT (eval cells only)
    device: str = "cpu"                     # cpu, cuda or cuda:N: where model and inputs live
    dtype: str = "float32"                  # float32, bfloat16 or float16: model and inputs cast to it
    l2_flush: bool = True                   # CUDA timing: flush L2 before every timed call
    extra_shapes: list[tuple[int, int]] | None = None  # more latency shapes (batch, seq); None: none on the
    throughput_batch: int = 128             # CPU, and on CUDA batch 1 and this batch at seq_len
    resume: bool = False                    # skip cells of the same plan already in the store
    store: Path | str | None = DEFAULT_STORE  # None: do not write
    progress: bool = True
    max_cells: int | None = DEFAULT_MAX_CELLS  # refuse a larger run unless ``confirmed`` (None: no limit)
    confirmed: bool = False                    # ``--yes``: run however many cells
    margin: float | None = None             # non-inferiority margin of the verdicts (None: one point, 0.01)

    def validate(self) -> None:
        if self.tasks is not None and not self.tasks:
            raise UserError("no task given: name at least one task (see attnbench tasks)")
        for name in ("batch_size", "seq_len", "repeats"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("limit", "threads", "max_tokens", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.warmup < 0 or self.fidelity_examples < 0:
            raise UserError("--warmup and --fidelity-examples must be >= 0")
        if self.margin is not None:
            from ..noninferiority import check_margin

            check_margin(self.margin)
        if self.resume and self.store is None:
            raise UserError("--resume needs a store (it looks up the finished cells there)")
        if self.throughput_batch < 1 or any(b < 1 or s < 1 for b, s in self.extra_shapes or ()):
            raise UserError("--throughput-batch and extra shapes must be >= 1")
        self.placement()  # raises for a bad --device / --dtype, or CUDA where there is none

    def placement(self) -> Placement:
        """The validated device and dtype (:func:`harness.devices.parse_placement`)."""
        return parse_placement(self.device, self.dtype)

    def speed_shapes(self, placement: Placement) -> list[tuple[int, int]]:
        """Latency shapes: ``batch_size × seq_len``, then ``extra_shapes`` (default: none on the CPU; on CUDA,
        where GLUE shapes are launch-bound, batch 1 for latency and ``throughput_batch`` for throughput)."""
        extra = self.extra_shapes
        if extra is None:
            extra = [(1, self.seq_len), (self.throughput_batch, self.seq_len)] if placement.is_cuda else []
        return list(dict.fromkeys([(self.batch_size, self.seq_len), *map(tuple, extra)]))


@dataclass
class RunResult:
    run_id: str
    plan_id: str
    rows: pd.DataFrame
    skipped: dict[str, str]
    cells: int
    cells_done_before: int
    failures: dict[str, str] = field(default_factory=dict)
    #: ids of the cells this invocation wrote to the store, and how many rows they hold
    stored_cells: list[str] = field(default_factory=list)
    stored_rows: int = 0
    #: cell id → formatted traceback of each failed cell (``attnbench run --traceback`` prints them)
    tracebacks: dict[str, str] = field(default_factory=dict)


def resolve_backends(registry: Registry, specs: list[str]) -> list[ResolvedBackend]:
    """Expand grids, resolve every spec (raising on the first bad one) and drop duplicates."""
    resolved: dict[str, ResolvedBackend] = {}
    for text in specs:
        for concrete in expand_grid(text):
            backend = registry.resolve(concrete)
            resolved.setdefault(backend.spec, backend)
    return list(resolved.values())


def refuse_broken_backends(backends: list[ResolvedBackend], placement: Placement) -> None:
    """Apply the contract's cheap checks (:func:`harness.backends.conformance.preflight`: output layout,
    dtype, finite outputs) on tiny inputs at the run's device and dtype, before anything is measured.

    :raises UserError: naming each backend that breaks a rule and the rule, so that no speed row of a
        backend whose outputs are wrong is ever stored.
    """
    from ..backends.conformance import preflight

    broken = {b.spec: problems for b in backends if (problems := preflight(b, placement))}
    if broken:
        raise UserError("nothing measured: " + "; ".join(
            f"backend {spec!r} breaks the backend contract ({' '.join(' '.join(problems).split())})"
            for spec, problems in broken.items())
            + "; run harness.testing.check_backend(SPEC) for every check, fix the backend or leave it out")


def resolve_tasks(registry: Registry, names: list[str] | None, model_sources: dict[str, str]) -> list[Task]:
    if names is None:
        per_task = [k for k in model_sources if k != "*"]
        names = per_task if per_task and "*" not in model_sources else list(registry.tasks)
    for key in model_sources:
        if key != "*" and key not in registry.tasks and key not in {e.task.config for e in registry.tasks.values()}:
            registry.task(key)  # raises with the valid names
    return [registry.task(name) for name in dict.fromkeys(names)]


def serialized_size(model: torch.nn.Module) -> int:
    """Bytes of the model's state dict as ``torch.save`` writes it (counts packed int8 weights correctly)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def _plan_definition(spec: RunSpec, backends: list[ResolvedBackend], tasks: list[Task], source: DataSource,
                     threads: int, placement: Placement | None = None) -> dict[str, Any]:
    definition = {"backends": sorted(b.spec for b in backends), "tasks": sorted(t.name for t in tasks),
                  "model": spec.model, "data": source.label, "limit": spec.limit, "max_tokens": spec.max_tokens,
                  "eval_batch_size": spec.eval_batch_size, "shape": [spec.batch_size, spec.seq_len],
                  "threads": threads, "repeats": spec.repeats, "warmup": spec.warmup,
                  "fidelity_examples": spec.fidelity_examples, "speed": spec.speed, "commit": git_commit().sha}
    if spec.margin is not None:  # plans at the default margin keep their ids
        definition["margin"] = spec.margin
    if placement is not None and not placement.is_default:  # CPU float32 plans keep their ids
        definition.update(device=placement.label(), dtype=placement.dtype, l2_flush=spec.l2_flush)
    if spec.speed_shapes(placement or Placement())[1:]:
        definition["extra_shapes"] = spec.speed_shapes(placement or Placement())[1:]
    return definition


def _worker_threads(executor: str, threads: int) -> int | None:
    """torch threads of each eval worker: all of them locally, a share of the cores for processes:N, and the
    worker's own default on a remote cluster."""
    if executor == "local":
        return threads
    if executor.startswith("processes:"):
        workers = executor.split(":", 1)[1]
        return max(1, cpu_count() // int(workers)) if workers.isdigit() and int(workers) > 0 else 1
    return None


def plan_cells(spec: RunSpec, backends: list[ResolvedBackend], tasks: list[Task], threads: int,
               placement: Placement | None = None) -> tuple[list[SpeedCell], list[EvalCell]]:
    """Speed cells per shape and backend; eval cells task by task, the reference first so its pass is timed once."""
    shapes = spec.speed_shapes(placement or Placement())
    speed = [SpeedCell(b.spec, batch, seq, threads) for batch, seq in shapes for b in backends] if spec.speed else []
    ordered = sorted(backends, key=lambda b: b.spec != REFERENCE)
    return speed, [EvalCell(b.spec, t.name) for t in tasks for b in ordered]


def run(spec: RunSpec, registry: Registry | None = None, *, log: Callable[[str], None] | None = None) -> RunResult:
    """Execute (or resume) a run and write its rows to ``spec.store`` (unless ``None``).

    Raises :class:`~harness.UserError` for bad specs, tasks, models or data before any measurement starts.
    Returns every row measured by this invocation.
    """
    log = log or (lambda message: print(message, file=sys.stderr))
    spec.validate()
    placement = spec.placement()
    store = None if spec.store is None else parse_store(spec.store)  # a bad store fails before any work
    if store is not None:
        check_writable(store)  # a store that cannot take the rows is refused before anything is measured
    registry = registry or load_registry()
    for failure in registry.failures:
        log(f"warning: {failure}")
    n_tasks = len(dict.fromkeys(spec.tasks)) if spec.tasks else len(registry.tasks)
    n_shapes = len(spec.speed_shapes(placement))
    cells, n_backends = count_cells(spec.backends, n_tasks, n_shapes, spec.speed)
    check_cell_budget(cells, n_backends, n_tasks, n_shapes if spec.speed else 0, max_cells=spec.max_cells,
                      confirmed=spec.confirmed)  # before a large grid is even resolved
    backends = resolve_backends(registry, spec.backends)
    skipped = {b.spec: reason for b in backends if (reason := b.unavailable_reason(placement=placement))}
    for name, reason in skipped.items():
        log(f"skipping backend {name}: {reason}")
    backends = [b for b in backends if b.spec not in skipped]
    if not backends:
        where = "" if placement.is_default else f" on {placement.device} in {placement.dtype}"
        raise UserError(f"none of the requested backends is available on this machine{where}: "
                        + "; ".join(f"{name}: {reason}" for name, reason in skipped.items()))
    refuse_broken_backends(backends, placement)
    model_sources = parse_model_args(spec.model)
    tasks = resolve_tasks(registry, spec.tasks, model_sources)
    source = DataSource.parse(spec.data)
    for task in tasks:  # refuse unlabelled or out-of-range labels (DataError) before anything is measured
        source.load(task)
    threads = spec.threads or cpu_count()
    torch.set_num_threads(threads)

    plan = plan_id(_plan_definition(spec, backends, tasks, source, threads, placement))
    speed_cells, eval_cells = plan_cells(spec, backends, tasks, threads, placement)
    previous_run, done = completed_cells(store, plan) if spec.resume else (None, set())
    now = datetime.now(timezone.utc)
    run_id = previous_run or f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    speed_todo = [c for c in speed_cells if c.id not in done]
    eval_todo = [c for c in eval_cells if c.id not in done]
    total = len(speed_cells) + len(eval_cells)
    resumed = f", resuming: {total - len(speed_todo) - len(eval_todo)} already in the store" if previous_run else ""
    where = "" if placement.is_default else f"; {placement.label()} {placement.dtype}"

    meta = {"run_id": run_id, "plan_id": plan, "timestamp": now.isoformat(), "machine": machine_id(),
            "cpu": cpu_facts(), "commit": git_commit().sha, "threads": threads, "versions": library_versions(),
            "spec": {**asdict(spec), "store": store}, "argv": sys.argv, "skipped": skipped,
            "device": placement.row_fields()}
    context = EvalContext(model=tuple(spec.model) if spec.model else None, tasks=tuple(t.name for t in tasks),
                          data=spec.data, limit=spec.limit, max_tokens=spec.max_tokens,
                          eval_batch_size=spec.eval_batch_size, fidelity_examples=spec.fidelity_examples,
                          reference=REFERENCE, threads=_worker_threads(spec.executor, threads), store=store,
                          run_id=run_id, plan_id=plan,
                          timestamp=now, run_meta=meta, progress=False, executor=spec.executor,
                          device=placement.device, dtype=placement.dtype, margin=spec.margin)
    measured: list[dict[str, Any]] = []
    # The speed cells (and, with the local executor, the eval cells) share this process's session.
    session = adopt_session(EvalSession(context, registry)) if speed_todo or spec.executor == "local" else None
    # after loading the models: a model attnbench cannot use is refused in one line, before this header
    log(f"run {run_id} (plan {plan}): {len(backends)} backend(s) × {len(tasks)} task(s) = {total} cells "
        f"({len(speed_cells)} speed, {len(eval_cells)} eval){resumed}; {threads} thread(s), data {source.label}"
        f"{where}")
    for note in getattr(session.models, "notes", []) if session else []:
        log(note)
    if speed_todo:
        _check_positions(spec, session, placement)
    outcome = _Outcome(store)
    if speed_todo:
        measured += _run_speed_cells(spec, session, speed_todo, context, log, outcome)
    _run_eval_cells(spec, context, eval_todo, session, measured, log, outcome)
    return RunResult(run_id, plan, pd.DataFrame(measured), skipped, total,
                     total - len(speed_todo) - len(eval_todo), outcome.failures, outcome.stored_cells,
                     outcome.stored_rows, outcome.tracebacks)


def position_limit(model: torch.nn.Module) -> int | None:
    """Tokens a model takes in one sequence: the rows of its learned position-embedding table, less the rows
    RoBERTa-style models reserve below their padding index (positions start at ``padding_idx + 1``).
    ``None`` for a model without such a table (rotary positions: no fixed limit)."""
    for name, module in model.named_modules():
        if name.endswith("position_embeddings") and isinstance(module, torch.nn.Embedding):
            offset = module.padding_idx + 1 if module.padding_idx is not None else 0
            return module.num_embeddings - offset
    return None


def _check_positions(spec: RunSpec, session: EvalSession, placement: Placement) -> None:
    """Refuse a latency shape longer than the timed model's positions, before anything is measured."""
    task = session.tasks[0]
    limit = position_limit(session.models.model(task))
    longest = max(seq for _, seq in spec.speed_shapes(placement))
    if limit is not None and longest > limit:
        raise UserError(f"--seq-len {longest} is longer than the model's {limit} positions "
                        f"({session.models.name(task)}); nothing was measured. Use --seq-len {limit} or less, "
                        "or a model with more positions")


class _Outcome:
    """What became of the cells of one invocation: stored once each (by this process), or failed with a reason."""

    def __init__(self, store: str | None) -> None:
        self.store = store
        self.stored_cells: list[str] = []
        self.stored_rows = 0
        self.failures: dict[str, str] = {}
        self.tracebacks: dict[str, str] = {}

    def fail(self, cell_id: str, exc: BaseException, log: Callable[[str], None], what: str = "failed") -> None:
        self.failures[cell_id] = _cell_error(exc) if what == "failed" else f"{what}: {_cell_error(exc)}"
        self.tracebacks[cell_id] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        log(f"cell {cell_id} {what}: {_cell_error(exc)}")

    def stored(self, cell_id: str, rows: list[dict[str, Any]]) -> None:
        self.stored_cells.append(cell_id)
        self.stored_rows += len(rows)


def _estimate(eval_todo: list[EvalCell], session: EvalSession | None, store: str | None,
              measured: list[dict[str, Any]]) -> str:
    """Estimated eval time from this machine's stored throughput per backend (or this run's speed cells)."""
    if session is None:
        return ""
    tokens = {cell.task: session.encoded(session.registry.task(cell.task)).n_tokens for cell in eval_todo}
    history = read_results(store) if store else pd.DataFrame()
    rate: dict[str, float] = {}
    if not history.empty:
        mine = history[(history["metric"] == "eval_tokens_per_s") & (history["machine"] == machine_id())
                       & (history["device"] == session.placement.label())
                       & (history["dtype"] == session.placement.dtype)]
        rate = mine.groupby("backend")["value"].median().to_dict()
    forward: dict[str, float] = {}
    for r in measured:  # the first (main) speed shape
        if r["metric"] == "latency_forward":
            forward.setdefault(r["backend"], r["value"])
    shape = next((r["batch_size"] * r["seq_len"] for r in measured if r["metric"] == "latency_forward"), None)
    seconds, known = 0.0, 0
    for cell in eval_todo:
        per_second = rate.get(cell.backend) or (shape / forward[cell.backend] if cell.backend in forward else None)
        if per_second:
            seconds += tokens[cell.task] / per_second * (1.0 if cell.backend in rate else 0.8)
            known += 1
    if not known:
        return ""
    scale = len(eval_todo) / known
    return f"; estimated {seconds * scale / 60:.1f} min for {sum(tokens.values()):,} tokens per backend"


def _run_eval_cells(spec: RunSpec, context: EvalContext, cells: list[EvalCell], session: EvalSession | None,
                    measured: list[dict[str, Any]], log: Callable[[str], None], outcome: _Outcome) -> None:
    """Run the eval cells on the executor; this process stores each finished cell, once.

    Workers return rows and never write: a cell that a scheduler computes again (after a worker died, its
    finished results are lost with it) or that arrives twice is stored the first time only, and a store in
    this process's memory is the one written. A cell whose rows cannot be written is a failure ("not stored").
    """
    if not cells:
        return
    worker_context = dataclasses.replace(context, store=None)  # workers measure; this process writes
    executor = make_executor(spec.executor, threads_per_worker=context.threads or 1)
    failed_before = len(outcome.failures)
    seen: set[str] = set()
    try:
        estimate = _estimate(cells, session, outcome.store, measured)
        log(f"{len(cells)} eval cell(s) on {executor.name} ({executor.workers} worker(s)){estimate}")
        with tqdm(total=len(cells), desc="cells", unit="cell", disable=not spec.progress) as bar:
            for cell, result, error in executor.map_unordered(measure_eval_cell, worker_context, cells,
                                                              group=lambda c: c.task):
                if cell.id in seen:  # computed twice: the first result is the one kept
                    continue
                seen.add(cell.id)
                bar.update(1)
                if error is not None:
                    outcome.fail(cell.id, error, log)
                    continue
                rows = result[0]
                if outcome.store is not None:
                    try:
                        store_eval_cell(outcome.store, cell, result, context.run_meta)
                    except (KeyboardInterrupt, UserError):
                        raise
                    except Exception as exc:
                        outcome.fail(cell.id, exc, log, "measured but not stored")
                        continue
                    outcome.stored(cell.id, rows)
                measured.extend(rows)
    finally:
        executor.close()
    failed = len(outcome.failures) - failed_before
    if failed:
        log(f"{failed} cell(s) failed (reasons above); once the cause is fixed, rerun the same command with "
            "--resume to retry only those")


def _cell_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


#: Backends timed together (interleaved) at one shape: each holds its prepared model while it is timed, so a
#: large grid is timed group after group and memory stays bounded by the group, not by the grid.
SPEED_GROUP = 8


def _run_speed_cells(spec: RunSpec, session: EvalSession, cells: list[SpeedCell], context: EvalContext,
                     log: Callable[[str], None], outcome: _Outcome) -> list[dict[str, Any]]:
    """Latency (interleaved across the backends of a group of :data:`SPEED_GROUP`) and memory at every speed
    shape; one stored file per cell.

    Returns the rows; the cells stored and the cells that failed go to ``outcome`` (see
    :func:`_run_speed_shape`)."""
    by_shape: dict[tuple[int, int], list[SpeedCell]] = {}
    for cell in cells:
        by_shape.setdefault((cell.batch_size, cell.seq_len), []).append(cell)
    out: list[dict[str, Any]] = []
    for (batch_size, seq_len), group in by_shape.items():
        for start in range(0, len(group), SPEED_GROUP):
            out += _run_speed_shape(spec, session, group[start:start + SPEED_GROUP], context, log, batch_size,
                                    seq_len, outcome)
    return out


def _run_speed_shape(spec: RunSpec, session: EvalSession, cells: list[SpeedCell], context: EvalContext,
                     log: Callable[[str], None], batch_size: int, seq_len: int, outcome: _Outcome
                     ) -> list[dict[str, Any]]:
    """The speed cells of one shape, timed with the clock of the session's device.

    A cell fails alone, like an eval cell: building its case, one untimed trial call of each timed callable
    (before timing starts), its memory measurement or its rows — whatever raises is recorded with the reason,
    and every other cell is still timed and stored. ``UserError`` and ``KeyboardInterrupt`` still stop the run.
    """
    task = session.tasks[0]
    placement = session.placement
    clock = clock_for(placement.device, flush_l2=spec.l2_flush)

    def fail(cell: SpeedCell, exc: BaseException, what: str = "failed") -> None:
        if isinstance(exc, UserError):
            raise exc
        outcome.fail(cell.id, exc, log, what)

    backends: dict[str, ResolvedBackend] = {}
    cases: dict[str, Any] = {}
    for cell in cells:
        try:
            backend = session.backend(cell.backend)
            case = build_speed_case(backend, session.models, task, session.encoded(task), batch_size=batch_size,
                                    seq_len=seq_len, prepared=session.prepared(task, backend), placement=placement)
            case.forward()  # one untimed trial call each: a backend that raises is out before timing starts
            case.attention_core()
        except Exception as exc:
            fail(cell, exc)
            continue
        backends[cell.backend], cases[cell.backend] = backend, case
    cells = [c for c in cells if c.backend in cases]
    if not cells:
        return []
    rounds = (spec.warmup + spec.repeats) + (spec.warmup + spec.repeats * 3)  # forward, then attention core
    try:
        with tqdm(total=rounds, desc=f"timing {batch_size}x{seq_len}", unit="round", leave=False,
                  disable=not spec.progress) as bar:
            started = time.perf_counter()
            forward = time_interleaved({name: case.forward for name, case in cases.items()}, clock=clock,
                                       repeats=spec.repeats, warmup=spec.warmup, on_round=lambda: bar.update(1))
            bar.update(spec.warmup)
            core_calls = {name: case.attention_core for name, case in cases.items()}
            core = time_interleaved(core_calls, clock=clock, number=_calls_per_sample(core_calls, clock, placement),
                                    repeats=spec.repeats * 3, warmup=spec.warmup, on_round=lambda: bar.update(1))
            bar.update(spec.warmup)
    except Exception as exc:  # passed its trial call, failed later: the interleaved samples are unusable
        for cell in cells:
            fail(cell, exc)
        return []
    log(f"timing {batch_size}x{seq_len} took {time.perf_counter() - started:.1f}s")
    shape = first_attention_call(session.models.model(task))
    flops = attention_flops(batch_size, shape.heads, seq_len, shape.head_dim)
    out = []
    for cell in cells:
        backend, case = backends[cell.backend], cases[cell.backend]
        try:
            common = {"run_id": context.run_id, "timestamp": context.timestamp, "plan_id": context.plan_id,
                      "cell_id": cell.id, **process_fields(torch.get_num_threads()), **placement.row_fields(),
                      "model": session.models.name(task), "task": None, "split": None,
                      "n_examples": cell.batch_size, "batch_size": cell.batch_size, "seq_len": cell.seq_len,
                      "data_source": session.source.label}
            timed = {**common, "warmup": spec.warmup}
            # The model of one task is timed (the embedded default has one encoder per task): say which.
            facts = {"speed_task": task.name}
            timing = core[cell.backend]
            tflops = flops / timing.median / 1e12 if timing.median > 0 else float("nan")
            basis = _flops_basis(backend)
            rows = [_timing_row(timed, backend, "latency_forward", forward[cell.backend], facts),
                    _timing_row(timed, backend, "latency_attention_core", timing,
                                {**facts, "attention_flops_per_call": flops, "attention_tflops": tflops,
                                 "flops_basis": basis}),
                    row(common, backend, "memory", "peak_memory_forward", peak_memory_bytes(case.forward, placement),
                        "bytes", "lower", facts=facts),
                    row(common, backend, "memory", "model_size", serialized_size(case.model), "bytes", "lower",
                        facts=facts)]
            if placement.is_cuda:  # GPU figures a reader looks for first: achieved TFLOP/s and tokens/s
                rows += [row({**timed, "clock": timing.clock}, backend, "speed", "attention_core_tflops", tflops,
                             "TFLOP/s", "higher", facts={**facts, "flops_basis": basis}),
                         row({**timed, "clock": forward[cell.backend].clock}, backend, "speed",
                             "forward_tokens_per_s", cell.batch_size * cell.seq_len / forward[cell.backend].median,
                             "tokens/s", "higher", facts=facts)]
        except Exception as exc:
            fail(cell, exc)
            continue
        if context.store is not None:
            try:
                write_rows(context.store, rows, {**context.run_meta, "cell_id": cell.id})
            except Exception as exc:
                fail(cell, exc, "measured but not stored")
                continue
            outcome.stored(cell.id, rows)
        out += rows
    return out


#: Minimum device time per attention-core sample on CUDA: short kernels (tens of µs) would otherwise measure
#: the event resolution and launch jitter.
CUDA_MIN_SAMPLE_S = 2e-3


def _calls_per_sample(calls: dict[str, Callable[[], object]], clock: Clock, placement: Placement) -> int:
    """1 on the CPU (as before); on CUDA, enough calls that the slowest-to-fill candidate's sample lasts
    :data:`CUDA_MIN_SAMPLE_S` by the clock itself (one common number keeps candidates comparable)."""
    if not placement.is_cuda:
        return 1
    once = min(clock.measure(fn, 1) for fn in calls.values() for _ in range(3))  # after the trial calls
    return max(1, min(1000, int(CUDA_MIN_SAMPLE_S / max(once, 1e-7))))


def _flops_basis(backend: ResolvedBackend) -> str:
    """What the attention TFLOP/s counts: dense attention's 4·B·H·S²·D for every backend, so that a sparse or
    low-precision backend's figure is dense-equivalent (the work it replaces), not the work it does."""
    part = backend.attention_part
    dense = part is None or part.name == REFERENCE
    return "dense 4*B*H*S^2*D" if dense else "dense-equivalent 4*B*H*S^2*D (not the work this backend does)"


def _timing_row(common: dict[str, Any], backend: ResolvedBackend, metric: str, timing: Timing,
                facts: dict[str, Any] | None = None) -> dict[str, Any]:
    facts = {**(facts or {}), "clock": timing.clock}
    if timing.clock != "wall":  # and its `clock` column (null: the wall clock, so CPU history pairs as before)
        facts["calls_per_sample"] = timing.number
    if timing.foreign_load is not None:
        facts["foreign_load"] = round(timing.foreign_load, 3)  # CPU cores other processes used meanwhile
    result = row(common if timing.clock == "wall" else {**common, "clock": timing.clock}, backend, "speed", metric,
                 timing.median, timing.unit, "lower", facts=facts)
    result["samples"] = list(timing.samples)
    result["foreign_load"] = timing.foreign_load  # also a column (schema 5), for queries and the summary
    return result
