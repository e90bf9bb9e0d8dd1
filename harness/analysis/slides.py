"""Figures of one run for slides: per task, accuracy with error bars against speed-up, and the paired change.

One figure per task with three panels:

1. the main metric with its 95 % interval against the whole-forward speed-up over the reference;
2. the same against the attention-core speed-up (a backend that speeds up the rest of the model, such as
   dynamic int8 quantization, shows in 1 and not here);
3. Δ vs the reference with the paired 95 % interval, significant changes (Holm-adjusted p < 0.05) in colour.

Every panel shows the majority-class baseline (dashed) and the title names n, the run and the latency shape.
:func:`choose_run` picks the run: explicitly, the latest run of a plan, or the latest run — and warns when
that run evaluated fewer examples than another run of the same tasks in the store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from .paired import BASELINE_PREFIX, PAIRED_PREFIX, with_holm
FORMATS = ("png", "svg")


def choose_run(rows: pd.DataFrame, run_id: str | None = None, plan_id: str | None = None) -> tuple[str, list[str]]:
    """``(run id, notes)``: ``run_id`` if given, else the latest run of ``plan_id``, else the latest harness run
    with task metrics — never a smaller run by accident.

    :raises UserError: an unknown ``run_id`` or ``plan_id``; or, with neither given, when another run evaluated
        more examples of one of the latest run's tasks (a ``--limit`` smoke run after a full one): the message
        names both runs and says to pass ``--run`` (or ``--plan``). With ``run_id`` or ``plan_id`` given, that
        situation is only a note.
    """
    harness = rows[(rows["source"] == "harness") & rows["run_id"].notna()]
    if run_id is not None:
        if run_id not in set(harness["run_id"]):
            raise UserError(f"no harness run {run_id!r} in the store")
        chosen = run_id
    else:
        pool = harness if plan_id is None else harness[harness["plan_id"] == plan_id]
        pool = pool[pool["category"] == "quality"] if (pool["category"] == "quality").any() else pool
        if pool.empty:
            raise UserError("no harness run in the store" + (f" with plan {plan_id!r}" if plan_id else ""))
        chosen = str(pool.sort_values("timestamp")["run_id"].iloc[-1])
    bigger_runs = []
    quality = harness[harness["category"] == "quality"]
    mine = quality[quality["run_id"] == chosen].groupby("task")["n_examples"].max()
    for task, n in mine.items():
        others = quality[(quality["task"] == task) & (quality["run_id"] != chosen)]
        if len(others) and pd.notna(n) and pd.notna(others["n_examples"].max()) and others["n_examples"].max() > n:
            bigger = others.sort_values(["n_examples", "timestamp"]).iloc[-1]
            bigger_runs.append((task, int(n), str(bigger["run_id"]), int(bigger["n_examples"])))
    if bigger_runs and run_id is None and plan_id is None:
        task, n, other, n_other = bigger_runs[0]
        raise UserError(f"the latest run {chosen} evaluated {n} examples of {task} but run {other} evaluated "
                        f"{n_other}: choose one with --run {chosen} or --run {other} (or --plan PLAN_ID)")
    notes = [f"note: run {chosen} evaluated {n} examples of {task}; run {other} evaluated {n_other}"
             for task, n, other, n_other in bigger_runs]
    how = "given" if run_id else (f"latest of plan {plan_id}" if plan_id else "latest run")
    return chosen, [f"run {chosen} ({how})"] + notes


def run_points(rows: pd.DataFrame, run_id: str) -> dict[str, pd.DataFrame]:
    """Per task of the run, one row per backend: main metric, interval, speed-ups, Δ with paired interval."""
    run = rows[rows["run_id"] == run_id]
    reference = "dense"
    speed = run[run["category"] == "speed"]
    shape = None
    speedups = {}
    if not speed.empty:
        first = speed.iloc[0]
        shape = (int(first["batch_size"]), int(first["seq_len"]))
        speed = speed[(speed["batch_size"] == shape[0]) & (speed["seq_len"] == shape[1])]
        for metric in ("latency_forward", "latency_attention_core"):
            medians = speed[speed["metric"] == metric].groupby("backend")["value"].median()
            if reference in medians:
                speedups[metric] = medians[reference] / medians
    paired = with_holm(run[run["category"] == "paired"])
    out = {}
    for task, quality in run[run["category"] == "quality"].groupby("task", sort=False):
        main = quality["metric"].iloc[0]
        mine = quality[quality["metric"] == main].drop_duplicates("backend", keep="last").set_index("backend")
        frame = pd.DataFrame({"score": mine["value"], "low": mine["ci_low"], "high": mine["ci_high"],
                              "n": mine["n_examples"]})
        for metric, column in (("latency_forward", "forward_speedup"), ("latency_attention_core", "core_speedup")):
            frame[column] = speedups[metric].reindex(frame.index) if metric in speedups else np.nan
        delta = paired[(paired["task"] == task) & (paired["metric"] == PAIRED_PREFIX + main)].set_index("backend")
        for column, source in (("delta", "value"), ("delta_low", "ci_low"), ("delta_high", "ci_high"),
                               ("p_holm", "p_holm")):
            frame[column] = delta[source].reindex(frame.index) if len(delta) else np.nan
        frame.loc[frame.index == reference, ["delta", "delta_low", "delta_high"]] = 0.0
        base = run[(run["task"] == task) & (run["metric"] == BASELINE_PREFIX + main)]["value"]
        frame.attrs.update(metric=main, majority=float(base.iloc[0]) if len(base) else np.nan, shape=shape,
                           reference=reference)
        out[task] = frame
    return out


def task_figure(task: str, points: pd.DataFrame, run_id: str):
    import matplotlib.pyplot as plt

    metric, majority, shape = points.attrs["metric"], points.attrs["majority"], points.attrs["shape"]
    n = int(points["n"].max()) if points["n"].notna().any() else 0
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.8))
    panels = (("forward_speedup", "whole-forward speed-up vs dense"), ("core_speedup", "attention-core speed-up vs dense"))
    for ax, (column, label) in zip(axes[:2], panels):
        shown = points.dropna(subset=[column])
        if shown.empty:
            ax.text(0.5, 0.5, "no timings in this run", ha="center", va="center", transform=ax.transAxes)
        else:
            error = np.vstack([shown["score"] - shown["low"], shown["high"] - shown["score"]]).clip(min=0)
            ax.errorbar(shown[column], shown["score"], yerr=error, fmt="o", capsize=3, color="tab:blue")
            for backend, r in shown.iterrows():
                ax.annotate(backend, (r[column], r["score"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
            ax.axvline(1.0, color="grey", lw=0.8, ls=":")
        if np.isfinite(majority):
            ax.axhline(majority, color="tab:red", ls="--", lw=1, label=f"majority class {majority:.3f}")
            ax.legend(fontsize=7, loc="lower right")
        shape_text = f" (batch {shape[0]} x {shape[1]} tokens)" if shape else ""
        ax.set_xlabel(label + shape_text, fontsize=8)
        ax.set_ylabel(f"{metric} (95 % interval)")
    ax = axes[2]
    shown = points.dropna(subset=["delta"])
    y = np.arange(len(shown))
    if len(shown):
        error = np.vstack([shown["delta"] - shown["delta_low"], shown["delta_high"] - shown["delta"]])
        error = np.nan_to_num(error).clip(min=0)
        colours = ["tab:red" if p < 0.05 and d < 0 else "tab:green" if p < 0.05 and d > 0 else "tab:grey"
                   for d, p in zip(shown["delta"], shown["p_holm"].fillna(1.0))]
        for i, (d, e0, e1, c) in enumerate(zip(shown["delta"], error[0], error[1], colours)):
            ax.errorbar(d, i, xerr=[[e0], [e1]], fmt="o", capsize=3, color=c)
        ax.set_yticks(y, list(shown.index), fontsize=7)
    ax.axvline(0, color="grey", lw=0.8)
    if np.isfinite(majority) and points.attrs["reference"] in points.index:
        ax.axvline(majority - points.loc[points.attrs["reference"], "score"], color="tab:red", ls="--", lw=1,
                   label="majority class")
        ax.legend(fontsize=7)
    ax.set_xlabel(f"Δ {metric} vs dense, same examples (paired 95 % interval;\nred/green: Holm p < 0.05)",
                  fontsize=8)
    fig.suptitle(f"{task}: n = {n} examples, run {run_id}", fontsize=10)
    fig.tight_layout()
    return fig


def write_figures(rows: pd.DataFrame, directory: Path | str, run_id: str, formats: tuple[str, ...] = FORMATS
                  ) -> list[Path]:
    """One figure per task of the run, in every format; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise UserError(f"unknown figure format(s) {', '.join(bad)}; choose from {', '.join(FORMATS)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for task, points in run_points(rows, run_id).items():
        fig = task_figure(task, points, run_id)
        for fmt in formats:
            path = directory / f"{task}.{fmt}"
            fig.savefig(path, format=fmt, dpi=150, bbox_inches="tight")
            written.append(path)
        plt.close(fig)
    return written
