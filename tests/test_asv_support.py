"""What the asv suite calls: speed cases and tracked runs, including skips for backends a commit lacks."""

from __future__ import annotations

import math

import pytest

from harness.speed import speed_case
from harness.tracking import TrackedRun


def test_speed_case_times_forward_and_core(tiny_model_dir):
    case = speed_case("dense", seq_len=16, batch_size=2, threads=1, model=[str(tiny_model_dir)])
    assert case.forward().shape == (2, 2)
    output, _ = case.attention_core()
    assert output.shape == (2, 16, 4, 8)  # (batch, seq, heads, head_dim) of the tiny model


def test_speed_case_skips_a_backend_this_version_lacks(tiny_model_dir):
    """asv runs today's benchmark list against older commits: a missing backend is a skip, not a failure."""
    with pytest.raises(NotImplementedError, match="not available in this version of attnbench"):
        speed_case("no-such-backend", model=[str(tiny_model_dir)])


def test_a_bad_parameter_in_the_suite_is_an_error_not_a_skip(tiny_model_dir):
    from harness import ParamError

    with pytest.raises(ParamError, match="must be one of sdpa, eager"):
        speed_case("dense:impl=flash", model=[str(tiny_model_dir)])


def test_tracked_run_reads_values_and_skips(tiny_model_dir):
    run = TrackedRun.measure(["dense", "topk:k=2", "no-such-backend"], ["rte"], limit=12, model=[str(tiny_model_dir)])
    with pytest.raises(NotImplementedError, match="unknown backend 'no-such-backend'"):
        run.require("no-such-backend")
    run.require("topk:k=2")
    assert 0 <= run.main_metric("topk:k=2", "rte") <= 1
    assert 0 <= run.value("topk:k=2", "rte", "agreement") <= 1
    assert math.isnan(run.value("dense", "rte", "agreement"))  # the reference has no agreement with itself


def test_reading_a_tracked_run_needs_no_torch():
    """asv starts one interpreter per parameter of a track_* benchmark and unpickles the cached TrackedRun in
    it; that must not import torch, transformers or pandas (it made the suite's quality part ~10x slower)."""
    import pickle
    import subprocess
    import sys

    payload = pickle.dumps(TrackedRun({("dense", "rte", "accuracy"): 0.5}, {"rte": "accuracy"}, {}))
    code = ("import pickle, sys; run = pickle.loads(sys.stdin.buffer.read()); "
            "assert run.main_metric('dense', 'rte') == 0.5; "
            "print(sorted(m for m in ('torch', 'transformers', 'pandas', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, check=True)
    assert out.stdout.decode().strip() == "[]"


def test_harness_exports_resolve():
    """The lazily imported public names all exist (a typo in the export table would only fail on use)."""
    import harness

    for name in harness.__all__:
        assert getattr(harness, name) is not None, name
    assert set(harness.__all__) <= set(dir(harness))
