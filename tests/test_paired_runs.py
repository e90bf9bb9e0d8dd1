"""End to end on tiny models: per-example predictions in their own table, intervals in the rows,
paired tests against dense (a broken backend flagged, an identical one Δ = 0 and p = 1), compare within and
across runs, several latency shapes, and the small CLI fixes."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import negate_binary_head
from harness import RunSpec, hookimpl, load_registry, read_results, run
from harness.cli import main
from harness.analysis.paired import with_holm
from harness.analysis.summary import run_summary
from harness.store.predictions import read_predictions
from harness.tasks.data import SAMPLE_DIR

LIMIT = 60


@pytest.fixture(scope="module")
def flipping_registry():
    """The built-in backends plus ``flipped``: dense attention with the classifier's outputs negated, so that
    every binary prediction changes (a deliberately broken backend)."""
    dense = load_registry(entry_points=False).backends["dense"].cls

    class Flipped(dense):
        name = "flipped"
        description = "dense with the classifier negated (test only)"

        def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
            return negate_binary_head(model)

    class Plugin:
        @hookimpl
        def register_backends(self, register):
            register(Flipped)

    return load_registry(entry_points=False, extra_plugins=(Plugin(),))


def spec(store, model_dir, **overrides) -> RunSpec:
    settings = dict(backends=["dense", "dense:impl=eager", "flipped"], tasks=["mrpc"], model=[str(model_dir)],
                    limit=LIMIT, eval_batch_size=16, fidelity_examples=0, speed=False, store=store, progress=False)
    settings.update(overrides)
    return RunSpec(**settings)


@pytest.fixture(scope="module")
def learnt(tmp_path_factory, tiny_model_dir, flipping_registry):
    """A data directory whose MRPC labels are dense's own predictions (dense is right on every example),
    and a store with one run of dense, dense:impl=eager and flipped on it."""
    root = tmp_path_factory.mktemp("paired")
    first = root / "first-store"
    run(spec(first, tiny_model_dir, backends=["dense"]), flipping_registry, log=lambda m: None)
    predicted = read_predictions(first).set_index("idx")["prediction"].astype(int).to_dict()
    table = pq.read_table(SAMPLE_DIR / "mrpc" / "validation.parquet")
    idx = table.column("idx").to_pylist() if "idx" in table.column_names else list(range(table.num_rows))
    labels = [predicted.get(i, label) for i, label in zip(idx, table.column("label").to_pylist())]
    table = table.set_column(table.column_names.index("label"), "label", pa.array(labels, pa.int64()))
    (root / "data" / "mrpc").mkdir(parents=True)
    pq.write_table(table, root / "data" / "mrpc" / "validation.parquet")
    store = root / "store"
    result = run(spec(store, tiny_model_dir, data=str(root / "data")), flipping_registry, log=lambda m: None)
    return root, store, result


def test_predictions_have_their_own_table_and_reader(learnt):
    _, store, result = learnt
    predictions = read_predictions(store)
    assert set(predictions["backend"]) == {"dense", "dense:impl=eager", "flipped"}
    assert predictions.groupby("backend").size().tolist() == [LIMIT] * 3
    assert (predictions["run_id"] == result.run_id).all()
    dense = predictions[predictions["backend"] == "dense"]
    assert (dense["prediction"] == dense["label"]).all() and (dense["reference"] == dense["prediction"]).all()
    flipped = predictions[predictions["backend"] == "flipped"]
    assert (flipped["prediction"] != flipped["reference"]).all()
    rows = read_results(store)  # the rows' reader never sees the predictions table
    assert len(rows) == len(result.rows) and set(rows["cell_id"]) == {c for c in predictions["cell_id"]}
    assert read_predictions(store, backend="flipped", task="mrpc").shape[0] == LIMIT


def test_every_task_metric_has_an_interval_and_n(learnt):
    rows = read_results(learnt[1])
    quality = rows[rows["category"] == "quality"]
    assert quality["ci_low"].notna().all() and (quality["ci_low"] <= quality["value"]).all()
    assert (quality["value"] <= quality["ci_high"]).all() and (quality["n_examples"] == LIMIT).all()
    assert set(quality.loc[quality["metric"] == "accuracy", "stat_method"]) == {"wilson"}
    assert set(quality.loc[quality["metric"] == "f1", "stat_method"]) == {"bootstrap"}
    baseline = rows[rows["category"] == "baseline"]
    assert set(baseline["metric"]) == {"majority_baseline:accuracy", "majority_baseline:f1"}


def test_paired_rows_flag_the_broken_backend_and_not_the_identical_one(learnt):
    rows = read_results(learnt[1])
    assert "p_holm" not in rows  # computed by the analysis, not stored or derived by the store
    paired = with_holm(rows[rows["category"] == "paired"]).set_index(["backend", "metric"])
    same = paired.loc[("dense:impl=eager", "delta_vs_reference:accuracy")]
    assert same["value"] == 0 and same["p_value"] == 1 and (same["ci_low"], same["ci_high"]) == (0, 0)
    broken = paired.loc[("flipped", "delta_vs_reference:accuracy")]
    assert broken["value"] == -1 and broken["p_value"] < 1e-10 and broken["ci_high"] < 0
    assert broken["stat_method"].startswith("mcnemar-exact")
    # Holm over each backend's family {accuracy, f1} vs dense, by hand: flipped's accuracy p is the smaller -> 2·p1
    assert broken["p_holm"] == min(1.0, 2 * broken["p_value"]) and same["p_holm"] == 1.0
    summary = run_summary(learnt[2].rows)
    assert "flipped: -1.000" in summary and "SIGNIFICANT LOSS" in summary and "Holm" in summary
    assert "dense:impl=eager: +0.000 [+0.000, +0.000], p = 1 (Holm 1)" in summary
    assert "majority" in summary and "not comparable across backends" in summary
    throughput = rows[rows["category"] == "throughput"]
    assert throughput["foreign_load"].notna().all() and "other processes used" in summary


def test_compare_within_a_run(learnt, capsys, monkeypatch, flipping_registry):
    monkeypatch.setattr("harness.cli.compare._task_metrics", lambda t: list(flipping_registry.task(t).metrics))
    _, store, result = learnt
    assert main(["compare", result.run_id, "--baseline", "dense", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "| mrpc | accuracy | flipped | 1.0000 | -1.0000" in out and "significant loss" in out
    assert "| mrpc | accuracy | dense:impl=eager | 1.0000 | +0.0000 [+0.0000, +0.0000] | 1 | 1 | no significant change |" in out
    assert main(["compare", "--baseline", "flipped", "--candidate", "dense", "--store", str(store)]) == 0
    assert "significant gain" in capsys.readouterr().out
    assert main(["compare", "--baseline", "nope", "--store", str(store)]) == 2


def test_compare_across_runs_pairs_the_same_examples_and_refuses_others(learnt, tiny_model_dir, capsys,
                                                                        monkeypatch, flipping_registry):
    monkeypatch.setattr("harness.cli.compare._task_metrics", lambda t: list(flipping_registry.task(t).metrics))
    root, store, first = learnt
    again = run(spec(store, tiny_model_dir, data=str(root / "data"), backends=["dense", "flipped"]),
                flipping_registry, log=lambda m: None)
    smaller = run(spec(store, tiny_model_dir, data=str(root / "data"), backends=["dense"], limit=8),
                  flipping_registry, log=lambda m: None)
    main(["compare", first.run_id, again.run_id, "--category", "quality", "--store", str(store)])
    out = capsys.readouterr().out
    assert "mcnemar-exact" not in out and "| no change | accuracy" in out  # p = 1 shown, not "exact"
    assert "| 1 |" in out
    main(["compare", first.run_id, smaller.run_id, "--category", "quality", "--store", str(store)])
    out = capsys.readouterr().out
    assert "settings differ" in out and "regression" not in out.split("\n")[0]


def test_several_latency_shapes_in_one_run(tmp_path, tiny_model_dir):
    result = run(RunSpec(backends=["dense"], tasks=["mrpc"], model=[str(tiny_model_dir)], limit=4,
                         batch_size=1, seq_len=16, extra_shapes=[(2, 32)], repeats=3, warmup=0, fidelity_examples=0, store=tmp_path / "s",
                         progress=False), log=lambda m: None)
    speed = result.rows[result.rows["category"] == "speed"]
    assert set(zip(speed["batch_size"], speed["seq_len"])) == {(1, 16), (2, 32)}
    assert speed["foreign_load"].notna().all()
    summary = run_summary(result.rows)
    assert "batch 1 x seq 16" in summary and "batch 2 x seq 32" in summary


def test_cli_small_ones(capsys, tmp_path):
    assert main(["run", "-b", "dense", "--tasks", "", "--no-store"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "names no task" in err
    with pytest.raises(SystemExit):
        main(["run", "--shape", "8by128"])
    capsys.readouterr()
    assert main(["backends", "--json"]) == 0
    import json

    listing = json.loads(capsys.readouterr().out)["backends"]
    assert all(b["available"] is None for b in listing)
    assert main(["backends", "--json", "--check"]) == 0
    assert all(b["available"] in (True, False) for b in json.loads(capsys.readouterr().out)["backends"])


def test_report_writes_png_and_svg_figures_of_the_chosen_run(learnt, tmp_path, capsys, tiny_model_dir,
                                                             flipping_registry):
    root, store, result = learnt
    assert main(["report", "--store", str(store), "--output", str(tmp_path / "r.html"), "--run", result.run_id,
                 "--format", "png,svg"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "figures" / "mrpc.png").stat().st_size > 1000
    assert "<svg" in (tmp_path / "figures" / "mrpc.svg").read_text()[:2000]
    assert "n = 60 examples" in (tmp_path / "figures" / "mrpc.svg").read_text()
    assert f"run {result.run_id} (given)" in out
    small = run(spec(store, tiny_model_dir, data=str(root / "data"), backends=["dense"], limit=5),
                flipping_registry, log=lambda m: None)
    capsys.readouterr()  # the run's own output (datasets may show a tokenization bar): not the report's
    # the latest run is a smaller one: no report of it by accident, one line naming both runs, exit 2
    assert main(["report", "--store", str(store), "--output", str(tmp_path / "r.html"),
                 "--figures", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--run {small.run_id}" in err and "evaluated 5 examples of mrpc" in err
    assert "evaluated 60" in err and err.count("--run ") == 2
    assert not (tmp_path / "f").exists()
    assert main(["report", "--store", str(store), "--output", str(tmp_path / "r.html"), "--run", small.run_id,
                 "--figures", str(tmp_path / "f")]) == 0
    out = capsys.readouterr().out
    assert f"run {small.run_id} (given)" in out and "evaluated 5 examples of mrpc" in out
    assert (tmp_path / "f" / "mrpc.svg").exists()


@pytest.mark.parametrize("tool", ["majority_baseline", "synthetic_history"])
def test_store_tools_have_help_and_store(tool):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, str(root / "tools" / f"{tool}.py"), "--help"], capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(root), "PATH": ""}).stdout
    assert "--store" in out and "usage" in out


def test_listings_import_no_torch_and_are_cached_per_environment(tmp_path):
    """``tasks`` and ``backends`` list the built-in plugins without importing torch, transformers, SciPy or
    scikit-learn (the plugins import them on use); the text is cached per environment for plugins that do."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "ATTNBENCH_CACHE": str(tmp_path / "cache")}
    heavy = ("torch", "transformers", "scipy", "sklearn", "cython_kernels")
    probe = ("import sys; from harness.cli import main; main(['{0}']); "
             f"print('HEAVY:' + ','.join(m for m in {heavy!r} if m in sys.modules))")
    for command in ("tasks", "backends"):
        first = subprocess.run([sys.executable, "-c", probe.format(command)], env=env, capture_output=True,
                               text=True, check=True).stdout
        second = subprocess.run([sys.executable, "-c", probe.format(command)], env=env, capture_output=True,
                                text=True, check=True).stdout
        assert first.endswith("HEAVY:\n") and second.endswith("HEAVY:\n")
        assert first.rsplit("\n", 2)[0] == second.rsplit("\n", 2)[0]
        assert list((tmp_path / "cache" / "listings").glob(f"{command}-*.txt"))
    assert "mrpc" in second or "dense" in second


def test_regression_task_gets_bootstrap_intervals_and_paired_permutation_tests(tmp_path, tiny_regression_dir):
    result = run(RunSpec(backends=["dense", "dense:impl=eager", "topk:k=2"], tasks=["stsb"],
                         model=[str(tiny_regression_dir)], limit=40, fidelity_examples=0, speed=False,
                         store=tmp_path / "s", progress=False), log=lambda m: None)
    rows = result.rows
    quality = rows[rows["category"] == "quality"]
    assert set(quality["stat_method"]) == {"bootstrap"} and quality["ci_low"].notna().all()
    paired = rows[rows["category"] == "paired"].set_index(["backend", "metric"])
    assert set(paired["stat_method"].str.split(";").str[0]) == {"permutation"}
    assert rows[rows["category"] == "baseline"].empty  # no majority class for a regression task
    predictions = read_predictions(tmp_path / "s", task="stsb")
    assert len(predictions) == 120 and predictions["prediction"].map(float.is_integer).mean() < 0.5
    assert "stsb pearson" in run_summary(rows)
