"""Eval cells: one backend on one task, run in this process or on a worker.

An :class:`EvalContext` is the picklable description a worker needs (model, data, batching, store, run
identity). An :class:`EvalSession` holds what a process builds once and reuses across cells: registry,
models, tokenized splits, prepared backend models, and per task the reference logits and attention
outputs. :func:`measure_eval_cell` is the function executors call; it returns the cell's rows, and the
process that runs the CLI writes them in one atomic file (:func:`store_eval_cell`), so a cell is in the
store completely or not at all, and once.
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import torch

from ..backends.architecture import require_swappable
from ..backends.attention_interface import NonFiniteAttentionError, attach, finite_checked
from ..backends.contract import ResolvedBackend
from ..devices import Placement, move_batch, place_model
from .cells import EvalCell
from ..tasks.data import DataSource
from ..tasks.encoding import EncodedSplit, encode
from ..errors import UserError
from .forward import PassStats, agreement, predict
from .sampling import cpu_ticks, foreign_load
from .fidelity import METRICS as FIDELITY_METRICS
from .fidelity import attention_fidelity, fidelity_batches, reference_outputs
from ..models.loading import TaskModels, load_task_models
from ..registry.registry import Registry, load_registry
from .rows import process_fields, row
from .. import noninferiority
from ..store.schema import BASELINE_PREFIX, PAIRED_PREFIX
from ..store.predictions import write_predictions
from ..store.parquet import write_rows
from .. import stats
from ..tasks.contract import Task

PREPARED_CACHE = 8  # prepared models kept per process (a backend's copy is reused across tasks)


@dataclass(frozen=True)
class EvalContext:
    """Everything an eval cell needs besides the cell itself; picklable for remote workers."""

    model: tuple[str, ...] | None
    tasks: tuple[str, ...]
    data: str
    limit: int | None
    max_tokens: int | None
    eval_batch_size: int | None
    fidelity_examples: int
    reference: str
    threads: int | None
    store: str | None
    run_id: str
    plan_id: str
    timestamp: datetime
    run_meta: dict
    progress: bool = False
    executor: str = "local"  # where the eval cells run (recorded on throughput rows)
    device: str = "cpu"      # a validated --device (harness.devices.parse_placement) …
    dtype: str = "float32"   # … and --dtype of model and inputs
    margin: float | None = None  # --margin of the non-inferiority verdicts (None: one point, 0.01)

    @property
    def placement(self) -> Placement:
        return Placement(self.device, self.dtype)


def prepare_model(base: torch.nn.Module, backend: ResolvedBackend,
                  placement: Placement | None = None) -> torch.nn.Module:
    """A private copy of ``base`` with the backend's transform and attention; the base is never modified.

    The transform sees the float32 CPU copy (the contract of ``Backend.prepare``); the result is then moved
    to the placement's device and dtype."""
    model = place_model(backend.prepare(copy.deepcopy(base)), placement)
    attach(model, backend)
    return model.eval()


class EvalSession:
    """Per-process state for running many eval cells of one context."""

    def __init__(self, context: EvalContext, registry: Registry | None = None,
                 models: TaskModels | None = None) -> None:
        self.context = context
        self.registry = registry or load_registry()
        self.tasks = [self.registry.task(name) for name in context.tasks]
        if context.threads:
            torch.set_num_threads(context.threads)
        self.source = DataSource.parse(context.data)
        self.models = models or load_task_models(list(context.model) if context.model else None, self.tasks,
                                                  self.source)
        self.placement = context.placement
        checked: set[int] = set()
        for task in self.tasks:  # refuse, in one line, a model no backend can swap attention in, before any cell
            model = self.models.model(task)
            if id(model) not in checked:
                checked.add(id(model))
                require_swappable(model, self.models.name(task))
        self._encoded: dict[str, EncodedSplit] = {}
        self._prepared: OrderedDict[tuple[int, str, str], torch.nn.Module] = OrderedDict()
        self._reference_fp32: dict[str, np.ndarray] = {}
        self._reference: dict[str, tuple[np.ndarray, PassStats | None]] = {}
        self._reference_outputs: dict[str, tuple[list, list]] = {}
        self._backends: dict[str, ResolvedBackend] = {}
        #: cell id → (cell fields, idx, labels, predictions, reference predictions) of the cells run last
        self.predictions: OrderedDict[str, tuple] = OrderedDict()

    # -- cached building blocks ---------------------------------------------------------------------------
    def backend(self, spec: str) -> ResolvedBackend:
        """One configured instance per spec: its prepared model and attention registration belong to it."""
        if spec not in self._backends:
            resolved = self.registry.resolve(spec)
            self._backends[spec] = self._backends.setdefault(resolved.spec, resolved)
        return self._backends[spec]

    def encoded(self, task: Task) -> EncodedSplit:
        """The task's evaluation split, tokenized (cached on disk by datasets), fitting rows excluded, limited."""
        if task.name not in self._encoded:
            rows = self.source.load(task)
            full = encode(task, rows, self.models.tokenizer(task), self.models.max_length(task))
            keep = np.flatnonzero(~np.isin(full.idx, self.models.excluded_idx(task)))
            if self.context.limit is not None:
                keep = keep[:self.context.limit]
            if len(keep) == 0:
                raise UserError(f"task {task.name!r}: no examples to evaluate")
            self._encoded[task.name] = full if len(keep) == len(full) else full.subset(keep)
        return self._encoded[task.name]

    def prepared(self, task: Task, backend: ResolvedBackend, placement: Placement | None = None) -> torch.nn.Module:
        """The backend's model for ``task`` at the session's placement (or ``placement``), cached."""
        placement = placement or self.placement
        base = self.models.model(task)
        key = (id(base), backend.spec, placement.dtype)
        if key not in self._prepared:
            self._prepared[key] = prepare_model(base, backend, placement)
            while len(self._prepared) > PREPARED_CACHE:
                self._prepared.popitem(last=False)
        self._prepared.move_to_end(key)
        return self._prepared[key]

    def _predict(self, task: Task, backend: ResolvedBackend, stats: PassStats | None,
                 placement: Placement | None = None) -> np.ndarray:
        """Logits in the task's label order (a checkpoint that names its labels differently is reordered), from
        the backend's model at the session's placement (or ``placement``: the float32 reference of a run below
        float32).

        Every attention call is checked for the backend finiteness rule (:func:`finite_checked`), and the
        logits must be finite: otherwise :class:`NonFiniteAttentionError` fails the cell, and no metric of
        NaN logits (whose argmax would look like a real prediction) is ever stored. The checks' time is
        taken out of ``stats``, so throughput figures do not pay for them.
        """
        placement = placement or self.placement
        model = self.prepared(task, backend, placement)
        with finite_checked(model, backend) as check:
            logits = predict(model, self.encoded(task), max_tokens=self.context.max_tokens,
                             eval_batch_size=self.context.eval_batch_size, forward_kwargs=self.models.forward_kwargs(task),
                             desc=f"{task.name} {backend.spec}", progress=self.context.progress, stats=stats,
                             placement=placement)
        if stats is not None:
            stats.model_time -= check.seconds
            stats.wall_time -= check.seconds
        bad = ~np.isfinite(logits).all(axis=-1)
        if bad.any():
            raise NonFiniteAttentionError(f"backend {backend.spec!r} on task {task.name!r}: the model's outputs are "
                                          f"NaN or infinite for {int(bad.sum())} of {len(bad)} examples; no metric "
                                          "is computed from them")
        order = self.models.label_order(task)
        return logits if order is None else logits[:, order]

    def reference_fp32_logits(self, task: Task) -> np.ndarray:
        """The dense reference in float32 on the session's device (what a lower ``--dtype`` alone costs)."""
        if task.name not in self._reference_fp32:
            self._reference_fp32[task.name] = self._predict(task, self.backend(self.context.reference), None,
                                                            self.placement.with_dtype("float32"))
        return self._reference_fp32[task.name]

    def reference_logits(self, task: Task) -> np.ndarray:
        if task.name not in self._reference:
            self._reference[task.name] = (self._predict(task, self.backend(self.context.reference), None),
                                          None)
        return self._reference[task.name][0]

    def reference_fidelity(self, task: Task) -> tuple[list, list]:
        if task.name not in self._reference_outputs:
            batches = [move_batch(b, self.placement)
                       for b in fidelity_batches(self.encoded(task), self.context.fidelity_examples,
                                                 self.context.max_tokens, self.context.eval_batch_size)]
            reference = self.prepared(task, self.backend(self.context.reference))
            self._reference_outputs[task.name] = (batches, reference_outputs(reference, batches,
                                                                             self.models.forward_kwargs(task)))
        return self._reference_outputs[task.name]

    # -- one cell -----------------------------------------------------------------------------------------
    def run(self, cell: EvalCell) -> list[dict[str, Any]]:
        """Rows of one eval cell (not written), with the model's facts for the task (e.g. a label reordering)
        merged into every row's ``extra``."""
        return _with_facts(self._run(cell), self.models.model_facts(self.registry.task(cell.task)))

    def _run(self, cell: EvalCell) -> list[dict[str, Any]]:
        task = self.registry.task(cell.task)
        backend = self.backend(cell.backend)
        encoded = self.encoded(task)
        stats = PassStats()
        started = cpu_ticks()
        logits = self._predict(task, backend, stats)
        busy = foreign_load(started, cpu_ticks())
        is_reference = backend is self.backend(self.context.reference)
        if is_reference:
            self._reference.setdefault(task.name, (logits, stats))
        common = {"run_id": self.context.run_id, "timestamp": self.context.timestamp, "plan_id": self.context.plan_id,
                  "cell_id": cell.id, **process_fields(torch.get_num_threads()), **self.placement.row_fields(),
                  "data_source": self.source.label, "model": self.models.name(task), "task": task.name,
                  "split": task.split, "n_examples": len(encoded), "limit": self.context.limit,
                  "max_tokens": self.context.max_tokens, "eval_batch_size": self.context.eval_batch_size}
        predictions = task.predictions(logits)
        reference = predictions if is_reference else task.predictions(self.reference_logits(task))
        self._keep_predictions(cell, common, backend, encoded, predictions, reference)
        out = [{**self._quality_row(common, backend, m, encoded.labels, predictions),
                "primary": m.name == task.main_metric} for m in task.metrics]
        if is_reference:
            out += _baseline_rows(common, backend, task, encoded.labels)
        else:
            out += [_paired_row(common, backend, m, encoded.labels, reference, predictions,
                                primary=m.name == task.main_metric, margin=self.context.margin) for m in task.metrics]
        # concurrent workers change throughput; foreign_load: cores other processes used during the pass
        timed = {**common, "executor": self.context.executor, "foreign_load": busy}
        out += [
            row(timed, backend, "throughput", "eval_tokens_per_s", stats.tokens_per_second, "tokens/s", "higher"),
            row(timed, backend, "throughput", "eval_wall_time", stats.wall_time, "s", "lower"),
            row(timed, backend, "throughput", "padding_waste", stats.padding_waste, "ratio", "lower"),
            row(timed, backend, "throughput", "time_outside_model", stats.outside_model, "ratio", "lower"),
        ]
        if is_reference:
            return out + self._dtype_cost_rows(task, backend, logits, common)
        for name, value in agreement(self.reference_logits(task), logits, task.is_regression).items():
            out.append(row(common, backend, "agreement", name, value, "ratio" if name == "agreement" else "logit",
                           "higher" if name == "agreement" else "lower"))
        if self.context.fidelity_examples:
            batches, reference = self.reference_fidelity(task)
            figures = attention_fidelity(self.prepared(task, backend), backend, batches, reference,
                                         self.models.forward_kwargs(task))
            n = min(self.context.fidelity_examples, len(encoded))
            for name, value in figures.items():
                unit, direction = FIDELITY_METRICS.get(name, ("ratio", "higher"))
                out.append(row({**common, "n_examples": n, "fidelity_examples": self.context.fidelity_examples},
                               backend, "fidelity", name, value, unit, direction))
        return out

    def _dtype_cost_rows(self, task: Task, backend: ResolvedBackend, logits: np.ndarray,
                         common: dict[str, Any]) -> list[dict[str, Any]]:
        """Below float32, the reference cell also compares dense at ``--dtype`` with dense float32 on the same
        device and inputs: ``*_vs_fp32`` agreement (and attention-fidelity) rows, what the dtype alone costs."""
        if self.placement.dtype == "float32":
            return []
        out = [row(common, backend, "agreement", f"{name}_vs_fp32", value,
                   "ratio" if name == "agreement" else "logit", "higher" if name == "agreement" else "lower")
               for name, value in agreement(self.reference_fp32_logits(task), logits, task.is_regression).items()]
        if self.context.fidelity_examples:
            batches, _ = self.reference_fidelity(task)
            fp32 = self.prepared(task, backend, self.placement.with_dtype("float32"))
            reference = reference_outputs(fp32, batches, self.models.forward_kwargs(task))
            figures = attention_fidelity(self.prepared(task, backend), backend, batches, reference,
                                         self.models.forward_kwargs(task))
            n = min(self.context.fidelity_examples, len(self.encoded(task)))
            for name, value in figures.items():
                unit, direction = FIDELITY_METRICS.get(name, ("ratio", "higher"))
                out.append(row({**common, "n_examples": n, "fidelity_examples": self.context.fidelity_examples},
                               backend, "fidelity", f"{name}_vs_fp32", value, unit, direction))
        return out

    def _quality_row(self, common: dict[str, Any], backend: ResolvedBackend, metric, labels: np.ndarray,
                     predictions: np.ndarray) -> dict[str, Any]:
        """A task metric with its 95 % interval (Wilson for accuracy, a seeded bootstrap otherwise)."""
        interval = stats.metric_interval(metric.fn, labels, predictions)
        return row(common, backend, "quality", metric.name, metric.fn(labels, predictions), "score",
                   metric.direction, ci_low=interval.low, ci_high=interval.high, stat_method=interval.method)

    def _keep_predictions(self, cell: EvalCell, common: dict[str, Any], backend: ResolvedBackend,
                          encoded: EncodedSplit, predictions: np.ndarray, reference: np.ndarray) -> None:
        fields = {name: common.get(name) for name in ("run_id", "plan_id", "cell_id", "timestamp", "commit",
                                                      "model", "task", "split", "data_source", "limit", "machine")}
        fields.update(backend=backend.spec, reference_backend=self.context.reference)
        self.predictions[cell.id] = (fields, encoded.idx, encoded.labels, predictions, reference)
        while len(self.predictions) > 4:
            self.predictions.popitem(last=False)




def _paired_row(common: dict[str, Any], backend: ResolvedBackend, metric, labels: np.ndarray,
                reference: np.ndarray, predictions: np.ndarray, *, primary: bool = False,
                margin: float | None = None) -> dict[str, Any]:
    """Δ of one task metric against the reference on the same examples, with its paired interval and p-value
    (exact McNemar for accuracy, paired permutation otherwise; unadjusted), and its non-inferiority verdict at
    ``margin`` (default one point) with the minimum detectable change (:mod:`harness.analysis.verdicts`)."""
    result = stats.paired_test(metric.fn, labels, reference, predictions)
    margin = noninferiority.DEFAULT_MARGIN if margin is None else margin
    test = noninferiority.noninferiority(metric.fn, labels, reference, predictions, margin=margin,
                                   direction=metric.direction)
    out = row(common, backend, "paired", PAIRED_PREFIX + metric.name, result.delta, "score", metric.direction,
              ci_low=result.low, ci_high=result.high, p_value=result.p_value,
              stat_method=f"{result.test}; paired bootstrap interval", primary=primary, verdict=test.verdict,
              margin=margin, mdc=test.mdc)
    extra = json.loads(out["extra"]) if out.get("extra") else {}
    extra["noninferiority"] = test.facts()
    if result.discordant is not None:
        extra["discordant"] = list(result.discordant)
    out["extra"] = json.dumps(extra, sort_keys=True)
    return out


def _baseline_rows(common: dict[str, Any], backend: ResolvedBackend, task: Task,
                   labels: np.ndarray) -> list[dict[str, Any]]:
    """Each task metric of the majority-class predictor on the evaluated examples (classification only)."""
    if task.is_regression:
        return []
    majority, _ = stats.majority_baseline(labels)
    constant = np.full(len(labels), majority, dtype=np.asarray(labels).dtype)
    return [row(common, backend, "baseline", BASELINE_PREFIX + m.name, m.fn(labels, constant), "score",
                m.direction, stat_method=f"majority class {majority} of the evaluated examples") for m in task.metrics]


def _with_facts(rows: list[dict[str, Any]], facts: dict[str, str]) -> list[dict[str, Any]]:
    """``rows`` with ``facts`` merged into each row's ``extra`` JSON."""
    if not facts:
        return rows
    for r in rows:
        r["extra"] = json.dumps({**(json.loads(r["extra"]) if r.get("extra") else {}), **facts}, sort_keys=True)
    return rows


_SESSIONS: OrderedDict[tuple[str, str], EvalSession] = OrderedDict()


def adopt_session(session: EvalSession) -> EvalSession:
    """Make ``session`` the one this process uses for its context (the runner shares its own this way)."""
    _SESSIONS[(session.context.plan_id, session.context.run_id)] = session
    while len(_SESSIONS) > 2:
        _SESSIONS.popitem(last=False)
    return session


def session_for(context: EvalContext) -> EvalSession:
    """This process's session for ``context`` (built on first use; the last two are kept)."""
    session = _SESSIONS.get((context.plan_id, context.run_id))
    return session if session is not None else adopt_session(EvalSession(context))


#: What an eval cell hands back to the process that stores it: its rows and, where kept, the arguments of
#: :func:`~harness.store.predictions.write_predictions` for its per-example predictions.
EvalOutcome = tuple[list[dict[str, Any]], tuple | None]


def measure_eval_cell(context: EvalContext, cell: EvalCell) -> EvalOutcome:
    """Executor entry point: run one cell with this process's session and return ``(rows, predictions)``.

    Nothing is written here: the process that runs the CLI stores each finished cell exactly once
    (:func:`store_eval_cell`), whichever worker computed it and however often a scheduler recomputed it
    after a worker died, and a store that lives in memory (``memory://``) is the CLI's, not a worker's.
    """
    session = session_for(context)
    rows = session.run(cell)
    return rows, session.predictions.pop(cell.id, None)


def store_eval_cell(store: str, cell: EvalCell, outcome: EvalOutcome, run_meta: dict) -> None:
    """Write one measured cell: its predictions first (a cell whose rows are stored has its predictions too),
    then its rows in one atomic file. Raises what the store raises."""
    rows, kept = outcome
    if kept is not None:
        write_predictions(store, *kept)
    write_rows(store, rows, {**run_meta, "cell_id": cell.id})


def run_eval_cell(context: EvalContext, cell: EvalCell) -> list[dict[str, Any]]:
    """Run one cell in this process and write it to ``context.store`` (unless ``None``); return its rows."""
    outcome = measure_eval_cell(context, cell)
    if context.store is not None:
        store_eval_cell(context.store, cell, outcome, context.run_meta)
    return outcome[0]
