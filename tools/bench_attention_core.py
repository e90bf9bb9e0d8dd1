"""Attention-core latency of the built-in backends side by side, where the int8 core's time goes, and
the raw int8 vs fp32 GEMM speed at attention shapes. Prints markdown tables.

    python tools/bench_attention_core.py                      # seq 128 and 512, batch 8, 1 and 2 threads
    python tools/bench_attention_core.py --repeats 40 --no-gemm
    python tools/bench_attention_core.py --head-dim 64 -b dense -b topk:k=16,scorer=fbgemm   # q/k/v of dim 64
    python tools/bench_attention_core.py --clock cpu ...       # process CPU seconds per call instead of wall
    python tools/bench_attention_core.py --forward --seq 512 --threads 2 -b dense -b topk:k=16,scorer=fbgemm

The attention core is what the runner and asv time (``harness.speed``): the backend's attention function
(``harness.backends.attention_interface.attention_function``) called as the embedded MiniLM's first layer calls it, on seeded
random q/k/v of shape (batch, 12 heads, seq, 32) without a mask (``--head-dim`` changes the 32, with scaling
head_dim ** -0.5). All backends of one (seq, threads)
configuration are timed round-robin in this process (``harness.execution.sampling.time_interleaved``: warm-up,
rotating order, one sample per call); cells give the median in ms, the IQR and the speed-up over dense SDPA.
``other load`` is the mean number of cores other processes kept busy meanwhile: numbers taken while it is
well above 0 are not to be trusted on a 2-core machine. ``--clock cpu`` samples the process's CPU time per call
(user + system, all threads) instead: on a busy shared machine it is far less disturbed by time-slicing than
wall time (it does not see waits, so compare it with wall-time ratios taken at low load). ``--forward`` times
the whole model forward (``harness.speed`` speed cases: the embedded model on the sample data) instead of
the attention core. ``--isa avx2`` caps every library at AVX2 (no AVX-512, no VNNI) the way an AVX2-only
machine runs them: it restarts the tool with ``ATEN_CPU_CAPABILITY=avx2`` (torch's own kernels),
``MKL_ENABLE_INSTRUCTIONS=AVX2`` (MKL's GEMMs), ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN) and
``FBGEMM_ENABLE_INSTRUCTIONS=AVX2`` (FBGEMM) set before torch loads; attnbench's own kernels are AVX2 code
everywhere.

Peaks: in the same interleaved rounds as the backends (so under the same load), a small peak
micro-benchmark times an fp32 GEMM (``torch.mm``, 1024³, all threads) and an int8 GEMM (FBGEMM
``gemm_u8s8_s32``, one 1024³ GEMM per thread, packing included). Beside each latency the table gives the
achieved rate, ``4 · batch · heads · seq² · head_dim`` operations (Q·Kᵀ and P·V, a multiply-add counted as
two; the dense work, whatever the backend skips) per median second, and its share of the measured fp32 and
int8 peaks (median rates, same clock). ``--no-peak`` leaves them out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

# Read before torch loads (each library reads its variable once, when it initialises).
ISA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                    "ONEDNN_MAX_CPU_ISA": "AVX2", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}}


def _restart_with_isa(argv: list[str]) -> None:
    """With ``--isa NAME`` and its variables not yet set, run this tool again with them set."""
    isa = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--isa"), None)
    isa = isa or next((a.split("=", 1)[1] for a in argv if a.startswith("--isa=")), None)
    if isa in ISA_ENV and any(os.environ.get(k) != v for k, v in ISA_ENV[isa].items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ISA_ENV[isa]})


if __name__ == "__main__":
    _restart_with_isa(sys.argv[1:])

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cython_kernels as ck  # noqa: E402
from harness import load_registry  # noqa: E402
from harness import kernels_bench as bench  # noqa: E402
from harness.backends.attention_interface import attention_function  # noqa: E402
from harness.backends.attention_interface import attention_modules  # noqa: E402
from harness.execution.sampling import WALL_CLOCK, Timing, time_interleaved  # noqa: E402
from harness.models.loading import load_task_models  # noqa: E402
from harness.execution.runner import prepare_model  # noqa: E402
from harness.speed import SPEED_TASK, attention_core_call, random_qkv, speed_case  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402


@dataclass(frozen=True)
class CpuClock:
    """Process CPU seconds (user + system, all threads) per call, from ``time.process_time``."""

    name: str = "cpu"
    unit: str = "s"

    def measure(self, fn, number: int) -> float:
        start = time.process_time()
        for _ in range(number):
            fn()
        return (time.process_time() - start) / number


CLOCKS = {"wall": WALL_CLOCK, "cpu": CpuClock()}

BACKENDS = ("dense", "dense:impl=eager", "fbgemm-int8", "fbgemm-int8:pv=float", "topk:k=16",
            "topk:k=16,scorer=fbgemm", "topk:k=32,scorer=fbgemm")
REFERENCE = "dense"


def _core_call(backend, model: torch.nn.Module, qkv: tuple[torch.Tensor, ...], head_dim: int | None):
    if head_dim is None:
        return attention_core_call(backend, model, qkv)
    fn, module = attention_function(backend), attention_modules(model)[0]
    q, k, v = qkv

    def call() -> object:
        with torch.inference_mode():
            return fn(module, q, k, v, None, scaling=head_dim ** -0.5, dropout=0.0)
    return call


def time_forwards(specs: list[str], seq: int, batch: int, threads: int, repeats: int, warmup: int,
                  clock=WALL_CLOCK) -> tuple[dict[str, Timing], float | None, dict[str, np.ndarray]]:
    """Timings of the whole model forward per backend (``harness.speed.speed_case``), interleaved."""
    calls = {spec: speed_case(spec, seq_len=seq, batch_size=batch, threads=threads).forward for spec in specs}
    timings = time_interleaved(calls, repeats=repeats, warmup=warmup, clock=clock)
    return timings, next(iter(timings.values())).foreign_load, {}


PEAK_FP32, PEAK_INT8 = "peak: fp32 GEMM", "peak: int8 GEMM"
PEAK_SIZE = 1024  # M = N = K of the peak GEMMs


def peak_calls(threads: int, size: int = PEAK_SIZE) -> dict[str, tuple[object, float]]:
    """The peak micro-benchmark: name → (call, operations per call) for an fp32 GEMM (``torch.mm`` of
    size³ on all threads) and int8 GEMMs (FBGEMM ``gemm_u8s8_s32``, ``threads`` GEMMs of size³ split over
    the threads, packing included; 7-bit A so that AVX2's pair sums stay exact)."""
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.standard_normal((size, size), dtype=np.float32))
    b = torch.from_numpy(rng.standard_normal((size, size), dtype=np.float32))
    c = torch.empty(size, size)
    a8 = rng.integers(0, 128, (threads, size, size), dtype=np.uint8)
    b8 = rng.integers(-127, 128, (threads, size, size), dtype=np.int8)
    c8 = np.empty((threads, size, size), np.int32)
    ops = 2.0 * size ** 3
    return {PEAK_FP32: (lambda: torch.mm(a, b, out=c), ops),
            PEAK_INT8: (lambda: ck.gemm_u8s8_s32(a8, b8, out=c8, threads=threads), threads * ops)}


def attention_ops(batch: int, heads: int, seq: int, head_dim: int) -> float:
    """Operations of one dense attention core: Q·Kᵀ and P·V, 2 · batch · heads · seq² · head_dim each."""
    return 4.0 * batch * heads * seq * seq * head_dim


def time_cores(specs: list[str], seq: int, batch: int, threads: int, repeats: int, warmup: int,
               head_dim: int | None = None, topk_profiles: tuple[str, ...] = ("16",), clock=WALL_CLOCK,
               int8_profiles: bool = True, peaks: bool = False, peak_size: int = PEAK_SIZE
               ) -> tuple[dict[str, Timing], float | None, dict[str, np.ndarray]]:
    """Median-ready timings of every backend's attention core, the foreign load, and int8 phase profiles.

    With ``peaks``, the timings also hold the peak GEMMs (``PEAK_FP32``, ``PEAK_INT8``, sampled in the same
    rounds) and the profiles hold ``"ops"``: float64 [attention operations per call, fp32 peak operations
    per call, int8 peak operations per call]."""
    torch.set_num_threads(threads)
    registry = load_registry()
    task = registry.task(SPEED_TASK)
    models = load_task_models(None, [task])
    base = models.model(task)
    qkv = random_qkv(base.config, batch, seq)
    if head_dim is not None:
        generator = torch.Generator().manual_seed(0)
        heads = base.config.num_attention_heads
        qkv = tuple(torch.randn(batch, heads, seq, head_dim, generator=generator) for _ in range(3))
    calls = {}
    for spec in specs:
        backend = registry.resolve(spec)
        calls[spec] = _core_call(backend, prepare_model(base, backend), qkv, head_dim)
    profiles = {}
    if peaks:
        peak = peak_calls(threads, peak_size)
        calls.update({name: call for name, (call, _) in peak.items()})
        b, h, s, d = qkv[0].shape
        profiles["ops"] = np.array([attention_ops(b, h, s, d), peak[PEAK_FP32][1], peak[PEAK_INT8][1]])
    timings = time_interleaved(calls, repeats=repeats, warmup=warmup, clock=clock)
    load = next(iter(timings.values())).foreign_load
    q, k, v = qkv
    for pv in ("int8", "float") if int8_profiles else ():
        profile = np.zeros(len(ck.ATTENTION_PHASES))
        for _ in range(repeats):
            ck.attention_u8s8(q, k, v, pv=pv, profile=profile)
        profiles[pv] = profile / repeats
    if ck.TOPK_AVAILABLE:
        for label in topk_profiles:
            topk, k_factor = topk_profile_values(label)
            profile = np.zeros(len(ck.TOPK_PHASES))
            for _ in range(repeats):
                ck.topk_attention_u8s8(q, k, v, topk=topk, granularity="head", k_factor=k_factor, profile=profile)
            profiles[f"topk{label}"] = profile / repeats
    return timings, load, profiles


def topk_profile_values(label: str) -> tuple[int, int]:
    """``"16"`` → (16, 1), ``"16x2"`` → (16, 2): the ``k`` and ``k_factor`` of a ``--topk-profile`` value."""
    k, x, factor = label.partition("x")
    return int(k), int(factor) if x else 1


def topk_profile_arg(label: str) -> str:
    try:
        k, factor = topk_profile_values(label)
    except ValueError:
        k = factor = 0
    if k < 1 or factor < 1:
        raise argparse.ArgumentTypeError(f"{label!r}: give K or KxF (k and k_factor, both >= 1), e.g. 16 or 16x2")
    return label


def latency_table(results: dict[tuple[int, int], tuple[dict[str, Timing], float | None, dict]], specs: list[str]) -> str:
    """Median latency ± IQR and speed-up over dense per backend and (seq, threads); where the run measured
    peaks, each configuration also gets the achieved GFLOP/s (GOP/s for int8 backends: the same count) and
    its share of the fp32 and int8 peaks."""
    configs = sorted(results)
    with_peaks = {c: "ops" in results[c][2] for c in configs}
    head, rule = ["| backend |"], ["|---|"]
    for s, t in configs:
        head.append(f" seq {s}, {t} thread{'s' if t > 1 else ''} |")
        rule.append("---:|")
        if with_peaks[s, t]:
            head.append(" GFLOP/s | % fp32 peak | % int8 peak |")
            rule.append("---:|---:|---:|")
    lines = ["".join(head), "".join(rule)]
    for spec in specs:
        cells = []
        for config in configs:
            timing = results[config][0][spec]
            ratio = results[config][0][REFERENCE].median / timing.median
            cells.append(f"{timing.median * 1e3:.2f} ms ±{timing.iqr * 1e3:.2f} ({ratio:.2f}×)")
            if with_peaks[config]:
                rate, fp32, int8 = peak_rates(results[config], spec)
                cells += [f"{rate / 1e9:.1f}", f"{100 * rate / fp32:.0f} %", f"{100 * rate / int8:.0f} %"]
        lines.append(f"| `{spec}` | " + " | ".join(cells) + " |")
    loads = []
    for c in configs:
        loads.append("n/a" if results[c][1] is None else f"{results[c][1]:.2f}")
        loads += [""] * (3 if with_peaks[c] else 0)
    lines.append("| other load (cores) | " + " | ".join(loads) + " |")
    return "\n".join(lines)


def peak_rates(result: tuple[dict[str, Timing], float | None, dict], spec: str) -> tuple[float, float, float]:
    """(achieved operations per second of ``spec``, fp32 peak, int8 peak), from median samples."""
    timings, _, profiles = result
    ops, fp32_ops, int8_ops = profiles["ops"]
    return (ops / timings[spec].median, fp32_ops / timings[PEAK_FP32].median,
            int8_ops / timings[PEAK_INT8].median)


def peak_table(results: dict) -> str:
    """The peak micro-benchmark's rates per (seq, threads) configuration."""
    lines = ["| configuration | fp32 GEMM GFLOP/s | int8 GEMM GOP/s | int8 / fp32 | other load (cores) |",
             "|---|---:|---:|---:|---:|"]
    for (s, t), result in sorted(results.items()):
        if "ops" not in result[2]:
            continue
        _, fp32, int8 = peak_rates(result, REFERENCE)
        load = "n/a" if result[1] is None else f"{result[1]:.2f}"
        lines.append(f"| seq {s}, {t}t | {fp32 / 1e9:.1f} | {int8 / 1e9:.1f} | {int8 / fp32:.2f} | {load} |")
    return "\n".join(lines)


def breakdown_table(results: dict, pv: str, phases: tuple[str, ...] = ck.ATTENTION_PHASES) -> str:
    configs = sorted(results)
    lines = ["| phase | " + " | ".join(f"seq {s}, {t}t" for s, t in configs) + " |", "|---|" + "---:|" * len(configs)]
    totals = {c: results[c][2][pv].sum() for c in configs}
    for i, phase in enumerate(phases):
        if all(results[c][2][pv][i] == 0 for c in configs):
            continue
        cells = [f"{results[c][2][pv][i] * 1e3:.2f} ms ({100 * results[c][2][pv][i] / totals[c]:.0f} %)" for c in configs]
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    lines.append("| total (thread-seconds) | " + " | ".join(f"{totals[c] * 1e3:.2f} ms" for c in configs) + " |")
    return "\n".join(lines)


def gemm_table(rows: list[dict]) -> str:
    lines = ["| batch×heads | M=N | K | threads | int8 GOP/s | fp32 GOP/s | int8/fp32 | other load |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        load = "n/a" if r["foreign_load"] is None else f"{r['foreign_load']:.2f}"
        lines.append(f"| {r['batch_heads']} | {r['m']} | {r['k']} | {r['threads']} | {r['int8_gops']:.1f} | "
                     f"{r['fp32_gops']:.1f} | {r['ratio']:.2f} | {load} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("-b", "--backend", action="append", help=f"backend specs (default: {', '.join(BACKENDS)})")
    parser.add_argument("--head-dim", type=int, default=None, help="head dim of the random q/k/v (default: the model's)")
    parser.add_argument("--topk-profile", type=topk_profile_arg, nargs="*", default=["16"],
                        help="K or KxF (k, k_factor) of the fused top-k kernel's phase profiles (granularity=head)")
    parser.add_argument("--no-int8-profile", action="store_true", help="skip fbgemm-int8's phase tables")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall seconds (default) or process CPU seconds per call")
    parser.add_argument("--forward", action="store_true", help="time the whole model forward, not the core")
    parser.add_argument("--no-gemm", action="store_true", help="skip the GEMM GOP/s table")
    parser.add_argument("--no-peak", action="store_true",
                        help="skip the peak micro-benchmark (GFLOP/s and peak-share columns)")
    parser.add_argument("--peak-size", type=int, default=PEAK_SIZE, help="M = N = K of the peak GEMMs")
    parser.add_argument("--isa", choices=sorted(ISA_ENV),
                        help="cap torch, MKL, oneDNN and FBGEMM at this instruction set (an AVX2-only machine)")
    args = parser.parse_args(argv)
    if args.peak_size < 16:
        parser.error(f"--peak-size must be >= 16, got {args.peak_size}")
    if args.isa and any(os.environ.get(k) != v for k, v in ISA_ENV[args.isa].items()):
        parser.error(f"--isa {args.isa}: run the tool as a script (its variables must be set before torch loads)")
    if not ck.AVAILABLE:
        sys.exit(f"cython_kernels unavailable: {ck.UNAVAILABLE_REASON}")
    specs = args.backend or list(BACKENDS)
    if REFERENCE not in specs:
        specs.insert(0, REFERENCE)
    features = ck.cpu_features()
    print(f"FBGEMM ISA {features['isa']}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"own packing {ck.own_packing()}, torch {torch.__version__}, "
          f"batch {args.batch}, {args.repeats} interleaved samples per backend\n")
    clock = CLOCKS[args.clock]
    results = {}
    for seq in args.seq:
        for threads in args.threads:
            if args.forward:
                results[seq, threads] = time_forwards(specs, seq, args.batch, threads, args.repeats, args.warmup,
                                                      clock)
            else:
                results[seq, threads] = time_cores(specs, seq, args.batch, threads, args.repeats, args.warmup,
                                                   args.head_dim, tuple(args.topk_profile), clock,
                                                   not (args.no_int8_profile or args.head_dim), not args.no_peak,
                                                   args.peak_size)
    what = "Whole forward" if args.forward else "Attention core"
    print(f"### {what} latency ({args.clock} clock; median ± IQR, speed-up over dense SDPA)\n")
    print(latency_table(results, specs))
    if args.forward:
        return
    if not args.no_peak:
        print(f"\n### Peak micro-benchmark (median of the same interleaved rounds, {args.clock} clock)\n")
        print(peak_table(results))
    for pv in () if args.no_int8_profile or args.head_dim else ("int8", "float"):
        print(f"\n### Where `fbgemm-int8:pv={pv}` spends its time (CPU time per call, summed over threads)\n")
        print(breakdown_table(results, pv))
    for label in args.topk_profile if ck.TOPK_AVAILABLE else ():
        topk, k_factor = topk_profile_values(label)
        spec = f"topk:k={topk},scorer=fbgemm" + (f",k_factor={k_factor}" if k_factor > 1 else "")
        print(f"\n### Where the fused top-k kernel (`{spec}`) spends its time (per call, summed over threads)\n")
        print(breakdown_table(results, f"topk{label}", ck.TOPK_PHASES))
    if not args.no_gemm:
        print("\n### Raw GEMM: int8 FBGEMM (packing included) vs fp32 torch.matmul, Q·Kᵀ shapes\n")
        print(gemm_table(bench.gemm_gops()))
    medians = {c: {s: results[c][0][s].median for s in specs} for c in results}
    int8 = [s for s in specs if s.startswith("fbgemm-int8")]
    if int8:
        best = {c: max(medians[c][REFERENCE] / medians[c][s] for s in int8) for c in medians}
        print("\nbest fbgemm-int8 speed-up over dense SDPA: "
              + ", ".join(f"seq {s} × {t}t {best[s, t]:.2f}×" for s, t in sorted(best)))
        print(f"(median of per-config medians: {statistics.median(best.values()):.2f}×)")


if __name__ == "__main__":
    main()
