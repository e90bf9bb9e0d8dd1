"""GLUE's official metrics, computed by scikit-learn and SciPy.

Each function takes gold labels and predictions (class ids, or scores for STS-B) and returns a float.
scikit-learn and SciPy are imported on first use: task plugins import this module, and listing them
(``attnbench tasks``) must not pay for either.
"""

from __future__ import annotations

import numpy as np


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    from sklearn import metrics as skm

    return float(skm.accuracy_score(labels, predictions))


def f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    """F1 of the positive class (label 1), as GLUE reports it for MRPC and QQP."""
    from sklearn import metrics as skm

    return float(skm.f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0.0))


def matthews(labels: np.ndarray, predictions: np.ndarray) -> float:
    from sklearn import metrics as skm

    return float(skm.matthews_corrcoef(labels, predictions))


def pearson(labels: np.ndarray, predictions: np.ndarray) -> float:
    if np.std(predictions) == 0 or np.std(labels) == 0:
        return float("nan")  # undefined for a constant predictor; SciPy would warn and return nan too
    from scipy import stats

    return float(stats.pearsonr(labels, predictions).statistic)


def spearman(labels: np.ndarray, predictions: np.ndarray) -> float:
    if np.std(predictions) == 0 or np.std(labels) == 0:
        return float("nan")
    from scipy import stats

    return float(stats.spearmanr(labels, predictions).statistic)
