"""Import asv's results (JSON under ``results/asv``) into the Parquet store, so asv history and harness runs
are analysed together.

Each asv result file (one machine × commit × environment) becomes one run of rows with ``source="asv"``;
each benchmark × parameter combination becomes one row (value, unit, direction, the asv statistics in
``extra`` and the raw samples when asv recorded them with ``--record-samples``). Parameters named
``backend``, ``task``, ``threads``, ``seq_len`` and ``batch_size`` fill the matching columns. Importing is
idempotent: a result file whose run id (a hash of machine, environment, commit and start time) is already
in the store is skipped.

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
from .store import read_results, write_rows

CATEGORY_BY_METHOD = {"track_metric": "quality", "track_agreement": "agreement",
                      "track_attention_cosine": "fidelity"}
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


def _param_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _category(benchmark: str, kind: str) -> tuple[str, str]:
    """(category, direction) of an asv benchmark: time/peakmem lower is better; track_* higher, by convention."""
    method = benchmark.rsplit(".", 1)[-1]
    if kind == "time":
        return "speed", "lower"
    if kind in ("peakmemory", "memory"):
        return "memory", "lower"
    return CATEGORY_BY_METHOD.get(method, "track"), "higher"


def _ms_to_datetime(ms: int | float | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def run_id_of(machine: str, env_name: str, commit: str, started: int | float) -> str:
    digest = hashlib.sha256(f"{machine}\0{env_name}\0{commit}\0{started}".encode()).hexdigest()[:12]
    return f"asv-{commit[:8]}-{digest}"


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


def result_rows(results, machine: str, machine_info: dict, benchmarks: dict) -> tuple[str, list[dict[str, Any]]]:
    """Rows of one loaded ``asv.results.Results``; returns ``(run id, rows)``. Results that
    :func:`stale_results` lists are left out."""
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
        params = results.get_result_params(key)
        values = results.get_result_value(key, params)
        stats = results.get_result_stats(key, params)
        samples = results.get_result_samples(key, params)
        combos = list(itertools.product(*params)) if params else [()]
        if not params:
            values, stats, samples = [values], [stats], [samples]
        names = meta.get("param_names", [])
        category, direction = _category(key, meta.get("type", ""))
        for i, combo in enumerate(combos):
            value = values[i] if values else None
            if value is None or value != value:
                continue  # failed (None) or skipped with NotImplementedError (NaN) in asv
            parsed = {name: _param_value(text) for name, text in zip(names, combo)}
            row = {"run_id": run_id, "timestamp": _ms_to_datetime(results.started_at.get(key) or run_started),
                   "source": "asv", "commit": results.commit_hash, "dirty": False, "machine": machine, "cpu": cpu,
                   "versions": versions, "category": category, "metric": key, "value": float(value),
                   "unit": meta.get("unit"), "direction": direction,
                   "samples": [float(s) for s in samples[i]] if samples and samples[i] else None,
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
    """Import every asv result file under ``results_dir`` (all machines) into ``store``; idempotent."""
    from asv import util
    from asv.results import Results, iter_results_paths

    results_dir = Path(results_dir)
    benchmarks_file = results_dir / "benchmarks.json"
    if not benchmarks_file.is_file():
        raise UserError(f"{benchmarks_file} not found: give the asv results directory (asv.conf.json's "
                        "results_dir, e.g. results/asv) after at least one `asv run`")
    benchmarks = {k: v for k, v in util.load_json(str(benchmarks_file), api_version=2).items() if k != "version"}
    existing = read_results(store)
    known = set(existing.loc[existing["source"] == "asv", "run_id"])
    summary = ImportSummary(0, 0, 0, 0)
    for root, filename, machine in iter_results_paths(str(results_dir)):
        summary.files += 1
        machine_info = json.loads((Path(root) / "machine.json").read_text())
        try:
            results = Results.load(str(Path(root) / filename), machine_name=machine)
        except util.UserError as exc:
            raise StoreError(f"cannot read asv result {Path(root) / filename}: {exc}") from None
        run_id, rows = result_rows(results, machine, machine_info, benchmarks)
        if run_id in known:
            summary.skipped_existing += 1
            continue
        other_version, unknown = stale_results(results, benchmarks)
        summary.skipped_version += len(other_version)
        summary.skipped_unknown += len(unknown)
        run = {"run_id": run_id, "source": "asv", "asv_file": str(Path(root) / filename), "machine": machine,
               "commit": results.commit_hash, "env_name": results.env_name}
        write_rows(store, rows, run)
        known.add(run_id)
        summary.imported += 1
        summary.rows += len(rows)
    return summary
