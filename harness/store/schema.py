"""The row schema of the results store: one definition of every column, its Arrow type and its role.

Roles decide what pairs rows in ``compare``, ``regressions`` and ``report``:

* ``identity`` — *what* is measured (backend, task, metric, …);
* ``setting`` — *how* it was measured (machine, model, data, limit, batching, threads, shape, …). Rows are
  comparable only when every setting matches; a new column is a setting (and so joins the pairing key
  everywhere) unless it is declared otherwise here;
* ``descriptive`` — recorded, never part of the key (run id, time, commit, provenance, derived fields);
* ``value`` — the measurement itself.

A setting is recorded only on the rows it can change (``limit`` on eval rows, ``warmup`` on latency rows, …)
and is null elsewhere; nulls pair with nulls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import pandas as pd
import pyarrow as pa

IDENTITY, SETTING, DESCRIPTIVE, VALUE = "identity", "setting", "descriptive", "value"

#: Bumped whenever columns change; :func:`harness.store.parquet.read_results` upgrades older files.
#: 1: first layout; 2: ``plan_id``, ``cell_id``; 3: settings columns (``limit``, ``max_tokens``,
#: ``eval_batch_size``, ``fidelity_examples``, ``warmup``, ``executor``), and the eval batch limit moves out
#: of ``batch_size`` (which is the latency batch only) into ``eval_batch_size``; 4: ``device``, ``dtype``
#: (settings: CPU rows never pair with GPU rows, nor float32 with bfloat16), ``clock`` (null: the wall clock)
#: and ``device_info``; older rows read as ``cpu`` / ``float32``; 5: uncertainty columns (``ci_low``,
#: ``ci_high``, ``p_value``, ``stat_method``) and ``foreign_load`` (older files read with nulls); 6: the verdict
#: columns (``primary``, ``verdict``, ``margin``, ``mdc``; older files read with nulls).
SCHEMA_VERSION = 6


#: The vocabulary of the ``category`` column: every row, the harness's own and those imported from asv, uses
#: one of these. asv benchmarks declare theirs as a ``category`` attribute (``track_*`` methods) or get it from
#: their type (``time_*``: speed, ``peakmem_*``: memory).
CATEGORIES: dict[str, str] = {
    "quality": "a task metric of a backend's predictions (accuracy, F1, MCC, Pearson, ...)",
    "paired": "the paired change of a task metric against the reference backend on the same examples",
    "baseline": "a task metric of a constant predictor (the floor a task metric is read against)",
    "agreement": "agreement of a backend's predictions or logits with the reference backend's",
    "fidelity": "attention-level closeness to the reference (cosine, error, top-k recall)",
    "throughput": "timing of a whole evaluation pass (tokens/s, wall time, padding)",
    "speed": "latency of a forward or attention core, or a ratio of latencies",
    "memory": "peak memory or model size",
    "instructions": "instruction counts under callgrind (deterministic)",
}
#: Metric-name prefixes of the rows an eval cell stores: the paired change of a task metric against the
#: reference backend (category ``paired``), and the task metric of the majority-class predictor (``baseline``).
PAIRED_PREFIX = "delta_vs_reference:"
BASELINE_PREFIX = "majority_baseline:"
#: The vocabulary of the ``direction`` column: which way a value is better.
DIRECTIONS: tuple[str, ...] = ("higher", "lower")


def check_vocabulary(category: str, direction: str, *, where: str = "a row") -> None:
    """Raise ``ValueError`` naming ``where`` if ``category`` is not in :data:`CATEGORIES` or ``direction``
    not in :data:`DIRECTIONS`."""
    if category not in CATEGORIES:
        raise ValueError(f"{where}: category {category!r} is not one of {', '.join(CATEGORIES)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"{where}: direction {direction!r} is not one of {', '.join(DIRECTIONS)}")


@dataclass(frozen=True)
class Column:
    """One column of the row schema."""

    name: str
    type: pa.DataType
    role: str = SETTING
    doc: str = ""
    stored: bool = True       # False: a hive partition (``machine``, ``date``) or derived on reading (``variant``)


#: Every column, in stored order, then the partition and derived columns.
COLUMN_DEFS: tuple[Column, ...] = (
    Column("run_id", pa.string(), DESCRIPTIVE, "the run: <UTC time>-<random>, e.g. 20261130T043500-74c6b2"),
    Column("timestamp", pa.timestamp("us", tz="UTC"), DESCRIPTIVE, "when the row was measured (UTC, microseconds)"),
    Column("source", pa.string(), IDENTITY, '"harness" or "asv"'),
    Column("commit", pa.string(), DESCRIPTIVE, "attnbench commit measured (None outside a git checkout)"),
    Column("dirty", pa.bool_(), DESCRIPTIVE, "uncommitted changes in the measured tree"),
    Column("cpu", pa.string(), DESCRIPTIVE, "JSON: model, cores, SIMD features (the machine id covers it)"),
    Column("threads", pa.int32(), SETTING, "torch threads of the measuring process"),
    Column("versions", pa.string(), DESCRIPTIVE, "JSON: python and library versions"),
    Column("plugin", pa.string(), DESCRIPTIVE, "the plugin (entry-point name) that registered the backend"),
    Column("plugin_dist", pa.string(), DESCRIPTIVE, "the plugin's distribution (\"unknown\" without metadata)"),
    Column("plugin_version", pa.string(), DESCRIPTIVE, "the plugin distribution's version"),
    Column("model", pa.string(), SETTING, "checkpoint (or 'embedded') the task was measured with"),
    Column("backend", pa.string(), IDENTITY, 'canonical spec, e.g. "topk:k=8,bits=4"'),
    Column("backend_name", pa.string(), DESCRIPTIVE, 'spec without parameters, e.g. "topk"'),
    Column("backend_params", pa.string(), DESCRIPTIVE, "canonical JSON of every parameter value"),
    Column("task", pa.string(), IDENTITY, "None for task-independent rows (latency, memory)"),
    Column("split", pa.string(), SETTING, "the evaluation split, e.g. validation_matched"),
    Column("data_source", pa.string(), SETTING, "sample@<hash>, hub or a directory"),
    Column("n_examples", pa.int64(), SETTING, "examples evaluated (latency rows: the batch)"),
    Column("batch_size", pa.int32(), SETTING, "latency shape: batch (speed and memory rows)"),
    Column("seq_len", pa.int32(), SETTING, "latency shape: tokens (speed and memory rows)"),
    Column("category", pa.string(), DESCRIPTIVE, "what kind of measurement: one of CATEGORIES "
           "(quality, paired, speed, instructions, …)"),
    Column("metric", pa.string(), IDENTITY, "what value measures, e.g. accuracy, latency_forward"),
    Column("value", pa.float64(), VALUE, "the measurement, in unit"),
    Column("unit", pa.string(), DESCRIPTIVE, "unit of value, samples, ci_low and ci_high: seconds, bytes, tokens/s, score, …"),
    Column("direction", pa.string(), DESCRIPTIVE, 'which way is better: one of DIRECTIONS ("higher", "lower")'),
    Column("samples", pa.list_(pa.float64()), VALUE, "raw samples where they exist (timings)"),
    Column("extra", pa.string(), DESCRIPTIVE, "JSON: backend run facts and anything source-specific"),
    Column("plan_id", pa.string(), DESCRIPTIVE, "hash of the run's definition; resuming matches on it"),
    Column("cell_id", pa.string(), DESCRIPTIVE, "the cell that produced the row"),
    # schema 3: every run setting that can change a measured value, on the rows it can change
    Column("limit", pa.int32(), SETTING, "--limit: examples per task (eval rows; null: all)"),
    Column("max_tokens", pa.int32(), SETTING, "--max-tokens: padded tokens per eval batch (eval rows; null: no limit)"),
    Column("eval_batch_size", pa.int32(), SETTING,
           "--eval-batch-size: examples per eval batch (eval rows; null: no limit)"),
    Column("fidelity_examples", pa.int32(), SETTING, "--fidelity-examples (fidelity rows)"),
    Column("warmup", pa.int32(), SETTING, "--warmup: untimed rounds before the timed ones (speed rows)"),
    Column("executor", pa.string(), SETTING, "--executor the eval pass ran on (throughput rows)"),
    # schema 4: where it computed
    Column("device", pa.string(), SETTING, '"cpu" or "cuda:<GPU name>" (the machine id stays host + CPU)'),
    Column("dtype", pa.string(), SETTING, "--dtype of model and inputs: float32, bfloat16 or float16"),
    Column("clock", pa.string(), SETTING, "what a timing sample measures when not the wall clock (null), e.g. "
           "cuda-event+l2flush (speed rows)"),
    Column("device_info", pa.string(), DESCRIPTIVE,
           "JSON on CUDA: GPU name, memory, capability, driver, CUDA and cuDNN versions (null on the CPU)"),
    # schema 5: uncertainty (harness.stats) and how busy the machine was
    Column("ci_low", pa.float64(), VALUE, "95 % interval of the value: low end (task metrics, paired changes)"),
    Column("ci_high", pa.float64(), VALUE, "95 % interval of the value: high end"),
    Column("p_value", pa.float64(), VALUE,
           "paired rows: two-sided p of the change vs the reference (unadjusted; "
           "harness.analysis.paired.with_holm adjusts it)"),
    Column("stat_method", pa.string(), DESCRIPTIVE,
           'how ci/p were computed: "wilson", "bootstrap", "mcnemar-exact", "permutation", …'),
    Column("foreign_load", pa.float64(), DESCRIPTIVE,
           "speed and throughput rows: mean CPU cores other processes used while the timing was taken (/proc/stat)"),
    # schema 6: the verdict of each backend and task (harness.analysis.verdicts)
    Column("primary", pa.bool_(), DESCRIPTIVE,
           "quality and paired rows: the task's primary metric (the one that decides the verdict)"),
    Column("verdict", pa.string(), DESCRIPTIVE,
           'paired rows: "not worse", "worse" or "inconclusive" (non-inferiority of the change at margin)'),
    Column("margin", pa.float64(), DESCRIPTIVE, "paired rows: the non-inferiority margin (--margin), metric units"),
    Column("mdc", pa.float64(), DESCRIPTIVE, "paired rows: minimum detectable change at 80 % power, metric units"),
    # hive partitions (directory names, not in the files) and derived columns
    Column("machine", pa.string(), SETTING, "machine id; rows of different machines never pair", stored=False),
    Column("date", pa.string(), DESCRIPTIVE, "UTC date of the row's timestamp", stored=False),
    Column("variant", pa.string(), IDENTITY, "asv parameters without a column of their own (compare.with_variant)",
           stored=False),
)

_BY_NAME = {c.name: c for c in COLUMN_DEFS}
PARTITIONS = ("machine", "date")
#: The Arrow schema of a stored file.
SCHEMA = pa.schema([(c.name, c.type) for c in COLUMN_DEFS if c.stored])
#: Columns :func:`~harness.store.parquet.read_results` derives from the stored ones (none: a value computed
#: from several rows, such as a Holm-adjusted p-value, is the analysis's: :func:`harness.analysis.paired.with_holm`).
DERIVED: tuple[str, ...] = ()
#: Columns of :func:`~harness.store.parquet.read_results`' frame: stored columns, the partitions, the derived.
COLUMNS = tuple(SCHEMA.names) + PARTITIONS + DERIVED
#: What is measured.
IDENTITY_COLUMNS = tuple(c.name for c in COLUMN_DEFS if c.role == IDENTITY)
#: How it was measured: every column not declared otherwise.
SETTINGS = tuple(c.name for c in COLUMN_DEFS if c.role == SETTING)
#: Where key columns sit in a series' key tuple: these first (the order of schema 2, which positional users of
#: ``ChangePoint.series`` rely on), then every other key column in definition order.
_KEY_ORDER = ("source", "machine", "model", "backend", "task", "metric", "threads", "seq_len", "batch_size",
              "data_source", "variant")
#: What pairs rows: every identity and setting column. Rows are compared only when all of it matches.
KEY = sorted(IDENTITY_COLUMNS + SETTINGS,
             key=lambda name: (_KEY_ORDER.index(name) if name in _KEY_ORDER else len(_KEY_ORDER),
                               [c.name for c in COLUMN_DEFS].index(name)))


def column(name: str) -> Column:
    """The definition of one column (raises ``KeyError`` for an unknown name)."""
    return _BY_NAME[name]


def differing_settings(key_a: Mapping[str, Any], key_b: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{setting: (value in A, value in B)}`` for every setting of :data:`SETTINGS` whose values differ
    (nulls are equal to nulls)."""
    out = {}
    for name in SETTINGS:
        a, b = key_a.get(name), key_b.get(name)
        a, b = (None if a is None or (not isinstance(a, str) and pd.isna(a)) else a,
                None if b is None or (not isinstance(b, str) and pd.isna(b)) else b)
        if a != b:
            out[name] = (a, b)
    return out


def describe_differences(differences: Mapping[str, tuple[Any, Any]]) -> str:
    """``"limit 32 → 16, n_examples 32 → 16"``: differing settings for a report line."""
    def text(value: Any) -> str:
        if value is None:
            return "none"
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    return ", ".join(f"{name} {text(a)} → {text(b)}" for name, (a, b) in differences.items())
