"""Instruction counts under callgrind (harness.execution.instructions)."""

from __future__ import annotations

import json

import pytest

from harness.execution import instructions


def test_dump_totals_are_read(tmp_path):
    dump = tmp_path / "callgrind.out.1"
    dump.write_text("# callgrind format\nevents: Ir\nsummary: 1234\n\nfn=x\n0 1234\n\ntotals: 1234\n")
    assert instructions.read_dump_total(dump) == 1234
    (tmp_path / "bad").write_text("events: Ir\n")
    with pytest.raises(ValueError):
        instructions.read_dump_total(tmp_path / "bad")


def test_missing_valgrind_skips_rows_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(instructions.shutil, "which", lambda name: None)
    reason = instructions.unavailable_reason()
    assert reason and "valgrind is not installed" in reason
    messages = []
    rows, skipped = instructions.run_instructions(["dense"], store=str(tmp_path / "store"), log=messages.append)
    assert rows == [] and skipped == {"dense": reason}
    assert any("skipping instruction counts" in m for m in messages)
    assert not (tmp_path / "store").exists()  # nothing written, nothing faked


@pytest.mark.slow
def test_callgrind_counts_one_backend_in_one_valgrind_process(tiny_model_dir):
    reason = instructions.unavailable_reason()
    if reason:
        pytest.skip(reason)
    counts = instructions.measure_instructions(["dense:impl=eager"], model=[str(tiny_model_dir)], repeats=2)
    samples = counts.counts["dense:impl=eager"]
    assert set(samples) == {"forward", "attention_core"}
    for part, values in samples.items():
        assert len(values) == 2 and all(v > 1000 for v in values), (part, values)
        assert abs(values[1] / values[0] - 1) < 0.01, (part, values)  # counts repeat (Python overhead varies a little)
    assert samples["forward"][0] > samples["attention_core"][0]
    assert counts.isa != "AVX512"  # valgrind emulates no AVX-512
    rows = instructions.instruction_rows(counts, {"machine": "m", "run_id": "r"})
    assert {r["metric"] for r in rows} == {"instructions_forward", "instructions_attention_core"}
    row = rows[0]
    assert row["unit"] == "instructions" and row["direction"] == "lower" and row["threads"] == 1
    assert row["batch_size"] == 1 and row["seq_len"] == 128 and len(row["samples"]) == 2
    extra = json.loads(row["extra"])
    assert extra["clock"] == "callgrind" and extra["isa"] == counts.isa and "fbgemm_isa" in extra


def test_run_instructions_only_without_valgrind_writes_nothing(tmp_path, monkeypatch, capsys):
    from harness.cli import main

    monkeypatch.setattr(instructions.shutil, "which", lambda name: None)
    assert main(["run", "--instructions-only", "-b", "dense", "--store", str(tmp_path / "store")]) == 0
    assert "skipping instruction counts: valgrind is not installed" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()
