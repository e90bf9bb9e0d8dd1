"""Kernel micro-benchmarks at attention shapes: int8 FBGEMM (``cython_kernels``) against fp32 ``torch.matmul``.

No assertions on speed: every function samples its candidates side by side with the project's one sampling
API (:func:`harness.execution.sampling.time_interleaved`: warm-up, rotated round-robin order, each sample the
mean of enough calls to last ``min_time`` seconds). Rows report the median and keep the raw per-call samples
(seconds) and ``foreign_load``: the CPU cores other processes used meanwhile.

* :class:`GemmCase`, :func:`speedup_int8_vs_fp32` — what the asv suite (``benchmarks/bench_kernels.py``)
  imports; keep these names at this path (asv runs today's suite against older commits).
* :func:`gemm_gops`: int8 FBGEMM (``gemm_u8s8_s32``, packing and the 7-bit check included) vs fp32
  ``torch.matmul`` on the same (batch*heads, M, K) x (N, K)^T.
* :func:`dequant_paths`: float32 scores from int8 operands: FBGEMM's fused ``ReQuantizeForFloat`` vs int32
  output plus a NumPy, torch or Cython dequantize.
* :func:`qk_pipeline`: fp32 ``q @ k^T`` vs quantize(q, k) + ``gemm_u8s8_f32``.

Run ``python -m harness.kernels_bench`` for the three tables.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from .execution.sampling import Timing, time_interleaved

DEFAULT_SHAPES = {"batch_heads": (12, 96), "seq": (128, 512), "head_dim": (32, 64), "threads": (1, 2)}

def _kernels():
    import cython_kernels

    if not cython_kernels.AVAILABLE:
        raise NotImplementedError(cython_kernels.UNAVAILABLE_REASON)
    return cython_kernels


@dataclass
class GemmCase:
    """``run()`` computes ``a @ b.T`` for (batch·heads, seq, head_dim) operands, as Q·Kᵀ does."""

    run: Callable[[], object]

    @classmethod
    def create(cls, impl: str, batch_heads: int, seq: int, head_dim: int, threads: int) -> "GemmCase":
        torch.set_num_threads(threads)
        rng = np.random.default_rng(0)
        if impl == "int8-fbgemm":
            kernels = _kernels()
            a = rng.integers(0, 128, (batch_heads, seq, head_dim), dtype=np.uint8)
            b = rng.integers(-127, 128, (batch_heads, seq, head_dim), dtype=np.int8)
            out = np.empty((batch_heads, seq, seq), np.int32)
            return cls(lambda: kernels.gemm_u8s8_s32(a, b, out=out, threads=threads))
        if impl == "fp32-matmul":
            a = torch.from_numpy(rng.standard_normal((batch_heads, seq, head_dim), dtype=np.float32))
            b = torch.from_numpy(rng.standard_normal((batch_heads, seq, head_dim), dtype=np.float32))
            out = torch.empty(batch_heads, seq, seq)
            return cls(lambda: torch.matmul(a, b.transpose(1, 2), out=out))
        raise ValueError(f"unknown GEMM implementation {impl!r}; use 'int8-fbgemm' or 'fp32-matmul'")


def speedup_int8_vs_fp32(batch_heads: int, seq: int, head_dim: int, threads: int, repeats: int = 9) -> float:
    """fp32 time / int8 time, medians of samples taken interleaved in this process."""
    cases = {impl: GemmCase.create(impl, batch_heads, seq, head_dim, threads).run
             for impl in ("int8-fbgemm", "fp32-matmul")}
    timings = _measure(cases, repeats, min_time=0.02)
    return timings["fp32-matmul"].median / timings["int8-fbgemm"].median


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
    ck = _kernels()
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(bh, m, k, generator=gen)
    key = torch.randn(bh, n, k, generator=gen)
    qq, q_scale, q_zp = ck.quantize_u7_asym(q.numpy(), per="matrix")
    kq, k_scale = ck.quantize_s8_sym(key.numpy(), per="row")
    return {"q": q, "k": key, "qq": qq, "q_scale": q_scale, "q_zp": q_zp, "kq": kq, "k_scale": k_scale}


def _measure(cases: dict[str, Callable[[], object]], repeats: int, min_time: float) -> dict[str, Timing]:
    return time_interleaved(cases, repeats=repeats, warmup=1, number=None, min_time=min_time)


def _row(config: dict[str, int], timings: dict[str, Timing], ops_per_call: float | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {**config, "foreign_load": next(iter(timings.values())).foreign_load}
    for name, timing in timings.items():
        row[f"{name}_ms"] = timing.median * 1e3
        if ops_per_call is not None:
            row[f"{name}_gops"] = ops_per_call / timing.median / 1e9
        row[f"{name}_samples_s"] = list(timing.samples)
    return row


def gemm_gops(repeats: int = 7, min_time: float = 0.02, seed: int = 0, **shapes: Iterable[int]) -> list[dict[str, Any]]:
    """GOP/s of int8 FBGEMM vs fp32 torch.matmul; ``ratio`` = int8 / fp32 speed.

    Keyword ``shapes`` override ``DEFAULT_SHAPES`` (batch_heads, seq (M = N),
    head_dim (K), threads).  One GEMM = 2 * batch_heads * M * N * K operations.
    """
    ck = _kernels()

    rows = []
    for bh, s, k, t in _configs(**{**DEFAULT_SHAPES, **shapes}):
        x = _operands(bh, s, s, k, seed)
        c32 = np.empty((bh, s, s), np.int32)
        f32 = torch.empty(bh, s, s)
        k_t = x["k"].transpose(-1, -2)  # attention's view; matmul handles the layout
        cases = {
            "int8": lambda: ck.gemm_u8s8_s32(x["qq"], x["kq"], out=c32, threads=t),
            "fp32": lambda: torch.matmul(x["q"], k_t, out=f32),
        }
        with _Threads(t):
            measured = _measure(cases, repeats, min_time)
        row = _row({"batch_heads": bh, "m": s, "n": s, "k": k, "threads": t}, measured, 2.0 * bh * s * s * k)
        row["ratio"] = row["int8_gops"] / row["fp32_gops"]
        rows.append(row)
    return rows


def dequant_paths(repeats: int = 7, min_time: float = 0.02, seed: int = 0, **shapes: Iterable[int]) -> list[dict[str, Any]]:
    """Float32 scores from the same int8 operands, four ways (times in ms).

    ``fused``: ``gemm_u8s8_f32``; ``s32_numpy`` / ``s32_torch`` / ``s32_cython``:
    ``gemm_u8s8_s32`` then a NumPy, torch or ``dequantize_s32`` dequantization.
    """
    ck = _kernels()

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
            ck.gemm_u8s8_s32(qq, kq, out=c32, threads=t)
            np.multiply(c32 - corr, scale, out=out)

        def s32_torch() -> None:
            ck.gemm_u8s8_s32(qq, kq, out=c32, threads=t)
            torch.mul(t_c32 - t_corr, t_scale, out=t_out)

        def s32_cython() -> None:
            ck.gemm_u8s8_s32(qq, kq, out=c32, threads=t)
            ck.dequantize_s32(c32, kq, sa, za, sb, out=out, threads=t)

        cases = {
            "fused": lambda: ck.gemm_u8s8_f32(qq, kq, sa, za, sb, out=out, threads=t),
            "s32_numpy": s32_numpy,
            "s32_torch": s32_torch,
            "s32_cython": s32_cython,
        }
        with _Threads(t):
            measured = _measure(cases, repeats, min_time)
        rows.append(_row({"batch_heads": bh, "m": s, "n": s, "k": k, "threads": t}, measured))
    return rows


def qk_pipeline(repeats: int = 7, min_time: float = 0.02, seed: int = 0, **shapes: Iterable[int]) -> list[dict[str, Any]]:
    """fp32 ``q @ k^T`` vs quantize(q per head, k per token) + fused int8 GEMM (ms)."""
    ck = _kernels()

    rows = []
    for bh, s, k, t in _configs(**{**DEFAULT_SHAPES, **shapes}):
        x = _operands(bh, s, s, k, seed)
        q_np, k_np = x["q"].numpy(), x["k"].numpy()
        out = np.empty((bh, s, s), np.float32)
        f32 = torch.empty(bh, s, s)
        k_t = x["k"].transpose(-1, -2)

        def int8() -> None:
            qq, sa, za = ck.quantize_u7_asym(q_np, per="matrix", threads=t)
            kq, sb = ck.quantize_s8_sym(k_np, per="row", threads=t)
            ck.gemm_u8s8_f32(qq, kq, sa, za, sb, out=out, threads=t)

        cases = {
            "fp32": lambda: torch.matmul(x["q"], k_t, out=f32),
            "int8_pipeline": int8,
            "quantize_only": lambda: (
                ck.quantize_u7_asym(q_np, per="matrix", threads=t),
                ck.quantize_s8_sym(k_np, per="row", threads=t),
            ),
        }
        with _Threads(t):
            measured = _measure(cases, repeats, min_time)
        row = _row({"batch_heads": bh, "m": s, "n": s, "k": k, "threads": t}, measured)
        row["ratio"] = row["fp32_ms"] / row["int8_pipeline_ms"]
        rows.append(row)
    return rows


def _load_note(row: dict[str, Any]) -> str:
    load = row["foreign_load"]
    return "" if load is None or load < 0.05 else f"  (other processes: {load:.2f} cores)"


def main() -> None:
    """Print the three tables (``python -m harness.kernels_bench``)."""
    try:
        ck = _kernels()
    except NotImplementedError as exc:
        print(f"cython_kernels unavailable: {exc}")
        return
    print(ck.cpu_features())
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
