"""Intervals and paired tests checked against direct computations and SciPy references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from harness import stats
from harness.tasks import metrics as glue


def test_wilson_matches_the_closed_form():
    for k, n in [(0, 10), (3, 10), (301, 408), (408, 408)]:
        z = sps.norm.ppf(0.975)
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        np.testing.assert_allclose(stats.wilson(k, n), (centre - half, centre + half), atol=1e-12)
    interval = stats.metric_interval(glue.accuracy, np.array([1, 0, 1, 1]), np.array([1, 1, 1, 1]))
    assert interval.method == "wilson" and interval.low < 0.75 < interval.high


@pytest.mark.parametrize("fn,kind", [(glue.accuracy, "class"), (glue.f1, "binary"), (glue.matthews, "class"),
                                     (glue.pearson, "score"), (glue.spearman, "score")])
def test_vectorised_metrics_equal_the_metric_functions(fn, kind):
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(5, 40))
        if kind == "score":
            y, p = rng.integers(0, 6, n).astype(float), np.round(rng.normal(2, 1, n), 1)
        else:
            classes = 2 if kind == "binary" else 3
            y, p = rng.integers(0, classes, n), rng.integers(0, classes, n)
        np.testing.assert_allclose(stats.vectorised(fn)(y[None], p[None])[0], fn(y, p), atol=1e-10)


def test_bootstrap_interval_equals_a_direct_loop_and_is_seeded():
    rng = np.random.default_rng(2)
    y, p = rng.integers(0, 2, 60), rng.integers(0, 2, 60)
    low, high = stats.bootstrap_interval(glue.f1, y, p, seed=5, resamples=300)
    # the same resamples, scored one by one with scikit-learn's F1
    index = np.concatenate(stats._indices(60, 300, 5))
    direct = np.percentile([glue.f1(y[i], p[i]) for i in index], [2.5, 97.5])
    np.testing.assert_allclose((low, high), direct, atol=1e-12)
    assert stats.bootstrap_interval(glue.f1, y, p, seed=5, resamples=300) == (low, high)
    assert stats.bootstrap_interval(glue.f1, y, p, seed=6, resamples=300) != (low, high)


def test_mcnemar_is_binomtest_on_the_discordant_pairs():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    reference = np.where(rng.random(200) < 0.8, y, 1 - y)
    backend = np.where(rng.random(200) < 0.1, 1 - reference, reference)
    result = stats.paired_test(glue.accuracy, y, reference, backend)
    b = int(((reference == y) & (backend != y)).sum())
    c = int(((reference != y) & (backend == y)).sum())
    assert result.discordant == (b, c) and result.test == "mcnemar-exact"
    assert result.p_value == pytest.approx(sps.binomtest(c, b + c, 0.5).pvalue)
    assert result.delta == pytest.approx((c - b) / 200)
    assert result.low <= result.delta <= result.high


@pytest.mark.parametrize("fn", [glue.accuracy, glue.f1, glue.matthews, glue.pearson, glue.spearman])
def test_unchanged_predictions_give_zero_change_and_p_one(fn):
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3 if fn is glue.matthews else 2, 50).astype(float)
    p = y.copy() if fn in (glue.pearson, glue.spearman) else rng.integers(0, 2, 50).astype(float)
    if fn in (glue.pearson, glue.spearman):
        p = p + rng.normal(0, 0.5, 50)
    result = stats.paired_test(fn, y, p, p.copy())
    assert result.delta == 0 and (result.low, result.high) == (0, 0) and result.p_value == 1


def test_paired_bootstrap_is_reproducible_and_detects_a_clear_loss():
    rng = np.random.default_rng(5)
    y = rng.normal(0, 1, 120)
    reference = y + rng.normal(0, 0.3, 120)
    backend = rng.normal(0, 1, 120)  # unrelated to the labels
    first = stats.paired_test(glue.pearson, y, reference, backend, seed=7, resamples=500)
    again = stats.paired_test(glue.pearson, y, reference, backend, seed=7, resamples=500)
    assert first == again and first.test == "permutation"
    assert first.delta < 0 and first.high < 0 and first.p_value < 0.01


def test_holm_adjustment():
    adjusted = stats.holm([0.01, 0.04, 0.03, np.nan])
    # sorted 0.01, 0.03, 0.04 → ×3, ×2, ×1 with running max
    np.testing.assert_allclose(adjusted[:3], [0.03, 0.06, 0.06])
    assert np.isnan(adjusted[3])


def test_majority_and_speed_ratio():
    assert stats.majority_baseline(np.array([1, 1, 0, 2, 1])) == (1, 0.6)
    ratio, low, high = stats.ratio_interval([2.0, 2.1, 1.9, 2.0, 2.2], [1.0, 1.1, 0.9, 1.0, 1.05])
    assert ratio == pytest.approx(2.0) and low <= ratio <= high
