"""The Parquet store: round trip, concurrent writers, crashes mid-write, schema upgrades, bad files."""

from __future__ import annotations

import importlib.util
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

from harness.store.parquet import COLUMNS, SCHEMA, data_files, read_results, read_run_metadata, write_rows


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
        from harness.store import parquet as store
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


def test_newer_schema_version_is_skipped_with_a_warning_naming_it(tmp_path):
    store = tmp_path / "store"
    (file,) = write_rows(store, make_rows("r", 1), {"run_id": "r"})
    write_rows(store, make_rows("good", 2), {"run_id": "good"})
    file = Path(file)
    table = pq.read_table(file)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"attnbench.schema_version": b"99"}),
                   file)
    with pytest.warns(UserWarning, match=f"{file.name}.*upgrade attnbench"):
        df = read_results(store)
    assert set(df["run_id"]) == {"good"} and file.exists()


def _odd_threads_file(store: Path) -> Path:
    """A file whose ``threads`` column holds a float (2.5), which cannot be cast to the schema's int32."""
    directory = store / "machine=box-1" / "date=2026-11-23"
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.table({"run_id": ["odd"], "metric": ["accuracy"], "value": [0.5], "threads": pa.array([2.5])})
    path = directory / "part-odd.parquet"
    pq.write_table(table.replace_schema_metadata({b"attnbench.schema_version": b"2"}), path)
    return path


def test_a_file_that_cannot_be_upgraded_is_skipped_and_the_good_rows_returned(tmp_path):
    store = tmp_path / "store"
    write_rows(store, make_rows("good", 3), {"run_id": "good"})
    odd = _odd_threads_file(store)
    with pytest.warns(UserWarning, match="part-odd.parquet"):
        df = read_results(store)
    assert set(df["run_id"]) == {"good"} and len(df) == 3 and odd.exists()


@pytest.mark.parametrize("argv", [["compare", "good", "good"], ["regressions"], ["import-asv", "{asv}"],
                                  ["report", "--output", "{tmp}/report.html"]])
def test_commands_survive_an_odd_file_in_the_store(tmp_path, capsys, argv):
    from harness.cli import main

    store = tmp_path / "store"
    write_rows(store, make_rows("good", 3), {"run_id": "good"})
    _odd_threads_file(store)
    asv = Path(__file__).parent / "fixtures" / "asv_results"
    argv = [a.format(asv=asv, tmp=tmp_path) for a in argv]
    with pytest.warns(UserWarning, match="part-odd.parquet"):
        code = main(argv + ["--store", str(store)])
    assert code == 0, capsys.readouterr()


def test_resume_survives_an_odd_file_in_the_store(tmp_path):
    from harness.execution.cells import completed_cells

    store = tmp_path / "store"
    rows = [{**r, "plan_id": "p1", "cell_id": "eval/t/dense"} for r in make_rows("good", 2)]
    write_rows(store, rows, {"run_id": "good"})
    _odd_threads_file(store)
    with pytest.warns(UserWarning, match="part-odd.parquet"):
        assert completed_cells(str(store), "p1") == ("good", {"eval/t/dense"})


def _schema2_file(store: Path, rows: list[dict], spec: dict) -> Path:
    """A file as attnbench wrote it with schema 2: no settings columns; eval rows' batch_size was the eval batch."""
    directory = store / "machine=box-1" / "date=2025-06-01"
    directory.mkdir(parents=True, exist_ok=True)
    old = pa.schema([f for f in SCHEMA if f.name not in ("limit", "max_tokens", "eval_batch_size",
                                                         "fidelity_examples", "warmup", "executor")])
    table = pa.Table.from_pylist(rows, schema=old)
    meta = {b"attnbench.schema_version": b"2", b"attnbench.run": json.dumps({"run_id": "v2", "spec": spec}).encode()}
    path = directory / "part-v2.parquet"
    pq.write_table(table.replace_schema_metadata(meta), path)
    return path


def test_schema_2_files_are_upgraded_eval_batch_moves_out_of_batch_size(tmp_path):
    store = tmp_path / "store"
    when = datetime(2025, 6, 1, tzinfo=timezone.utc)
    base = {"run_id": "v2", "timestamp": when, "source": "harness", "backend": "dense", "threads": 2}
    rows = [{**base, "task": "sst2", "category": "quality", "metric": "accuracy", "value": 0.9, "batch_size": 8,
             "n_examples": 32},
            {**base, "task": "sst2", "category": "throughput", "metric": "eval_tokens_per_s", "value": 1e4,
             "batch_size": 8, "n_examples": 32},
            {**base, "task": "sst2", "category": "fidelity", "metric": "attn_cosine_mean", "value": 1.0,
             "batch_size": 8, "n_examples": 16},
            {**base, "category": "speed", "metric": "latency_forward", "value": 0.01, "batch_size": 4,
             "seq_len": 64, "n_examples": 4},
            {**base, "source": "asv", "category": "speed", "metric": "bench_speed.X.time_forward", "value": 0.02,
             "batch_size": 8, "seq_len": 128}]
    spec = {"limit": 32, "max_tokens": 4096, "eval_batch_size": 8, "fidelity_examples": 16, "warmup": 2,
            "executor": "local", "batch_size": 4, "seq_len": 64}
    _schema2_file(store, rows, spec)
    df = read_results(store).set_index("metric")
    quality, throughput, fidelity = df.loc["accuracy"], df.loc["eval_tokens_per_s"], df.loc["attn_cosine_mean"]
    speed, asv = df.loc["latency_forward"], df.loc["bench_speed.X.time_forward"]
    for eval_row in (quality, throughput, fidelity):
        assert eval_row["eval_batch_size"] == 8 and pd.isna(eval_row["batch_size"])
        assert eval_row["limit"] == 32 and eval_row["max_tokens"] == 4096
    assert fidelity["fidelity_examples"] == 16 and pd.isna(quality["fidelity_examples"])
    assert throughput["executor"] == "local" and pd.isna(quality["executor"])
    assert speed["batch_size"] == 4 and speed["warmup"] == 2 and pd.isna(speed["eval_batch_size"])
    assert pd.isna(speed["limit"])
    assert asv["batch_size"] == 8 and pd.isna(asv["eval_batch_size"]) and pd.isna(asv["warmup"])


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


@pytest.mark.parametrize("store", ["s3://bucket/attnbench", "attnbench-missing-fs://bucket/attnbench"])
def test_a_store_url_whose_filesystem_is_missing_is_a_clear_error(tmp_path, monkeypatch, capsys, store):
    """The URL is never turned into a local folder: exit 2 naming the package to install, for every command."""
    from harness.cli import main

    if store.startswith("s3:"):
        if importlib.util.find_spec("s3fs") is not None:
            pytest.skip("s3fs is installed here")
        package = "s3fs"
    else:  # a protocol fsspec knows, whose package is certainly not installed
        from fsspec.registry import known_implementations

        monkeypatch.setitem(known_implementations, "attnbench-missing-fs",
                            {"class": "attnbench_missing_fs.FileSystem", "err": "Install attnbench-missing-fs"})
        package = "attnbench-missing-fs"
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    for argv in (["compare", "a", "b"], ["regressions"], ["report", "--output", "r.html"],
                 ["import-asv", str(Path(__file__).parent / "fixtures" / "asv_results")],
                 ["run", "--no-progress", "--tasks", "sst2"]):
        assert main(argv + ["--store", store]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pip install {package}" in err and store in err, (argv, err)
    assert list(work.iterdir()) == []  # nothing written locally


@pytest.mark.parametrize("bad, message", [
    (Path("s3://bucket/attnbench"), "looks like the URL 's3://bucket/attnbench' with its '//' collapsed"),
    ("nosuchproto://x/y", "unknown URL protocol 'nosuchproto'"),
])
def test_store_strings_are_parsed_in_one_place(bad, message):
    from harness.errors import StoreError
    from harness.store.parquet import parse_store

    with pytest.raises(StoreError, match=message):
        parse_store(bad)
    with pytest.raises(StoreError, match=message):
        read_results(bad)
    assert parse_store("memory://b/x") == "memory://b/x" and parse_store(Path("results/store")) == "results/store"


def test_run_writes_to_a_store_url_not_a_local_folder(tmp_path, monkeypatch, tiny_model_dir):
    """``--store memory://…`` goes through fsspec; nothing appears under the working directory."""
    import fsspec

    from harness.cli import main

    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    store = "memory://attnbench-run-url/store"
    code = main(["run", "--model", str(tiny_model_dir), "--tasks", "sst2", "--limit", "8", "--no-speed",
                 "--fidelity-examples", "0", "--no-progress", "--store", store])
    assert code == 0
    assert list(work.iterdir()) == []
    assert fsspec.filesystem("memory").find("/attnbench-run-url/store")
    df = read_results(store)
    assert set(df["task"]) == {"sst2"} and (df["limit"] == 8).all()
