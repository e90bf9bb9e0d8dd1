"""Where task data comes from: the bundled sample (offline default), a local directory, or the hub.

All three go through Hugging Face ``datasets``. A local directory is laid out as
``<config>/<split>.parquet`` (the layout of the Hugging Face Parquet export of ``nyu-mll/glue``).
The source actually used is recorded with every result (:attr:`DataSource.label`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from .contract import Task

SAMPLE_DIR = Path(__file__).resolve().parent / "glue_sample"


@dataclass(frozen=True)
class DataSource:
    """``kind`` is ``"sample"``, ``"dir"`` or ``"hub"``; ``path`` is the directory for the first two."""

    kind: str
    path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> "DataSource":
        """``sample``, ``hub`` or a directory path (``~`` expanded). Raises :class:`DataError`."""
        if text == "sample":
            return cls("sample", SAMPLE_DIR)
        if text == "hub":
            return cls("hub")
        path = Path(text).expanduser().resolve()
        if not path.is_dir():
            raise DataError(f"--data {text!r}: no such directory; give 'sample', 'hub' or a directory laid out as "
                            "<task>/<split>.parquet (see docs/how-to/full-glue.md)")
        return cls("dir", path)

    @cached_property
    def label(self) -> str:
        """What results record as ``data_source``: ``sample@<manifest hash>``, ``hub:<dataset>`` or ``dir:<path>``."""
        if self.kind == "sample":
            digest = hashlib.sha256((SAMPLE_DIR / "MANIFEST.json").read_bytes()).hexdigest()[:12]
            return f"sample@{digest}"
        if self.kind == "hub":
            return "hub"
        return f"dir:{self.path}"

    def load(self, task: Task, split: str | None = None) -> datasets.Dataset:
        """Rows of ``split`` (default: the task's evaluation split) as a ``datasets.Dataset``.

        Every row must carry a valid label (:func:`check_labels`); raises :class:`DataError` otherwise.
        """
        split = split or task.split
        rows = self._read(task, split)
        check_labels(task, rows, split, self.label)
        return rows

    def _read(self, task: Task, split: str) -> datasets.Dataset:
        if self.kind == "hub":
            try:
                return datasets.load_dataset(task.dataset, task.config, split=split)
            except Exception as exc:
                raise DataError(f"cannot load {task.dataset}/{task.config} split {split!r} from the Hugging Face hub "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                "offline, use --data sample or --data DIR") from None
        file = self.path / task.config / f"{split}.parquet"
        if not file.is_file() and self.kind == "sample":
            train = f" and DIR/{task.config}/{task.train_split}.parquet" if task.train_split else ""
            raise DataError(f"task {task.name!r}: the bundled sample has no {split!r} rows of it (it holds GLUE only); "
                            f"run with --data DIR, where DIR/{task.config}/{task.split}.parquet holds the rows to "
                            f"evaluate{train} (rows the embedded default fits its head on), or --data hub")
        if not file.is_file():
            raise DataError(f"task {task.name!r}: {file} not found; the data directory must hold "
                            f"<task>/<split>.parquet files, e.g. {task.config}/{split}.parquet")
        return read_parquet_rows(file, task.name)


def read_parquet_rows(file: Path, task_name: str = "") -> datasets.Dataset:
    """The rows of one Parquet file as an in-memory ``datasets.Dataset`` whose fingerprint is the sha256 of
    the file's bytes.

    ``datasets.Dataset.from_parquet`` caches by path and modification time, so a file replaced by one with
    other rows but the same time would be read as the old rows (and its tokenization, keyed on that
    fingerprint, reused): here what is read and every cache keyed on it follow the content.

    :raises DataError: the file cannot be read as Parquet.
    """
    try:
        content = file.read_bytes()
        table = pq.read_table(pa.BufferReader(content))
    except Exception as exc:
        raise DataError(f"task {task_name!r}: cannot read {file}: {type(exc).__name__}: {exc}") from None
    return datasets.Dataset(table, fingerprint=hashlib.sha256(content).hexdigest()[:16])


def check_labels(task: Task, rows: datasets.Dataset, split: str, where: str = "") -> None:
    """Refuse a split whose rows are not all labelled with a valid label for ``task``.

    Unlabelled rows are ``-1`` (GLUE's convention for its test splits) or null/NaN. Classification labels
    must be integer class ids ``0 .. num_labels-1``; regression labels must be finite and, when the task
    declares ``label_range``, inside it. Scoring such rows would store a meaningless metric (accuracy 0.0
    against -1) or fail deep inside scikit-learn, so the whole split is refused with one line that names the
    task, the split and how many rows are affected.

    :raises DataError: when the task's label column (``task.label_field``) is missing or not numeric, or any
        row's label is invalid.
    """
    at = f"task {task.name!r}, split {split!r}" + (f" of {where}" if where else "")
    column = task.label_field
    if column not in rows.column_names:
        raise DataError(f"{at}: no {column!r} column (columns: {', '.join(rows.column_names)}); every evaluated "
                        "row needs its gold label")
    table = rows.data.table if rows._indices is None else rows.flatten_indices().data.table
    try:
        labels = np.asarray(table.column(column).to_pandas(), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{at}: the {column!r} column is not numeric ({exc}); labels must be class ids or, "
                        "for regression, scores") from None
    if len(labels) == 0:
        return
    unlabelled = np.isnan(labels) | (labels == -1)
    if task.is_regression:
        low, high = task.label_range if task.label_range is not None else (-np.inf, np.inf)
        bad = ~unlabelled & (~np.isfinite(labels) | (labels < low) | (labels > high))
        valid = f"finite scores{f' in {low:g}..{high:g}' if task.label_range is not None else ''}"
    else:
        bad = ~unlabelled & ((labels < 0) | (labels >= task.num_labels) | (labels != np.round(labels)))
        valid = f"class ids 0..{task.num_labels - 1}"
    problems = []
    if unlabelled.any():
        problems.append(f"{int(unlabelled.sum())} of {len(labels)} rows have no label (-1 or null/NaN, GLUE's "
                        "marker for its unlabelled test splits)")
    if bad.any():
        examples = ", ".join(f"{v:g}" for v in np.unique(labels[bad])[:3])
        problems.append(f"{int(bad.sum())} of {len(labels)} rows have labels outside {valid} (e.g. {examples})")
    if problems:
        raise DataError(f"{at}: {'; '.join(problems)}; nothing was measured. Evaluate a labelled split "
                        f"(e.g. GLUE's validation split) or fix or drop those rows; the task needs {valid}")


def sample_manifest() -> dict:
    """The bundled sample's ``MANIFEST.json``: source split and sha256 of every file (see tools/make_glue_sample.py)."""
    return json.loads((SAMPLE_DIR / "MANIFEST.json").read_text())
