"""The bundled GLUE sample and the data sources."""

from __future__ import annotations

import os
import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from harness.tasks.data import SAMPLE_DIR, DataSource, sample_manifest
from harness.errors import DataError
from conftest import write_relabelled
from plugins.glue import GLUE_TASKS

SHARED_GLUE = Path(os.environ.get("ATTNBENCH_GLUE_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data" / "glue")


def test_parse_sources(tmp_path):
    assert DataSource.parse("sample").kind == "sample"
    assert DataSource.parse("hub").kind == "hub"
    assert DataSource.parse(str(tmp_path)) == DataSource("dir", tmp_path.resolve())
    with pytest.raises(DataError, match="no such directory"):
        DataSource.parse(str(tmp_path / "missing"))
    assert DataSource.parse("sample").label.startswith("sample@")


@pytest.mark.parametrize("task", GLUE_TASKS, ids=lambda t: t.name)
def test_every_task_has_a_real_sample(task):
    rows = DataSource.parse("sample").load(task)
    assert 70 <= len(rows) <= 300
    assert set(task.text_fields) | {"label", "idx"} <= set(rows.column_names)
    labels = np.asarray(list(rows["label"]))
    if task.is_regression:
        assert labels.min() >= 0 and labels.max() <= 5
    else:
        assert set(np.unique(labels)) == set(range(task.num_labels))  # every class appears
    fit = DataSource.parse("sample").load(task, "train")
    assert len(fit) >= 600


def _fit_split(task) -> str:
    return Path(sample_manifest()["files"][f"{task.config}/train.parquet"]["source"]).stem


SHARES_SPLIT = [t for t in GLUE_TASKS if _fit_split(t) == t.split]


def test_tasks_without_an_offline_train_split_fit_on_validation_rows():
    assert sorted(t.name for t in SHARES_SPLIT) == ["mnli-m", "qnli", "qqp"]


@pytest.mark.parametrize("task", SHARES_SPLIT, ids=lambda t: t.name)
def test_fitting_rows_are_disjoint_from_evaluation_rows(task):
    source = DataSource.parse("sample")
    eval_idx = set(source.load(task)["idx"])
    fit_idx = set(source.load(task, "train")["idx"])
    assert eval_idx and fit_idx and not eval_idx & fit_idx


def test_sample_is_small_and_described():
    files = sorted(SAMPLE_DIR.rglob("*.parquet"))
    assert len(files) == 19 and sum(f.stat().st_size for f in files) < 2.5e6
    manifest = sample_manifest()
    assert set(manifest["files"]) == {str(f.relative_to(SAMPLE_DIR)) for f in files}
    assert all(len(entry["source_sha256"]) == 64 for entry in manifest["files"].values())


def test_missing_split_file_is_a_clear_error(tmp_path):
    (tmp_path / "cola").mkdir()
    source = DataSource.parse(str(tmp_path))
    with pytest.raises(DataError, match=r"cola/validation.parquet not found"):
        source.load(GLUE_TASKS[0])


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_GLUE.is_dir(), reason="../shared/data/glue (full GLUE) is not present")
def test_sample_rows_are_exact_copies_of_the_full_data():
    """Every bundled row is the row with the same idx in the full GLUE file it came from."""
    for name, entry in sample_manifest()["files"].items():
        source = SHARED_GLUE / entry["source"]
        assert hashlib.sha256(source.read_bytes()).hexdigest() == entry["source_sha256"], name
        full = pq.read_table(source).to_pandas().set_index("idx")
        sample = pq.read_table(SAMPLE_DIR / name).to_pandas().set_index("idx")
        assert len(sample) == entry["rows"]
        assert full.loc[sample.index].equals(sample), name


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_GLUE.is_dir(), reason="../shared/data/glue (full GLUE) is not present")
@pytest.mark.parametrize("task", GLUE_TASKS, ids=lambda t: t.name)
def test_full_local_glue_loads_through_datasets(task):
    rows = DataSource.parse(str(SHARED_GLUE)).load(task)
    assert len(rows) > 70 and set(task.text_fields) <= set(rows.column_names)


# -- unlabelled rows (GLUE's test-split -1, null/NaN) and out-of-range labels are refused --------
TASKS = {t.name: t for t in GLUE_TASKS}


@pytest.mark.parametrize("task_name, labels_fn, message", [
    ("sst2", lambda ls: [-1] * len(ls), r"(\d+) of \1 rows have no label \(-1 or null/NaN"),
    ("mrpc", lambda ls: [-1] * len(ls), r"(\d+) of \1 rows have no label"),
    ("mnli-m", lambda ls: [None] * 5 + ls[5:], r"5 of \d+ rows have no label"),
    ("cola", lambda ls: [-1, -1, None] + ls[3:], r"3 of \d+ rows have no label"),
    ("stsb", lambda ls: [float("nan")] * len(ls), r"(\d+) of \1 rows have no label"),
    ("stsb", lambda ls: [None, -1.0] + ls[2:], r"2 of \d+ rows have no label"),
    ("stsb", lambda ls: [7.5] + ls[1:], r"1 of \d+ rows have labels outside finite scores in 0\.\.5 \(e\.g\. 7\.5\)"),
    ("sst2", lambda ls: [3, 3] + ls[2:], r"2 of \d+ rows have labels outside class ids 0\.\.1 \(e\.g\. 3\)"),
    ("mnli-m", lambda ls: [3] + ls[1:], r"labels outside class ids 0\.\.2 \(e\.g\. 3\)"),
    ("rte", lambda ls: [-2] + ls[1:], r"labels outside class ids 0\.\.1 \(e\.g\. -2\)"),
])
def test_unlabelled_or_out_of_range_labels_are_refused(tmp_path, task_name, labels_fn, message):
    task = TASKS[task_name]
    source = DataSource.parse(str(write_relabelled(tmp_path, task, labels_fn)))
    with pytest.raises(DataError, match=message) as exc:
        source.load(task)
    text = str(exc.value)
    assert "\n" not in text and f"task {task_name!r}, split {task.split!r}" in text


def test_the_bundled_sample_is_fully_labelled():
    for task in GLUE_TASKS:
        DataSource.parse("sample").load(task)  # raises if any row is unlabelled or out of range


def test_a_split_without_a_label_column_is_refused(tmp_path):
    task = TASKS["sst2"]
    table = pq.read_table(SAMPLE_DIR / "sst2" / "validation.parquet").drop(["label"])
    (tmp_path / "sst2").mkdir()
    pq.write_table(table, tmp_path / "sst2" / "validation.parquet")
    with pytest.raises(DataError, match="no 'label' column"):
        DataSource.parse(str(tmp_path)).load(task)
