"""Runs as cells: grids, resuming an interrupted run, and a Dask cluster on loopback giving the same rows."""

from __future__ import annotations

import pytest

from harness import RunSpec, read_results, run
from harness.execution import eval_cells as evaluation
from harness.errors import UserError
from harness.execution.executors import make_executor


def sweep(store, model_dir, **overrides) -> RunSpec:
    settings = dict(backends=["dense", "topk:k=[2,4]"], tasks=["sst2", "rte"], model=[str(model_dir)], limit=20,
                    max_tokens=512, batch_size=2, seq_len=16, repeats=2, warmup=0, fidelity_examples=8,
                    store=store, progress=False)
    settings.update(overrides)
    return RunSpec(**settings)


def test_grid_expands_into_cells(tmp_path, tiny_model_dir):
    result = run(sweep(tmp_path / "s", tiny_model_dir), log=lambda m: None)
    assert result.cells == 3 * (1 + 2)  # 3 backends: 1 speed cell + 2 eval cells each
    rows = read_results(tmp_path / "s")
    assert rows["cell_id"].nunique() == 9 and rows["plan_id"].nunique() == 1
    assert set(rows["backend"]) == {"dense", "topk:k=2", "topk:k=4"}


class Killed(BaseException):
    """Stands for Ctrl-C or a killed process (pytest reserves KeyboardInterrupt for itself)."""


def test_an_interrupted_run_resumes_without_redoing_finished_cells(tmp_path, tiny_model_dir, monkeypatch):
    store = tmp_path / "store"
    calls, interrupts = [], []
    original = evaluation.EvalSession.run

    def interrupted(self, cell):
        calls.append(cell.id)
        if len(calls) == 3 and not interrupts:
            interrupts.append(cell.id)
            raise Killed  # interrupted in the middle of the third eval cell of the first run
        return original(self, cell)

    monkeypatch.setattr(evaluation.EvalSession, "run", interrupted)
    with pytest.raises(Killed):
        run(sweep(store, tiny_model_dir), log=lambda m: None)
    first = read_results(store)
    finished = set(first["cell_id"])
    assert len(finished) == 3 + 2  # the speed cells and two eval cells; the interrupted cell left nothing
    assert calls[2] not in finished

    calls.clear()
    result = run(sweep(store, tiny_model_dir, resume=True), log=lambda m: None)
    assert result.cells_done_before == 5 and result.run_id == first["run_id"].iloc[0]
    assert len(calls) == 4 and not set(calls) & finished  # only the missing cells ran
    rows = read_results(store)
    assert rows["cell_id"].nunique() == 9 and rows["run_id"].nunique() == 1
    assert not rows.duplicated(["cell_id", "metric"]).any()  # nothing recorded twice

    calls.clear()
    again = run(sweep(store, tiny_model_dir, resume=True), log=lambda m: None)
    assert again.cells_done_before == 9 and calls == [] and again.rows.empty


def test_a_changed_definition_is_a_new_plan(tmp_path, tiny_model_dir):
    store = tmp_path / "store"
    first = run(sweep(store, tiny_model_dir, speed=False), log=lambda m: None)
    other = run(sweep(store, tiny_model_dir, speed=False, limit=10, resume=True), log=lambda m: None)
    assert other.plan_id != first.plan_id and other.cells_done_before == 0


def test_dask_cluster_on_loopback_gives_the_same_rows_as_local(tmp_path, tiny_model_dir):
    distributed = pytest.importorskip("distributed")
    local = run(sweep(tmp_path / "local", tiny_model_dir, speed=False), log=lambda m: None).rows
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        address = cluster.scheduler_address.replace("tcp://", "dask://")
        remote = run(sweep(tmp_path / "dask", tiny_model_dir, speed=False, executor=address), log=lambda m: None)
    stored = read_results(tmp_path / "dask")
    assert not remote.failures and len(stored) == len(remote.rows) == len(local)

    def table(rows, exact):
        picked = rows[rows["category"].isin(["quality", "agreement", "fidelity"])]
        picked = picked[(picked["category"] == "quality") | (picked["metric"] == "agreement")] if exact else \
            picked[(picked["category"] != "quality") & (picked["metric"] != "agreement")]
        return picked.set_index(["backend", "task", "metric"])["value"].sort_index()

    # Task metrics and prediction agreement are identical; logit and attention-output differences may move
    # in the last bits (the workers run torch with one thread, the local run with two).
    assert table(stored, exact=True).equals(table(local, exact=True))
    close_local, close_dask = table(local, exact=False), table(stored, exact=False)
    assert list(close_local.index) == list(close_dask.index) and len(close_local) > 10
    assert (abs(close_local - close_dask) <= 1e-5 + 1e-3 * abs(close_local)).all()


def test_processes_executor_runs_cells_in_worker_processes(tmp_path, tiny_model_dir):
    pytest.importorskip("distributed")
    result = run(sweep(tmp_path / "p", tiny_model_dir, speed=False, backends=["dense"], tasks=["sst2"],
                       executor="processes:2"), log=lambda m: None)
    assert not result.failures and set(result.rows["cell_id"]) == {"eval/sst2/dense"}


@pytest.mark.parametrize("text, message", [
    ("threads", "use local, processes:N or dask://HOST:PORT"),
    ("processes:0", "N >= 1"),
    ("dask://127.0.0.1:1", "cannot reach the Dask scheduler"),
])
def test_bad_executor_is_a_clear_error(text, message):
    with pytest.raises(UserError, match=message):
        make_executor(text)
