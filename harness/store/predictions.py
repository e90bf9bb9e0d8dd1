"""Per-example predictions of eval cells: their own table in the results store, read by their own reader.

Layout: ``<store>/_predictions/machine=<id>/date=<YYYY-MM-DD>/part-<run id>-<random>.parquet``, one file
per eval cell, written atomically like the rows (hidden temporary name, then a rename). The leading ``_``
keeps the table out of :func:`~harness.store.parquet.read_results` (and out of any older attnbench's
reader), so the tidy rows stay tidy: a sweep of 8 backends over the full GLUE validation sets is over half a
million examples.

One row per evaluated example: the cell (``run_id``, ``cell_id``, ``backend``, ``task``), the example
(``idx`` from the data, ``label``), the backend's ``prediction`` (class id, or the score for regression) and
the ``reference`` backend's prediction on the same example. An eval cell writes its predictions before its
rows, so a cell whose rows are in the store has its predictions too; a cell rerun by ``--resume`` after a
crash between the two writes leaves a duplicate, which :func:`read_predictions` drops (the latest wins).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .parquet import _filesystem, _partition, _write_atomically

TABLE = "_predictions"
SCHEMA = pa.schema([
    ("run_id", pa.string()), ("plan_id", pa.string()), ("cell_id", pa.string()),
    ("timestamp", pa.timestamp("us", tz="UTC")), ("commit", pa.string()),
    ("model", pa.string()), ("backend", pa.string()), ("reference_backend", pa.string()),
    ("task", pa.string()), ("split", pa.string()), ("data_source", pa.string()), ("limit", pa.int32()),
    ("idx", pa.int64()), ("label", pa.float64()), ("prediction", pa.float64()), ("reference", pa.float64()),
])
COLUMNS = tuple(SCHEMA.names) + ("machine",)


def write_predictions(store: Path | str, cell: Mapping[str, Any], idx: np.ndarray, labels: np.ndarray,
                      predictions: np.ndarray, reference: np.ndarray) -> str:
    """Write one eval cell's per-example predictions; ``cell`` holds the fields of :data:`SCHEMA` that are
    the same for every example (``run_id``, ``cell_id``, ``backend``, ``task``, …) and ``machine``."""
    n = len(idx)
    timestamp = pd.Timestamp(cell["timestamp"])
    timestamp = timestamp.tz_localize("UTC") if timestamp.tzinfo is None else timestamp.tz_convert("UTC")
    columns = {"idx": np.asarray(idx, dtype=np.int64), "label": np.asarray(labels, dtype=np.float64),
               "prediction": np.asarray(predictions, dtype=np.float64),
               "reference": np.asarray(reference, dtype=np.float64)}
    arrays = []
    for field in SCHEMA:
        if field.name in columns:
            arrays.append(pa.array(columns[field.name], field.type))
        elif field.name == "timestamp":
            arrays.append(pa.array([timestamp] * n, field.type))
        else:
            arrays.append(pa.array([cell.get(field.name)] * n, field.type))
    table = pa.Table.from_arrays(arrays, schema=SCHEMA)
    fs, root = _filesystem(store)
    directory = f"{root}/{TABLE}/{_partition(str(cell['machine']), timestamp.strftime('%Y-%m-%d'))}"
    return _write_atomically(fs, table, directory, f"part-{cell.get('run_id', 'run')}-{uuid.uuid4().hex[:12]}.parquet")


def read_predictions(store: Path | str, *, run_id: str | None = None, task: str | None = None,
                     backend: str | None = None) -> pd.DataFrame:
    """Per-example predictions (columns :data:`COLUMNS`), optionally of one run, task and backend; one row per
    (run, cell, example), the latest write winning. Unreadable files are skipped."""
    fs, root = _filesystem(store)
    base = f"{root}/{TABLE}"
    paths = sorted(p for p in fs.find(base) if p.endswith(".parquet")
                   and not any(part.startswith(".") for part in p[len(base):].split("/") if part)) \
        if fs.exists(base) else []
    if run_id is not None:
        paths = [p for p in paths if f"/part-{run_id}-" in p]
    frames = []
    for path in paths:
        try:
            with fs.open(path, "rb") as handle:
                frame = pq.read_table(handle).to_pandas()
        except Exception:  # a file that cannot be read is skipped, as read_results does
            continue
        parts = dict(part.split("=", 1) for part in path[len(base):].split("/")[:-1] if "=" in part)
        frame["machine"] = parts.get("machine")
        frames.append(frame)
    if not frames:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in COLUMNS})
    frame = pd.concat(frames, ignore_index=True)
    for name, value in (("run_id", run_id), ("task", task), ("backend", backend)):
        if value is not None:
            frame = frame[frame[name] == value]
    frame = frame.sort_values("timestamp", kind="stable")
    frame = frame.drop_duplicates(["run_id", "cell_id", "idx"], keep="last")
    return frame.reset_index(drop=True)[list(COLUMNS)]
