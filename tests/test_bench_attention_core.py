"""tools/bench_attention_core.py: the ``--topk-profile K`` / ``KxF`` values (k and k_factor of a phase profile)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_attention_core", ROOT / "tools" / "bench_attention_core.py")
tool = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = tool  # (its dataclasses look their module up)
spec.loader.exec_module(tool)


@pytest.mark.parametrize("label, values", [("16", (16, 1)), ("16x2", (16, 2)), ("32x3", (32, 3))])
def test_topk_profile_values(label, values):
    assert tool.topk_profile_values(label) == values
    assert tool.topk_profile_arg(label) == label


@pytest.mark.parametrize("label", ["0", "16x0", "x2", "16x", "sixteen", "16x2x3"])
def test_bad_topk_profile_values_exit_2_with_the_form(label, capsys):
    with pytest.raises(SystemExit) as exit_:
        tool.main(["--topk-profile", label])
    assert exit_.value.code == 2
    assert "give K or KxF" in capsys.readouterr().err


def _row(table: str, start: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(start))
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


@pytest.mark.skipif(not tool.ck.AVAILABLE, reason="cython_kernels unavailable")
def test_latency_table_reports_rates_and_peak_shares_measured_in_the_same_run(capsys):
    tool.main(["--seq", "64", "--threads", "1", "--batch", "2", "--repeats", "2", "--warmup", "0",
               "-b", "dense", "-b", "fbgemm-int8", "--no-gemm", "--no-int8-profile", "--topk-profile",
               "--peak-size", "128"])
    out = capsys.readouterr().out
    header = _row(out, "| backend |")
    assert header == ["backend", "seq 64, 1 thread", "GFLOP/s", "% fp32 peak", "% int8 peak"]
    peak = _row(out, "| seq 64, 1t |")
    fp32, int8 = float(peak[1]), float(peak[2])
    assert fp32 > 0 and int8 > 0 and float(peak[3]) == pytest.approx(int8 / fp32, abs=0.01)
    for spec in ("dense", "fbgemm-int8"):
        cells = _row(out, f"| `{spec}` |")
        assert cells[1].endswith("×)") and "ms ±" in cells[1]
        rate = float(cells[2])
        # 4 * batch * heads * seq^2 * head_dim operations over the median time of the same cell
        millis = float(cells[1].split(" ms")[0])
        assert rate == pytest.approx(4 * 2 * 12 * 64 * 64 * 32 / (millis * 1e-3) / 1e9, rel=0.03, abs=0.06)
        assert float(cells[3].rstrip(" %")) == pytest.approx(100 * rate / fp32, abs=1.0)
        assert float(cells[4].rstrip(" %")) == pytest.approx(100 * rate / int8, abs=1.0)


def test_bad_peak_size_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        tool.main(["--peak-size", "4"])
    assert exit_.value.code == 2 and "--peak-size must be >= 16" in capsys.readouterr().err
