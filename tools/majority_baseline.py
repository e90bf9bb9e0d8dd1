"""Majority-class baseline of every task on the bundled sample, next to the stored dense scores.

The baseline predicts the most frequent label of the sample's fitting rows (``train.parquet``) for every
evaluation row, scored with the task's main metric (a constant predictor has MCC 0 and undefined
correlations). The run summary now prints a majority baseline of the evaluated examples itself; this tool
reads a store. Usage::

    python tools/majority_baseline.py [--store results/store]
"""

from __future__ import annotations

import argparse

import numpy as np

from harness import read_results
from harness.tasks.data import DataSource
from plugins.glue import GLUE_TASKS


def main(store: str = "results/store") -> None:
    df = read_results(store)
    dense = df[(df["category"] == "quality") & (df["backend"] == "dense") & (df["source"] == "harness")
               & df["data_source"].str.startswith("sample@")]
    latest = dense.sort_values("timestamp").groupby(["task", "metric"])["value"].last()
    sample = DataSource.parse("sample")
    print("| task | metric | dense (embedded default) | majority class | beats majority |")
    print("|---|---|---:|---:|---|")
    for task in GLUE_TASKS:
        metric = task.main_metric
        if task.is_regression:
            baseline = float("nan")
        else:
            fit_labels = np.asarray(list(sample.load(task, "train")["label"]))
            labels = np.asarray(list(sample.load(task)["label"]))
            majority = np.bincount(fit_labels).argmax()
            baseline = task.score(labels, np.full_like(labels, majority))[metric]
        value = latest.get((task.name, metric), float("nan"))
        verdict = "n/a (regression)" if task.is_regression else ("yes" if value > baseline else "**no**")
        print(f"| {task.name} | {metric} | {value:.3f} | {'-' if np.isnan(baseline) else f'{baseline:.3f}'} "
              f"| {verdict} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("legacy_store", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--store", default=None, metavar="DIR|URL",
                        help="results store, a directory or an fsspec URL (default results/store)")
    args = parser.parse_args()
    main(args.store or args.legacy_store or "results/store")
