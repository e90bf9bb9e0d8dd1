"""Paired A/B statistics (harness.analysis.ab) against scipy references, and `attnbench compare` on A/B rows."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness.analysis import ab
from harness.errors import UserError


def test_wilcoxon_matches_scipy():
    rng = np.random.default_rng(1)
    d = rng.normal(0.03, 0.02, size=11)
    assert ab.wilcoxon_p(d) == pytest.approx(stats.wilcoxon(d).pvalue)
    assert ab.wilcoxon_p(np.zeros(5)) == 1.0


def test_bootstrap_ci_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(2)
    d = rng.normal(0.05, 0.03, size=15)
    low, high = ab.bootstrap_median_ci(d, resamples=20000)
    reference = stats.bootstrap((d,), np.median, method="percentile", n_resamples=20000,
                                random_state=np.random.default_rng(0)).confidence_interval
    assert low == pytest.approx(reference.low, abs=0.004)
    assert high == pytest.approx(reference.high, abs=0.004)
    assert low < np.median(d) < high


def test_minimum_detectable_effect_matches_power_of_paired_t_test():
    rng = np.random.default_rng(3)
    d = rng.normal(0, 0.04, size=12)
    mde = np.log1p(ab.minimum_detectable_effect(d, alpha=0.05, power=0.8))
    sd, n = np.std(d, ddof=1), len(d)
    # power of a two-sided z test at the MDE is 0.8 (the normal approximation the function states)
    z = stats.norm.ppf(0.975)
    power = stats.norm.sf(z - mde / (sd / np.sqrt(n))) + stats.norm.cdf(-z - mde / (sd / np.sqrt(n)))
    assert power == pytest.approx(0.8, abs=1e-6)
    assert ab.minimum_detectable_effect(d[:1]) == float("inf")


def test_verdicts_follow_direction_threshold_and_significance():
    rng = np.random.default_rng(4)
    a = rng.lognormal(0, 0.05, size=12)
    slower = a * 1.06 * rng.lognormal(0, 0.01, size=12)
    r = ab.analyse_pairs(a, slower, backend="x", metric="latency_attention_core", threshold=0.03)
    assert r.verdict == "regression" and r.n == 12 and 0.04 < r.change < 0.08 and r.p_value < 0.05
    assert r.ci_low < r.change < r.ci_high
    assert ab.analyse_pairs(slower, a, backend="x", metric="m", threshold=0.03).verdict == "improvement"
    # significant but below the threshold: no verdict
    tiny = a * 1.01
    assert ab.analyse_pairs(a, tiny, backend="x", metric="m", threshold=0.03).verdict == "no change"
    # higher-is-better metrics point the other way
    assert ab.analyse_pairs(a, slower, backend="x", metric="m", direction="higher").verdict == "improvement"
    assert ab.analyse_pairs(a[:1], slower[:1], backend="x", metric="m").verdict == "too few pairs"


def _session_rows(factor_core: float, n: int = 10, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for pair in range(n):
        drift = rng.lognormal(0, 0.08)  # the machine's mood: shared by both sides of a pair
        for side, commit in (("A", "aaaa1111"), ("B", "bbbb2222")):
            noise = drift * rng.lognormal(0, 0.01)
            for backend, base in (("dense", 1e-3), ("topk:k=16", 2e-3)):
                factor = factor_core if side == "B" and backend == "topk:k=16" else 1.0
                rows.append({"run_id": f"ab-s-{side}", "plan_id": "ab-s", "cell_id": f"pair-{pair}",
                             "commit": commit, "backend": backend, "metric": "latency_attention_core",
                             "category": "speed", "value": base * noise * factor, "direction": "lower",
                             "timestamp": datetime(2026, 1, 1, tzinfo=timezone.utc),
                             "extra": json.dumps({"ab": {"session": "ab-s", "side": side, "pair": pair,
                                                         "rev": commit}})})
    return pd.DataFrame(rows)


def test_session_analysis_pairs_by_process_and_divides_by_dense_of_the_same_process():
    rows = _session_rows(1.05)
    session = ab.select_session(rows, "aaaa", "bbbb")
    assert session is not None and len(session) == len(rows)
    assert ab.select_session(rows, "bbbb", "aaaa") is None
    results = {(r.backend, r.relative_to): r for r in ab.analyse_session(session, threshold=0.03)}
    assert results[("topk:k=16", None)].verdict == "regression"
    assert results[("topk:k=16", "dense")].verdict == "regression"
    assert results[("dense", None)].verdict == "no change"
    # the 8 % drift between pairs cancels: the detectable change is about the 1 % within-pair noise
    assert results[("topk:k=16", "dense")].detectable < 0.03
    text = ab.to_markdown(list(results.values()), a="aaaa", b="bbbb", threshold=0.03, alpha=0.05)
    assert "| regression | topk:k=16 | latency_attention_core ÷ dense | 10 |" in text


def test_compare_cli_analyses_ab_rows(tmp_path, capsys):
    from harness import write_rows
    from harness.cli import main

    rows = _session_rows(1.05).assign(machine="m1", source="harness")
    write_rows(tmp_path, rows.to_dict("records"), {"run_id": "ab-s"})
    assert main(["compare", "ab-s-A", "ab-s-B", "--threshold", "0.03", "--store", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "Paired A/B" in out and "| regression | topk:k=16 |" in out
    same = _session_rows(1.0, seed=5).assign(machine="m1", source="harness")
    same["plan_id"] = "ab-t"
    same["run_id"] = same["run_id"].str.replace("ab-s", "ab-t")
    same["extra"] = same["extra"].str.replace('"ab-s"', '"ab-t"')
    same["timestamp"] = datetime(2026, 1, 2, tzinfo=timezone.utc)
    write_rows(tmp_path, same.to_dict("records"), {"run_id": "ab-t"})
    assert main(["compare", "ab-t-A", "ab-t-B", "--threshold", "0.03", "--store", str(tmp_path)]) == 0


@pytest.mark.parametrize("factor, code", [(1.05, 1), (1.0, 0)])
def test_ab_command_analyses_what_it_measured(monkeypatch, capsys, factor, code):
    """``attnbench ab`` end to end around the measurement (replaced by rows of a known change): the paired
    table is printed and the exit code says whether a series regressed."""
    from harness.cli import main

    from harness.execution import ab_runner

    calls = []

    def fake_run_ab(rev_a, rev_b, **settings):
        calls.append((rev_a, rev_b, settings))
        return "ab-s", _session_rows(factor, seed=5).to_dict("records")

    monkeypatch.setattr(ab_runner, "run_ab", fake_run_ab)
    assert main(["ab", "aaaa", "bbbb", "-b", "topk:k=16", "--parts", "attention_core", "--no-store",
                 "--threshold", "0.03"]) == code
    out = capsys.readouterr().out
    assert calls[0][:2] == ("aaaa", "bbbb") and calls[0][2]["backends"] == ["dense", "topk:k=16"]
    assert ("| regression | topk:k=16 |" in out) == (code == 1) and "| dense |" in out


@pytest.mark.slow
def test_ab_measures_two_revisions_alternately(tmp_path, tiny_model_dir):
    """Both sides HEAD (identical code): paired rows with session, side and pair; no regression verdict."""
    from harness.execution.ab_runner import run_ab
    from harness.store.parquet import read_results

    session, rows = run_ab("HEAD", "HEAD", backends=["dense", "dense:impl=eager"], parts=("attention_core",),
                           pairs=2, repeats=3, warmup=1, min_time=0.001, batch_size=2, seq_len=16,
                           model=[str(tiny_model_dir)], store=str(tmp_path), log=lambda m: None)
    stored = ab.ab_rows(read_results(tmp_path))
    assert len(stored) == len(rows) == 2 * 2 * 2  # pairs × sides × backends
    assert sorted(stored["ab_side"].unique()) == ["A", "B"] and set(stored["ab_pair"]) == {0, 1}
    first = stored[stored["ab_pair"] == 1].sort_values("timestamp")
    assert first["ab_side"].iloc[0] == "B"  # the second pair runs B first
    results = ab.analyse_session(ab.select_session(read_results(tmp_path), session + "-A", session + "-B"))
    assert {(r.backend, r.relative_to) for r in results} == {("dense", None), ("dense:impl=eager", None),
                                                             ("dense:impl=eager", "dense")}
    assert all(r.n == 2 for r in results)


def test_kernels_are_rebuilt_only_when_their_compiled_sources_differ(tmp_path, monkeypatch):
    """Two revisions whose ``cython_kernels/`` differ only in a Python file share one build; a ``.pyx``
    change is built (``attnbench ab`` exports each revision and copies or builds its extensions)."""
    import subprocess

    from harness.execution import ab_runner

    repo = tmp_path / "repo"
    (repo / "cython_kernels").mkdir(parents=True)

    def commit(path: str, text: str) -> str:
        (repo / path).write_text(text)
        subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", path],
                       check=True)
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True,
                              text=True).stdout.strip()

    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "setup.py").write_text("raise SystemExit('no build expected')\n")
    first = commit("cython_kernels/_k.pyx", "def f(): return 1\n")
    python_only = commit("cython_kernels/ops.py", "X = 2\n")
    kernel = commit("cython_kernels/_k.pyx", "def f(): return 2\n")
    monkeypatch.setattr(ab_runner, "ROOT", repo)
    sources = ab_runner.compiled_sources
    assert sources(first) == sources(python_only) != sources(kernel)
    assert set(sources(first)) == {"cython_kernels/_k.pyx", "setup.py"}
    assert sources(None) == sources(kernel)  # the working tree is at the last commit

    (repo / "cython_kernels" / "_k.so").write_text("built from the working tree")  # this checkout's build
    logged: list[str] = []
    # differs from this checkout, nothing to reuse: built (and this setup.py fails, so the build is refused)
    with pytest.raises(UserError, match="do not compile: no build expected"):
        ab_runner.prepare_checkout(first, "A", tmp_path / "x", logged.append)
    assert logged == [f"building the kernels of A ({first}) in place"]
    built_a = tmp_path / "built-a"
    (built_a / "cython_kernels").mkdir(parents=True)
    (built_a / "cython_kernels" / "_k.so").write_text("built for A")
    a = ab_runner.Checkout("A", first, first, built_a, sources(first))
    logged.clear()
    b = ab_runner.prepare_checkout(python_only, "B", tmp_path / "y", logged.append, reuse_from=a)
    assert logged == [] and (b.path / "cython_kernels" / "_k.so").read_text() == "built for A"
    same = ab_runner.prepare_checkout(kernel, "C", tmp_path / "y", logged.append, reuse_from=a)
    assert logged == [] and (same.path / "cython_kernels" / "_k.so").read_text() == "built from the working tree"
