"""asv results are only named with today's benchmarks.json when their benchmark version matches."""

from __future__ import annotations

import importlib
import inspect
import json
import re
import shutil
from pathlib import Path

from harness.cli import main
from harness.store.parquet import read_results

ASV_FIXTURE = Path(__file__).parent / "fixtures" / "asv_results"
CORE = "bench_speed.BackendSpeed.time_attention_core"


def test_results_of_another_benchmark_version_are_skipped_not_relabelled(tmp_path, capsys):
    """The suite reorders time_attention_core's parameters to (backend, threads, seq_len) with a new version:
    the stored results, recorded as (backend, seq_len, threads), must not come back with threads 128/512."""
    results = tmp_path / "asv"
    shutil.copytree(ASV_FIXTURE, results)
    benchmarks = json.loads((results / "benchmarks.json").read_text())
    core = benchmarks[CORE]
    assert core["param_names"] == ["backend", "seq_len", "threads"]
    core["param_names"] = ["backend", "threads", "seq_len"]
    core["params"] = [core["params"][0], core["params"][2], core["params"][1]]
    core["version"] = "2"
    (results / "benchmarks.json").write_text(json.dumps(benchmarks))

    store = tmp_path / "store"
    assert main(["import-asv", str(results), "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "2 asv result file(s): 0 measurement(s) imported, 0 already in" in out  # the fixture holds only time_attention_core
    assert "skipped 2 benchmark result(s) recorded with another version" in out
    rows = read_results(store)
    assert rows.empty or CORE not in set(rows["metric"])

    shutil.copy(ASV_FIXTURE / "benchmarks.json", results / "benchmarks.json")  # the suite of their version
    assert main(["import-asv", str(results), "--store", str(store)]) == 0
    assert "2 asv result file(s): 32 measurement(s) imported, 0 already in" in capsys.readouterr().out
    core = read_results(store)
    assert set(core["seq_len"]) == {128, 512} and set(core["threads"]) == {1, 2}


def test_the_unchanged_fixture_imports_everything(tmp_path, capsys):
    assert main(["import-asv", str(ASV_FIXTURE), "--store", str(tmp_path / "store")]) == 0
    assert "skipped" not in capsys.readouterr().out
    assert CORE in set(read_results(tmp_path / "store")["metric"])


def test_every_benchmark_has_an_explicit_version(monkeypatch):
    """asv versions a benchmark by a hash of its source unless ``version`` is set; then any edit of the suite
    would orphan its stored results. The extended selection is included (ATTNBENCH_ASV_EXTENDED=1)."""
    monkeypatch.setenv("ATTNBENCH_ASV_EXTENDED", "1")
    importlib.reload(importlib.import_module("benchmarks.common"))
    missing, seen = [], 0
    for path in sorted((Path(__file__).parents[1] / "benchmarks").glob("bench_*.py")):
        module = importlib.reload(importlib.import_module(f"benchmarks.{path.stem}"))
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            members = inspect.getmembers(obj, callable) if inspect.isclass(obj) else [(name, obj)]
            for member, fn in members:
                if re.match(r"(time|timeraw|mem|peakmem|track)_", member):
                    seen += 1
                    if getattr(fn, "version", None) is None and getattr(obj, "version", None) is None:
                        missing.append(f"{path.stem}.{name}.{member}")
    assert seen >= 8 and missing == []
