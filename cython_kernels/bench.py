"""Micro-benchmarks of the kernels at attention shapes (no assertions on speed).

Every function measures its candidates side by side: each repetition runs all
of them, in an order rotated per repetition, and each sample is the mean of
enough calls to last ``min_time`` seconds.  Rows report the median and keep the
raw per-call samples (seconds), so the harness can add IQRs or tests, and ``foreign_load``: the CPU cores that
other processes used meanwhile (from /proc/stat; None elsewhere), to spot
samples spoiled by a busy machine.

* ``gemm_gops``: int8 FBGEMM (``gemm_u8s8_s32``, packing and the 7-bit check
  included) vs fp32 ``torch.matmul`` on the same (batch*heads, M, K) x (N, K)^T.
* ``dequant_paths``: float32 scores from int8 operands: FBGEMM's fused
  ``ReQuantizeForFloat`` vs int32 output plus a NumPy, torch or Cython dequantize.
* ``qk_pipeline``: fp32 ``q @ k^T`` vs quantize(q, k) + ``gemm_u8s8_f32``.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from . import ops

DEFAULT_SHAPES = {"batch_heads": (12, 96), "seq": (128, 512), "head_dim": (32, 64), "threads": (1, 2)}


def _per_call(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def measure(cases: dict[str, Callable[[], object]], repeats: int = 7, min_time: float = 0.02) -> dict[str, list[float]]:
    """Interleaved timing: ``repeats`` samples (seconds per call) for each case."""
    numbers = {}
    for name, fn in cases.items():
        fn()  # warm-up: JIT-generated FBGEMM kernels, allocations, page faults
        once = _per_call(fn, 1)
        numbers[name] = max(1, int(min_time / max(once, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for rep in range(repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            samples[name].append(_per_call(cases[name], numbers[name]))
    return samples


def cpu_ticks() -> tuple[float, int, int] | None:
    """(wall time, busy ticks of the whole machine, ticks of this process) on Linux, else None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
    return time.perf_counter(), busy, int(own[11]) + int(own[12])  # utime + stime, all threads


def measure_with_load(cases: dict[str, Callable[[], object]], repeats: int, min_time: float) -> tuple[dict[str, list[float]], float | None]:
    """``measure`` plus the mean number of cores other processes kept busy meanwhile."""
    start = cpu_ticks()
    samples = measure(cases, repeats, min_time)
    return samples, foreign_load(start, cpu_ticks())


def foreign_load(start: tuple[float, int, int] | None, end: tuple[float, int, int] | None) -> float | None:
    """Mean number of cores that other processes kept busy between two ``cpu_ticks()`` readings."""
    if start is None or end is None:
        return None
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    foreign = (end[1] - start[1]) - (end[2] - start[2])
    return max(0.0, foreign / ticks_per_s / (end[0] - start[0]))


def _configs(batch_heads: Iterable[int], seq: Iterable[int], head_dim: Iterable[int], threads: Iterable[int]):
    return itertools.product(batch_heads, seq, head_dim, threads)


class _Threads:
    """Set torch's intra-op threads for a block and restore them after."""

    def __init__(self, n: int) -> None:
        import torch

        self.torch, self.n, self.saved = torch, n, torch.get_num_threads()

    def __enter__(self) -> None:
        self.torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        self.torch.set_num_threads(self.saved)


def _operands(bh: int, m: int, n: int, k: int, seed: int) -> dict[str, Any]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(bh, m, k, generator=gen)
    key = torch.randn(bh, n, k, generator=gen)
    qq, q_scale, q_zp = ops.quantize_u7_asym(q.numpy(), per="matrix")
    kq, k_scale = ops.quantize_s8_sym(key.numpy(), per="row")
    return {"q": q, "k": key, "qq": qq, "q_scale": q_scale, "q_zp": q_zp, "kq": kq, "k_scale": k_scale}


def _row(config: dict[str, int], measured: tuple[dict[str, list[float]], float | None], ops_per_call: float | None = None) -> dict[str, Any]:
    samples, foreign_load = measured
    row: dict[str, Any] = {**config, "foreign_load": foreign_load}
    for name, values in samples.items():
        median = statistics.median(values)
        row[f"{name}_ms"] = median * 1e3
        if ops_per_call is not None:
            row[f"{name}_gops"] = ops_per_call / median / 1e9
        row[f"{name}_samples_s"] = values
    return row


def gemm_gops(repeats: int = 7, min_time: float = 0.02, seed: int = 0, **shapes: Iterable[int]) -> list[dict[str, Any]]:
    """GOP/s of int8 FBGEMM vs fp32 torch.matmul; ``ratio`` = int8 / fp32 speed.

    Keyword ``shapes`` override ``DEFAULT_SHAPES`` (batch_heads, seq (M = N),
    head_dim (K), threads).  One GEMM = 2 * batch_heads * M * N * K operations.
    """
    import torch

    rows = []
    for bh, s, k, t in _configs(**{**DEFAULT_SHAPES, **shapes}):
        x = _operands(bh, s, s, k, seed)
        c32 = np.empty((bh, s, s), np.int32)
        f32 = torch.empty(bh, s, s)
        k_t = x["k"].transpose(-1, -2)  # attention's view; matmul handles the layout
        cases = {
            "int8": lambda: ops.gemm_u8s8_s32(x["qq"], x["kq"], out=c32, threads=t),
            "fp32": lambda: torch.matmul(x["q"], k_t, out=f32),
        }
        with _Threads(t):
            measured = measure_with_load(cases, repeats, min_time)
        row = _row({"batch_heads": bh, "m": s, "n": s, "k": k, "threads": t}, measured, 2.0 * bh * s * s * k)
        row["ratio"] = row["int8_gops"] / row["fp32_gops"]
        rows.append(row)
    return rows


def dequant_paths(repeats: int = 7, min_time: float = 0.02, seed: int = 0, **shapes: Iterable[int]) -> list[dict[str, Any]]:
    """Float32 scores from the same int8 operands, four ways (times in ms).

    ``fused``: ``gemm_u8s8_f32``; ``s32_numpy`` / ``s32_torch`` / ``s32_cython``:
    ``gemm_u8s8_s32`` then a NumPy, torch or ``dequantize_s32`` dequantization.
    """
    import torch

    rows = []
    for bh, s, k, t in _configs(**{**DEFAULT_SHAPES, **shapes}):
        x = _operands(bh, s, s, k, seed)
        qq, kq, sa, za, sb = x["qq"], x["kq"], x["q_scale"], x["q_zp"], x["k_scale"]
        c32 = np.empty((bh, s, s), np.int32)
        out = np.empty((bh, s, s), np.float32)
        row_sums = kq.sum(axis=2, dtype=np.int32)
        scale = sa[:, None, None] * sb[:, None, :]
        corr = (za[:, None, None] * row_sums[:, None, :]).astype(np.int32)
        t_scale, t_corr = torch.from_numpy(scale), torch.from_numpy(corr)
        t_c32, t_out = torch.from_numpy(c32), torch.from_numpy(out)

        def s32_numpy() -> None:
            ops.gemm_u8s8_s32(qq, kq, out=c32, threads=t)
            np.multiply(c32 - corr, scale, out=out)

        def s32_torch() -> None:
            ops.gemm_u8s8_s32(qq, kq, out=c32, threads=t)
            torch.mul(t_c32 - t_corr, t_scale, out=t_out)

        def s32_cython() -> None:
            ops.gemm_u8s8_s32(qq, kq, out=c32, threads=t)
            ops.dequantize_s32(c32, kq, sa, za, sb, out=out, threads=t)

        cases = {
            "fused": lambda: ops.gemm_u8s8_f32(qq, kq, sa, za, sb, out=out, threads=t),
            "s32_numpy": s32_numpy,
            "s32_torch": s32_torch,
            "s32_cython": s32_cython,
        }
        with _Threads(t):
            measured = measure_with_load(cases, repeats, min_time)
        rows.append(_row({"batch_heads": bh, "m": s, "n": s, "k": k, "threads": t}, measured))
    return rows


def qk_pipeline(repeats: int = 7, min_time: float = 0.02, seed: int = 0, **shapes: Iterable[int]) -> list[dict[str, Any]]:
    """fp32 ``q @ k^T`` vs quantize(q per head, k per token) + fused int8 GEMM (ms)."""
    import torch

    rows = []
    for bh, s, k, t in _configs(**{**DEFAULT_SHAPES, **shapes}):
        x = _operands(bh, s, s, k, seed)
        q_np, k_np = x["q"].numpy(), x["k"].numpy()
        out = np.empty((bh, s, s), np.float32)
        f32 = torch.empty(bh, s, s)
        k_t = x["k"].transpose(-1, -2)

        def int8() -> None:
            qq, sa, za = ops.quantize_u7_asym(q_np, per="matrix", threads=t)
            kq, sb = ops.quantize_s8_sym(k_np, per="row", threads=t)
            ops.gemm_u8s8_f32(qq, kq, sa, za, sb, out=out, threads=t)

        cases = {
            "fp32": lambda: torch.matmul(x["q"], k_t, out=f32),
            "int8_pipeline": int8,
            "quantize_only": lambda: (
                ops.quantize_u7_asym(q_np, per="matrix", threads=t),
                ops.quantize_s8_sym(k_np, per="row", threads=t),
            ),
        }
        with _Threads(t):
            measured = measure_with_load(cases, repeats, min_time)
        row = _row({"batch_heads": bh, "m": s, "n": s, "k": k, "threads": t}, measured)
        row["ratio"] = row["fp32_ms"] / row["int8_pipeline_ms"]
        rows.append(row)
    return rows


def _load_note(row: dict[str, Any]) -> str:
    load = row["foreign_load"]
    return "" if load is None or load < 0.05 else f"  (other processes: {load:.2f} cores)"


def main() -> None:
    """Print the three tables (``python -m cython_kernels.bench``)."""
    if not ops.AVAILABLE:
        print(f"cython_kernels unavailable: {ops.UNAVAILABLE_REASON}")
        return
    print(ops.cpu_features())
    print("bh    M=N   K  thr |  int8 GOP/s  fp32 GOP/s  int8/fp32")
    for r in gemm_gops():
        print(f"{r['batch_heads']:3d} {r['m']:5d} {r['k']:3d} {r['threads']:3d}  | "
              f"{r['int8_gops']:10.1f}  {r['fp32_gops']:10.1f}  {r['ratio']:8.2f}{_load_note(r)}")
    print("bh    M=N   K  thr |  fused ms  s32+numpy  s32+torch  s32+cython")
    for r in dequant_paths():
        print(f"{r['batch_heads']:3d} {r['m']:5d} {r['k']:3d} {r['threads']:3d}  | {r['fused_ms']:8.3f}  "
              f"{r['s32_numpy_ms']:9.3f}  {r['s32_torch_ms']:9.3f}  {r['s32_cython_ms']:10.3f}{_load_note(r)}")
    print("bh    M=N   K  thr |  fp32 ms  int8 pipeline ms (quantize only)  fp32/int8")
    for r in qk_pipeline():
        print(f"{r['batch_heads']:3d} {r['m']:5d} {r['k']:3d} {r['threads']:3d}  | {r['fp32_ms']:7.3f}  "
              f"{r['int8_pipeline_ms']:8.3f} ({r['quantize_only_ms']:7.3f})  {r['ratio']:8.2f}{_load_note(r)}")


if __name__ == "__main__":
    main()
