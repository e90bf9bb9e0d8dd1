"""A longer asv history derived from one real ``asv run`` of the per-commit suite (``tests/fixtures/asv_commit_suite``).

The real result file is copied once per derived commit, with a new commit id, commit date and start times,
and every value (with its statistics and raw samples) multiplied by a factor: per-commit noise of the size
each kind of measurement has (wall times share a run-level drift; instruction counts repeat to about 1e-5),
and, from commit ``step_at`` on, ``factor`` for one backend's attention core (instructions and seconds; its
ratio to dense follows from the seconds). Nothing else of asv's format changes, so the importer reads the
derived files exactly as it reads asv's own.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import itertools
import json
import shutil
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).parent / "fixtures" / "asv_commit_suite"
HOUR_MS = 3_600_000


def real_result_path(results_dir: Path = FIXTURE) -> Path:
    """The one real result file under ``results_dir`` (``<machine>/<commit>-<environment hash>.json``)."""
    (machine_dir,) = [p.parent for p in results_dir.glob("*/machine.json")]
    (path,) = [p for p in machine_dir.glob("*.json") if p.name != "machine.json"]
    return path


def real_result(results_dir: Path = FIXTURE) -> tuple[Path, dict]:
    """``(machine directory, parsed result file)`` of the one real result file under ``results_dir``."""
    path = real_result_path(results_dir)
    return path.parent, json.loads(path.read_text())


def _scaled(entry: list, columns: list[str], index: int, factor: float) -> None:
    """Multiply combination ``index`` of one benchmark result (value, interval, quartiles, samples) in place."""
    for column, field in zip(columns, entry):
        if column == "result" or column.startswith("stats_ci") or column.startswith("stats_q"):
            if field is not None and field[index] is not None:
                field[index] = field[index] * factor
        elif column == "samples" and field is not None and field[index] is not None:
            field[index] = [s * factor for s in field[index]]


def derive_history(out_dir: Path, *, commits: int, step_at: int, backend: str, factor: float, seed: int = 0,
                   results_dir: Path = FIXTURE) -> list[str]:
    """Write ``commits`` asv result files into ``out_dir`` (with ``benchmarks.json`` and ``machine.json``);
    return the commit ids, oldest first. The step is at ``commits[step_at]``."""
    machine_dir, source = real_result(results_dir)
    environment = real_result_path(results_dir).name.split("-", 1)[1]  # as asv names it: a hash of the env
    benchmarks = json.loads((results_dir / "benchmarks.json").read_text())
    target = out_dir / machine_dir.name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(results_dir / "benchmarks.json", out_dir / "benchmarks.json")
    shutil.copy(machine_dir / "machine.json", target / "machine.json")
    columns = source["result_columns"]
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(commits):
        sha = hashlib.sha1(f"derived commit {i}".encode()).hexdigest()
        data = copy.deepcopy(source)
        data["commit_hash"], data["date"] = sha, source["date"] + i * HOUR_MS
        drift = rng.lognormal(0, 0.005)  # what slows a whole run down (a busy neighbour, another boot)
        seconds: dict[tuple, float] = {}
        for name, entry in data["results"].items():
            result = dict(zip(columns, entry))
            if result.get("started_at") is not None:
                entry[columns.index("started_at")] = result["started_at"] + i * HOUR_MS
            names = benchmarks[name]["param_names"]
            unit = benchmarks[name]["unit"]
            for j, combo in enumerate(itertools.product(*result["params"])):
                params = {k: ast.literal_eval(v) for k, v in zip(names, combo)}
                if name.endswith("track_vs_dense"):
                    continue  # follows from track_seconds below
                noise = rng.normal(1, 2e-5) if unit == "instructions" else drift * rng.lognormal(0, 0.01)
                planted = (i >= step_at and params.get("backend") == backend
                           and params.get("part") == "attention_core")
                _scaled(entry, columns, j, noise * (factor if planted else 1.0))
                if name.endswith("track_seconds") and entry[0][j] is not None:
                    seconds[(params["backend"], params["part"])] = entry[0][j]
        for name, entry in data["results"].items():
            if not name.endswith("track_vs_dense"):
                continue
            result = dict(zip(columns, entry))
            names = benchmarks[name]["param_names"]
            for j, combo in enumerate(itertools.product(*result["params"])):
                params = {k: ast.literal_eval(v) for k, v in zip(names, combo)}
                key, dense = (params["backend"], params["part"]), ("dense", params["part"])
                if entry[0][j] is not None and key in seconds and dense in seconds:
                    _scaled(entry, columns, j, (seconds[key] / seconds[dense]) / entry[0][j])
        (target / f"{sha[:8]}-{environment}").write_text(json.dumps(data))
        ids.append(sha)
    return ids
