"""The Parquet store: round trip, concurrent writers, crashes mid-write, schema upgrades, bad files."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.history.store import COLUMNS, SCHEMA, data_files, read_results, read_run_metadata, write_rows


def make_rows(run_id: str, n: int, machine: str = "box-1", when: datetime | None = None) -> list[dict]:
    when = when or datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
    return [{"run_id": run_id, "timestamp": when, "source": "harness", "machine": machine, "backend": "dense",
             "backend_name": "dense", "task": f"t{i % 3}", "category": "quality", "metric": "accuracy",
             "value": i / n, "unit": "score", "direction": "higher", "threads": 2,
             "samples": [0.1, 0.2] if i % 2 else None} for i in range(n)]


def test_round_trip_with_partitions_and_metadata(tmp_path):
    store = tmp_path / "store"
    files = write_rows(store, make_rows("r1", 6) + make_rows("r1", 2, machine="box-2"), {"run_id": "r1", "x": 1})
    assert len(files) == 2
    assert {Path(f).parent.parent.name for f in files} == {"machine=box-1", "machine=box-2"}
    assert all(Path(f).parent.name == "date=2026-11-23" for f in files)
    df = read_results(store)
    assert list(df.columns) == list(COLUMNS) and len(df) == 8
    assert sorted(df["machine"].unique()) == ["box-1", "box-2"]
    assert df.loc[df["value"] == 1 / 6, "samples"].iloc[0].tolist() == [0.1, 0.2]
    assert read_run_metadata(files[0]) == {"run_id": "r1", "x": 1}
    table = df.pivot_table(index="task", columns="backend", values="value", aggfunc="mean")
    assert table.shape == (3, 1)


def test_empty_or_missing_store_reads_as_an_empty_frame(tmp_path):
    df = read_results(tmp_path / "nothing")
    assert df.empty and list(df.columns) == list(COLUMNS)


def _writer(store: str, worker: int, files: int) -> None:
    for i in range(files):
        write_rows(store, make_rows(f"w{worker}-{i}", 5), {"run_id": f"w{worker}-{i}"})


def test_two_concurrent_writers_lose_no_rows(tmp_path):
    store = tmp_path / "store"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(store), w, 20)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    df = read_results(store)
    assert len(df) == 2 * 20 * 5 and df["run_id"].nunique() == 40


def test_a_crash_mid_write_leaves_the_store_readable(tmp_path):
    store = tmp_path / "store"
    write_rows(store, make_rows("before", 4), {"run_id": "before"})
    crash = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from harness.history import store
        from test_store import make_rows

        def die(*args, **kwargs):
            os._exit(9)  # the process dies between writing the temporary file and renaming it

        store.os.replace = die
        store.write_rows({str(store)!r}, make_rows("crashed", 3), {{"run_id": "crashed"}})
    """)
    result = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True)
    assert result.returncode == 9, result.stderr
    leftovers = [p for p in store.rglob("*") if p.is_file() and p.name.startswith(".")]
    assert leftovers  # the half-finished file is there, hidden …
    df = read_results(store)  # … and ignored by readers
    assert set(df["run_id"]) == {"before"} and len(df) == 4
    assert len(data_files(store)) == 1


def test_corrupt_file_is_skipped_with_a_warning_and_nothing_is_deleted(tmp_path):
    store = tmp_path / "store"
    write_rows(store, make_rows("good", 3), {"run_id": "good"})
    bad = store / "machine=box-1" / "date=2026-11-23" / "part-bad.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    with pytest.warns(UserWarning, match="part-bad.parquet"):
        df = read_results(store)
    assert len(df) == 3 and bad.exists()


def test_files_of_an_older_schema_are_upgraded(tmp_path):
    """A file that lacks later columns (here: samples, extra) reads with nulls in them."""
    store = tmp_path / "store"
    directory = store / "machine=old" / "date=2025-01-01"
    directory.mkdir(parents=True)
    old_fields = [f for f in SCHEMA if f.name not in ("samples", "extra")]
    table = pa.Table.from_pylist([{"run_id": "old", "timestamp": datetime(2025, 1, 1, tzinfo=timezone.utc),
                                   "metric": "accuracy", "value": 0.5}], schema=pa.schema(old_fields))
    pq.write_table(table.replace_schema_metadata({b"attnbench.schema_version": b"1"}), directory / "part-old.parquet")
    write_rows(store, make_rows("new", 2), {"run_id": "new"})
    df = read_results(store)
    old = df[df["run_id"] == "old"].iloc[0]
    assert old["machine"] == "old" and old["samples"] is None and pd.isna(old["extra"])
    assert len(df) == 3 and df["run_id"].tolist()[0] == "old"  # oldest first


def test_newer_schema_version_is_refused_clearly(tmp_path):
    from harness.errors import StoreError

    store = tmp_path / "store"
    (file,) = write_rows(store, make_rows("r", 1), {"run_id": "r"})
    file = Path(file)
    table = pq.read_table(file)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"attnbench.schema_version": b"99"}),
                   file)
    with pytest.raises(StoreError, match="upgrade attnbench"):
        read_results(store)


def test_rows_without_machine_are_rejected(tmp_path):
    from harness.errors import StoreError

    rows = make_rows("r", 1)
    del rows[0]["machine"]
    with pytest.raises(StoreError, match="machine"):
        write_rows(tmp_path, rows, {})
    assert json.dumps(rows[0], default=str)


def test_a_store_on_an_fsspec_filesystem(tmp_path):
    """Any fsspec URL works as a store; here the in-memory filesystem."""
    store = "memory://attnbench-test/store"
    (written,) = write_rows(store, make_rows("mem", 4), {"run_id": "mem"})
    assert written.startswith("memory://") and "machine=box-1/date=2026-11-23/part-mem-" in written
    write_rows(store, make_rows("mem2", 2), {"run_id": "mem2"})
    df = read_results(store)
    assert len(df) == 6 and set(df["run_id"]) == {"mem", "mem2"} and set(df["machine"]) == {"box-1"}
    assert read_run_metadata(written) == {"run_id": "mem"}
    import fsspec

    fs = fsspec.filesystem("memory")
    assert not [p for p in fs.find("/attnbench-test") if ".tmp" in p]  # no temporary objects left behind
