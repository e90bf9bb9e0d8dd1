"""A task plugin written from the how-to guide "Add a task" alone runs on the embedded default model with ``--data DIR``."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pandas as pd
import pytest

from harness import DataError, RunSpec, load_registry, run
from harness.tasks.data import SAMPLE_DIR

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "how-to" / "add-a-task.md"


def readme_task_plugin() -> types.ModuleType:
    """The code block of the guide "Add a task", as a module."""
    section = GUIDE.read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("attnbench_reviews")
    exec(compile(code, "docs/how-to/add-a-task.md", "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def reviews_dir(tmp_path_factory) -> Path:
    """SST-2 rows of the bundled sample under the plugin's own names: train from the fitting rows, test from
    the evaluation rows."""
    root = tmp_path_factory.mktemp("data")
    (root / "reviews").mkdir()
    for source, split in (("train", "train"), ("validation", "test")):
        frame = pd.read_parquet(SAMPLE_DIR / "sst2" / f"{source}.parquet")
        frame = frame.rename(columns={"sentence": "review", "label": "sentiment"})
        frame.to_parquet(root / "reviews" / f"{split}.parquet")
    return root


def test_readme_task_plugin_registers():
    registry = load_registry(entry_points=False, extra_plugins=(readme_task_plugin(),))
    task = registry.task("reviews")
    assert (task.text_fields, task.label_field, task.train_split) == (("review",), "sentiment", "train")


def test_readme_task_plugin_runs_on_the_embedded_default_with_data_dir(reviews_dir, tmp_path):
    registry = load_registry(entry_points=False, extra_plugins=(readme_task_plugin(),))
    spec = RunSpec(backends=["dense", "topk:k=8"], tasks=["reviews"], data=str(reviews_dir), limit=64,
                   store=str(tmp_path / "store"), progress=False, speed=False, fidelity_examples=0)
    rows = run(spec, registry, log=lambda message: None).rows
    accuracy = rows[(rows.task == "reviews") & (rows.metric == "accuracy")].set_index("backend")["value"]
    assert set(accuracy.index) == {"dense", "topk:k=8"}
    # A head fitted on 1,000 SST-2 rows of the packaged MiniLM's features: far above chance (measured 0.8-0.9).
    assert accuracy["dense"] > 0.7
    assert rows[rows.task == "reviews"]["n_examples"].max() == 64


def test_task_without_rows_in_the_sample_says_which_files_it_needs(tmp_path):
    registry = load_registry(entry_points=False, extra_plugins=(readme_task_plugin(),))
    spec = RunSpec(backends=["dense"], tasks=["reviews"], limit=8, store=None, progress=False, speed=False,
                   fidelity_examples=0)
    with pytest.raises(DataError, match=r"bundled sample has no 'test' rows of it .* --data DIR, where "
                                        r"DIR/reviews/test.parquet .* and DIR/reviews/train.parquet"):
        run(spec, registry, log=lambda message: None)
