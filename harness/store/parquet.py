"""The results store: an append-only, hive-partitioned Parquet dataset of tidy rows.

Layout: ``<store>/machine=<id>/date=<YYYY-MM-DD>/part-<run id>-<random>.parquet``, where ``<store>`` is a
directory or any fsspec URL (``s3://bucket/results``, ``gcs://…``, ``file://…``), parsed by
:func:`parse_store` for every command; the columns are defined in :mod:`harness.store.schema`. Each write
creates new files only: the table is written to a hidden temporary name (``.``-prefixed, which readers
ignore) in the target directory, flushed, then renamed, so a crash or two concurrent writers never corrupt
or lose rows.
``machine`` and ``date`` live in the directory names (hive partitioning), not in the files.

Run-level metadata (command, spec, machine facts, versions) is also stored as JSON in each file's Parquet
schema metadata under ``attnbench.run``. :func:`read_results` is the one reader: it upgrades older schema
versions, skips (with a warning) files it cannot read or upgrade, and returns a pandas DataFrame ready for
``pivot_table``.
"""

from __future__ import annotations

import json
import os
import re
import uuid
import warnings
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import known_implementations

from ..errors import StoreError
from .schema import COLUMNS, DERIVED, PARTITIONS, SCHEMA, SCHEMA_VERSION

RUN_METADATA_KEY = b"attnbench.run"
VERSION_METADATA_KEY = b"attnbench.schema_version"

#: Categories of the rows an eval cell writes (speed cells write ``speed`` and ``memory`` rows).
EVAL_CATEGORIES = ("quality", "agreement", "fidelity", "throughput", "paired", "baseline")
_URL_COLLAPSED = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):/(?!/)")


def parse_store(store: Path | str) -> str:
    """The one parser of ``--store`` values: a local directory or an fsspec URL (``s3://bucket/results``,
    ``gcs://…``, ``memory://…``, ``simplecache::s3://…``), returned as the string every store function takes.

    Raises :class:`~harness.errors.StoreError` for a URL whose filesystem is not installed (naming the
    package to install), for an unknown protocol, and for a URL whose ``//`` was collapsed by
    :class:`pathlib.Path` (``Path("s3://b/x")`` is ``s3:/b/x``): such a store would silently become a
    local folder.
    """
    text = os.fspath(store)
    if not text:
        raise StoreError("empty store location: give a directory or an fsspec URL such as s3://bucket/results")
    collapsed = _URL_COLLAPSED.match(text)
    if collapsed and collapsed.group(1).lower() in set(fsspec.available_protocols()):
        fixed = f"{collapsed.group(1)}://{text[collapsed.end():]}"
        raise StoreError(f"store {text!r} looks like the URL {fixed!r} with its '//' collapsed (by pathlib.Path); "
                         "pass the store URL as a string")
    protocol, _ = fsspec.core.split_protocol(text)
    for name in (protocol or "").split("::"):
        if name:
            _check_protocol(name, text)
    return text


def _check_protocol(protocol: str, store: str) -> None:
    """Raise a :class:`StoreError` naming the package to install when ``protocol``'s filesystem is missing."""
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise StoreError(f"store {store!r}: unknown URL protocol {protocol!r}; use a directory or an fsspec URL "
                         f"(e.g. s3://, gcs://, az://, file://, memory://)") from None
    except ImportError as exc:
        known = known_implementations.get(protocol, {})
        module = known.get("class", "").split(".", 1)[0]
        install = f"pip install {module.replace('_', '-')}" if module and module != "fsspec" else \
            "install the packages it names"
        raise StoreError(f"store {store!r}: the filesystem for {protocol}:// is not installed "
                         f"({known.get('err') or exc}); {install}") from None


def _filesystem(store: Path | str) -> tuple[Any, str]:
    """``(fsspec filesystem, root path)`` of a store given as a directory or an fsspec URL (``s3://…``)."""
    fs, root = fsspec.core.url_to_fs(parse_store(store))
    return fs, root.rstrip("/") or "/"


def _partition(machine: str, date: str) -> str:
    for name, value in (("machine", machine), ("date", date)):
        if not value or "/" in value or value.startswith("."):
            raise StoreError(f"invalid {name} {value!r} for a store partition")
    return f"machine={machine}/date={date}"


def write_rows(store: Path | str, rows: Iterable[Mapping[str, Any]], run: Mapping[str, Any], *,
               name: str | None = None) -> list[str]:
    """Append rows to the store; return the files written (one per machine × date in the rows).

    Each row is a mapping with the keys of :data:`SCHEMA` plus ``machine``; ``date`` is derived from the
    row's UTC ``timestamp``. Missing keys are stored as null. ``run`` is the run-level metadata (JSON-able).
    ``store`` is a directory or an fsspec URL.

    ``name``: the file name to use in each partition, for content-addressed writes (the name derived from
    what the rows are): on a local store a file of that name that is already there is left as it is and the
    rows are not written again. Without it, a unique name is made from the run id.
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
        filename = name or f"part-{run.get('run_id', 'run')}-{uuid.uuid4().hex[:12]}.parquet"
        written.append(_write_atomically(fs, table, directory, filename, replace=name is None))
    return written


@contextmanager
def store_lock(store: Path | str, timeout: float = 600.0) -> Iterator[None]:
    """Hold an exclusive lock on a local store (``<store>/.import.lock``, ignored by readers) while a
    read-decide-write sequence runs, so that two processes doing it at once see each other's rows.

    Object stores have no such lock: there, the callers name their files by content (``write_rows(name=…)``).
    Raises :class:`~harness.errors.StoreError` after ``timeout`` seconds of waiting.
    """
    fs, root = _filesystem(store)
    if not isinstance(fs, LocalFileSystem):
        yield
        return
    import fcntl
    import time

    fs.makedirs(root, exist_ok=True)
    with open(f"{root}/.import.lock", "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreError(f"store {store}: another process has held {root}/.import.lock for "
                                     f"{timeout:.0f} s; wait for it, or remove the file if no process runs") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_writable(store: Path | str) -> None:
    """Refuse a store that cannot take rows, before anything is measured: create its root if needed, write a
    hidden probe file there (readers ignore ``.``-prefixed names) and remove it.

    :raises StoreError: naming the store and the filesystem's own reason (read-only directory, a path through
        a file, no permission, …).
    """
    fs, root = _filesystem(store)
    probe = f"{root}/.attnbench-write-check-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        existed = fs.exists(root)
        fs.makedirs(root, exist_ok=True)
        with fs.open(probe, "wb") as handle:
            handle.write(b"attnbench")
        fs.rm(probe)
        if not existed and isinstance(fs, LocalFileSystem):
            os.rmdir(root)  # a refused run leaves nothing behind; the first write creates it again
    except Exception as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
        raise StoreError(f"store {os.fspath(store)!r} cannot be written ({reason}); nothing was measured. Give a "
                         "writable directory or URL with --store, or --no-store") from None


def _write_atomically(fs: Any, table: pa.Table, directory: str, name: str, *, replace: bool = True) -> str:
    """Write under a hidden temporary name (ignored by readers), then rename: readers never see a partial file.

    Locally the data is fsync'ed before an atomic ``os.replace`` (or, with ``replace=False``, an ``os.link``
    that leaves a file already there as it is); on object stores the final name is created by ``fs.mv`` of a
    complete object.
    """
    final, tmp = f"{directory}/{name}", f"{directory}/.{name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp"
    fs.makedirs(directory, exist_ok=True)
    try:
        if isinstance(fs, LocalFileSystem):
            with open(tmp, "wb") as handle:
                pq.write_table(table, handle, compression="zstd")
                handle.flush()
                os.fsync(handle.fileno())
            if replace:
                os.replace(tmp, final)
            else:
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    pass  # the same content, written by an earlier or concurrent writer
                os.unlink(tmp)
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


def _upgrade(table: pa.Table, version: int, run: Mapping[str, Any]) -> pa.Table:
    """Bring a table written with an older schema version to the current :data:`SCHEMA`.

    Version 2 added ``plan_id`` and ``cell_id``; version-1 files read with nulls there. Version 3 added the
    settings columns: for harness rows they are filled from the run's spec stored in the file (``run``), on
    the rows each setting applies to, and old eval rows' ``batch_size`` (then the eval batch limit) moves to
    ``eval_batch_size``. Version 4 added ``device`` and ``dtype``: null reads as ``cpu`` and ``float32``
    (every row before it, and asv's, was measured there). Versions 5 and 6 added columns that read as null in
    older files (uncertainty; the verdict, margin and minimum detectable change). Other columns missing from
    a file are null. Raises
    when a column cannot be cast (the caller skips the file).
    """
    if version > SCHEMA_VERSION:
        raise StoreError(f"schema version {version} is newer than this attnbench's ({SCHEMA_VERSION}); "
                         "upgrade attnbench to read it")
    columns = []
    for field in SCHEMA:
        if field.name in table.column_names:
            columns.append(table[field.name].cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    table = pa.Table.from_arrays(columns, schema=SCHEMA)
    if version < 3:
        table = _upgrade_to_3(table, run.get("spec") or {})
    return _fill_placement(table)


#: What a row without a device was measured on: everything before schema 4, and asv's rows, ran on the CPU in float32.
PLACEMENT_DEFAULTS = {"device": "cpu", "dtype": "float32"}


def _fill_placement(table: pa.Table) -> pa.Table:
    """Schema 4: null ``device`` / ``dtype`` (older files, asv imports) read as ``cpu`` / ``float32``."""
    for name, default in PLACEMENT_DEFAULTS.items():
        index = SCHEMA.get_field_index(name)
        table = table.set_column(index, name, pc.fill_null(table[name], pa.scalar(default, pa.string())))
    return table


def _upgrade_to_3(table: pa.Table, spec: Mapping[str, Any]) -> pa.Table:
    """Schema 2 → 3 for harness rows: settings from the stored spec; eval rows' ``batch_size`` moves to
    ``eval_batch_size``."""
    harness = pc.fill_null(pc.equal(table["source"], "harness"), False)
    category = table["category"]
    eval_rows = pc.and_(harness, pc.fill_null(pc.is_in(category, pa.array(EVAL_CATEGORIES)), False))

    def rows_of(*categories: str) -> pa.Array:
        return pc.and_(harness, pc.fill_null(pc.is_in(category, pa.array(categories)), False))

    def put(name: str, mask: pa.Array, values: Any) -> None:
        nonlocal table
        kind = SCHEMA.field(name).type
        values = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.scalar(values, kind)
        index = SCHEMA.get_field_index(name)
        table = table.set_column(index, name, pc.if_else(mask, values, table[name]).cast(kind))

    put("eval_batch_size", eval_rows, table["batch_size"])
    put("batch_size", eval_rows, pa.scalar(None, pa.int32()))
    put("limit", eval_rows, spec.get("limit"))
    put("max_tokens", eval_rows, spec.get("max_tokens"))
    put("fidelity_examples", rows_of("fidelity"), spec.get("fidelity_examples"))
    put("executor", rows_of("throughput"), spec.get("executor"))
    put("warmup", rows_of("speed"), spec.get("warmup"))
    return table


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
    :data:`COLUMNS`), oldest first. Values computed from several rows (the Holm-adjusted p-value of paired
    rows) are the analysis's: :func:`harness.analysis.paired.with_holm`.
    Integer columns are pandas' nullable integers (``batch_size`` reads ``8``, and ``<NA>`` on eval rows);
    schema-6 columns read null in older files.

    Files of older schema versions are upgraded. A file that cannot be read or upgraded, for any reason
    (corrupt, a column of the wrong type, a newer schema version), is skipped with a warning naming it;
    nothing is deleted. Example::

        df = read_results("results/store")
        run = df[df.run_id == df.run_id.iloc[-1]]  # one run: its backends were timed under the same load
        run[run.category == "quality"].pivot_table(index="task", columns="backend", values="value",
                                                   aggfunc="first")
        run[(run.category == "paired") & run.primary.eq(True)][["backend", "task", "verdict", "mdc"]]
    """
    fs, root = _filesystem(store)
    tables = []
    for path in data_files(store):
        try:
            tables.append(_read_file(fs, root, path))
        except Exception as exc:  # any file that cannot be read or upgraded: skip it, keep the rest
            warnings.warn(f"skipping results file {path} (left in place): it cannot be read or upgraded: "
                          f"{type(exc).__name__}: {exc}", stacklevel=2)
    if not tables:
        return pd.DataFrame({name: pd.Series(dtype=_pandas_dtype(name)) for name in COLUMNS})
    # integers with nulls (batch_size, seq_len on eval rows, …) stay integers: pandas' nullable Int32/Int64
    frame = pa.concat_tables(tables).to_pandas(types_mapper=_NULLABLE_INTEGERS.get)
    return frame.sort_values(["timestamp", "run_id"], kind="stable").reset_index(drop=True)


_NULLABLE_INTEGERS = {pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
                      pa.int64(): pd.Int64Dtype()}


def _read_file(fs: Any, root: str, path: str) -> pa.Table:
    """One data file, upgraded to the current schema, with its partition columns."""
    with fs.open(path, "rb") as handle:
        table = pq.read_table(handle)
    metadata = table.schema.metadata or {}
    version = int(metadata.get(VERSION_METADATA_KEY, b"1"))
    run = json.loads(metadata.get(RUN_METADATA_KEY, b"{}")) if version < SCHEMA_VERSION else {}
    table = _upgrade(table, version, run if isinstance(run, dict) else {})
    parts = dict(part.split("=", 1) for part in path[len(root):].split("/")[:-1] if "=" in part)
    for name in PARTITIONS:
        table = table.append_column(name, pa.array([parts.get(name)] * table.num_rows, pa.string()))
    return table


def _pandas_dtype(column: str) -> str:
    if column in PARTITIONS:
        return "object"
    if column in DERIVED:
        return "float64"
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
