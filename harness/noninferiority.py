"""Non-inferiority of a backend's task metric against the reference, on the same examples.

The paired change Δ = metric(backend) − metric(reference) of a task's primary metric is tested for
non-inferiority with margin ``m`` (default one point of the metric, 0.01): **not worse** when the lower bound of
Δ's one-sided 95 % interval lies above −m; **worse** when its upper bound lies below −m; **inconclusive**
otherwise, with the *minimum detectable change* (MDC) at 80 % power and the number of examples at which the MDC
equals the margin.

For accuracy, Δ's interval is the Wald interval for matched proportions after adding 1/2 to each cell of the
2 × 2 table of (reference right, backend right) (Agresti & Min 2005, *Stat. Med.* 24:729); for any other metric
(F1, MCC, Pearson) the 5th/95th percentile of the paired bootstrap of Δ. Eval cells compute it when they store
a paired row; :mod:`harness.analysis.verdicts` reads the stored verdicts and adds speed and presentation.
"""


from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy import special
from scipy import stats as sps

from . import stats

NOT_WORSE, WORSE, INCONCLUSIVE = "not worse", "worse", "inconclusive"
#: one-sided level of the non-inferiority interval, and the power the minimum detectable change is stated at
CONFIDENCE = 0.95
POWER = 0.80
Z_ONE_SIDED = float(sps.norm.ppf(CONFIDENCE))
Z_POWER = float(sps.norm.ppf(POWER))
#: one point of a metric on the 0–1 scale (accuracy 0.01)
DEFAULT_MARGIN = 0.01


@dataclass(frozen=True)
class NonInferiority:
    """The non-inferiority test of one paired change (all values on the metric's scale, e.g. accuracy 0–1).

    ``delta``: Δ = backend − reference; ``low``/``high``: one-sided 95 % bounds of Δ; ``se``: its standard
    error; ``mdc``: minimum detectable change at 80 % power; ``n_to_resolve``: examples at which the MDC equals
    the margin; ``changed``: share of examples whose prediction changed (accuracy; NaN otherwise)."""

    delta: float
    low: float
    high: float
    se: float
    margin: float
    mdc: float
    n: int
    n_to_resolve: int
    verdict: str
    changed: float = float("nan")

    def facts(self) -> dict[str, Any]:
        """What a paired row keeps in its ``extra`` JSON under ``noninferiority``."""
        return {"low": self.low, "high": self.high, "se": self.se, "n_to_resolve": self.n_to_resolve,
                "changed": None if not np.isfinite(self.changed) else self.changed}


def check_margin(margin: float) -> float:
    """``margin`` if it is a usable non-inferiority margin (0 < margin < 1), else a :class:`UserError`."""
    from .errors import UserError

    if not np.isfinite(margin) or not 0 < margin < 1:
        raise UserError(f"--margin must be above 0 and below 1 (on the metric's 0-1 scale: 0.01 is one point of "
                        f"accuracy), not {margin}")
    return float(margin)


def classify(low: Any, high: Any, margin: float) -> np.ndarray:
    """Verdict words for one-sided bounds (arrays of any shape): not worse / worse / inconclusive."""
    low, high = np.asarray(low, float), np.asarray(high, float)
    return np.where(low > -margin, NOT_WORSE, np.where(high < -margin, WORSE, INCONCLUSIVE))


def detectable_change(se: Any) -> np.ndarray:
    """Minimum detectable change at 80 % power of a one-sided 5 % test with standard error ``se``."""
    return (Z_ONE_SIDED + Z_POWER) * np.asarray(se, float)


def examples_to_resolve(mdc: Any, n: Any, margin: float) -> np.ndarray:
    """Examples at which the minimum detectable change equals ``margin`` (SE shrinks as 1/√n)."""
    mdc = np.asarray(mdc, float)
    return np.ceil(np.asarray(n, float) * (mdc / margin) ** 2).astype(np.int64)


def accuracy_counts(b: Any, c: Any, n: int, margin: float = DEFAULT_MARGIN) -> dict[str, np.ndarray]:
    """Non-inferiority of a change of accuracy from the discordant counts, vectorised over ``b`` and ``c``.

    ``b``: examples the reference got right and the backend wrong; ``c``: the reverse; ``n``: examples. Returns
    arrays ``delta`` (c − b)/n, ``low``/``high`` (one-sided 95 % bounds, Agresti–Min), ``se``, ``changed``
    ((b + c)/n) and ``verdict``."""
    b, c = np.asarray(b, float), np.asarray(c, float)
    smoothed = (c - b) / (n + 2)
    se = np.sqrt(np.maximum((b + c + 1) / (n + 2) - smoothed ** 2, 0) / (n + 2))
    low, high = smoothed - Z_ONE_SIDED * se, smoothed + Z_ONE_SIDED * se
    return {"delta": (c - b) / n, "low": low, "high": high, "se": se, "changed": (b + c) / n,
            "verdict": classify(low, high, margin)}


def accuracy_power(n: int, changed: float, drop: float) -> float:
    """Exact probability that the one-sided test of :func:`accuracy_counts` finds a drop (upper bound below 0)
    when accuracy truly drops by ``drop`` and a share ``changed`` of the n predictions changes (at least
    ``drop``): the sum over the multinomial distribution of the discordant counts (b, c)."""
    rate = max(changed, drop)
    lose, gain = (rate + drop) / 2, (rate - drop) / 2
    top = lambda p: int(min(n, np.ceil(n * p + 10 * np.sqrt(n * p) + 10)))  # noqa: E731 (counts beyond: < 1e-20)
    b = np.arange(top(lose) + 1)[:, None]
    c = np.arange(top(gain) + 1)[None, :]
    valid = b + c <= n
    rest = np.where(valid, n - b - c, 0)
    log_p = (special.gammaln(n + 1) - special.gammaln(b + 1) - special.gammaln(c + 1) - special.gammaln(rest + 1)
             + special.xlogy(b, lose) + special.xlogy(c, gain) + special.xlog1py(rest, -rate))
    found = accuracy_counts(b, c, n)["high"] < 0
    return float(np.exp(log_p)[valid & found].sum())


def accuracy_mdc(n: int, changed: float, power: float = POWER) -> float:
    """Minimum detectable change of accuracy: the smallest true drop that the one-sided 5 % test of
    :func:`accuracy_counts` finds with probability ``power`` at ``n`` examples, when a share ``changed`` of the
    predictions changes (the observed rate; a larger drop changes at least that many). Exact power
    (:func:`accuracy_power`), found by bisection to 1e-5; about ``(z0.95 + z0.80) · sqrt(changed / n)``."""
    low, high = 0.0, 1.0
    while high - low > 1e-5:
        middle = (low + high) / 2
        low, high = (low, middle) if accuracy_power(n, changed, middle) >= power else (middle, high)
    return high


def paired_accuracy(reference_correct: np.ndarray, backend_correct: np.ndarray,
                    margin: float = DEFAULT_MARGIN) -> dict[str, np.ndarray]:
    """:func:`accuracy_counts` of boolean arrays ``(..., n)``: whether the reference and the backend got each
    example right (the last axis is the examples; leading axes are independent draws)."""
    reference_correct, backend_correct = np.asarray(reference_correct, bool), np.asarray(backend_correct, bool)
    b = (reference_correct & ~backend_correct).sum(axis=-1)
    c = (~reference_correct & backend_correct).sum(axis=-1)
    return accuracy_counts(b, c, reference_correct.shape[-1], margin)


def noninferiority(fn: Callable, labels: np.ndarray, reference: np.ndarray, backend: np.ndarray, *,
                   margin: float = DEFAULT_MARGIN, direction: str = "higher", seed: int = stats.SEED,
                   resamples: int = stats.RESAMPLES) -> NonInferiority:
    """The non-inferiority test of ``fn(labels, backend) − fn(labels, reference)`` on the same examples.

    ``labels``, ``reference``, ``backend``: 1-D arrays of equal length n (class ids, or scores for a
    regression). Accuracy uses the closed form of :func:`accuracy_counts`; any other metric the paired
    bootstrap (same resamples as :func:`harness.stats.paired_test`)."""
    labels, reference, backend = np.asarray(labels), np.asarray(reference), np.asarray(backend)
    n = len(labels)
    sign = -1.0 if direction == "lower" else 1.0
    if stats.is_accuracy(fn):
        out = paired_accuracy(labels == reference, labels == backend, margin)
        changed = float(out["changed"])
        mdc = accuracy_mdc(n, (changed * n + 1) / (n + 2))  # smoothed as the interval is: never 0
        return NonInferiority(float(out["delta"]), float(out["low"]), float(out["high"]), float(out["se"]),
                              margin, mdc, n, int(examples_to_resolve(mdc, n, margin)), str(out["verdict"]), changed)
    batch = stats.vectorised(fn)
    delta = sign * float(fn(labels, backend) - fn(labels, reference))
    unchanged = np.array_equal(reference, backend)
    if unchanged and n:
        # no prediction changed: as Agresti–Min's pseudo-counts do for accuracy, bootstrap with one example
        # changed, so that the standard error (and the MDC) stays above 0 for a finite n
        backend = backend.copy()
        if np.issubdtype(backend.dtype, np.integer):  # another class
            backend[0] = backend[0] + 1 if backend[0] == 0 else backend[0] - 1
        else:                                         # a score one standard deviation away
            backend[0] = backend[0] + (np.std(backend) or 1.0)
    deltas = np.concatenate([batch(labels[i], backend[i]) - batch(labels[i], reference[i])
                             for i in stats._indices(n, resamples, seed)])
    deltas = sign * deltas[np.isfinite(deltas)]
    if len(deltas) == 0 or not np.isfinite(delta):
        return NonInferiority(delta, np.nan, np.nan, np.nan, margin, np.nan, n, 0, INCONCLUSIVE)
    se = float(deltas.std(ddof=1)) if len(deltas) > 1 else 0.0
    if unchanged:
        low, high = delta - Z_ONE_SIDED * se, delta + Z_ONE_SIDED * se
    else:
        low, high = np.percentile(deltas, [100 * (1 - CONFIDENCE), 100 * CONFIDENCE])
    mdc = float(detectable_change(se))
    return NonInferiority(delta, float(low), float(high), se, margin, mdc, n,
                          int(examples_to_resolve(mdc, n, margin)), str(classify(low, high, margin)))


# -- speed ---------------------------------------------------------------------------------------------------
