"""The task contract: what to evaluate (data columns and splits) and how to score it.

A task plugin registers :class:`Task` instances through the ``register_tasks`` hook; the guide "Add a task"
(docs/how-to/add-a-task.md) has a complete plugin. Data for a task comes from a data source (``--data``): a directory
laid out as ``<config>/<split>.parquet``, the Hugging Face hub (``dataset``/``config``), or the bundled GLUE
sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Metric:
    """A named score of predictions against labels; ``direction`` says whether higher or lower is better.

    ``fn(labels, predictions) -> float`` takes two 1-D NumPy arrays of equal length: int64 class ids (or
    float32 scores for regression) and the task's predictions (:meth:`Task.predictions`). Reuse the functions
    of :mod:`harness.tasks.metrics` (scikit-learn / SciPy) where they fit.
    """

    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    direction: str = "higher"


@dataclass(frozen=True)
class Task:
    """A sequence classification (``num_labels >= 2``) or regression (``num_labels == 1``) task.

    :param name: unique task name used on the CLI and in results (lower-case, e.g. ``"mnli-m"``).
    :param dataset: Hugging Face dataset id (``"nyu-mll/glue"``), used by ``--data hub``.
    :param config: dataset configuration, also the directory name in local data (``"mnli"``): ``--data DIR``
        reads ``DIR/<config>/<split>.parquet``.
    :param split: evaluation split (``"validation_matched"``).
    :param text_fields: the text column (single sentence) or two columns (sentence pair, encoded as one
        sequence ``[CLS] a [SEP] b [SEP]``).
    :param num_labels: number of classes (labels are int ids ``0 .. num_labels-1``), or 1 for regression
        (float labels).
    :param metrics: the official metrics; the first is the task's main metric.
    :param label_names: class names in label-id order; also matched (case-insensitively) against a
        checkpoint's ``id2label`` to put its outputs in this order.
    :param description: one line for ``attnbench tasks``.
    :param label_field: the label column (default ``"label"``). An optional ``idx`` column identifies rows
        (row numbers are used without it).
    :param train_split: the split that a model without a head for this task fits one on (the embedded
        default, see docs/how-to/models.md), or ``None`` if the task has none.
    :param label_range: for regression, the inclusive ``(low, high)`` range of valid labels (STS-B: 0–5);
        ``None``: any finite number.
    """

    name: str
    dataset: str
    config: str
    split: str
    text_fields: tuple[str, ...]
    num_labels: int
    metrics: tuple[Metric, ...]
    label_names: tuple[str, ...] = ()
    description: str = ""
    label_field: str = "label"
    train_split: str | None = "train"
    label_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.text_fields) <= 2:
            raise ValueError(f"task {self.name!r}: text_fields must name one or two columns")
        if self.num_labels < 1 or not self.metrics:
            raise ValueError(f"task {self.name!r}: needs num_labels >= 1 and at least one metric")

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def main_metric(self) -> str:
        return self.metrics[0].name

    def predictions(self, logits: np.ndarray) -> np.ndarray:
        """Class ids (argmax) or, for regression, the scores themselves."""
        logits = np.asarray(logits)
        return logits.reshape(-1) if self.is_regression else logits.argmax(axis=-1)

    def score(self, labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
        """Every metric of the task, by name."""
        return {m.name: m.fn(np.asarray(labels), np.asarray(predictions)) for m in self.metrics}
