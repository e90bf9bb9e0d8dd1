"""The results store: an append-only, hive-partitioned Parquet dataset of tidy rows.

Layout: ``<store>/machine=<id>/date=<YYYY-MM-DD>/part-<run id>-<random>.parquet``, where ``<store>`` is a
directory or any fsspec URL (``s3://bucket/results``, ``gcs://…``, ``file://…``). Each write creates new
files only: the table is written to a hidden temporary name (``.``-prefixed, which readers ignore) in the
target directory, flushed, then renamed, so a crash or two concurrent writers never corrupt or lose rows.
``machine`` and ``date`` live in the directory names (hive partitioning), not in the files.

Run-level metadata (command, spec, machine facts, versions) is also stored as JSON in each file's Parquet
schema metadata under ``attnbench.run``. :func:`read_results` is the one reader: it upgrades older schema
versions and returns a pandas DataFrame ready for ``pivot_table``.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from ..errors import StoreError

SCHEMA_VERSION = 2
RUN_METADATA_KEY = b"attnbench.run"
VERSION_METADATA_KEY = b"attnbench.schema_version"
PARTITIONS = ("machine", "date")

#: Columns stored in every file (the partition columns ``machine`` and ``date`` are added on reading).
SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("timestamp", pa.timestamp("us", tz="UTC")),
    ("source", pa.string()),            # "harness" or "asv"
    ("commit", pa.string()),            # attnbench commit measured (None outside a git checkout)
    ("dirty", pa.bool_()),              # uncommitted changes in the measured tree
    ("cpu", pa.string()),               # JSON: model, cores, SIMD features
    ("threads", pa.int32()),
    ("versions", pa.string()),          # JSON: python and library versions
    ("plugin", pa.string()),
    ("plugin_dist", pa.string()),
    ("plugin_version", pa.string()),
    ("model", pa.string()),
    ("backend", pa.string()),           # canonical spec, e.g. "topk:k=8,bits=4"
    ("backend_name", pa.string()),      # spec without parameters, e.g. "topk"
    ("backend_params", pa.string()),    # canonical JSON of every parameter value
    ("task", pa.string()),              # None for task-independent rows (latency, memory)
    ("split", pa.string()),
    ("data_source", pa.string()),
    ("n_examples", pa.int64()),
    ("batch_size", pa.int32()),
    ("seq_len", pa.int32()),
    ("category", pa.string()),          # quality | agreement | fidelity | speed | memory
    ("metric", pa.string()),
    ("value", pa.float64()),
    ("unit", pa.string()),
    ("direction", pa.string()),         # "higher" or "lower" is better
    ("samples", pa.list_(pa.float64())),  # raw samples where they exist (timings)
    ("extra", pa.string()),             # JSON: backend run facts and anything source-specific
    ("plan_id", pa.string()),           # hash of the run's definition (schema 2); resuming matches on it
    ("cell_id", pa.string()),           # the cell that produced the row (schema 2)
])
COLUMNS = tuple(SCHEMA.names) + PARTITIONS


def _filesystem(store: Path | str) -> tuple[Any, str]:
    """``(fsspec filesystem, root path)`` of a store given as a directory or an fsspec URL (``s3://…``)."""
    fs, root = fsspec.core.url_to_fs(str(store))
    return fs, root.rstrip("/") or "/"


def _partition(machine: str, date: str) -> str:
    for name, value in (("machine", machine), ("date", date)):
        if not value or "/" in value or value.startswith("."):
            raise StoreError(f"invalid {name} {value!r} for a store partition")
    return f"machine={machine}/date={date}"


def write_rows(store: Path | str, rows: Iterable[Mapping[str, Any]], run: Mapping[str, Any]) -> list[str]:
    """Append rows to the store; return the files written (one per machine × date in the rows).

    Each row is a mapping with the keys of :data:`SCHEMA` plus ``machine``; ``date`` is derived from the
    row's UTC ``timestamp``. Missing keys are stored as null. ``run`` is the run-level metadata (JSON-able).
    ``store`` is a directory or an fsspec URL.
    """
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return []
    for column in SCHEMA.names:
        if column not in frame:
            frame[column] = None
    if "machine" not in frame or frame["machine"].isna().any():
        raise StoreError("every row needs a machine id")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame["date"] = frame["timestamp"].dt.strftime("%Y-%m-%d")
    metadata = {RUN_METADATA_KEY: json.dumps(run, sort_keys=True, default=str).encode(),
                VERSION_METADATA_KEY: str(SCHEMA_VERSION).encode()}
    fs, root = _filesystem(store)
    written = []
    for (machine, date), group in frame.groupby(["machine", "date"], sort=True):
        table = pa.Table.from_pandas(group[list(SCHEMA.names)], schema=SCHEMA, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
        directory = f"{root}/{_partition(str(machine), str(date))}"
        name = f"part-{run.get('run_id', 'run')}-{uuid.uuid4().hex[:12]}.parquet"
        written.append(_write_atomically(fs, table, directory, name))
    return written


def _write_atomically(fs: Any, table: pa.Table, directory: str, name: str) -> str:
    """Write under a hidden temporary name (ignored by readers), then rename: readers never see a partial file.

    Locally the data is fsync'ed before an atomic ``os.replace``; on object stores the final name is
    created by ``fs.mv`` of a complete object.
    """
    final, tmp = f"{directory}/{name}", f"{directory}/.{name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp"
    fs.makedirs(directory, exist_ok=True)
    try:
        if isinstance(fs, LocalFileSystem):
            with open(tmp, "wb") as handle:
                pq.write_table(table, handle, compression="zstd")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        else:
            with fs.open(tmp, "wb") as handle:
                pq.write_table(table, handle, compression="zstd")
            fs.mv(tmp, final)
    except BaseException:
        try:
            fs.rm(tmp)
        except (FileNotFoundError, OSError):
            pass
        raise
    return final if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(final)


def _upgrade(table: pa.Table, version: int) -> pa.Table:
    """Bring a table written with an older schema version to the current :data:`SCHEMA`.

    Version 2 added ``plan_id`` and ``cell_id``; version-1 files read with nulls there. Later versions add a
    step here. Columns missing from a file are null.
    """
    if version > SCHEMA_VERSION:
        raise StoreError(f"a store file has schema version {version}, newer than this attnbench "
                         f"({SCHEMA_VERSION}); upgrade attnbench")
    columns = []
    for field in SCHEMA:
        if field.name in table.column_names:
            columns.append(table[field.name].cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def data_files(store: Path | str) -> list[str]:
    """Every committed data file of the store (hidden temporary files excluded), as paths on its filesystem."""
    fs, root = _filesystem(store)
    if not fs.exists(root):
        return []
    found = fs.find(root)
    return sorted(p for p in found if p.endswith(".parquet")
                  and not any(part.startswith((".", "_")) for part in p[len(root):].split("/") if part))


def read_run_metadata(path: Path | str) -> dict:
    """The run metadata stored in one data file's schema."""
    with fsspec.open(str(path), "rb") as handle:
        metadata = pq.read_schema(handle).metadata or {}
    return json.loads(metadata.get(RUN_METADATA_KEY, b"{}"))


def read_results(store: Path | str = Path("results") / "store") -> pd.DataFrame:
    """All rows of the store (a directory or an fsspec URL) as a tidy pandas DataFrame (columns
    :data:`COLUMNS`), oldest first.

    A file that cannot be read is skipped with a warning naming it; nothing is deleted. Example::

        df = read_results("results/store")
        df[df.category == "quality"].pivot_table(index="task", columns="backend", values="value",
                                                 aggfunc="median")
    """
    fs, root = _filesystem(store)
    tables = []
    for path in data_files(store):
        try:
            with fs.open(path, "rb") as handle:
                table = pq.read_table(handle)
        except Exception as exc:
            warnings.warn(f"skipping unreadable results file {path}: {exc}", stacklevel=2)
            continue
        version = int((table.schema.metadata or {}).get(VERSION_METADATA_KEY, b"1"))
        table = _upgrade(table, version)
        parts = dict(part.split("=", 1) for part in path[len(root):].split("/")[:-1] if "=" in part)
        for name in PARTITIONS:
            table = table.append_column(name, pa.array([parts.get(name)] * table.num_rows, pa.string()))
        tables.append(table)
    if not tables:
        return pd.DataFrame({name: pd.Series(dtype=_pandas_dtype(name)) for name in COLUMNS})
    frame = pa.concat_tables(tables).to_pandas()
    return frame.sort_values(["timestamp", "run_id"], kind="stable").reset_index(drop=True)


def _pandas_dtype(column: str) -> str:
    if column in PARTITIONS:
        return "object"
    kind = SCHEMA.field(column).type
    if pa.types.is_timestamp(kind):
        return "datetime64[us, UTC]"
    if pa.types.is_floating(kind):
        return "float64"
    if pa.types.is_integer(kind):
        return "Int64"
    if pa.types.is_boolean(kind):
        return "boolean"
    return "object"
