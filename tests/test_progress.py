"""The timing progress bar counts whole rounds and ends exactly at its total."""

from __future__ import annotations

from harness import RunSpec, run
from harness.execution import runner


class RecordingBar:
    """Stands in for tqdm: records the total and every update of each bar."""

    bars: list["RecordingBar"] = []

    def __init__(self, *args, total=None, desc="", **kwargs):
        self.total, self.desc, self.updates = total, desc, []
        RecordingBar.bars.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        self.updates.append(n)


def test_timing_bar_counts_integer_rounds_up_to_its_total(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(runner, "tqdm", RecordingBar)
    RecordingBar.bars = []
    spec = RunSpec(backends=["dense", "dense:impl=eager"], tasks=["sst2"], model=[str(tiny_model_dir)], limit=8,
                   batch_size=2, seq_len=16, repeats=3, warmup=2, fidelity_examples=0, store=None, progress=True)
    run(spec, log=lambda m: None)
    timing = [b for b in RecordingBar.bars if b.desc.startswith("timing")]
    assert len(timing) == 1
    bar = timing[0]
    # forward: warm-up + repeats rounds; attention core: warm-up + 3 × repeats rounds
    assert bar.total == (2 + 3) + (2 + 3 * 3)
    assert all(isinstance(n, int) for n in bar.updates)
    assert sum(bar.updates) == bar.total
