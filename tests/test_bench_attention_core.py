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
