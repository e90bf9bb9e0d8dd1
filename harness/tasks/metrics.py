"""GLUE's official metrics, computed by scikit-learn and SciPy.

Each function takes gold labels and predictions (class ids, or scores for STS-B) and returns a float.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float(skm.accuracy_score(labels, predictions))


def f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    """F1 of the positive class (label 1), as GLUE reports it for MRPC and QQP."""
    return float(skm.f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0.0))


def matthews(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float(skm.matthews_corrcoef(labels, predictions))


def pearson(labels: np.ndarray, predictions: np.ndarray) -> float:
    if np.std(predictions) == 0 or np.std(labels) == 0:
        return float("nan")  # undefined for a constant predictor; SciPy would warn and return nan too
    return float(stats.pearsonr(labels, predictions).statistic)


def spearman(labels: np.ndarray, predictions: np.ndarray) -> float:
    if np.std(predictions) == 0 or np.std(labels) == 0:
        return float("nan")
    return float(stats.spearmanr(labels, predictions).statistic)
