"""Rebuild the bundled GLUE sample (``harness/tasks/glue_sample/``) from a full local copy of GLUE.

The sample is the offline default data of attnbench: a few hundred validation rows per task for
evaluation, plus disjoint rows for fitting the embedded default model's task heads. It is a
deterministic function of the source files and ``--seed``, so anyone with the full data can check it::

    python tools/make_glue_sample.py GLUE_DIR harness/tasks/glue_sample

GLUE's train splits of QQP, MNLI and QNLI are not available offline here, so for those tasks the
``train.parquet`` of the sample holds *validation* rows that are disjoint from the sample's
validation file. ``MANIFEST.json`` records, for every file, the source split and the source sha256;
the embedded default model excludes its fitting rows (by split and ``idx``) from every evaluation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

EVAL_ROWS = 300
# (task, validation splits, source of head-fitting rows, number of fitting rows)
LAYOUT = {
    "cola": (["validation"], "train", 2000),
    "sst2": (["validation"], "train", 2000),
    "mrpc": (["validation"], "train", 1000),
    "stsb": (["validation"], "train", 1000),
    "qqp": (["validation"], "validation", 1000),
    "mnli": (["validation_matched", "validation_mismatched"], "validation_matched", 1000),
    "qnli": (["validation"], "validation", 1000),
    "rte": (["validation"], "train", 1000),
    "wnli": (["validation"], "train", 1000),
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _take(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """Rows in the original file order, keeping the Hugging Face schema metadata."""
    return table.take(pa.array(np.sort(rows)))


def _write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", compression_level=19)


def build(source: Path, target: Path, seed: int) -> dict:
    manifest: dict = {"seed": seed, "eval_rows": EVAL_ROWS, "files": {}}
    for task, (eval_splits, fit_split, fit_rows) in LAYOUT.items():
        rng = np.random.default_rng([seed, sum(map(ord, task))])
        taken_from_fit_split = np.array([], dtype=np.int64)
        for split in eval_splits:
            src = source / task / f"{split}.parquet"
            table = pq.read_table(src)
            rows = rng.permutation(table.num_rows)[:EVAL_ROWS]
            if split == fit_split:
                taken_from_fit_split = rows
            _write(_take(table, rows), target / task / f"{split}.parquet")
            manifest["files"][f"{task}/{split}.parquet"] = {
                "source": f"{task}/{split}.parquet", "source_sha256": _sha256(src), "rows": len(rows)}
        src = source / task / f"{fit_split}.parquet"
        table = pq.read_table(src)
        candidates = np.setdiff1d(np.arange(table.num_rows), taken_from_fit_split)
        rows = rng.permutation(candidates)[:fit_rows]
        fit = _take(table, rows)
        assert not set(pc.unique(fit["idx"]).to_pylist()) & set(
            table.take(pa.array(taken_from_fit_split))["idx"].to_pylist()), task
        _write(fit, target / task / "train.parquet")
        manifest["files"][f"{task}/train.parquet"] = {
            "source": f"{task}/{fit_split}.parquet", "source_sha256": _sha256(src), "rows": len(rows)}
    (target / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="directory laid out as <task>/<split>.parquet")
    parser.add_argument("target", type=Path, help="where to write the sample")
    parser.add_argument("--seed", type=int, default=20261123)
    args = parser.parse_args()
    build(args.source, args.target, args.seed)


if __name__ == "__main__":
    main()
