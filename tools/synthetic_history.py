"""How well does ``attnbench regressions`` find a 5 % slowdown in a 20-commit history, at this machine's noise?

Each trial writes a synthetic history through the real store (20 commits, one run each, ``--samples`` timing
samples per run) in which one backend becomes ``--step`` slower from a random commit on, reads it back with
``read_results`` and runs the change-point search. Noise has two parts, both measured from a store of real
runs (``--from-store``, default ``results/store``): the spread of samples within a run (CV of the samples)
and the drift of run medians between runs of the same code (CV of the medians). The sweep multiplies the
measured noise to show where detection breaks. Usage::

    python tools/synthetic_history.py [--from-store results/store] [--trials 20]
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from harness import read_results, write_rows
from harness.regressions import find_regressions

COMMITS = 20
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def measured_noise(store: Path, metric: str = "latency_forward") -> tuple[float, float]:
    """(within-run CV, between-run CV) of ``metric`` over the store's harness runs, per (commit, backend)."""
    rows = read_results(store)
    rows = rows[(rows["metric"] == metric) & (rows["source"] == "harness") & rows["samples"].notna()]
    within = [np.std(s, ddof=1) / np.mean(s) for s in rows["samples"] if len(s) > 2]
    between = []
    for _, group in rows.groupby(["commit", "backend", "threads", "seq_len", "machine"]):
        medians = [np.median(s) for s in group["samples"]]
        if len(medians) >= 2:
            between.append(np.std(medians, ddof=1) / np.mean(medians))
    if not within or not between:
        raise SystemExit(f"{store}: need at least two harness runs of the same commit with {metric} samples")
    return float(np.median(within)), float(np.median(between))


def trial(rng: np.random.Generator, within: float, between: float, step: float, samples: int) -> tuple[bool, int]:
    """One synthetic history; returns (found at the injected commit, number of false flags)."""
    change = int(rng.integers(5, COMMITS - 4))
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(COMMITS):
            rows = []
            for backend, base in (("dense", 0.14), ("topk:k=16", 0.3)):
                factor = 1 + step if backend == "topk:k=16" and i >= change else 1.0
                drift = 1 + rng.normal(0, between)
                values = base * factor * drift * (1 + rng.normal(0, within, samples))
                rows.append({"run_id": f"r{i}", "timestamp": T0 + timedelta(hours=i), "source": "harness",
                             "commit": f"{i:03d}" + "0" * 37, "machine": "synthetic", "backend": backend,
                             "metric": "latency_forward", "category": "speed", "unit": "s", "direction": "lower",
                             "threads": 2, "seq_len": 128, "batch_size": 8, "value": float(np.median(values)),
                             "samples": values.tolist()})
            write_rows(tmp, rows, {"run_id": f"r{i}"})
        points = find_regressions(read_results(tmp))
    hits = [p for p in points if p.series[3] == "topk:k=16" and p.commit.startswith(f"{change:03d}") and p.regression]
    return bool(hits), len(points) - len(hits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-store", type=Path, default=Path("results/store"))
    parser.add_argument("--within", type=float, help="override the measured within-run CV")
    parser.add_argument("--between", type=float, help="override the measured between-run CV")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--samples", type=int, default=10, help="timing samples per run (the runner's --repeats)")
    parser.add_argument("--step", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    within, between = (args.within, args.between) if args.within is not None and args.between is not None \
        else measured_noise(args.from_store)
    print(f"measured noise: within-run CV {within:.2%}, between-run CV {between:.2%}; "
          f"{args.trials} histories of {COMMITS} commits, a {args.step:.0%} step at a random commit")
    print("| noise × measured | within CV | between CV | step found at the right commit | false flags |")
    print("|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(args.seed)
    for scale in (0.5, 1, 1.5, 2, 3, 4):
        results = [trial(rng, within * scale, between * scale, args.step, args.samples) for _ in range(args.trials)]
        found = sum(hit for hit, _ in results)
        false = sum(n for _, n in results)
        print(f"| {scale:g} | {within * scale:.2%} | {between * scale:.2%} | {found}/{args.trials} | {false} |")


if __name__ == "__main__":
    main()
