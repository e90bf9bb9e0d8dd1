"""The history path as a user walks it: ``asv run`` of the per-commit suite → ``attnbench import-asv`` →
``attnbench regressions``, on result files written by asv itself (``tests/fixtures/asv_commit_suite``), and
the store and order guarantees that path relies on."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from harness.cli import main
from harness.store.schema import CATEGORIES, DIRECTIONS
from harness.store.parquet import read_results, write_rows

from asv_history import FIXTURE, derive_history, real_result

ROOT = Path(__file__).resolve().parents[1]
CI_RECIPE = ROOT / "docs" / "how-to" / "ci.md"


def regression_rows(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("| regression |")]


# -- the real result file ---------------------------------------------------------------------------------


def test_the_fixture_is_what_todays_suite_writes(tmp_path):
    """asv's own discovery of ``benchmarks/`` (the per-commit selection) describes every benchmark as the
    fixture's ``benchmarks.json`` does: regenerate the fixture (its README has the command) when this fails."""
    out = tmp_path / "discovered.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNBENCH_ASV")}
    code = "import sys; from asv_runner.discovery import _discover; _discover((sys.argv[1], sys.argv[2]))"
    subprocess.run([sys.executable, "-c", code, str(ROOT / "benchmarks"), str(out)], check=True, cwd=ROOT, env=env,
                   capture_output=True, timeout=300)
    discovered = {b["name"]: b for b in json.loads(out.read_text())}
    stored = {k: v for k, v in json.loads((FIXTURE / "benchmarks.json").read_text()).items() if k != "version"}
    shape = ("type", "unit", "version", "param_names", "params", "category", "direction")
    assert {name: [b.get(k) for k in shape] for name, b in discovered.items()} == \
           {name: [b.get(k) for k in shape] for name, b in stored.items()}


def test_every_benchmark_of_the_real_run_imports_with_its_declared_category_and_direction(tmp_path, capsys):
    store = tmp_path / "store"
    assert main(["import-asv", str(FIXTURE), "--store", str(store)]) == 0
    assert "not imported" not in capsys.readouterr().out
    rows = read_results(store)
    benchmarks = json.loads((FIXTURE / "benchmarks.json").read_text())
    _, result = real_result()
    measured = {name for name, entry in result["results"].items()
                if any(v is not None and v == v for v in entry[0])}
    assert set(rows["metric"]) == measured  # every benchmark with a value, the parameterless one included
    for name, group in rows.groupby("metric"):
        meta = benchmarks[name]
        expected = {"time": ("speed", "lower")}.get(meta["type"], (meta.get("category"), meta.get("direction")))
        assert set(zip(group["category"], group["direction"])) == {expected}
        assert expected[0] in CATEGORIES and expected[1] in DIRECTIONS
    gemm = rows[rows["metric"] == "bench_commit.CommitGemm.track_int8_speedup"]
    assert len(gemm) == 1 and gemm["direction"].iloc[0] == "higher" and gemm["value"].iloc[0] > 0
    ratio = rows[rows["metric"] == "bench_commit.CommitSpeed.track_vs_dense"]
    assert set(ratio["direction"]) == {"lower"} and set(ratio["unit"]) == {"x"}


def test_a_track_benchmark_without_a_direction_is_not_guessed(tmp_path, capsys):
    results = tmp_path / "asv"
    shutil.copytree(FIXTURE, results)
    benchmarks = json.loads((results / "benchmarks.json").read_text())
    del benchmarks["bench_commit.CommitGemm.track_int8_speedup"]["direction"]
    (results / "benchmarks.json").write_text(json.dumps(benchmarks))
    assert main(["import-asv", str(results), "--store", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    assert "not imported: bench_commit.CommitGemm.track_int8_speedup" in out
    assert 'track_int8_speedup.direction = "lower"' in out  # says how to declare it
    assert "bench_commit.CommitGemm.track_int8_speedup" not in set(read_results(tmp_path / "store")["metric"])


# -- a derived history of the real run --------------------------------------------------------------------


def ci_recipe_commands() -> list[list[str]]:
    """The ``attnbench`` commands of the CI recipe in the docs, in order (the block after
    ``<!-- ci-recipe -->``)."""
    text = CI_RECIPE.read_text()
    block = text.split("<!-- ci-recipe -->", 1)[1].split("```", 2)[1]
    commands = []
    for line in block.splitlines():
        line = line.strip().removeprefix("$ ")
        if line.startswith("attnbench "):
            commands.append(line.split()[1:])
    return commands


@pytest.mark.parametrize("factor", [1.059, 1 / 1.059])
def test_a_planted_step_is_named_with_its_commit_and_backend_and_nothing_else(tmp_path, capsys, monkeypatch,
                                                                              factor):
    """16 commits of the per-commit suite; from commit 9 on, fbgemm-int8's attention core costs 5.9 % more
    instructions and time (or less: then it is an improvement, and nothing is a regression)."""
    commits = derive_history(tmp_path / "results" / "asv", commits=16, step_at=9, backend="fbgemm-int8",
                             factor=factor)
    monkeypatch.chdir(tmp_path)
    commands = ci_recipe_commands()
    assert [c[0] for c in commands] == ["import-asv", "regressions"]
    codes = []
    for command in commands:
        codes.append(main(command))
    out = capsys.readouterr().out
    flagged = regression_rows(out)
    if factor > 1:
        assert codes == [0, 1]
        assert flagged and all(f"| {commits[9][:10]} | {commits[8][:10]} |" in line for line in flagged)
        assert all("backend=fbgemm-int8," in line and "part=attention_core," in line for line in flagged)
        assert any("CommitInstructions.track_instructions" in line for line in flagged)
    else:
        assert codes == [0, 0] and flagged == []
    assert "the newest 2 commit(s)" in out
    assert f"attnbench compare {commits[13][:10]} {commits[14][:10]}" in out
    assert f"attnbench compare {commits[14][:10]} {commits[15][:10]}" in out
    # every series of every other backend and category: no change point at all
    assert main(["regressions", "--all", "--store", "results/store"]) == (1 if factor > 1 else 0)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| improvement |")
            or line.startswith("| regression |")]
    assert rows and all("backend=fbgemm-int8," in line and commits[9][:10] in line for line in rows)


def test_import_is_idempotent_per_measurement_and_a_file_updated_in_place_adds_only_what_is_new(tmp_path, capsys):
    results = tmp_path / "asv"
    shutil.copytree(FIXTURE, results)
    machine_dir, data = real_result(results)
    (path,) = [p for p in machine_dir.glob("*.json") if p.name != "machine.json"]
    held_back = "bench_commit.CommitGemm.track_int8_speedup"
    partial = dict(data, results={k: v for k, v in data["results"].items() if k != held_back})
    path.write_text(json.dumps(partial))
    store = tmp_path / "store"
    assert main(["import-asv", str(results), "--store", str(store)]) == 0
    first = len(read_results(store))
    path.write_text(json.dumps(data))  # asv ran one more benchmark on the same commit: the file grows in place
    assert main(["import-asv", str(results), "--store", str(store)]) == 0
    assert main(["import-asv", str(results), "--store", str(store)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"1 measurement(s) imported, {first} already in" in out[-2]
    assert f"0 measurement(s) imported, {first + 1} already in" in out[-1]
    rows = read_results(store)
    assert len(rows) == first + 1 and rows["cell_id"].is_unique


def test_two_imports_started_together_store_every_measurement_once(tmp_path):
    results = tmp_path / "asv"
    derive_history(results, commits=4, step_at=2, backend="fbgemm-int8", factor=1.0)
    store = tmp_path / "store"
    command = [sys.executable, "-m", "harness", "import-asv", str(results), "--store", str(store)]
    processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    rows = read_results(store)
    single = tmp_path / "single"
    assert main(["import-asv", str(results), "--store", str(single)]) == 0
    assert len(rows) == len(read_results(single)) > 0 and rows["cell_id"].is_unique
    imported = sorted(int(re.search(r"(\d+) measurement\(s\) imported", out).group(1)) for out, _ in outputs)
    assert imported == [0, len(rows)]


# -- what the change-point search can and cannot say -----------------------------------------------------


T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def instruction_rows(commits: list[str], step_at: int | None, factor: float = 1.06) -> list[dict]:
    return [{"run_id": f"run-{i}", "timestamp": T0 + timedelta(hours=i), "source": "harness", "commit": c,
             "machine": "box", "backend": "fbgemm-int8", "metric": "instructions_attention_core",
             "category": "instructions", "unit": "instructions", "direction": "lower", "threads": 1,
             "seq_len": 128, "batch_size": 1,
             "value": 1e6 * (factor if step_at is not None and i >= step_at else 1.0) * (1 + 1e-5 * (i % 3))}
            for i, c in enumerate(commits)]


def git_history(repo: Path, count: int) -> list[str]:
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    commits = []
    for i in range(count):
        (repo / "file.txt").write_text(f"{i}\n")
        subprocess.run(["git", "-C", str(repo), "add", "file.txt"], check=True)
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm",
                        f"commit {i + 1}"], check=True)
        commits.append(subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, text=True,
                                      capture_output=True).stdout.strip())
    return commits


def test_a_shallow_clone_leaves_out_the_commits_it_lacks_instead_of_ordering_them_by_guess(tmp_path, capsys):
    """16 commits, a 6 % step at commit 12; the store was filled from the full history. A clone with the 8
    newest commits has no step of its own to find: it must not invent one between commit 16 and commit 1."""
    full = tmp_path / "full"
    commits = git_history(full, 16)
    store = tmp_path / "store"
    write_rows(store, instruction_rows(commits, step_at=11), {"run_id": "history"})
    shallow = tmp_path / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth", "8", f"file://{full}", str(shallow)], check=True)

    assert main(["regressions", "--store", str(store), "--repo", str(shallow)]) == 0
    out = capsys.readouterr().out
    assert regression_rows(out) == []
    assert "8 commit(s) of the store are not in the git history" in out
    assert "the history has 8 commit(s); a step can be found from 10 commits on" in out

    assert main(["regressions", "--store", str(store), "--repo", str(full)]) == 1
    (line,) = regression_rows(capsys.readouterr().out)
    assert f"| {commits[11][:10]} | {commits[10][:10]} |" in line


def test_a_history_too_short_to_judge_says_so(tmp_path, capsys):
    repo = tmp_path / "repo"
    commits = git_history(repo, 4)
    store = tmp_path / "store"
    write_rows(store, instruction_rows(commits, step_at=2), {"run_id": "short"})
    assert main(["regressions", "--store", str(store), "--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert "no significant change points" in out
    assert "the history has 4 commit(s); a step can be found from 10 commits on" in out
    assert f"attnbench compare {commits[2][:10]} {commits[3][:10]}" in out


def test_a_category_that_matches_nothing_is_said_not_silently_passed(tmp_path, capsys):
    store = tmp_path / "store"
    write_rows(store, instruction_rows([f"{i:040x}" for i in range(3)], None), {"run_id": "x"})
    assert main(["regressions", "--category", "speed", "--store", str(store)]) == 2
    assert "no rows of category speed" in capsys.readouterr().err
    assert main(["regressions", "--category", "instruction", "--store", str(store)]) == 2
    assert "not a category; use one of quality" in capsys.readouterr().err
