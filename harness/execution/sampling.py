"""Timing and memory measurements: warmed up, repeated, interleaved across candidates, raw samples kept.

The machines are noisy (±15 % between single medians), so candidates are timed round-robin — each
repetition times every candidate once, in a rotated order — and every sample is kept for later tests.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Raw wall-clock samples in seconds, with their median and interquartile range."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def iqr(self) -> float:
        q1, q3 = np.percentile(self.samples, [25, 75])
        return float(q3 - q1)


def time_interleaved(candidates: Mapping[str, Callable[[], object]], *, repeats: int, warmup: int = 1,
                     on_round: Callable[[], None] | None = None) -> dict[str, Timing]:
    """Time every callable ``repeats`` times, round-robin with a rotating start, after ``warmup`` rounds.

    The garbage collector is run once, existing objects are frozen out of its reach and collection is
    disabled while sampling, so no sample pays for a collection another candidate caused (a full collection
    with transformers loaded costs about 0.3 s).
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                candidates[name]()
                samples[name].append(time.perf_counter() - start)
            if on_round:
                on_round()
    finally:
        gc.enable()
        gc.unfreeze()
    return {name: Timing(tuple(values)) for name, values in samples.items()}


@contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the duration (silences native libraries, not Python)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_allocated_bytes(fn: Callable[[], object]) -> float:
    """Peak bytes held in tensors allocated by PyTorch's CPU allocator during ``fn()``, above the level before it.

    Read from the allocation events of ``torch.profiler`` (``profile_memory=True``), which carry the
    allocator's running total. Memory that libraries allocate outside PyTorch's allocator (oneDNN scratch,
    a C extension's own ``malloc``) is not counted. Returns ``nan`` if the profiler cannot report it.
    The process RSS is no substitute: after warm-up, freed activations are reused and its peak barely moves.
    """
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile

        prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with _quiet_native_stderr():  # kineto prints profiler_start/stop lines to fd 2
            prof.start()
        try:
            fn()
        finally:
            with _quiet_native_stderr():
                prof.stop()
        events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            event = stack.pop()
            stack.extend(event.children)
            if event.tag == _EventType.Allocation:
                fields = event.extra_fields
                events.append((event.start_time_ns, fields.total_allocated - fields.alloc_size,
                               fields.total_allocated))
    except Exception:  # private profiler API: degrade to "not measured", never fail a run
        return float("nan")
    if not events:
        return 0.0
    events.sort()
    baseline = events[0][1]
    return float(max(total for _, _, total in events) - baseline)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
