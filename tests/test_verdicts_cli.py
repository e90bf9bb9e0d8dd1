"""The verdict where a user meets it: ``attnbench run`` prints it after the task metrics, the rows store it,
``report`` opens with it and ``compare`` shows it and fails when a backend goes from not worse to worse.

On a tiny model, with MRPC and RTE relabelled with dense's own predictions (dense is right on every example),
and a ``drifting`` backend: dense attention that, once ``broken`` is set, negates the classifier (every
prediction changes), as a backend that regresses between two commits would."""

from __future__ import annotations

import contextlib
import io
import re

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import negate_binary_head
from harness import RunSpec, hookimpl, load_registry, read_results, run
from harness.analysis.paired import with_holm
from harness.cli import main
from harness.store.predictions import read_predictions
from harness.tasks.data import SAMPLE_DIR

LIMIT = 200   # identical predictions on 200 examples: one-sided bound -1.645/202 > -0.01, so "not worse"
TASKS = ("mrpc", "rte")


class Drift:
    broken = False


@pytest.fixture(scope="module")
def drifting_registry():
    dense = load_registry(entry_points=False).backends["dense"].cls

    class Drifting(dense):
        name = "drifting"
        description = "dense; with the classifier negated once broken (test only)"

        def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
            return negate_binary_head(model) if Drift.broken else model

    class Plugin:
        @hookimpl
        def register_backends(self, register):
            register(Drifting)

    return load_registry(entry_points=False, extra_plugins=(Plugin(),))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, drifting_registry):
    """Two CLI runs of dense, dense:impl=eager and drifting on the relabelled data: A before the drift, B after;
    returns (store, data dir, run ids, printed outputs)."""
    root = tmp_path_factory.mktemp("verdicts")
    first = root / "labels"
    run(RunSpec(backends=["dense"], tasks=list(TASKS), model=[str(tiny_model_dir)], limit=LIMIT, speed=False,
                fidelity_examples=0, store=first, progress=False), drifting_registry, log=lambda m: None)
    predicted = read_predictions(first)
    for task in TASKS:
        mine = predicted[predicted["task"] == task].set_index("idx")["prediction"].astype(int).to_dict()
        table = pq.read_table(SAMPLE_DIR / task / "validation.parquet")
        idx = table.column("idx").to_pylist() if "idx" in table.column_names else list(range(table.num_rows))
        labels = [mine.get(i, label) for i, label in zip(idx, table.column("label").to_pylist())]
        table = table.set_column(table.column_names.index("label"), "label", pa.array(labels, pa.int64()))
        (root / "data" / task).mkdir(parents=True)
        pq.write_table(table, root / "data" / task / "validation.parquet")
    store = root / "store"
    argv = ["run", "-b", "dense", "-b", "dense:impl=eager", "-b", "drifting", "--tasks", ",".join(TASKS),
            "--model", str(tiny_model_dir), "--data", str(root / "data"), "--limit", str(LIMIT),
            "--shape", "1x8", "--shape", "1x32", "--repeats", "3", "--warmup", "1", "--fidelity-examples", "0",
            "--store", str(store), "--no-progress"]
    mp = pytest.MonkeyPatch()
    mp.setattr("harness.execution.runner.load_registry", lambda *a, **k: drifting_registry)
    mp.setattr("harness.execution.precheck.check_names", lambda *a, **k: None)  # "drifting" is not installed
    mp.setattr("harness.cli.compare._task_metrics", lambda t: list(drifting_registry.task(t).metrics))
    outputs, ids = [], []
    try:
        for broken in (False, True):
            Drift.broken = broken
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                assert main(argv) == 0
            outputs.append(buffer.getvalue())
            ids.append(re.search(r"^run (\S+): \d+ rows", buffer.getvalue(), re.M).group(1))
    finally:
        Drift.broken = False
        mp.undo()
    return store, ids, outputs


def verdict_lines(text: str) -> list[str]:
    block = text.split("verdict vs dense", 1)[1].split("\n\n", 1)[0]
    return [line for line in block.splitlines() if re.match(r"\s*(drifting|dense:impl=eager)\s", line)]


def test_run_prints_one_verdict_per_backend_and_task_after_the_task_metrics(runs):
    _, _, (before, after) = runs
    assert before.index("task metrics (validation)") < before.index("verdict vs dense") < before.index(
        "change vs dense on the same examples")
    lines = verdict_lines(before)
    assert len(lines) == 4                                   # 2 backends x 2 tasks, one line each
    for line in lines:
        assert re.search(r"\+0\.000 \[-0\.0\d\d, \+0\.0\d\d\]\s+0\.01\s+not worse\s+\d+\.\d pts", line), line
        assert re.search(r"1x8 (faster|slower|no clear difference) .*; 1x32 (faster|slower|no clear difference)",
                         line)
    assert "family: each verdict is its own one-sided 5 % test" in before
    assert "over sequence length: crossover" in before and re.search(
        r"drifting \(latency_forward, batch 1\): (faster from (8|32) tokens|no crossover in the measured range "
        r"8-32 tokens)", before)
    broken = [line for line in verdict_lines(after) if line.lstrip().startswith("drifting")]
    assert len(broken) == 2 and all(re.search(r"-1\.000 \[.*\]\s+0\.01\s+worse\s+\d+\.\d pts .* worse$", line)
                                    for line in broken), broken


def test_rows_store_the_verdict_margin_and_detectable_change(runs):
    store, (run_a, run_b), _ = runs
    rows = read_results(store)
    paired = rows[(rows["category"] == "paired") & (rows["run_id"] == run_b)]
    primary = paired[paired["primary"].fillna(False).astype(bool)]
    assert sorted(primary["metric"].unique()) == ["delta_vs_reference:accuracy"]   # accuracy decides, not F1
    assert set(zip(primary["backend"], primary["task"], primary["verdict"])) == {
        ("dense:impl=eager", "mrpc", "not worse"), ("dense:impl=eager", "rte", "not worse"),
        ("drifting", "mrpc", "worse"), ("drifting", "rte", "worse")}
    assert (paired["margin"] == 0.01).all() and paired["mdc"].notna().all()   # filled on every paired row
    assert (primary["mdc"] > 0).all()
    quality = rows[(rows["category"] == "quality") & (rows["task"] == "mrpc")]
    assert quality.groupby("metric")["primary"].agg(set).to_dict() == {"accuracy": {True}, "f1": {False}}
    # pandas: shapes read as integers, null where a row has no shape
    assert str(rows["batch_size"].dtype) == "Int32" and str(rows["seq_len"].dtype) == "Int32"
    speed = rows[rows["category"] == "speed"]
    assert sorted(speed["seq_len"].unique().tolist()) == [8, 32] and rows.loc[
        rows["category"] == "quality", "seq_len"].isna().all()
    # a backend's verdict and adjusted p do not depend on the other backends of the run
    eager = paired[paired["backend"] == "dense:impl=eager"].set_index(["task", "metric"]).sort_index()
    eager_a = rows[(rows["run_id"] == run_a) & (rows["category"] == "paired")
                   & (rows["backend"] == "dense:impl=eager")].set_index(["task", "metric"]).sort_index()
    pd.testing.assert_series_equal(eager["verdict"], eager_a["verdict"])
    holm = with_holm(eager.reset_index()).set_index(["task", "metric"])["p_holm"]
    holm_a = with_holm(eager_a.reset_index()).set_index(["task", "metric"])["p_holm"]
    pd.testing.assert_series_equal(holm, holm_a)


def test_report_opens_with_the_verdicts_and_the_crossover(runs, tmp_path, capsys):
    store, (_, run_b), _ = runs
    output = tmp_path / "report.html"
    assert main(["report", "--store", str(store), "--output", str(output), "--run", run_b]) == 0
    page = output.read_text()
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings[0].startswith("Verdict per backend and task vs dense")
    assert "<td>drifting</td><td>mrpc</td><td>accuracy</td><td>200</td>" in page
    assert "<td>worse</td>" in page and "<td>not worse</td>" in page
    assert "Speed-up over sequence length" in page and "drifting (latency_forward, batch 1)" in page
    assert page.count("data:image/png;base64") >= 4          # one interval plot per task, the crossover plots


def test_compare_shows_the_verdicts_and_fails_when_not_worse_becomes_worse(runs, capsys):
    store, (run_a, run_b), _ = runs
    assert main(["compare", run_a, "--baseline", "dense", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\| drifting \| mrpc \| accuracy \| 200 \| \+0\.000 \[.*\] \| 0\.01 \| not worse \| "
                     r"\d+\.\d pts \| - \|", out)
    assert out.index("verdict vs dense") < out.index("| task | metric | candidate |")
    assert main(["compare", run_a, run_b, "--baseline", "dense", "--store", str(store)]) == 1
    out = capsys.readouterr().out
    assert "| drifting | mrpc | not worse | worse ❌ |" in out and "| drifting | rte | not worse | worse ❌ |" in out
    failed = re.search(r"^failed: not worse in A, worse in B: (.*)$", out, re.M).group(1)
    assert sorted(failed.split(", ")) == ["drifting on mrpc", "drifting on rte"]
    assert "dense:impl=eager | mrpc | not worse | worse" not in out
    assert main(["compare", run_b, run_a, "--baseline", "dense", "--store", str(store)]) == 0   # better: passes
    capsys.readouterr()
    assert main(["compare", run_a, run_b, "--category", "quality", "--store", str(store)]) == 1
    assert "verdict changes A → B**: 2 of 4" in capsys.readouterr().out
    assert main(["compare", run_a, run_b, "--baseline", "drifting", "--store", str(store)]) == 2
    assert "use --baseline dense" in capsys.readouterr().err


@pytest.mark.parametrize("margin", ["0", "-0.01", "1.5", "nan"])
def test_a_margin_outside_zero_to_one_is_refused_before_measuring(margin, tmp_path, capsys):
    assert main(["run", "--margin", margin, "--tasks", "rte", "--store", str(tmp_path / "s"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--margin must be above 0 and below 1" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()
