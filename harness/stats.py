"""Uncertainty of task metrics and paired tests of a backend against the reference, on the same examples.

Everything here works on per-example arrays (gold labels, predictions: class ids or scores) and is
deterministic for a given ``seed``:

* :func:`metric_interval` — a 95 % interval for one task metric: Wilson's score interval for accuracy
  (exact method for a proportion; Wilson 1927), a percentile bootstrap over examples otherwise (F1, MCC,
  Pearson, Spearman and any plugin metric; as lm-evaluation-harness does for its stderr);
* :func:`paired_test` — the change backend − reference of one metric on the same examples, with a paired
  bootstrap interval (the same resampled examples for both sides) and a two-sided p-value: the exact McNemar
  test for accuracy (``scipy.stats.binomtest`` on the discordant pairs), a paired permutation test (swapping
  the two predictions of an example at random) otherwise. A backend that changes no prediction gets
  Δ = 0, the interval [0, 0] and p = 1;
* :func:`holm` — Holm's step-down adjustment (Holm 1979) of the p-values of one family: the backends
  compared with the reference on one task metric of one run.

The built-in GLUE metrics are computed vectorised over all resamples at once; any other metric function is
called once per resample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats

from .tasks import metrics as glue

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0
_CHUNK = 250  # resamples per vectorised block (memory: _CHUNK × n indices)


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    method: str           # "wilson" | "bootstrap"


@dataclass(frozen=True)
class PairedResult:
    delta: float          # metric(backend) − metric(reference)
    low: float
    high: float
    p_value: float
    test: str             # "mcnemar-exact" | "permutation"
    discordant: tuple[int, int] | None = None  # accuracy: (reference right & backend wrong, the reverse)


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's score interval of a proportion (``binomtest(...).proportion_ci(method="wilson")``)."""
    if n == 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


# -- vectorised metrics over resamples: rows of ``y``/``p`` are resamples ------------------------------------
def _accuracy(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return (y == p).mean(axis=1)


def _f1(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    tp = ((p == 1) & (y == 1)).sum(axis=1)
    fp = ((p == 1) & (y != 1)).sum(axis=1)
    fn = ((p != 1) & (y == 1)).sum(axis=1)
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def _matthews(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Multi-class MCC as scikit-learn computes it (0 where undefined)."""
    classes = np.unique(np.concatenate([np.unique(y), np.unique(p)]))
    s = float(y.shape[1])
    c = (y == p).sum(axis=1).astype(float)
    t = np.stack([(y == k).sum(axis=1) for k in classes], axis=1).astype(float)
    q = np.stack([(p == k).sum(axis=1) for k in classes], axis=1).astype(float)
    cov_yp = c * s - (t * q).sum(axis=1)
    cov_pp = s * s - (q * q).sum(axis=1)
    cov_yy = s * s - (t * t).sum(axis=1)
    denominator = np.sqrt(cov_yy * cov_pp)
    return np.where(denominator > 0, cov_yp / np.where(denominator > 0, denominator, 1.0), 0.0)


def _pearson(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    y = y - y.mean(axis=1, keepdims=True)
    p = p - p.mean(axis=1, keepdims=True)
    denominator = np.sqrt((y * y).sum(axis=1) * (p * p).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (y * p).sum(axis=1) / denominator, np.nan)


def _spearman(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return _pearson(stats.rankdata(y, axis=1), stats.rankdata(p, axis=1))


_VECTORISED: dict[Callable, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    glue.accuracy: _accuracy, glue.f1: _f1, glue.matthews: _matthews, glue.pearson: _pearson,
    glue.spearman: _spearman}


def vectorised(fn: Callable[[np.ndarray, np.ndarray], float]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``fn`` applied to every row of 2-D label and prediction arrays: the built-in metrics vectorised, any
    other function row by row."""
    fast = _VECTORISED.get(fn)
    if fast is not None:
        return fast
    return lambda y, p: np.array([fn(a, b) for a, b in zip(y, p)], dtype=float)


def _indices(n: int, resamples: int, seed: int) -> list[np.ndarray]:
    """Bootstrap resamples of ``range(n)`` in blocks (the same for a given seed, whatever the metric)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, size=(min(_CHUNK, resamples - start), n)) for start in range(0, resamples, _CHUNK)]


def _percentile(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_interval(fn: Callable, labels: np.ndarray, predictions: np.ndarray, *, seed: int = SEED,
                       resamples: int = RESAMPLES, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of ``fn(labels, predictions)``, resampling examples with replacement."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    batch = vectorised(fn)
    values = np.concatenate([batch(labels[i], predictions[i]) for i in _indices(len(labels), resamples, seed)])
    return _percentile(values, confidence)


def is_accuracy(fn: Callable) -> bool:
    return fn is glue.accuracy


def metric_interval(fn: Callable, labels: np.ndarray, predictions: np.ndarray, *, seed: int = SEED,
                    resamples: int = RESAMPLES, confidence: float = CONFIDENCE) -> Interval:
    """95 % interval of one task metric: Wilson for accuracy, a seeded percentile bootstrap otherwise."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if is_accuracy(fn):
        return Interval(*wilson(int((labels == predictions).sum()), len(labels), confidence), "wilson")
    return Interval(*bootstrap_interval(fn, labels, predictions, seed=seed, resamples=resamples,
                                        confidence=confidence), "bootstrap")


def mcnemar_exact(reference_correct: np.ndarray, backend_correct: np.ndarray) -> tuple[float, int, int]:
    """Exact (binomial) McNemar test: ``(p, b, c)`` with b = reference right and backend wrong, c = the
    reverse; p = ``binomtest(c, b + c, 0.5)``'s two-sided p-value, 1 without discordant pairs."""
    reference_correct, backend_correct = np.asarray(reference_correct, bool), np.asarray(backend_correct, bool)
    b = int((reference_correct & ~backend_correct).sum())
    c = int((~reference_correct & backend_correct).sum())
    p = 1.0 if b + c == 0 else float(stats.binomtest(c, b + c, 0.5).pvalue)
    return p, b, c


def paired_test(fn: Callable, labels: np.ndarray, reference: np.ndarray, backend: np.ndarray, *,
                seed: int = SEED, resamples: int = RESAMPLES, confidence: float = CONFIDENCE) -> PairedResult:
    """Δ = fn(labels, backend) − fn(labels, reference) on the same examples, its paired bootstrap interval and
    a two-sided p-value (exact McNemar for accuracy, paired permutation test otherwise)."""
    labels, reference, backend = np.asarray(labels), np.asarray(reference), np.asarray(backend)
    batch = vectorised(fn)
    delta = float(fn(labels, backend) - fn(labels, reference))
    blocks = _indices(len(labels), resamples, seed)
    deltas = np.concatenate([batch(labels[i], backend[i]) - batch(labels[i], reference[i]) for i in blocks])
    low, high = _percentile(deltas, confidence)
    if is_accuracy(fn):
        p, b, c = mcnemar_exact(labels == reference, labels == backend)
        return PairedResult(delta, low, high, p, "mcnemar-exact", (b, c))
    return PairedResult(delta, low, high, permutation_p(fn, labels, reference, backend, delta, seed=seed,
                                                       resamples=resamples), "permutation")


def permutation_p(fn: Callable, labels: np.ndarray, reference: np.ndarray, backend: np.ndarray, delta: float, *,
                  seed: int = SEED, resamples: int = RESAMPLES) -> float:
    """Two-sided paired permutation p-value of ``delta``: each example's two predictions are swapped with
    probability 1/2; p = (1 + #|Δ*| ≥ |Δ|) / (1 + resamples). NaN when Δ is undefined."""
    if not np.isfinite(delta):
        return float("nan")
    if np.array_equal(reference, backend):
        return 1.0
    rng = np.random.default_rng(seed + 1)
    batch, n, extreme, done = vectorised(fn), len(labels), 0, 0
    y = np.broadcast_to(labels, (min(_CHUNK, resamples), n))
    while done < resamples:
        size = min(_CHUNK, resamples - done)
        swap = rng.random((size, n)) < 0.5
        a, b = np.where(swap, backend, reference), np.where(swap, reference, backend)
        d = batch(y[:size], b) - batch(y[:size], a)
        extreme += int((np.abs(d) >= abs(delta) - 1e-12).sum())
        done += size
    return (1 + extreme) / (1 + resamples)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaNs stay NaN and do not count towards the family)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m, running = len(order), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return out


def majority_baseline(labels: np.ndarray) -> tuple[int, float]:
    """``(class, share)`` of the most frequent label among ``labels`` (the lowest class on ties)."""
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    best = int(np.argmax(counts))
    return int(values[best]), float(counts[best] / counts.sum())


def ratio_interval(reference: np.ndarray, candidate: np.ndarray, *, seed: int = SEED, resamples: int = RESAMPLES,
                   confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Speed-up median(reference) / median(candidate) of two sets of timing samples and its percentile
    bootstrap interval (each side resampled on its own: interleaved samples are not paired)."""
    reference, candidate = np.asarray(reference, float), np.asarray(candidate, float)
    ratio = float(np.median(reference) / np.median(candidate))
    if len(reference) < 3 or len(candidate) < 3:
        return ratio, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    r = np.median(reference[rng.integers(0, len(reference), (resamples, len(reference)))], axis=1)
    c = np.median(candidate[rng.integers(0, len(candidate), (resamples, len(candidate)))], axis=1)
    return (ratio, *_percentile(r / c, confidence))
