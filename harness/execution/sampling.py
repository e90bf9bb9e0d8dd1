"""The one sampling API of attnbench: warm-up, interleaving across candidates, raw samples, pluggable clocks.

Every figure attnbench times — the runner's speed cells, the asv suite's helpers, the kernel micro-benchmarks
(:mod:`harness.kernels_bench`) and the scripts in ``tools/`` — goes through :func:`time_interleaved`. What a
sample *measures* is the :class:`Clock`'s business: :class:`WallClock` (``time.perf_counter``, seconds) is the
default; other clocks (instruction counts under callgrind, CUDA events) implement the same protocol and
plug in without a new timer.

The machines are noisy (±15 % between single medians), so candidates are sampled round-robin — each
repetition samples every candidate once, in a rotated order — and every sample is kept for later tests.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Protocol

import numpy as np

from ..devices import Placement, cuda_peak_bytes


class Clock(Protocol):
    """What a sample measures. ``measure(fn, number)`` calls ``fn`` ``number`` times and returns the figure per
    call in :attr:`unit` (e.g. seconds). A clock may synchronise a device or toggle instrumentation around the
    calls; it must not call ``fn`` more than ``number`` times."""

    name: str
    unit: str

    def measure(self, fn: Callable[[], object], number: int) -> float: ...


@dataclass(frozen=True)
class WallClock:
    """Wall-clock seconds per call from ``time.perf_counter`` (CPU work; synchronous calls only)."""

    name: str = "wall"
    unit: str = "s"

    def measure(self, fn: Callable[[], object], number: int) -> float:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - start) / number


WALL_CLOCK = WallClock()

#: Bytes written between samples to evict the L2 cache (as ``triton.testing.do_bench``: 256 MiB, larger than
#: any GPU's L2 today, H200: 60 MiB).
L2_FLUSH_BYTES = 256 * 1024 * 1024


class CudaEventClock:
    """Device seconds per call from CUDA events (``torch.cuda.Event(enable_timing=True)``).

    ``measure`` synchronises the device first (so no earlier work leaks into the sample), records an event
    before and after the calls, synchronises again and reads the elapsed time. With ``flush_l2`` (recorded in
    :attr:`name`) each call is preceded by a write of :data:`L2_FLUSH_BYTES` outside its events, as
    ``triton.testing.do_bench`` does, and the sample is the mean of the per-call event pairs: cold-cache
    figures. Without it, one event pair brackets all ``number`` calls: warm-cache, back-to-back figures.
    Warm-up is :func:`time_interleaved`'s ``warmup`` rounds (kernel selection, allocator growth).

    ``cuda`` is the module that provides ``Event`` and ``synchronize`` (``torch.cuda``; tests pass a fake).
    """

    unit = "s"

    def __init__(self, device: object = "cuda", flush_l2: bool = False, cuda: object | None = None) -> None:
        self.device = device
        self.flush_l2 = flush_l2
        self._cuda = cuda
        self._flush_buffer = None
        self.name = f"cuda-event{'+l2flush' if flush_l2 else ''}"

    @property
    def cuda(self):
        if self._cuda is None:
            import torch

            self._cuda = torch.cuda
        return self._cuda

    def _flush(self) -> None:
        if self._flush_buffer is None:
            import torch

            self._flush_buffer = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=self.device)
        self._flush_buffer.zero_()

    def measure(self, fn: Callable[[], object], number: int) -> float:
        cuda = self.cuda
        cuda.synchronize(self.device)
        if not self.flush_l2:
            start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
            start.record()
            for _ in range(number):
                fn()
            end.record()
            cuda.synchronize(self.device)
            return start.elapsed_time(end) / 1000.0 / number
        pairs = []
        for _ in range(number):
            self._flush()
            start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        cuda.synchronize(self.device)
        return sum(start.elapsed_time(end) for start, end in pairs) / 1000.0 / number


def clock_for(device: object = "cpu", flush_l2: bool = False) -> Clock:
    """The clock that times work on ``device``: :data:`WALL_CLOCK` on the CPU, a :class:`CudaEventClock` on CUDA."""
    kind = getattr(device, "type", None) or str(device).split(":", 1)[0]
    return CudaEventClock(device, flush_l2=flush_l2) if kind == "cuda" else WALL_CLOCK


@dataclass(frozen=True)
class Timing:
    """Raw samples of one candidate (each the mean over ``number`` calls, in ``unit``), with summary statistics.

    ``foreign_load``: the mean number of CPU cores that *other* processes kept busy while the samples were
    taken (from ``/proc/stat``; ``None`` where it cannot be read). High values mean a disturbed measurement.
    """

    samples: tuple[float, ...]
    unit: str = "s"
    clock: str = "wall"
    number: int = 1
    foreign_load: float | None = None

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def iqr(self) -> float:
        q1, q3 = np.percentile(self.samples, [25, 75])
        return float(q3 - q1)


def calibrate_number(fn: Callable[[], object], min_time: float, clock: Clock = WALL_CLOCK) -> int:
    """Calls per sample so that one sample lasts at least ``min_time`` seconds (as ``timeit.autorange``; ≥ 1).
    Calls ``fn`` once, timed by the wall clock whatever ``clock`` is."""
    once = WALL_CLOCK.measure(fn, 1)
    return max(1, int(min_time / max(once, 1e-9)))


def time_interleaved(candidates: Mapping[str, Callable[[], object]], *, repeats: int, warmup: int = 1,
                     clock: Clock = WALL_CLOCK, number: int | None = 1, min_time: float | None = None,
                     on_round: Callable[[], None] | None = None) -> dict[str, Timing]:
    """Sample every callable ``repeats`` times, round-robin with a rotating start, after ``warmup`` rounds.

    :param candidates: name → zero-argument callable (the whole measured work; its result is discarded).
    :param repeats: samples per candidate (≥ 1).
    :param warmup: unmeasured rounds first (JIT-generated kernels, allocations, page faults).
    :param clock: what a sample measures (:class:`WallClock` by default).
    :param number: calls per sample; ``None`` with ``min_time``: calibrated per candidate so that a sample lasts
        at least ``min_time`` seconds (short kernels would otherwise measure the timer).
    :param on_round: called after every measured round (progress bars).
    :returns: name → :class:`Timing` with ``repeats`` raw samples in the clock's unit.
    :raises ValueError: ``repeats < 1``, or neither ``number`` nor ``min_time`` given.

    The garbage collector is run once, existing objects are frozen out of its reach and collection is
    disabled while sampling, so no sample pays for a collection another candidate caused (a full collection
    with transformers loaded costs about 0.3 s).
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    if number is None and min_time is None:
        raise ValueError("give number (calls per sample) or min_time (seconds per sample)")
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    numbers = {name: number if number is not None else calibrate_number(candidates[name], min_time, clock)
               for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    gc.freeze()
    gc.disable()
    start = cpu_ticks()
    try:
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                samples[name].append(clock.measure(candidates[name], numbers[name]))
            if on_round:
                on_round()
    finally:
        gc.enable()
        gc.unfreeze()
    load = foreign_load(start, cpu_ticks())
    return {name: Timing(tuple(values), clock.unit, clock.name, numbers[name], load)
            for name, values in samples.items()}


def cpu_ticks() -> tuple[float, int, int] | None:
    """(wall time, busy ticks of the whole machine, ticks of this process) on Linux, else ``None``."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
    return time.perf_counter(), busy, int(own[11]) + int(own[12])  # utime + stime, all threads


def foreign_load(start: tuple[float, int, int] | None, end: tuple[float, int, int] | None) -> float | None:
    """Mean number of cores that other processes kept busy between two :func:`cpu_ticks` readings."""
    if start is None or end is None or end[0] <= start[0]:
        return None
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    foreign = (end[1] - start[1]) - (end[2] - start[2])
    return max(0.0, foreign / ticks_per_s / (end[0] - start[0]))


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


def peak_memory_bytes(fn: Callable[[], object], placement: Placement | None) -> float:
    """Peak tensor memory of ``fn()`` on the placement's device (CUDA allocator stats, or the CPU profiler)."""
    if placement is not None and placement.is_cuda:
        return cuda_peak_bytes(fn, placement.torch_device)
    return peak_allocated_bytes(fn)


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
