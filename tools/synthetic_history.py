"""How well does ``attnbench regressions`` find a 5 % slowdown in a 20-commit history, at this machine's noise?

Each trial writes a synthetic history through the real store (20 commits, one run per commit, ``--samples``
timing samples per run) in which ``topk:k=16`` becomes ``--step`` slower from a random commit on while
``dense`` does not change, reads it back with ``read_results`` and runs the change-point search. The noise
model has three parts, all measured from a store of repeated real runs of one commit (``--from-store``):

* *common*: run-to-run drift shared by every backend of a run (the CV of dense's run medians);
* *own*: run-to-run drift of one backend relative to dense in the same run (CV of the per-run ratio);
* *within*: spread of the samples inside a run (median CV of the backend's samples).

``--backend`` picks whose own and within noise the slowed synthetic backend gets.

The sweep multiplies the measured noise to show where detection breaks, for the absolute series and for
the series divided by dense of the same run (the default search does both). Usage::

    for i in 1 2 3 4 5 6 7 8; do attnbench run -b dense -b topk:k=16 -b fbgemm-int8 --tasks sst2 --limit 8 \\
        --fidelity-examples 0 --store results/noise; done
    python tools/synthetic_history.py --from-store results/noise
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from harness import read_results, write_rows
from harness.analysis.regressions import find_regressions

COMMITS = 20
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def measured_noise(store: Path | str, backend: str, metric: str = "latency_forward",
                   reference: str = "dense") -> dict[str, float]:
    """Within-run, common and own noise (CVs) of ``backend``'s ``metric`` in a store of repeated runs."""
    rows = read_results(store)
    rows = rows[(rows["metric"] == metric) & (rows["source"] == "harness") & rows["samples"].notna()]
    per_run = rows.pivot_table(index="run_id", columns="backend", values="value", aggfunc="first")
    if len(per_run) < 3 or reference not in per_run or backend not in per_run:
        raise SystemExit(f"{store}: need at least three runs with {reference} and {backend}")
    mine = rows[rows["backend"] == backend]["samples"]
    within = float(np.median([np.std(s, ddof=1) / np.mean(s) for s in mine if len(s) > 2]))
    common = float(per_run[reference].std() / per_run[reference].mean())
    ratio = per_run[backend] / per_run[reference]
    return {"within": within, "common": common, "own": float(ratio.std() / ratio.mean())}


def write_history(store: str | Path, rng: np.random.Generator, noise: dict[str, float], step: float,
                  samples: int, runs: int) -> int:
    """Write a synthetic 20-commit history to ``store``; return the commit index where the step starts."""
    change = int(rng.integers(5, COMMITS - 4))
    for i in range(COMMITS):
        for r in range(runs):
            common = 1 + rng.normal(0, noise["common"])
            rows = []
            for backend, base in (("dense", 0.14), ("topk:k=16", 0.3)):
                factor = 1 + step if backend == "topk:k=16" and i >= change else 1.0
                own = 1 + rng.normal(0, noise["own"]) if backend != "dense" else 1.0
                values = base * factor * common * own * (1 + rng.normal(0, noise["within"], samples))
                rows.append({"run_id": f"r{i}-{r}", "timestamp": T0 + timedelta(hours=i, minutes=r),
                             "source": "harness", "commit": commit_id(i), "machine": "synthetic",
                             "backend": backend, "model": "m", "metric": "latency_forward", "category": "speed",
                             "unit": "s", "direction": "lower", "threads": 2, "seq_len": 128, "batch_size": 8,
                             "value": float(np.median(values)), "samples": values.tolist()})
            write_rows(store, rows, {"run_id": f"r{i}-{r}"})
    return change


def commit_id(i: int) -> str:
    """The synthetic commit hash of history position ``i`` (its index, zero-padded)."""
    return f"{i:03d}" + "0" * 37


def trial(rng: np.random.Generator, noise: dict[str, float], step: float, samples: int,
          runs: int) -> dict[str, tuple[bool, int]]:
    """One synthetic history (``runs`` runs per commit); per series kind, (found at the injected commit,
    number of false flags)."""
    with tempfile.TemporaryDirectory() as tmp:
        change = write_history(tmp, rng, noise, step, samples, runs)
        points = find_regressions(read_results(tmp))
    result = {}
    for kind, relative in (("absolute", None), ("÷ dense", "dense")):
        mine = [p for p in points if p.relative_to == relative]
        hits = [p for p in mine if p.series[3] == "topk:k=16" and p.commit.startswith(f"{change:03d}") and p.regression]
        result[kind] = (bool(hits), len(mine) - len(hits))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", "--from-store", dest="from_store", default="results/noise", metavar="DIR|URL",
                        help="store of repeated runs (a directory or an fsspec URL)")
    parser.add_argument("--backend", default="fbgemm-int8", help="whose measured noise the slowed backend gets")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--samples", type=int, default=10, help="timing samples per run (the runner's --repeats)")
    parser.add_argument("--step", type=float, default=0.05)
    parser.add_argument("--runs-per-commit", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--example", metavar="STORE",
                        help="write one history at the measured noise to STORE (for `attnbench regressions "
                             "--store STORE`) instead of running the trials")
    args = parser.parse_args()
    noise = measured_noise(args.from_store, args.backend)
    if args.example:
        change = write_history(args.example, np.random.default_rng(args.seed), noise, args.step, args.samples,
                               args.runs_per_commit)
        print(f"wrote a 20-commit history to {args.example}: topk:k=16 is {args.step:.0%} slower from commit "
              f"{commit_id(change)[:8]} (position {change}) on; noise {noise}")
        return
    print(f"measured on {args.from_store} for {args.backend}: common (run-to-run) CV {noise['common']:.2%}, own (÷ dense) CV "
          f"{noise['own']:.2%}, within-run CV {noise['within']:.2%}; {args.trials} histories of {COMMITS} commits, "
          f"a {args.step:.0%} step of one backend at a random commit, {args.runs_per_commit} run(s) per commit")
    print("| noise × measured | absolute series: found / false flags | ÷ dense series: found / false flags |")
    print("|---:|---:|---:|")
    rng = np.random.default_rng(args.seed)
    for scale in (0.25, 0.5, 1, 1.5, 2):
        scaled = {k: v * scale for k, v in noise.items()}
        results = [trial(rng, scaled, args.step, args.samples, args.runs_per_commit) for _ in range(args.trials)]
        cells = []
        for kind in ("absolute", "÷ dense"):
            found = sum(r[kind][0] for r in results)
            false = sum(r[kind][1] for r in results)
            cells.append(f"{found}/{args.trials} / {false}")
        print(f"| {scale:g} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
