"""Measurement helpers: interleaved timing keeps every sample; peak tensor memory sees real allocations."""

from __future__ import annotations

import torch

from harness.execution.sampling import Timing, peak_allocated_bytes, time_interleaved


def test_interleaved_timing_rotates_and_keeps_every_sample():
    calls = []
    timings = time_interleaved({name: (lambda n=name: calls.append(n)) for name in "abc"}, repeats=4, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # warm-up round
    rounds = [calls[i:i + 3] for i in range(3, 15, 3)]
    assert rounds == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert all(len(t.samples) == 4 for t in timings.values())


def test_timing_statistics():
    timing = Timing((1.0, 2.0, 3.0, 4.0, 100.0))
    assert timing.median == 3.0 and timing.iqr == 2.0


def test_peak_allocated_bytes_counts_live_tensors_only():
    def work():
        a = torch.ones(1000, 1000)  # 4 MB
        b = a + 1                    # 4 MB more while a lives
        del a, b
        c = torch.ones(500, 500)     # 1 MB, after the peak
        return c

    peak = peak_allocated_bytes(work)
    assert 8e6 <= peak < 8.2e6
