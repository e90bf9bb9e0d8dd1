"""The pieces of tools/regression_proof.py: history, the injected slowdown, the verdict, synthetic trials."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("regression_proof", ROOT / "tools" / "regression_proof.py")
proof = importlib.util.module_from_spec(spec)
spec.loader.exec_module(proof)


def test_positions_leave_three_commits_on_each_side():
    rng = random.Random(0)
    positions = {proof.draw_position(20, rng) for _ in range(500)}
    assert positions == set(range(3, 18))
    assert {proof.draw_position(7, rng) for _ in range(200)} == {3, 4}
    with pytest.raises(ValueError):
        proof.draw_position(5, rng)


def test_short_history_has_one_slowed_commit(tmp_path):
    repo = tmp_path / "history"
    info = proof.build_history(repo, commits=7, seed=3)
    log = subprocess.run(["git", "-C", str(repo), "log", "--format=%H %s", "--reverse"], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert [line.split()[0] for line in log] == info["shas"] and len(log) == 7
    assert 3 <= info["position"] <= 4 and "more work" in log[info["position"]]
    changed = subprocess.run(["git", "-C", str(repo), "show", "--stat", "--format=", info["slowed"]],
                             capture_output=True, text=True, check=True).stdout
    assert "plugins/dense.py" in changed
    for sha in info["shas"][:info["position"]] + info["shas"][info["position"] + 1:]:
        files = subprocess.run(["git", "-C", str(repo), "show", "--name-only", "--format=", sha],
                               capture_output=True, text=True, check=True).stdout.split()
        assert files == ["PROOF_HISTORY.txt"] or sha == info["shas"][0]
    assert json.loads((repo / ".git" / "proof.json").read_text())["slowed"] == info["slowed"]


def _attention_of(tree: Path):
    spec = importlib.util.spec_from_file_location(f"dense_{abs(hash(tree))}", tree / "plugins" / "dense.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Dense


@pytest.mark.parametrize("extra_rows", [1, 2])
def test_slowdown_is_more_real_work_with_the_same_output(tmp_path, extra_rows):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "dense.py").write_text((ROOT / "plugins" / "dense.py").read_text())
    original = _attention_of(tmp_path)
    proof.slow_down(tmp_path, extra_rows)
    slowed = _attention_of(tmp_path)
    q, k, v = (torch.randn(1, 4, 128, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    module = torch.nn.Module()
    module.training, module.is_causal = False, False

    def run(cls, impl):
        backend = cls.__new__(cls)
        backend.values = {"impl": impl}
        backend.check_values()
        with FlopCounterMode(display=False) as counter:
            out = backend.attention(module, q, k, v, None, scaling=0.25)[0]
        return out, counter.get_total_flops()

    base_out, base_flops = run(original, "eager")
    slow_out, slow_flops = run(slowed, "eager")
    assert torch.equal(base_out, slow_out)
    # extra_rows of 128 query rows again: that share more multiply-adds (Q·Kᵀ and P·V both scale with the
    # rows); with the second call's fixed costs (mask slicing, softmax, output allocation) one row is 4.2 %
    # more instructions under callgrind at 1 x 128 (lab report 2026-11-30-regression-proof)
    assert slow_flops / base_flops == pytest.approx(1 + extra_rows / 128, rel=1e-9)
    assert run(slowed, "sdpa")[1] == run(original, "sdpa")[1]  # only the eager backend is slowed
    with pytest.raises(RuntimeError, match="anchor|gone"):
        proof.slow_down(tmp_path)  # already patched: the anchor is gone
    with pytest.raises(ValueError, match="extra_rows"):
        proof.slow_down(tmp_path, 0)


def test_judge_names_the_slowed_commit_and_backend():
    output = """| kind | suspected commit | previous | series | before | after | step | p (permutation) |
|---|---|---|---|---:|---:|---:|---:|
| regression | abcdef1234 | 1111111111 | metric=instructions_attention_core, backend=dense:impl=eager, threads=1, seq_len=128, machine=m | 1e+06 | 1.05e+06 | 1.050x | 0.005 |
"""
    points = proof.parse_regressions(output)
    assert points[0]["series"]["backend"] == "dense:impl=eager" and points[0]["commit"] == "abcdef1234"
    info = {"slowed": "abcdef1234" + "0" * 30, "backend": "dense:impl=eager", "position": 5}
    assert proof.judge(points, info) == {"found": True, "false_flags": 0, "position": 5, "ok": True}
    other = {**info, "slowed": "9" * 40}
    assert proof.judge(points, other)["ok"] is False


def test_regressions_finds_a_five_percent_instruction_step_in_stored_rows(tmp_path):
    """What `measure` writes, made up (exact counts, as callgrind gives): regressions names the commit."""
    from harness import write_rows
    from harness.analysis.regressions import find_regressions, to_frame

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = []
    for i in range(20):
        for backend, base in (("dense", 5e6), ("dense:impl=eager", 6e6)):
            value = base * (1.05 if backend == "dense:impl=eager" and i >= 11 else 1.0) + (i % 3)
            rows.append({"run_id": f"r{i}", "timestamp": t0 + timedelta(hours=i), "source": "harness",
                         "commit": f"{i:040x}", "machine": "m", "backend": backend, "category": "instructions",
                         "metric": "instructions_attention_core", "value": value, "unit": "instructions",
                         "direction": "lower", "samples": [value], "threads": 1, "seq_len": 128, "batch_size": 1})
    write_rows(tmp_path, rows, {"run_id": "x"})
    from harness.store.parquet import read_results

    points = to_frame(find_regressions(read_results(tmp_path), categories=("instructions",)))
    assert len(points) == 1
    assert points["commit"].iloc[0] == f"{11:040x}" and points["backend"].iloc[0] == "dense:impl=eager"


def test_synthetic_histories_find_a_five_percent_step(tmp_path):
    from harness import write_rows

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = [{"run_id": f"r{i}", "timestamp": t0 + timedelta(hours=i), "source": "harness", "commit": f"{i:040x}",
             "machine": "m", "backend": "dense", "category": "instructions", "metric": "instructions_forward",
             "value": 5e6 + (i % 3), "unit": "instructions", "direction": "lower", "threads": 1} for i in range(20)]
    write_rows(tmp_path, rows, {"run_id": "x"})
    result = proof.synthetic(tmp_path, trials=20)
    assert result["trials"] == 20 and result["noise_values"] == 20
    assert result["hits"] >= 19 and result["false_flags"] <= 1
