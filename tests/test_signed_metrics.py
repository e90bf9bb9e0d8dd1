"""Metrics that can be zero or negative are judged by B − A, positive quantities by B/A."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from harness.cli import main
from harness.analysis.compare import compare, compare_samples
from harness.analysis.regressions import find_regressions
from harness.analysis.report import build_report
from harness.analysis.scales import scale_of
from harness.store.parquet import read_results, write_rows

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def score_rows(run_id: str, commit: str, values: dict[str, float], when: datetime, metric: str = "matthews",
               task: str = "cola") -> list[dict]:
    return [{"run_id": run_id, "timestamp": when, "source": "harness", "commit": commit, "machine": "box",
             "backend": backend, "task": task, "metric": metric, "category": "quality", "unit": "score",
             "direction": "higher", "threads": 2, "value": value, "samples": None}
            for backend, value in values.items()]


def test_units_decide_the_scale():
    assert {unit: scale_of(unit) for unit in ("s", "seconds", "bytes", "tokens/s", "x")} == dict.fromkeys(
        ("s", "seconds", "bytes", "tokens/s", "x"), "ratio")
    assert {unit: scale_of(unit) for unit in ("score", "ratio", "cosine", "logit", "abs", None)} == dict.fromkeys(
        ("score", "ratio", "cosine", "logit", "abs", None), "difference")


def test_cola_matthews_through_the_store_and_cli(tmp_path, capsys):
    """dense −0.017 → 0.046 is an improvement (B/A = −2.7 called it a regression); dynamic-quant 0.0 → −0.2 is
    a regression (B/A was n/a)."""
    store = tmp_path / "store"
    write_rows(store, score_rows("run-a", "a" * 40, {"dense": -0.017, "dynamic-quant": 0.0}, T0), {"run_id": "run-a"})
    write_rows(store, score_rows("run-b", "b" * 40, {"dense": 0.046, "dynamic-quant": -0.2}, T0 + timedelta(hours=1)),
               {"run_id": "run-b"})
    table = compare(read_results(store), "run-a", "run-b").table.set_index("backend")
    assert table.loc["dense", "verdict"] == "improvement"
    assert table.loc["dense", "change"] == pytest.approx(0.063)
    assert table.loc["dynamic-quant", "verdict"] == "regression"
    assert table.loc["dynamic-quant", "change"] == pytest.approx(-0.2)
    assert set(table["scale"]) == {"difference"}
    assert main(["compare", "run-a", "run-b", "--store", str(store)]) == 1
    out = capsys.readouterr().out
    assert "1 regression, 1 improvement" in out.splitlines()[0] or "1 improvement, 1 regression" in out.splitlines()[0]
    assert "| ✅ improvement | matthews (higher is better) | backend=dense, task=cola, threads=2 | -0.017 | 0.046 | +0.063 |" in out
    assert "| -0.2 |" in out and "n/a" not in out


def test_the_threshold_is_absolute_for_scores():
    """accuracy 0.80 → 0.78 is 2 points (B/A 0.975 was "within" the 5 % threshold); 0.80 → 0.795 is within 0.01."""
    one = np.array([0.80])
    assert compare_samples(one, np.array([0.78]), "higher", scale="difference")["verdict"] == "regression"
    assert compare_samples(one, np.array([0.795]), "higher", scale="difference")["verdict"] == "within threshold"
    assert compare_samples(one, np.array([0.78]), "higher", scale="difference",
                           abs_threshold=0.05)["verdict"] == "within threshold"


def test_sampled_values_around_zero():
    """A sampled signed metric crossing zero: the bootstrap interval is of B − A and excludes 0."""
    rng = np.random.default_rng(2)
    result = compare_samples(rng.normal(-0.01, 0.002, 20), rng.normal(0.02, 0.002, 20), "higher", scale="difference")
    assert result["verdict"] == "improvement"
    assert 0 < result["ci_low"] < result["change"] < result["ci_high"]
    assert result["change"] == pytest.approx(0.03, abs=0.003)


def test_regressions_judge_signed_steps_by_their_difference(tmp_path, capsys):
    """Twelve commits: dynamic-quant's MCC drops from exactly 0 to −0.2 at commit 6 (the ratio test skipped a
    step from 0), dense's rises from −0.05 to 0.05 (B/A = −1 called it a regression)."""
    store = tmp_path / "store"
    for i in range(12):
        late = i >= 6
        values = {"dynamic-quant": -0.2 if late else 0.0, "dense": 0.05 if late else -0.05}
        write_rows(store, score_rows(f"run-{i}", f"{i:02d}" + "c" * 38, values, T0 + timedelta(hours=i)),
                   {"run_id": f"run-{i}"})
    rows = read_results(store)
    points = {p.series[3]: p for p in find_regressions(rows)}
    assert set(points) == {"dense", "dynamic-quant"}
    assert points["dynamic-quant"].regression and points["dynamic-quant"].change == pytest.approx(-0.2)
    assert not points["dense"].regression and points["dense"].change == pytest.approx(0.1)
    assert {p.scale for p in points.values()} == {"difference"} and all(p.commit[:2] == "06" for p in points.values())
    assert main(["regressions", "--all", "--store", str(store)]) == 1
    out = capsys.readouterr().out
    assert "| regression | 06cccccccc" in out and "| -0.2 |" in out and "| +0.1 |" in out
    assert "difference" in build_report(rows)


@pytest.mark.parametrize("argv, message", [
    (["compare", "a", "b", "--abs-threshold", "-0.01"], "--abs-threshold must be 0 or more"),
    (["regressions", "--min-abs-effect", "-1"], "--min-abs-effect must be 0 or more"),
    (["regressions", "--alpha", "1.5"], "--alpha must be between 0 and 1"),
])
def test_bad_thresholds_are_one_clear_line(tmp_path, capsys, argv, message):
    assert main([*argv, "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
