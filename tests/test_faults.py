"""Faults found by replaying real-world bug reports, each through the CLI where a user meets it:
nothing measured is lost or stored twice, nothing unstorable is measured, mistakes are one line and exit 2
before anything heavy runs, inputs are read as they are now, large runs are counted first, torch's global
state is the run's, and one unrepeated timing carries no verdict.

Misbehaving backends are real installed plugins: a distribution (dist-info with an entry point) written to a
directory on ``sys.path``, found through ``importlib.metadata`` as a third-party plugin is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from harness import read_results
from harness.registry.manager import PLUGINS_ENV
from harness.cli import main
from harness.execution.runner import SPEED_GROUP
from harness.store.predictions import read_predictions
from harness.tasks.data import SAMPLE_DIR

ROOT = Path(__file__).resolve().parents[1]


def install_plugin(site: Path, name: str, source: str) -> None:
    """Install distribution ``attnbench-<name>`` with entry point ``<name>`` = module ``<name>_plugin``."""
    module = f"{name.replace('-', '_')}_plugin"
    info = site / f"attnbench_{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: attnbench-{name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[attnbench.backends]\n{name} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A directory on ``sys.path`` (and ``PYTHONPATH``, for worker processes) to install plugins into."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    return root


def attention_plugin(backend: str, body: str, prepare: str = "return model", params: str = "()") -> str:
    """Source of a plugin whose backend ``backend`` computes attention with ``body`` (SDPA after it)."""
    return f'''
        import os, sys
        import torch
        from harness import Backend, Param, hookimpl
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        class Probe(Backend):
            name = {backend!r}
            description = "a test backend"
            params = {params}

            def prepare(self, model):
{textwrap.indent(textwrap.dedent(prepare), " " * 16)}

            def attention(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
{textwrap.indent(textwrap.dedent(body), " " * 16)}
                return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                              dropout=dropout, **kwargs)

        @hookimpl
        def register_backends(register):
            register(Probe)
    '''


def quick(store: Path | str, model_dir: Path, *extra: str) -> list[str]:
    return ["run", "--model", str(model_dir), "--limit", "8", "--fidelity-examples", "0", "--no-progress",
            "--store", str(store), *extra]


def closing_count(out: str) -> tuple[int, int]:
    """``(rows, cells)`` of the closing line ``run …: N rows from K cell(s) written …``."""
    line = next(line for line in out.splitlines() if " rows from " in line)
    words = line.split(": ", 1)[1].split()
    return int(words[0]), int(words[3])


# -- 1. a measurement is stored once ------------------------------------------------------------------------

def test_a_worker_that_dies_does_not_store_a_finished_cell_twice(site, tmp_path, tiny_model_dir, capsys):
    marker = tmp_path / "killed-once"
    # dies in a worker only (the parent calls attention too: the harness's pre-run checks)
    install_plugin(site, "probe-kill", attention_plugin("probe-kill", f'''
        if os.getpid() != {os.getpid()} and not os.path.exists({str(marker)!r}):
            open({str(marker)!r}, "w").close()
            os._exit(17)'''))
    store = tmp_path / "store"
    code = main(quick(store, tiny_model_dir, "-b", "dense", "-b", "probe-kill", "--tasks", "sst2,mrpc",
                      "--no-speed", "--executor", "processes:2"))
    out = capsys.readouterr().out
    assert marker.exists()  # a worker did die
    assert code == 0
    stored = read_results(store)
    assert sorted(stored["cell_id"].unique()) == ["eval/mrpc/dense", "eval/mrpc/probe-kill", "eval/sst2/dense",
                                                  "eval/sst2/probe-kill"]
    per_measurement = stored.groupby(["cell_id", "metric"]).size()
    assert set(per_measurement) == {1}, per_measurement[per_measurement > 1]
    assert closing_count(out) == (len(stored), 4)
    predictions = read_predictions(store)
    assert predictions.groupby("cell_id").size().to_dict() == {cell: 8 for cell in stored["cell_id"].unique()}


# -- 2. nothing measured is lost; nothing is measured that cannot be stored -----------------------------------

def test_a_memory_store_with_worker_processes_holds_every_row(tmp_path, tiny_model_dir, capsys):
    store = f"memory://attnbench-faults-{tmp_path.name}"
    code = main(quick(store, tiny_model_dir, "-b", "dense", "--tasks", "sst2", "--no-speed",
                      "--executor", "processes:1"))
    out = capsys.readouterr().out
    assert code == 0
    stored = read_results(store)
    assert set(stored["cell_id"]) == {"eval/sst2/dense"}
    assert closing_count(out) == (len(stored), 1)
    assert "accuracy" in set(stored["metric"])


def test_a_store_that_cannot_be_written_is_refused_before_measuring(tmp_path, tiny_model_dir, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code = main(quick(blocker / "store", tiny_model_dir, "-b", "dense", "--tasks", "sst2"))
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"attnbench: error: store '{blocker / 'store'}' cannot be "
                                                   "written (")
    assert "nothing was measured" in lines[0] and "cell" not in captured.out + captured.err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_store_directory_is_refused_before_measuring(tmp_path, tiny_model_dir, capsys):
    store = tmp_path / "store"
    store.mkdir()
    store.chmod(0o555)
    try:
        code = main(quick(store, tiny_model_dir, "-b", "dense", "--tasks", "sst2"))
    finally:
        store.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 2 and "cannot be written (Permission denied)" in err and list(store.iterdir()) == []


BOOM = attention_plugin("boom-attn", "torch.arange(3)[999]")


def test_the_closing_line_counts_what_was_stored_and_a_failure_is_one_line(site, tmp_path, tiny_model_dir,
                                                                           capsys):
    install_plugin(site, "boom-attn", BOOM)
    store = tmp_path / "store"
    argv = quick(store, tiny_model_dir, "-b", "dense", "-b", "boom-attn", "--tasks", "rte,sst2,mrpc",
                 "--no-speed")
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 1
    stored = read_results(store)
    assert set(stored["backend"]) == {"dense"}
    assert closing_count(captured.out) == (len(stored), 3)
    assert "3 of the 6 cell(s) not stored (failed)" in captured.out
    failed = [line for line in captured.err.splitlines() if line.startswith("cell eval/rte/boom-attn failed")]
    assert failed == ["cell eval/rte/boom-attn failed: IndexError: index 999 is out of bounds for dimension 0 "
                      "with size 3"]
    assert "Traceback" not in captured.err

    # --traceback: the same one line, and where it happened (the plugin's file and line)
    code = main(argv + ["--traceback"])
    err = capsys.readouterr().err
    assert code == 1
    assert "--- traceback of cell eval/rte/boom-attn ---\nTraceback (most recent call last):" in err
    assert 'boom_attn_plugin.py", line' in err and "torch.arange(3)[999]" in err


# -- 4. a mistake is one line and exit 2, before anything heavy ----------------------------------------------

def test_seq_len_beyond_the_models_positions_is_refused_before_running(tmp_path, tiny_model_dir, capsys):
    store = tmp_path / "store"
    code = main(quick(store, tiny_model_dir, "-b", "dense", "--tasks", "sst2", "--seq-len", "200"))
    err = capsys.readouterr().err
    assert code == 2
    assert "attnbench: error: --seq-len 200 is longer than the model's 128 positions" in err
    assert read_results(store).empty


def test_names_are_checked_before_torch_is_imported(tmp_path):
    """A fresh process answers a misspelled backend, parameter or task without importing torch or transformers
    (the listing of names is built once per environment, by the first command that needs it)."""
    env = {**os.environ, "ATTNBENCH_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    env.pop(PLUGINS_ENV, None)
    script = textwrap.dedent("""
        import json, sys
        from harness.cli import main
        argv = json.loads(sys.argv[1])
        code = main(argv)
        print("HEAVY", json.dumps(sorted(m for m in ("torch", "transformers", "datasets") if m in sys.modules)))
        sys.exit(code)
    """)
    cases = {
        ("-b", "dens"): "attnbench: error: unknown backend 'dens'; valid backends: dense, ",
        ("-b", "topk:kk=8"): "attnbench: error: topk: unknown parameter 'kk'; topk takes ",
        ("--tasks", "sst3"): "attnbench: error: unknown task 'sst3'; valid tasks: cola, sst2",
    }
    first = True
    for args, message in cases.items():
        argv = ["run", *args, "--no-store"]
        proc = subprocess.run([sys.executable, "-c", script, json.dumps(argv)], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith(message)
        assert len(proc.stderr.strip().splitlines()) == 1
        if not first:  # the first process built the cached listing (which imports torch)
            assert "HEAVY []" in proc.stdout
        first = False


def _clone_with_broken_kernel(tmp_path: Path) -> Path:
    """A clone of this checkout, its compiled kernels copied in, with a branch ``broken`` whose ``_gemm.pyx``
    does not compile; the clone's HEAD and index stay at the working revision."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--shared", str(ROOT), str(clone)], check=True)
    if subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                      capture_output=True, text=True).stdout.strip():
        # the working tree of this checkout differs from its HEAD: test what is checked out
        for path in subprocess.run(["git", "-C", str(ROOT), "ls-files", "-m"], capture_output=True, text=True,
                                   check=True).stdout.split():
            shutil.copy2(ROOT / path, clone / path)
        subprocess.run(["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam",
                        "working tree"], check=True)
    for so in (ROOT / "cython_kernels").glob("*.so"):
        shutil.copy2(so, clone / "cython_kernels" / so.name)
    git = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["checkout", "-qb", "broken"], check=True)
    source = clone / "cython_kernels" / "_gemm.pyx"
    source.write_text(source.read_text() + "\ndef broken(x:\n    return x\n")
    subprocess.run(git + ["commit", "-qam", "a kernel that does not compile"], check=True)
    subprocess.run(git + ["checkout", "-q", "-"], check=True)
    return clone


@pytest.mark.skipif(not list((ROOT / "cython_kernels").glob("_gemm*.so")), reason="the kernels are not built")
def test_ab_with_kernels_that_do_not_compile_is_one_line_and_exit_2(tmp_path):
    clone = _clone_with_broken_kernel(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(clone), "ATTNBENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "harness", "ab", "HEAD", "broken", "--pairs", "2", "--no-store"],
                          cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    sha = subprocess.run(["git", "-C", str(clone), "rev-parse", "broken"], capture_output=True, text=True,
                         check=True).stdout.strip()
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("building the kernels")]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(lines) == 1
    assert lines[0].startswith(f"attnbench: error: the kernels of B (revision broken, {sha[:10]}) do not compile: "
                               "cython_kernels/_gemm.pyx:")
    assert lines[0].split("_gemm.pyx:", 1)[1].split(": ", 1)[0].count(":") == 1  # LINE:COL


# -- 5. what is measured is the input as it is now ----------------------------------------------------------

def test_a_data_file_replaced_with_the_same_time_is_read_again(tmp_path, tiny_model_dir, capsys):
    rows = pq.read_table(SAMPLE_DIR / "sst2" / "validation.parquet")
    old, new = rows.slice(0, 16), rows.slice(16, 16)
    data = tmp_path / "data"
    (data / "sst2").mkdir(parents=True)
    file = data / "sst2" / "validation.parquet"
    pq.write_table(old, file)
    stamp = file.stat()
    store = tmp_path / "store"
    argv = ["run", "-b", "dense", "--tasks", "sst2", "--no-speed", "--fidelity-examples", "0", "--no-progress",
            "--model", str(tiny_model_dir), "--data", str(data), "--store", str(store)]
    assert main(argv) == 0
    pq.write_table(new, file)
    os.utime(file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert main(argv) == 0
    fresh = tmp_path / "fresh"  # the new rows where nothing was ever cached
    (fresh / "sst2").mkdir(parents=True)
    pq.write_table(new, fresh / "sst2" / "validation.parquet")
    assert main([*argv[:-4], "--data", str(fresh), "--store", str(tmp_path / "fresh-store")]) == 0
    capsys.readouterr()

    runs = read_results(store).sort_values("timestamp")["run_id"].unique()
    second = read_predictions(store, run_id=runs[1])
    assert sorted(second["idx"]) == sorted(new.column("idx").to_pylist())
    stored = read_results(store)
    accuracy = stored[(stored["metric"] == "accuracy") & (stored["run_id"] == runs[1])]["value"].item()
    expected = read_results(tmp_path / "fresh-store")
    assert accuracy == expected[expected["metric"] == "accuracy"]["value"].item()


# -- 6. resources are checked before they are spent ---------------------------------------------------------

def test_a_run_of_more_cells_than_the_limit_is_refused_unless_confirmed(tmp_path, tiny_model_dir, capsys):
    store = tmp_path / "store"
    grid = "topk:k=[1,2,3,4,5,6,7,8,9,10],bits=[4,8],k_factor=[1,2,4]"  # 60 backends
    code = main(quick(store, tiny_model_dir, "-b", grid, "--tasks", "sst2,mrpc,rte,cola,wnli,qnli,stsb,qqp,mnli"))
    err = capsys.readouterr().err
    assert code == 2
    assert ("attnbench: error: this run has 600 cells (60 backend(s) × (9 task(s) + 1 speed shape(s))), more "
            "than 500; nothing was started") in err

    argv = quick(store, tiny_model_dir, "-b", "dense", "-b", "topk:k=[2,4]", "--tasks", "sst2,rte", "--no-speed",
                 "--max-cells", "5")
    assert main(argv) == 2
    assert "this run has 6 cells (3 backend(s) × (2 task(s) + 0 speed shape(s))), more than 5" in \
        capsys.readouterr().err
    assert read_results(store).empty
    assert main(argv + ["--yes"]) == 0
    assert closing_count(capsys.readouterr().out) == (len(read_results(store)), 6)


def test_speed_cells_are_timed_in_groups_so_memory_stays_bounded(site, tmp_path, tiny_model_dir, capsys):
    """Twelve backends at one shape: prepared models alive at any time stay within one timing group (the
    run's prepared-model cache holds no more), instead of growing with the number of backends."""
    log = tmp_path / "live.txt"
    install_plugin(site, "probe-live", attention_plugin("probe-live", "pass", prepare=f'''
        import gc, weakref
        gc.collect()
        live = sys.modules[__name__].__dict__.setdefault("LIVE", set())
        with open({str(log)!r}, "a") as handle:
            handle.write(f"{{len(live)}}\\n")
        key = object()
        live.add(key)
        weakref.finalize(model, live.discard, key)
        return model''', params='(Param("n", int, 0, "a label"),)'))
    store = tmp_path / "store"
    n = SPEED_GROUP + 4
    code = main(quick(store, tiny_model_dir, "-b", f"probe-live:n=[{','.join(map(str, range(n)))}]", "--tasks",
                      "sst2", "--batch-size", "1", "--seq-len", "8", "--repeats", "1", "--warmup", "0"))
    assert code == 0, capsys.readouterr().err
    stored = read_results(store)
    assert stored[stored["metric"] == "latency_forward"]["backend"].nunique() == n
    alive_before_prepare = [int(line) for line in log.read_text().split()]
    assert max(alive_before_prepare) <= SPEED_GROUP


# -- 7. the threads recorded are the threads measured -------------------------------------------------------

def test_a_plugin_that_changes_torch_threads_does_not_change_the_run(site, tmp_path, tiny_model_dir, capsys):
    seen = tmp_path / "threads.txt"
    install_plugin(site, "probe-threads", attention_plugin(
        "probe-threads", "pass", prepare="torch.set_num_threads(1)\nreturn model"))
    install_plugin(site, "probe-seen", attention_plugin(
        "probe-seen", f'''
        with open({str(seen)!r}, "a") as handle:
            handle.write(f"{{torch.get_num_threads()}}\\n")'''))
    store = tmp_path / "store"
    code = main(quick(store, tiny_model_dir, "-b", "probe-threads", "-b", "probe-seen", "-b", "dense",
                      "--tasks", "sst2", "--threads", "2", "--batch-size", "1", "--seq-len", "8", "--repeats", "1",
                      "--warmup", "0"))
    assert code == 0, capsys.readouterr().err
    assert set(seen.read_text().split()) == {"2"}
    stored = read_results(store)
    assert set(stored["threads"]) == {2}
    changed = stored[stored["backend"] == "probe-threads"]["extra"].map(json.loads)
    assert {e.get("torch_state_restored") for e in changed} == {"num_threads: prepare set 1; restored to 2"}
    others = stored[stored["backend"] != "probe-threads"]["extra"].dropna().map(json.loads)
    assert not any("torch_state_restored" in e for e in others)


# -- 8. two runs of the same command are not a regression ---------------------------------------------------

def test_compare_of_two_runs_of_one_command_gives_unrepeated_timings_no_verdict(tmp_path, tiny_model_dir, capsys):
    store = tmp_path / "store"
    argv = quick(store, tiny_model_dir, "-b", "dense", "-b", "topk:k=4", "--tasks", "sst2,mrpc", "--no-speed")
    assert main(argv) == 0 and main(argv) == 0
    first, second = read_results(store).sort_values("timestamp")["run_id"].unique()
    capsys.readouterr()
    code = main(["compare", first, second, "--store", str(store)])
    out = capsys.readouterr().out
    assert code == 0
    table = [line.split(" | ") for line in out.splitlines() if line.startswith("| ") and "(" in line]
    verdicts = {(cells[1].split(" (")[0], cells[2]): cells[0].lstrip("| ") for cells in table}
    for backend in ("dense", "topk:k=4"):
        for task in ("sst2", "mrpc"):
            params = f"backend={backend}, task={task}, threads={read_results(store)['threads'].iloc[0]}"
            assert verdicts[("eval_wall_time", params)] == "unrepeated (no verdict)"
            assert verdicts[("eval_tokens_per_s", params)] == "unrepeated (no verdict)"
            assert verdicts[("accuracy", params)] == "no change"  # deterministic values are still compared
    assert "regression" not in {v for v in verdicts.values()}


def test_a_terminal_that_cannot_encode_the_message_still_gets_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "PYTHONPATH": str(ROOT),
           "ATTNBENCH_CACHE": str(tmp_path / "cache")}
    env.pop(PLUGINS_ENV, None)
    proc = subprocess.run([sys.executable, "-m", "harness", "run", "-b", "topk:k=[1,2,3,4,5,6]", "--tasks", "sst2",
                           "--max-cells", "4", "--no-store"], env=env, cwd=tmp_path, capture_output=True,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.decode("ascii").strip().splitlines() == [
        "attnbench: error: this run has 12 cells (6 backend(s) \\xd7 (1 task(s) + 1 speed shape(s))), more than 4; "
        "nothing was started. Narrow the backend grid or the tasks, or pass --yes to run them all"]
