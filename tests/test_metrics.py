"""Every GLUE metric equals scikit-learn / SciPy on the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from plugins.glue import GLUE_TASKS

REFERENCE = {
    "accuracy": skm.accuracy_score,
    "f1": skm.f1_score,
    "matthews": skm.matthews_corrcoef,
    "pearson": lambda y, p: stats.pearsonr(y, p)[0],
    "spearman": lambda y, p: stats.spearmanr(y, p)[0],
}
OFFICIAL = {"cola": ["matthews"], "sst2": ["accuracy"], "mrpc": ["accuracy", "f1"], "stsb": ["pearson", "spearman"],
            "qqp": ["accuracy", "f1"], "mnli-m": ["accuracy"], "mnli-mm": ["accuracy"], "qnli": ["accuracy"],
            "rte": ["accuracy"], "wnli": ["accuracy"]}


def test_the_nine_glue_tasks_have_their_official_metrics():
    assert {t.name: [m.name for m in t.metrics] for t in GLUE_TASKS} == OFFICIAL


@pytest.mark.parametrize("task", GLUE_TASKS, ids=lambda t: t.name)
def test_task_scores_equal_sklearn_and_scipy(task):
    rng = np.random.default_rng(len(task.name))
    if task.is_regression:
        labels = rng.uniform(0, 5, 200)
        logits = (labels + rng.normal(0, 1.0, 200)).reshape(-1, 1)
    else:
        labels = rng.integers(0, task.num_labels, 200)
        logits = rng.normal(size=(200, task.num_labels))
        logits[np.arange(200), labels] += 0.8  # better than chance, not perfect
    predictions = task.predictions(logits)
    scores = task.score(labels, predictions)
    for name, value in scores.items():
        assert value == pytest.approx(REFERENCE[name](labels, predictions), abs=1e-12)
        assert 0.05 < abs(value) < 0.999  # the constructed case is informative, not degenerate


def test_constant_regression_prediction_scores_nan_not_a_crash():
    stsb = next(t for t in GLUE_TASKS if t.name == "stsb")
    scores = stsb.score(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 2.0]))
    assert np.isnan(scores["pearson"]) and np.isnan(scores["spearman"])
