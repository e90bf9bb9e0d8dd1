"""End-to-end runs on tiny checkpoints and the CLI's exit codes and messages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness import RunSpec, read_results, run
from harness.cli import main


def quick(store, model_dir, **overrides) -> RunSpec:
    settings = dict(backends=["dense", "dense:impl=eager"], tasks=["sst2", "mrpc"], model=[str(model_dir)], limit=24,
                    eval_batch_size=8, batch_size=2, seq_len=16, repeats=3, warmup=1, store=store, progress=False)
    settings.update(overrides)
    return RunSpec(**settings)


def test_run_writes_every_kind_of_row_to_the_store(tmp_path, tiny_model_dir):
    store = tmp_path / "store"
    result = run(quick(store, tiny_model_dir), log=lambda m: None)
    df = read_results(store)
    assert len(df) == len(result.rows) > 0
    assert set(df["category"]) == {"quality", "agreement", "fidelity", "speed", "memory", "throughput", "paired",
                                   "baseline"}
    quality = df[df["category"] == "quality"].pivot_table(index=["task", "metric"], columns="backend", values="value")
    assert list(quality.index) == [("mrpc", "accuracy"), ("mrpc", "f1"), ("sst2", "accuracy")]
    np.testing.assert_allclose(quality["dense"], quality["dense:impl=eager"], atol=1e-9)
    agree = df[(df["category"] == "agreement") & (df["metric"] == "max_abs_logit_diff")]
    assert set(agree["backend"]) == {"dense:impl=eager"} and (agree["value"] < 1e-5).all()
    speed = df[df["category"] == "speed"]
    assert set(speed["metric"]) == {"latency_forward", "latency_attention_core"}
    assert all(len(s) == 3 or len(s) == 9 for s in speed["samples"]) and (speed["value"] > 0).all()
    assert speed["task"].isna().all() and set(speed["seq_len"]) == {16}
    row = df.iloc[0]
    assert row["source"] == "harness" and row["data_source"].startswith("sample@") and row["threads"] >= 1
    assert row["model"] == str(tiny_model_dir) and json.loads(row["versions"])["torch"].startswith("2.13")
    assert df["n_examples"].dropna().max() == 24
    # the eval batch limit has its own column; batch_size is the latency batch only
    evals = df[df["task"].notna()]
    assert (evals["eval_batch_size"] == 8).all() and evals["batch_size"].isna().all()
    assert (speed["batch_size"] == 2).all() and speed["eval_batch_size"].isna().all()
    # every setting that changes a measured value is recorded, on the rows it can change
    assert (evals["limit"] == 24).all() and (evals["max_tokens"] == 4096).all() and speed["limit"].isna().all()
    assert (speed["warmup"] == 1).all() and evals["warmup"].isna().all()
    fidelity = df[df["category"] == "fidelity"]
    assert (fidelity["fidelity_examples"] == 64).all()
    assert df.loc[df["category"] != "fidelity", "fidelity_examples"].isna().all()
    assert set(df.loc[df["category"] == "throughput", "executor"]) == {"local"}


def test_per_task_models_default_the_task_list(tmp_path, tiny_model_dir, tiny_regression_dir):
    spec = quick(None, tiny_model_dir, tasks=None, backends=["dense"],
                 model=[f"sst2={tiny_model_dir}", f"stsb={tiny_regression_dir}"])
    rows = run(spec, log=lambda m: None).rows
    assert set(rows["task"].dropna()) == {"sst2", "stsb"}
    assert set(rows.loc[(rows["task"] == "stsb") & (rows["category"] == "quality"), "metric"]) == {"pearson", "spearman"}


def test_a_model_with_the_wrong_number_of_labels_is_a_clear_error(tmp_path, tiny_model_dir, capsys):
    code = main(["run", "--model", str(tiny_model_dir), "--tasks", "mnli-m", "--no-store", "--no-progress"])
    assert code == 2
    assert "has 2 output label(s) but task 'mnli-m' needs 3" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["run", "-b", "nope"], "unknown backend 'nope'; valid backends: dense"),
    (["run", "-b", "dense:impl=flash"], "parameter 'impl' must be one of sdpa, eager; got 'flash'"),
    (["run", "-b", "dense:k=3"], "dense: unknown parameter 'k'; dense takes impl: str = sdpa"),
    (["run", "-b", "dense+dense:impl=eager"], "cannot compose 'dense' and 'dense': both replace the attention"),
    (["run", "--tasks", "cola,nope"], "unknown task 'nope'; valid tasks: cola, sst2"),
    (["run", "--data", "/no/such/dir"], "no such directory"),
    (["run", "--model", "/no/such/model", "--tasks", "sst2"], "cannot load model '/no/such/model'"),
])
def test_user_errors_exit_2_with_one_line(argv, message, capsys):
    assert main(argv + ["--no-store", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("attnbench: error: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_missing_data_file_is_reported_with_the_expected_layout(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "sst2").mkdir()
    code = main(["run", "--data", str(tmp_path), "--tasks", "sst2", "--model", str(tiny_model_dir), "--no-store",
                 "--no-progress"])
    assert code == 2
    assert "sst2/validation.parquet not found" in capsys.readouterr().err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--limit", "0"])
    assert exc.value.code == 2 and "expected a positive integer" in capsys.readouterr().err


def test_tasks_command_lists_the_nine_glue_tasks(capsys):
    assert main(["tasks"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli-m", "mnli-mm", "qnli", "rte", "wnli"]


def test_run_command_prints_the_tables(tmp_path, tiny_model_dir, capsys):
    code = main(["run", "-b", "dense", "-b", "dense:impl=eager", "--tasks", "rte", "--model", str(tiny_model_dir),
                 "--limit", "10", "--batch-size", "2", "--seq-len", "8", "--repeats", "2", "--store",
                 str(tmp_path / "s"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "task metrics (validation)" in out and "flip rate % (changed predictions) vs dense" in out
    assert "attention core" in out
    assert f"written to {tmp_path / 's'}" in out


def test_compare_of_runs_with_different_limits_says_settings_differ(tmp_path, tiny_model_dir, capsys):
    """End to end: same commit, --limit 16 then --limit 8; compare gives no verdict, exit 0."""
    store = tmp_path / "store"
    argv = ["run", "-b", "dense", "-b", "dynamic-quant", "--tasks", "sst2", "--no-speed", "--fidelity-examples", "0",
            "--model", str(tiny_model_dir), "--no-progress", "--store", str(store)]
    assert main(argv + ["--limit", "16"]) == 0
    assert main(argv + ["--limit", "8"]) == 0
    rows = read_results(store)
    first, second = rows.sort_values("timestamp")["run_id"].unique()
    capsys.readouterr()
    assert main(["compare", second, first, "--threshold", "0.03", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "settings differ: n_examples 8 → 16, limit 8 → 16" in out and "❌" not in out
    assert "regression" not in out.split("\n", 1)[0]
@pytest.mark.parametrize("task_name, labels, expected", [
    ("sst2", "all-minus-one", r"task 'sst2', split 'validation' of dir:\S+: (\d+) of \1 rows have no label"),
    ("mrpc", "all-minus-one", r"task 'mrpc', split 'validation' of dir:\S+: (\d+) of \1 rows have no label"),
    ("stsb", "some-nan", r"task 'stsb', split 'validation' of dir:\S+: 4 of \d+ rows have no label"),
])
def test_unlabelled_data_is_refused_before_measuring(tmp_path, tiny_model_dir, tiny_regression_dir, capsys,
                                                     task_name, labels, expected):
    """Unlabelled or out-of-range rows: exit 2, one line,
    and the store keeps what it had and gains nothing."""
    import re

    from plugins.glue import GLUE_TASKS
    from conftest import write_relabelled

    task = next(t for t in GLUE_TASKS if t.name == task_name)
    fn = (lambda ls: [-1] * len(ls)) if labels == "all-minus-one" else (lambda ls: [float("nan")] * 4 + ls[4:])
    data = write_relabelled(tmp_path / "data", task, fn)
    store = tmp_path / "store"
    model = tiny_regression_dir if task.is_regression else tiny_model_dir
    run(quick(store, tiny_model_dir, backends=["dense"], tasks=["rte"], speed=False),
        log=lambda m: None)  # something already stored
    before = read_results(store)
    code = main(["run", "--data", str(data), "--tasks", task_name, "--model", str(model), "--store", str(store),
                 "--batch-size", "1", "--seq-len", "8", "--repeats", "1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not any("Traceback" in line for line in err)
    assert err[-1].startswith("attnbench: error: ") and re.search(expected, err[-1])
    after = read_results(store)
    assert len(after) == len(before) and set(after["run_id"]) == set(before["run_id"])
