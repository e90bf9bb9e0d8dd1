"""compare, change points, the asv importer and the report, on constructed data with known answers."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.analysis.changepoints import e_divisive
from harness.cli import main
from harness.analysis.compare import compare, compare_samples
from harness.errors import UserError
from harness.analysis.regressions import find_regressions
from harness.analysis.report import build_report, pareto_front
from harness.store.parquet import read_results, write_rows

ASV_FIXTURE = Path(__file__).parent / "fixtures" / "asv_results"
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def timing_rows(run_id: str, commit: str, samples: dict[str, np.ndarray], when: datetime, machine="box") -> list:
    return [{"run_id": run_id, "timestamp": when, "source": "harness", "commit": commit, "machine": machine,
             "backend": backend, "metric": "latency_forward", "category": "speed", "unit": "s",
             "direction": "lower", "threads": 2, "seq_len": 128, "batch_size": 8, "value": float(np.median(s)),
             "samples": list(map(float, s))} for backend, s in samples.items()]


@pytest.mark.parametrize("factor, direction, expected", [
    (1.00, "lower", {"not significant", "within threshold"}),
    (1.08, "lower", {"regression"}),
    (0.92, "lower", {"improvement"}),
    (0.92, "higher", {"regression"}),
    (1.02, "lower", {"within threshold", "not significant"}),
])
def test_compare_samples_known_answers(factor, direction, expected):
    rng = np.random.default_rng(7)
    a = rng.normal(0.100, 0.002, 20)
    b = rng.normal(0.100 * factor, 0.002, 20)
    result = compare_samples(a, b, direction)
    assert result["verdict"] in expected
    assert result["ci_low"] <= result["ratio"] <= result["ci_high"]
    if factor != 1.0:
        assert abs(result["ratio"] - factor) < 0.01


def test_noise_only_is_not_significant():
    rng = np.random.default_rng(3)
    verdicts = [compare_samples(rng.normal(1, 0.05, 10), rng.normal(1, 0.05, 10), "lower")["verdict"]
                for _ in range(40)]
    assert verdicts.count("regression") + verdicts.count("improvement") <= 2  # ~5 % false alarms at alpha 0.05


def test_compare_through_the_store_and_cli_exit_codes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    store = tmp_path / "store"
    base = {"dense": rng.normal(0.1, 0.002, 15), "topk:k=8": rng.normal(0.3, 0.006, 15)}
    slower = {"dense": rng.normal(0.1, 0.002, 15), "topk:k=8": rng.normal(0.33, 0.006, 15)}
    write_rows(store, timing_rows("run-a", "a" * 40, base, T0), {"run_id": "run-a"})
    write_rows(store, timing_rows("run-b", "b" * 40, slower, T0 + timedelta(hours=1)), {"run_id": "run-b"})
    write_rows(store, timing_rows("run-c", "c" * 40, base, T0, machine="other"), {"run_id": "run-c"})
    result = compare(read_results(store), "aaaa", "bbbb")
    verdicts = dict(zip(result.table["backend"], result.table["verdict"]))
    assert verdicts["topk:k=8"] == "regression" and verdicts["dense"] != "regression"
    assert set(result.table["machine"]) == {"box"}  # never paired across machines
    assert main(["compare", "aaaa", "bbbb", "--store", str(store)]) == 1
    out = capsys.readouterr().out
    assert "❌ regression" in out and "topk:k=8" in out and "| verdict |" in out
    assert main(["compare", "run-a", "run-a", "--store", str(store)]) == 0
    assert main(["compare", "aaaa", "zzzz", "--store", str(store)]) == 2
    assert "no results for 'zzzz'" in capsys.readouterr().err


def test_compare_accepts_git_revisions(tmp_path):
    """``attnbench compare HEAD~1 HEAD`` works like ``asv compare``: revisions resolve to commits in the store."""
    from harness.analysis.compare import rev_parse, select

    head = rev_parse("HEAD")
    if head is None:
        pytest.skip("not a git checkout")
    rng = np.random.default_rng(1)
    store = tmp_path / "store"
    write_rows(store, timing_rows("run-h", head, {"dense": rng.normal(0.1, 0.002, 5)}, T0), {"run_id": "run-h"})
    rows, label = select(read_results(store), "HEAD")
    assert label == f"commit {head[:10]}" and set(rows["commit"]) == {head}
    assert rev_parse("no-such-revision-xyz") is None
    with pytest.raises(UserError, match="no results for 'HEAD~0\\^'"):
        select(read_results(store), "HEAD~0^")  # a real revision with no results


def test_e_divisive_finds_a_step_and_nothing_in_noise():
    rng = np.random.default_rng(11)
    series = 1 + rng.normal(0, 0.005, 20)
    assert e_divisive(series) == []
    series[12:] *= 1.05
    ((index, p),) = e_divisive(series)
    assert index == 12 and p < 0.01
    two = np.r_[np.full(8, 1.0), np.full(8, 1.2), np.full(8, 0.9)] + rng.normal(0, 0.005, 24)
    assert [i for i, _ in e_divisive(two)] == [8, 16]


def test_regressions_over_a_synthetic_history_in_the_store(tmp_path, capsys):
    """20 commits, a 5 % slowdown of one backend at commit 13: flagged there, nowhere else."""
    rng = np.random.default_rng(5)
    store = tmp_path / "store"
    for i in range(20):
        commit = f"{i:02d}" + "f" * 38
        slow = 1.05 if i >= 13 else 1.0
        drift = rng.normal(0, 0.005)  # run-to-run drift shared by the run's samples
        samples = {"dense": 0.1 * (1 + drift) * rng.normal(1, 0.01, 10),
                   "topk:k=8": 0.3 * slow * (1 + drift) * rng.normal(1, 0.01, 10)}
        write_rows(store, timing_rows(f"run-{i}", commit, samples, T0 + timedelta(hours=i)), {"run_id": f"r{i}"})
    points = find_regressions(read_results(store))
    found = sorted((p.series[3], p.commit[:2], p.regression, p.relative_to or "") for p in points)
    assert found == [("topk:k=8", "13", True, ""), ("topk:k=8", "13", True, "dense")]  # absolute and ÷ dense
    assert all(abs(p.ratio - 1.05) < 0.01 for p in points)
    assert main(["regressions", "--store", str(store)]) == 1
    assert "| regression | 13ffffffff" in capsys.readouterr().out


def test_asv_results_fixture_imports_idempotently(tmp_path, capsys):
    store = tmp_path / "store"
    results = tmp_path / "asv"
    shutil.copytree(ASV_FIXTURE, results)
    assert main(["import-asv", str(results), "--store", str(store)]) == 0
    first = read_results(store)
    assert main(["import-asv", str(results), "--store", str(store)]) == 0
    assert "0 measurement(s) imported, 32 already in" in capsys.readouterr().out.splitlines()[-1]
    assert len(read_results(store)) == len(first) > 0
    assert set(first["source"]) == {"asv"} and first["commit"].nunique() >= 2
    speed = first[first["metric"] == "bench_speed.BackendSpeed.time_attention_core"]
    assert set(speed["backend"]) >= {"dense", "dense:impl=eager"}
    assert speed["threads"].notna().all() and speed["seq_len"].isin([128, 512]).all()
    assert (speed["unit"] == "seconds").all() and (speed["direction"] == "lower").all()
    assert speed["samples"].map(lambda s: s is not None and len(s) > 1).all()  # recorded with --record-samples
    stats = json.loads(speed["extra"].iloc[0])["stats"]
    assert {"q_25", "q_75"} <= set(stats)


def test_compare_pairs_imported_asv_commits(tmp_path):
    """asv rows have no model (NaN in the key): they must still pair, one row per parameter combination."""
    store = tmp_path / "store"
    assert main(["import-asv", str(ASV_FIXTURE), "--store", str(store)]) == 0
    rows = read_results(store)
    a, b = sorted(rows["commit"].unique())
    table = compare(rows, a[:8], b[:8]).table
    combos = rows[rows["commit"] == b][["backend", "threads", "seq_len"]].drop_duplicates()
    assert len(table) == len(combos) > 1


def test_asv_parameters_without_a_column_keep_series_apart(tmp_path):
    """Gemm's impl and head_dim have no column of their own: int8 and fp32 must not be pooled."""
    from harness.analysis.compare import with_variant

    def row(commit, impl, value):
        return {"run_id": f"asv-{commit}", "timestamp": T0, "source": "asv", "commit": commit * 40,
                "machine": "box", "metric": "bench_kernels.Gemm.time_gemm", "category": "speed", "unit": "seconds",
                "direction": "lower", "threads": 1, "value": value, "samples": [value] * 5,
                "extra": json.dumps({"params": {"impl": impl, "head_dim": "32", "threads": "1"}})}

    store = tmp_path / "store"
    for commit, scale in (("a", 1.0), ("b", 1.5)):
        write_rows(store, [row(commit, "int8-fbgemm", 1.0 * scale), row(commit, "fp32-matmul", 2.0)],
                   {"run_id": f"asv-{commit}"})
    rows = read_results(store)
    assert set(with_variant(rows)["variant"]) == {'{"head_dim": "32", "impl": "int8-fbgemm"}',
                                                  '{"head_dim": "32", "impl": "fp32-matmul"}'}
    table = compare(rows, "aaaa", "bbbb").table.set_index("variant")
    assert table.loc['{"head_dim": "32", "impl": "int8-fbgemm"}', "ratio"] == pytest.approx(1.5)
    assert table.loc['{"head_dim": "32", "impl": "fp32-matmul"}', "ratio"] == pytest.approx(1.0)


def test_asv_import_needs_benchmarks_json(tmp_path, capsys):
    assert main(["import-asv", str(tmp_path), "--store", str(tmp_path / "s")]) == 2
    assert "benchmarks.json not found" in capsys.readouterr().err


def test_pareto_front():
    points = pd.DataFrame({"latency": [1.0, 2.0, 3.0, 1.5], "score": [0.7, 0.8, 0.75, 0.6]},
                          index=["a", "b", "c", "d"])
    assert list(pareto_front(points).index) == ["a", "b"]


def test_report_renders_pareto_and_history_plots(tmp_path):
    rng = np.random.default_rng(1)
    store = tmp_path / "store"
    for i in range(12):  # 6 vs 6 commits: the permutation test can reach p < 0.01
        samples = {"dense": rng.normal(0.1, 0.001, 5) * (1.1 if i >= 6 else 1.0)}
        rows = timing_rows(f"run-{i}", f"{i:02d}" + "e" * 38, samples, T0 + timedelta(hours=i))
        rows += [{**rows[0], "metric": "latency_attention_core", "value": 0.004, "samples": [0.004] * 3},
                 {**rows[0], "category": "quality", "metric": "accuracy", "task": "sst2", "value": 0.8,
                  "unit": "score", "direction": "higher", "samples": None}]
        write_rows(store, rows, {"run_id": f"run-{i}"})
    page = build_report(read_results(store))
    assert page.startswith("<!doctype html>") and "Pareto" in page
    assert page.count("data:image/png;base64,") >= 3  # one Pareto plot and the history plots
    assert "regression" in page  # the injected 10 % step is listed
    assert "<script" not in page and "http" not in page  # self-contained
    assert main(["report", "--store", str(store), "--output", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").read_text().count("<img") >= 3


def quality_rows(run_id: str, commit: str, values: dict[str, float], when: datetime, **settings) -> list:
    """Accuracy rows of one sst2 eval run (as the runner writes them) with the given settings."""
    fields = {"limit": 32, "n_examples": 32, "max_tokens": 4096, "data_source": "sample@abc", "split": "validation",
              "model": "embedded", "threads": 2, **settings}
    return [{"run_id": run_id, "timestamp": when, "source": "harness", "commit": commit, "machine": "box",
             "backend": backend, "task": "sst2", "metric": "accuracy", "category": "quality", "unit": "score",
             "direction": "higher", "value": value, **fields} for backend, value in values.items()]


def test_runs_with_different_settings_are_not_paired_as_comparable(tmp_path, capsys):
    """Same commit, run A --limit 32, run C --limit 16: `compare C A` gave a regression, exit 1."""
    store = tmp_path / "store"
    commit = "d" * 40
    write_rows(store, quality_rows("run-a", commit, {"dense": 0.875, "dynamic-quant": 0.875}, T0), {})
    write_rows(store, quality_rows("run-c", commit, {"dense": 0.844, "dynamic-quant": 0.875}, T0 + timedelta(hours=1),
                                   limit=16, n_examples=16), {})
    result = compare(read_results(store), "run-c", "run-a", threshold=0.03)
    assert set(result.table["verdict"]) == {"settings differ"} and result.regressions.empty
    assert set(result.table["settings"]) == {"n_examples 16 → 32, limit 16 → 32"}
    assert main(["compare", "run-c", "run-a", "--threshold", "0.03", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "settings differ: n_examples 16 → 32, limit 16 → 32" in out and "❌" not in out
    assert main(["compare", "run-c", "run-a", "--only-changed", "--store", str(store)]) == 0
    assert capsys.readouterr().out.count("settings differ: n_examples 16 → 32") == 2  # not hidden by --only-changed


@pytest.mark.parametrize("setting, a, b", [("eval_batch_size", 8, 32), ("max_tokens", 4096, 512),
                                           ("data_source", "sample@abc", "hub"), ("model", "embedded", "bert"),
                                           ("fidelity_examples", 64, 16), ("split", "validation", "test"),
                                           ("threads", 2, 4), ("executor", "local", "processes:2")])
def test_every_setting_column_keeps_runs_apart(tmp_path, setting, a, b):
    store = tmp_path / "store"
    write_rows(store, quality_rows("run-a", "a" * 40, {"dense": 0.875}, T0, **{setting: a}), {})
    write_rows(store, quality_rows("run-b", "b" * 40, {"dense": 0.5}, T0, **{setting: b}), {})
    (verdict,) = compare(read_results(store), "run-a", "run-b").table["verdict"]
    assert verdict == "settings differ"


def test_the_key_is_derived_from_the_schema_roles():
    """Every stored column is a setting (in the key) unless declared identity, descriptive or value."""
    from harness.analysis import compare as compare_module, regressions, report
    from harness.store import schema

    assert compare_module.KEY is schema.KEY and regressions.KEY is schema.KEY and report.KEY is schema.KEY
    for name in ("limit", "max_tokens", "eval_batch_size", "fidelity_examples", "warmup", "executor", "machine",
                 "model", "data_source", "split", "threads", "seq_len", "batch_size", "n_examples"):
        assert name in schema.SETTINGS and name in schema.KEY
    assert not {"run_id", "commit", "timestamp", "value", "samples", "versions"} & set(schema.KEY)
    assert set(schema.KEY) == {c.name for c in schema.COLUMN_DEFS if c.role in (schema.IDENTITY, schema.SETTING)}


def test_every_run_setting_is_recorded_or_declared_not_to_change_values():
    """A new RunSpec field must be given a column (a setting) or a reason here: silent settings pair runs wrongly."""
    from dataclasses import fields

    from harness import RunSpec
    from harness.store.schema import SETTINGS

    recorded = {"backends": "backend", "tasks": "task", "model": "model", "data": "data_source", "limit": "limit",
                "max_tokens": "max_tokens", "eval_batch_size": "eval_batch_size", "batch_size": "batch_size",
                "seq_len": "seq_len", "threads": "threads", "warmup": "warmup",
                "fidelity_examples": "fidelity_examples", "executor": "executor", "device": "device",
                "dtype": "dtype", "l2_flush": "clock", "extra_shapes": "batch_size", "throughput_batch": "batch_size"}
    no_effect = {"repeats": "the number of samples (len(samples)); statistics account for it",
                 "speed": "whether speed cells run", "resume": "which cells run", "store": "where rows go",
                 "progress": "terminal output", "max_cells": "whether a large run starts",
                 "confirmed": "whether a large run starts",
                 "margin": "the verdict's margin, in its own column: it changes the verdict, never a measured value"}
    assert {f.name for f in fields(RunSpec)} == set(recorded) | set(no_effect)
    assert {c for c in recorded.values() if c not in ("backend", "task")} <= set(SETTINGS)


def test_a_settings_change_is_not_a_change_point(tmp_path):
    """regressions: the series of a setting are separate; a history whose --limit changed has no step."""
    store = tmp_path / "store"
    for i in range(16):
        limited = {"limit": 16, "n_examples": 16} if i >= 8 else {}
        write_rows(store, quality_rows(f"run-{i}", f"{i:02d}" + "e" * 38, {"dense": 0.844 if i >= 8 else 0.875},
                                       T0 + timedelta(hours=i), **limited), {})
    assert find_regressions(read_results(store), min_effect=0.01) == []
