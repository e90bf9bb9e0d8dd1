"""Import asv's results (JSON under ``results/asv``) into the Parquet store, so asv history and harness runs
are analysed together.

Each asv result file (one machine × commit × environment) becomes one run of rows with ``source="asv"``;
each benchmark × parameter combination becomes one row (value, unit, category, direction, the asv statistics in
``extra`` and the raw samples when asv recorded them with ``--record-samples``). Parameters named
``backend``, ``task``, ``threads``, ``seq_len`` and ``batch_size`` fill the matching columns.

**Category and direction come from the benchmark, never from a guess.** ``time_*`` benchmarks are speed and
``peakmem_*``/``mem_*`` memory, lower is better; a ``track_*`` benchmark declares both as attributes of its
method (``track_x.category = "speed"``, ``track_x.direction = "lower"``), which asv keeps in
``benchmarks.json``. The words are those of the store's own rows (:data:`harness.store.schema.CATEGORIES`,
:data:`~harness.store.schema.DIRECTIONS`). A ``track_*`` benchmark that declares none, or a word outside that
vocabulary, is not imported; the summary names it.

**Each measurement is stored once.** A measurement is one benchmark × parameter combination of one machine,
environment and commit, at the time asv started that benchmark; its id (a hash of those) is the row's
``cell_id``. Rows whose id is already in the store are skipped, so importing the same folder again adds
nothing, and a result file that asv updated in place (another ``asv run --bench …`` on the same commit) adds
only its new measurements. On a local store the whole import holds a lock file (``<store>/.import.lock``), so two
imports started together store every measurement once; every file's name is derived from the ids it holds,
so on object stores (no lock) two imports that race write the same name and the last write wins.

Parameter values are stored by position and named from ``benchmarks.json``, which describes the suite as
it is *now*. A result is only read with those names when its stored benchmark version equals the version
in ``benchmarks.json`` (what ``asv compare`` and ``asv publish`` require too): a result of an older version
of the benchmark (its parameters may have been renamed or reordered since) is skipped and counted, never
relabelled. The suite in ``benchmarks/`` sets ``version`` explicitly, so edits that do not change what a
benchmark measures keep its older results importable.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import StoreError, UserError
from .schema import CATEGORIES, DIRECTIONS
from .parquet import read_results, store_lock, write_rows

#: Category and direction of asv's benchmark types that carry them by definition.
TYPE_CATEGORIES = {"time": ("speed", "lower"), "peakmemory": ("memory", "lower"), "memory": ("memory", "lower")}
PARAM_COLUMNS = {"backend": str, "task": str, "threads": int, "seq_len": int, "batch_size": int}


@dataclass
class ImportSummary:
    files: int
    imported: int
    skipped_existing: int
    rows: int
    #: benchmark results (one benchmark of one result file) not imported because their benchmark version
    #: differs from ``benchmarks.json``'s, or the benchmark is no longer in it
    skipped_version: int = 0
    skipped_unknown: int = 0
    #: measurements (benchmark × parameters) already in the store, skipped
    skipped_measurements: int = 0
    #: ``{benchmark: why}`` of benchmarks not imported because they declare no category or direction
    undeclared: dict[str, str] | None = None


def _param_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


class UndeclaredBenchmark(ValueError):
    """A benchmark whose category or direction is not declared (or not in the store's vocabulary)."""


def category_and_direction(meta: dict) -> tuple[str, str]:
    """``(category, direction)`` of a benchmark described in ``benchmarks.json``.

    ``time`` benchmarks are speed and ``peakmemory``/``memory`` benchmarks memory, lower is better. Any other
    type (``track``) must declare ``category`` and ``direction`` as attributes of its method, in the store's
    vocabulary. Raises :class:`UndeclaredBenchmark` saying what is missing and how to declare it.
    """
    kind = meta.get("type", "")
    if kind in TYPE_CATEGORIES:
        return TYPE_CATEGORIES[kind]
    category, direction = meta.get("category"), meta.get("direction")
    name = meta.get("name", "?")
    method = name.rsplit(".", 1)[-1]
    if category not in CATEGORIES or direction not in DIRECTIONS:
        said = f"category {category!r}, direction {direction!r}"
        raise UndeclaredBenchmark(
            f"{name} ({said}): declare both on the method, e.g. {method}.category = \"speed\" and "
            f"{method}.direction = \"lower\" (categories: {', '.join(CATEGORIES)}; directions: "
            f"{', '.join(DIRECTIONS)}), then `asv run --bench just-discover` to refresh benchmarks.json")
    return category, direction


def _ms_to_datetime(ms: int | float | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def run_id_of(machine: str, env_name: str, commit: str, started: int | float) -> str:
    digest = hashlib.sha256(f"{machine}\0{env_name}\0{commit}\0{started}".encode()).hexdigest()[:12]
    return f"asv-{commit[:8]}-{digest}"


def measurement_id(machine: str, env_name: str, commit: str, benchmark: str, version: str | None,
                   params: tuple[str, ...], started: int | float | None) -> str:
    """The id of one asv measurement (stored as the row's ``cell_id``): a hash of what identifies it."""
    text = json.dumps([machine, env_name, commit, benchmark, version, list(params), started])
    return "asv-" + hashlib.sha256(text.encode()).hexdigest()[:20]


def stale_results(results, benchmarks: dict) -> tuple[list[str], list[str]]:
    """Result keys of one loaded ``asv.results.Results`` that cannot be read with ``benchmarks.json``:
    ``(other version, not in benchmarks.json)``. A result of another benchmark version (or one without a
    stored version, or whose number of parameters differs from ``param_names``) may name its parameters
    differently; asv's own ``Results.get_result_keys`` drops version mismatches the same way."""
    other_version, unknown = [], []
    for key in sorted(results.get_all_result_keys()):
        meta = benchmarks.get(key)
        if meta is None:
            unknown.append(key)
        elif (results.benchmark_version.get(key) != meta.get("version")
              or len(results.get_result_params(key) or []) != len(meta.get("param_names", []))):
            other_version.append(key)
    return other_version, unknown


def result_rows(results, machine: str, machine_info: dict, benchmarks: dict,
                undeclared: dict[str, str] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Rows of one loaded ``asv.results.Results``; returns ``(run id, rows)``. Results that
    :func:`stale_results` lists, and benchmarks without a declared category and direction
    (:func:`category_and_direction`), are left out; the latter are recorded in ``undeclared`` (benchmark → why)
    when it is given."""
    started_all = [t for t in results.started_at.values() if t is not None]
    run_started = min(started_all) if started_all else results.date
    run_id = run_id_of(machine, results.env_name, results.commit_hash, run_started)
    cpu = json.dumps({"model": machine_info.get("cpu"), "cores": machine_info.get("num_cpu"),
                      "arch": machine_info.get("arch"), "os": machine_info.get("os")}, sort_keys=True)
    versions = json.dumps({"python": results.params.get("python"), **{
        k.removeprefix("req-"): v for k, v in results.params.items() if k.startswith("req-")}}, sort_keys=True)
    rows = []
    other_version, unknown = stale_results(results, benchmarks)
    for key in sorted(set(results.get_all_result_keys()) - set(other_version) - set(unknown)):
        meta = benchmarks[key]
        try:
            category, direction = category_and_direction({"name": key, **meta})
        except UndeclaredBenchmark as exc:
            if undeclared is not None:
                undeclared[key] = str(exc)
            continue
        params = results.get_result_params(key)
        # asv returns one list entry per parameter combination; a benchmark without parameters has one
        # combination, the empty one, and so a list of one value
        values = results.get_result_value(key, params)
        stats = results.get_result_stats(key, params)
        samples = results.get_result_samples(key, params)
        combos = list(itertools.product(*params))
        names = meta.get("param_names", [])
        started = results.started_at.get(key)
        for i, combo in enumerate(combos):
            value = values[i] if values else None
            if value is None or value != value:
                continue  # failed (None) or skipped with NotImplementedError (NaN) in asv
            parsed = {name: _param_value(text) for name, text in zip(names, combo)}
            row = {"run_id": run_id, "timestamp": _ms_to_datetime(started or run_started),
                   "source": "asv", "commit": results.commit_hash, "dirty": False, "machine": machine, "cpu": cpu,
                   "versions": versions, "category": category, "metric": key, "value": float(value),
                   "unit": meta.get("unit"), "direction": direction,
                   "samples": [float(s) for s in samples[i]] if samples and samples[i] else None,
                   "cell_id": measurement_id(machine, results.env_name, results.commit_hash, key,
                                             results.benchmark_version.get(key), tuple(combo), started),
                   "extra": json.dumps({"asv_env": results.env_name, "params": {k: str(v) for k, v in parsed.items()},
                                        "stats": stats[i] if stats else None,
                                        "commit_date": _ms_to_datetime(results.date).isoformat()
                                        if results.date else None}, sort_keys=True, default=str)}
            for column, kind in PARAM_COLUMNS.items():
                if column in parsed:
                    row[column] = kind(parsed[column])
            if "backend" in row:
                row["backend_name"] = "+".join(part.split(":", 1)[0] for part in row["backend"].split("+"))
            rows.append(row)
    return run_id, rows


def import_asv(results_dir: Path | str, store: Path | str) -> ImportSummary:
    """Import every asv result file under ``results_dir`` (all machines) into ``store``; idempotent per
    measurement (see the module docstring)."""
    from asv import util
    from asv.results import Results, iter_results_paths

    results_dir = Path(results_dir)
    benchmarks_file = results_dir / "benchmarks.json"
    if not benchmarks_file.is_file():
        raise UserError(f"{benchmarks_file} not found: give the asv results directory (asv.conf.json's "
                        "results_dir, e.g. results/asv) after at least one `asv run`")
    benchmarks = {k: v for k, v in util.load_json(str(benchmarks_file), api_version=2).items() if k != "version"}
    undeclared: dict[str, str] = {}
    summary = ImportSummary(0, 0, 0, 0, undeclared=undeclared)
    with store_lock(store):
        existing = read_results(store)
        asv_rows = existing[existing["source"] == "asv"]
        known_cells = set(asv_rows["cell_id"].dropna())
        # stores imported before measurement ids: a result file whose run is there was imported whole
        legacy_runs = set(asv_rows.loc[asv_rows["cell_id"].isna(), "run_id"])
        for root, filename, machine in iter_results_paths(str(results_dir)):
            summary.files += 1
            machine_info = json.loads((Path(root) / "machine.json").read_text())
            try:
                results = Results.load(str(Path(root) / filename), machine_name=machine)
            except util.UserError as exc:
                raise StoreError(f"cannot read asv result {Path(root) / filename}: {exc}") from None
            run_id, rows = result_rows(results, machine, machine_info, benchmarks, undeclared)
            if run_id in legacy_runs:
                summary.skipped_existing += 1
                continue
            new = [r for r in rows if r["cell_id"] not in known_cells]
            summary.skipped_measurements += len(rows) - len(new)
            other_version, unknown = stale_results(results, benchmarks)
            summary.skipped_version += len(other_version)
            summary.skipped_unknown += len(unknown)
            if not new:
                summary.skipped_existing += 1
                continue
            run = {"run_id": run_id, "source": "asv", "asv_file": str(Path(root) / filename), "machine": machine,
                   "commit": results.commit_hash, "env_name": results.env_name}
            content = hashlib.sha256("\0".join(sorted(r["cell_id"] for r in new)).encode()).hexdigest()[:16]
            write_rows(store, new, run, name=f"part-{run_id}-{content}.parquet")
            known_cells.update(r["cell_id"] for r in new)
            summary.imported += 1
            summary.rows += len(new)
    return summary
