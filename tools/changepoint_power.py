"""Which test finds a step in a short commit history: the permutation test on per-commit values, or a
parametric test on the raw samples within each commit?

Synthetic series: ``--commits`` commits, ``--samples`` timing samples per commit, each sample
``1 · (1 + step) · (1 + drift_c) · (1 + within_cs)`` with ``drift_c ~ N(0, --drift)`` shared by a commit's
samples (run-to-run drift) and ``within_cs ~ N(0, --within)``; ``step`` is ``--step`` from commit ``k`` on.
Three searches, each at level ``--alpha``:

* ``permutation``: E-divisive with its permutation test on the per-commit medians
  (:func:`harness.analysis.changepoints.e_divisive`, the search ``attnbench regressions`` uses);
* ``welch-raw``: Welch's t-test of the pooled raw samples before vs after every candidate split
  (``min_segment`` commits or more on each side); the split with the largest ``|t|`` is flagged when its
  p-value, Bonferroni-corrected over the candidates, is at most ``--alpha``;
* ``mwu-raw``: the same with the Mann–Whitney U test (largest ``|z|``);
* ``welch-commits``: Welch's t-test of the per-commit medians, Bonferroni-corrected the same way.

A step counts as found when a change point is reported at exactly ``k``; a flat series (no step) counts
as a false alarm when anything is reported. Usage (the table of docs/lab/2026-11-30-changepoint-power.md)::

    python tools/changepoint_power.py --commits 6 10 20 --drift 0 0.071 --seeds 100
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

from harness.analysis.changepoints import e_divisive


def series(rng: np.random.Generator, commits: int, position: int | None, step: float, drift: float,
           within: float, samples: int, heavy: bool = False) -> np.ndarray:
    """``(commits, samples)`` raw samples with a relative ``step`` from commit ``position`` on; with ``heavy``
    the drift is Student-t with 3 degrees of freedom (same SD), like a VM's occasional slow run."""
    level = np.ones(commits)
    if position is not None:
        level[position:] *= 1 + step
    noise = rng.standard_t(3, commits) / np.sqrt(3) if heavy else rng.normal(0, 1, commits)
    level *= 1 + drift * noise
    return level[:, None] * (1 + rng.normal(0, within, (commits, samples)))


def _best_split(results: list[tuple[float, float]]) -> tuple[int, float]:
    """Index and p-value of the candidate with the largest standardised statistic (|t| or |z|): the split
    with the smallest p-value is often a neighbour of the step, whose side has more degrees of freedom."""
    best = max(range(len(results)), key=lambda i: results[i][1])
    return best, results[best][0]


def raw_sample_test(raw: np.ndarray, alpha: float, min_segment: int, test: str) -> list[int]:
    """Positions flagged by a two-sample test on the raw samples, Bonferroni over candidate splits."""
    candidates = range(min_segment, len(raw) - min_segment + 1)
    results = []
    for t in candidates:
        before, after = raw[:t].ravel(), raw[t:].ravel()
        if test == "welch":
            result = stats.ttest_ind(before, after, equal_var=False)
            results.append((result.pvalue, abs(result.statistic)))
        else:
            result = stats.mannwhitneyu(before, after, alternative="two-sided")
            n1, n2 = len(before), len(after)
            z = (result.statistic - n1 * n2 / 2) / np.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
            results.append((result.pvalue, abs(z)))
    best, p = _best_split(results)
    return [candidates[best]] if p * len(candidates) <= alpha else []


def commit_welch_test(values: np.ndarray, alpha: float, min_segment: int) -> list[int]:
    """Positions flagged by Welch's t-test of the per-commit values, Bonferroni over candidate splits."""
    candidates = range(min_segment, len(values) - min_segment + 1)
    tests = [stats.ttest_ind(values[:t], values[t:], equal_var=False) for t in candidates]
    best, p = _best_split([(r.pvalue, abs(r.statistic)) for r in tests])
    return [candidates[best]] if p * len(candidates) <= alpha else []


def search(method: str, raw: np.ndarray, alpha: float, min_segment: int, seed: int) -> list[int]:
    if method == "welch-commits":
        return commit_welch_test(np.median(raw, axis=1), alpha, min_segment)
    if method == "permutation":
        return [i for i, _ in e_divisive(np.median(raw, axis=1), alpha=alpha, min_segment=min_segment, seed=seed)]
    return raw_sample_test(raw, alpha, min_segment, method.removesuffix("-raw"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, nargs="+", default=[6, 10, 20])
    parser.add_argument("--drift", type=float, nargs="+", default=[0.0, 0.071],
                        help="run-to-run CV per commit (0.071: dense forward on the 2-core VM)")
    parser.add_argument("--within", type=float, default=0.075, help="CV of the samples within a commit")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--step", type=float, default=0.5, help="relative step (default 0.5: a clean step)")
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--min-segment", type=int, default=3)
    parser.add_argument("--heavy", action="store_true", help="Student-t(3) drift instead of normal")
    parser.add_argument("--methods", nargs="+", default=["permutation", "welch-raw", "mwu-raw", "welch-commits"])
    args = parser.parse_args(argv)
    print(f"step {args.step:+.0%}, {'t(3)' if args.heavy else 'normal'} drift, within CV {args.within}, {args.samples} samples/commit, alpha {args.alpha}, "
          f"{args.seeds} seeds; found = flagged at the step's position; false = flat series with any flag")
    print("| commits | drift CV | method | step found at position k (k: found/seeds) | flat: false alarms |")
    print("|---:|---:|---|---|---:|")
    for commits in args.commits:
        positions = list(range(args.min_segment, commits - args.min_segment + 1))
        for drift in args.drift:
            for method in args.methods:
                found = []
                for k in positions:
                    hits = 0
                    for seed in range(args.seeds):
                        rng = np.random.default_rng([commits, k, seed])
                        raw = series(rng, commits, k, args.step, drift, args.within, args.samples, args.heavy)
                        hits += k in search(method, raw, args.alpha, args.min_segment, seed)
                    found.append(f"{k}: {hits}")
                false = 0
                for seed in range(args.seeds):
                    rng = np.random.default_rng([commits, 0, seed, 1])
                    raw = series(rng, commits, None, 0.0, drift, args.within, args.samples, args.heavy)
                    false += bool(search(method, raw, args.alpha, args.min_segment, seed))
                print(f"| {commits} | {drift:g} | {method} | {', '.join(found)} | {false}/{args.seeds} |", flush=True)


if __name__ == "__main__":
    main()
