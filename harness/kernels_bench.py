"""GEMM cases at attention shapes for the asv suite: int8 FBGEMM (cython_kernels) vs fp32 torch.matmul."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


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
    from cython_kernels.bench import measure

    cases = {impl: GemmCase.create(impl, batch_heads, seq, head_dim, threads).run
             for impl in ("int8-fbgemm", "fp32-matmul")}
    samples = measure(cases, repeats=repeats)
    return statistics.median(samples["fp32-matmul"]) / statistics.median(samples["int8-fbgemm"])
