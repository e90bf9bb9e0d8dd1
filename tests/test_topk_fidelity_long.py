"""tools/topk_fidelity_long.py: top-k fidelity on packed long inputs (a short run on the embedded default)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("topk_fidelity_long", ROOT / "tools" / "topk_fidelity_long.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


def test_every_row_is_longer_than_k_and_figures_are_fidelity_figures():
    results = tool.measure(["topk:k=4", "topk:k=64"], ["sst2"], seq_len=48, batch_size=2)
    assert [(r["task"], r["backend"]) for r in results] == [("sst2", "topk:k=4"), ("sst2", "topk:k=64")]
    short, exact = results
    assert short["topk_rows_longer"] == 1.0            # 48 real tokens per row, no padding, k = 4
    assert 0.5 < short["topk_recall"] <= 1 and 0 < short["topk_mass"] < 1
    assert exact["topk_rows_longer"] == 0.0 and exact["topk_recall"] == 1.0   # k >= 48: dense attention
    assert exact["attn_cosine_worst"] > 0.9999
    text = tool.table(results)
    assert "| sst2 | `topk:k=4` |" in text and text.count("\n") == 3


def test_bad_arguments_exit_2(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_:
        tool.main(["--seq-len", "1"])
    assert exit_.value.code == 2
    assert "--seq-len" in capsys.readouterr().err
