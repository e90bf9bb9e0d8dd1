"""E-divisive change-point detection (Matteson & James, 2014) with a permutation significance test.

The energy statistic compares the mean distance *between* two segments with the mean distances *within*
them; the split that maximises it is a change point if a permutation test says so (the maximum over all
splits of shuffled data rarely reaches it). Accepted splits are searched again recursively (binary
segmentation). This is the method MongoDB uses for performance CI (its ``signal-processing-algorithms``
package; Daly et al., "The Use of Change Point Detection to Identify Software Performance Regressions in
a Continuous Integration System", ICPE 2020); that package is not used here because its pins
(``gevent<25``, ``more-itertools<9``) do not resolve against this project's constraints and pip falls back
to a gevent source build that fails.

**What a permutation test can find.** A clean step that splits ``n`` values into ``k`` before and
``n - k`` after is reproduced exactly by ``2 / C(n, k)`` of all orderings (the two groups in their places,
or swapped), so that is the smallest exact p-value of the split: 0.1 for 3 + 3 commits, 0.0079 for 5 + 5,
0.0018 for 3 + 17. The Monte-Carlo p-value counts shuffles whose statistic reaches the observed one
(ties included) with the ``(k + 1) / (N + 1)`` convention of Phipson & Smyth (2010), "Permutation P-values
Should Never Be Zero", and a split is accepted when ``p <= alpha`` (that p-value is valid at that level).
999 shuffles, and 9,999 when the estimate lands within a factor of two of ``alpha``, make the decision
depend on the exact p-value rather than on the seed, except within about 10 % of ``alpha``.
"""

from __future__ import annotations

from math import comb

import numpy as np

#: Relative tolerance below which a shuffled statistic counts as reaching the observed one: the exact
#: reproduction of the observed order (or its mirror image) is computed in another summation order and
#: may come out a few ulps smaller, which must not decide the test.
TIE_TOLERANCE = 1e-9
#: Largest ``batch × (n + 1)²`` array of the vectorised statistic (memory stays under ~100 MB).
_CHUNK_ELEMENTS = 4_000_000


def split_statistics(x: np.ndarray, min_segment: int) -> np.ndarray:
    """Energy statistic ``Q(t)`` for every split ``x[..., :t] | x[..., t:]``, ``-inf`` where a side is shorter
    than ``min_segment``. ``x`` is one series ``(n,)`` or a batch ``(b, n)``; the result has ``n + 1``
    entries per series.

    ``Q(t) = t (n - t) / n · (2 E|X - Y| - E|X - X'| - E|Y - Y'|)`` with the sample means over the two
    segments (Matteson & James, 2014, eq. 5 and 6, with α = 1).
    """
    x = np.asarray(x, dtype=float)
    single = x.ndim == 1
    batch = np.atleast_2d(x)
    n = batch.shape[1]
    distance = np.abs(batch[:, :, None] - batch[:, None, :])
    prefix = np.zeros((len(batch), n + 1, n + 1))
    prefix[:, 1:, 1:] = distance.cumsum(1).cumsum(2)
    q = np.full((len(batch), n + 1), -np.inf)
    t = np.arange(max(min_segment, 1), n - max(min_segment, 1) + 1)
    if len(t):
        left, right = t, n - t
        within_left_sum = prefix[:, t, t]
        between = (prefix[:, t, n] - within_left_sum) / (left * right)
        within_right_sum = prefix[:, n, n, None] - prefix[:, t, n] - prefix[:, n, t] + within_left_sum
        with np.errstate(divide="ignore", invalid="ignore"):
            within_left = np.where(left > 1, within_left_sum / (left * (left - 1)), 0.0)
            within_right = np.where(right > 1, within_right_sum / (right * (right - 1)), 0.0)
        q[:, t] = left * right / n * (2 * between - within_left - within_right)
    return q[0] if single else q


def _chunks(n: int, permutations: int) -> list[int]:
    """Batch sizes of at most ``_CHUNK_ELEMENTS`` array elements that add up to ``permutations``."""
    chunk = max(1, _CHUNK_ELEMENTS // ((n + 1) ** 2))
    return [min(chunk, permutations - start) for start in range(0, permutations, chunk)]


def permuted_maxima(segment: np.ndarray, permutations: int, min_segment: int,
                    rng: np.random.Generator) -> np.ndarray:
    """``max_t Q(t)`` of ``permutations`` shuffles of ``segment`` (computed in vectorised chunks)."""
    n = len(segment)
    out = [split_statistics(rng.permuted(np.broadcast_to(segment, (size, n)), axis=1), min_segment).max(axis=1)
           for size in _chunks(n, permutations)]
    return np.concatenate(out) if out else np.empty(0)


def _permutation_p(segment: np.ndarray, observed: float, permutations: int, min_segment: int,
                   rng: np.random.Generator, alpha: float) -> float:
    """``(k + 1) / (permutations + 1)``, ``k`` the shuffles whose largest statistic reaches ``observed``.

    Stops early once ``k + 1 > alpha (permutations + 1)``, i.e. when the test can no longer be significant
    (sequential Monte Carlo, Besag & Clifford 1991); the p-value then returned, ``(k + 1) / (drawn + 1)``,
    is above ``alpha`` too.
    """
    n, exceed, drawn = len(segment), 0, 0
    for size in _chunks(n, permutations):
        shuffled = rng.permuted(np.broadcast_to(segment, (size, n)), axis=1)
        maxima = split_statistics(shuffled, min_segment).max(axis=1)
        exceed += int(np.count_nonzero(maxima >= observed * (1 - TIE_TOLERANCE)))
        drawn += size
        if exceed + 1 > alpha * (permutations + 1) and drawn < permutations:
            return (exceed + 1) / (drawn + 1)
    return (exceed + 1) / (permutations + 1)


def smallest_p_value(n: int, k: int) -> float:
    """Exact permutation p-value of a perfectly clean step after ``k`` of ``n`` values: ``2 / C(n, k)``
    (``1 / C(n, k)`` would need the mirror image not to count; it does, the statistic is symmetric)."""
    return min(1.0, 2 / comb(n, k))


def e_divisive(values: np.ndarray, *, alpha: float = 0.01, permutations: int = 999, min_segment: int = 3,
               seed: int = 0, max_permutations: int = 9999) -> list[tuple[int, float]]:
    """Change points of a series: ``[(index of the first value after the change, p-value), ...]``, sorted.

    :param alpha: significance level of each permutation test (a split is accepted when ``p <= alpha``).
    :param permutations: shuffles per test; the smallest reachable p-value is ``1 / (permutations + 1)``.
        The default 999 keeps the Monte-Carlo error far below ``alpha = 0.01``.
    :param min_segment: no segment shorter than this (a lone outlier is not a change). A step is only
        findable if its exact smallest p-value :func:`smallest_p_value` is below ``alpha``: with
        ``alpha=0.01`` and three commits on one side that needs at least 13 commits in all; a step in the
        middle needs 10.
    :param seed: the permutations are seeded, so the result is reproducible.
    :param max_permutations: when the p-value of the first ``permutations`` shuffles is within a factor of
        two of ``alpha`` (where the Monte-Carlo error could decide), the test is repeated with this many, so
        that whether a split is accepted depends on its exact p-value, not on the seed.
    """
    rng = np.random.default_rng(seed)
    found: list[tuple[int, float]] = []
    values = np.asarray(values, dtype=float)
    pending = [(0, len(values))]
    while pending:
        start, stop = pending.pop()
        segment = values[start:stop]
        if len(segment) < 2 * min_segment:
            continue
        q = split_statistics(segment, min_segment)
        split = int(np.argmax(q))
        observed = q[split]
        if not np.isfinite(observed) or observed <= 0:
            continue
        p = _permutation_p(segment, observed, permutations, min_segment, rng, alpha)
        if alpha / 2 < p <= 2 * alpha and max_permutations > permutations:
            p = _permutation_p(segment, observed, max_permutations, min_segment, rng, alpha)
        if p <= alpha:
            found.append((start + split, p))
            pending += [(start, start + split), (start + split, stop)]
    return sorted(found)
