"""E-divisive change-point detection (Matteson & James, 2014) with a permutation significance test.

The energy statistic compares the mean distance *between* two segments with the mean distances *within*
them; the split that maximises it is a change point if a permutation test says so (the maximum over all
splits of shuffled data rarely reaches it). Accepted splits are searched again recursively (binary
segmentation). This is the method MongoDB uses for performance CI (its ``signal-processing-algorithms``
package); that package is not used here because its pins (``gevent<25``, ``more-itertools<9``) do not
resolve against this project's constraints and pip falls back to a gevent source build that fails.
"""

from __future__ import annotations

import numpy as np


def _split_statistics(x: np.ndarray, min_segment: int) -> np.ndarray:
    """Energy statistic ``Q(t)`` for every split ``x[:t] | x[t:]`` (``-inf`` where a side is too short)."""
    n = len(x)
    distance = np.abs(x[:, None] - x[None, :])
    prefix = np.zeros((n + 1, n + 1))
    prefix[1:, 1:] = distance.cumsum(0).cumsum(1)

    def block(r0: int, r1: int, c0: int, c1: int) -> float:
        return prefix[r1, c1] - prefix[r0, c1] - prefix[r1, c0] + prefix[r0, c0]

    q = np.full(n + 1, -np.inf)
    for t in range(min_segment, n - min_segment + 1):
        left, right = t, n - t
        between = block(0, t, t, n) / (left * right)
        within_left = block(0, t, 0, t) / (left * (left - 1)) if left > 1 else 0.0
        within_right = block(t, n, t, n) / (right * (right - 1)) if right > 1 else 0.0
        q[t] = left * right / n * (2 * between - within_left - within_right)
    return q


def e_divisive(values: np.ndarray, *, alpha: float = 0.01, permutations: int = 199, min_segment: int = 3,
               seed: int = 0) -> list[tuple[int, float]]:
    """Change points of a series: ``[(index of the first value after the change, p-value), ...]``, sorted.

    :param alpha: significance level of each permutation test.
    :param permutations: shuffles per test; the smallest reachable p-value is ``1 / (permutations + 1)``.
    :param min_segment: no segment shorter than this (a lone outlier is not a change).
    :param seed: the permutations are seeded, so the result is reproducible.
    """
    rng = np.random.default_rng(seed)
    found: list[tuple[int, float]] = []
    pending = [(0, len(values))]
    values = np.asarray(values, dtype=float)
    while pending:
        start, stop = pending.pop()
        segment = values[start:stop]
        if len(segment) < 2 * min_segment:
            continue
        q = _split_statistics(segment, min_segment)
        split = int(np.argmax(q))
        observed = q[split]
        if not np.isfinite(observed) or observed <= 0:
            continue
        exceed = sum(_split_statistics(rng.permutation(segment), min_segment).max() >= observed
                     for _ in range(permutations))
        p = (exceed + 1) / (permutations + 1)
        if p < alpha:
            found.append((start + split, p))
            pending += [(start, start + split), (start + split, stop)]
    return sorted(found)
