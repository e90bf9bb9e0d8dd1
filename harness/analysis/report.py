"""A self-contained HTML report of the store: the verdict per backend and task with the speed crossover over
lengths (first), Pareto views per task and history plots with change points.

Plots are drawn with matplotlib and embedded as base64 PNG, so the page needs no network (unlike
``asv publish``, whose site loads its scripts from CDNs).
"""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from .compare import KEY, format_param, with_variant
from .scales import format_change
from .regressions import find_regressions, history_order, per_commit_values, to_frame

HISTORY_METRICS = ("latency_forward", "latency_attention_core")


def _figure_html(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def pareto_front(points: pd.DataFrame) -> pd.DataFrame:
    """Points not dominated by another (lower latency and higher score): the best trade-offs."""
    ordered = points.sort_values(["latency", "score"], ascending=[True, False])
    front, best = [], -np.inf
    for row in ordered.itertuples():
        if row.score > best:
            front.append(row.Index)
            best = row.score
    return points.loc[front]


def pareto_points(rows: pd.DataFrame, run_id: str) -> dict[str, pd.DataFrame]:
    """Per task: each backend's main metric and agreement against its attention-core latency, from one run."""
    run = rows[rows["run_id"] == run_id]
    latency = run[run["metric"] == "latency_attention_core"].groupby("backend")["value"].median()
    quality = run[run["category"] == "quality"]
    out = {}
    for task, group in quality.groupby("task", sort=False):
        main = group["metric"].iloc[0]
        scores = group[group["metric"] == main].set_index("backend")["value"]
        agree = run[(run["task"] == task) & (run["metric"] == "agreement")].set_index("backend")["value"]
        frame = pd.DataFrame({"score": scores, "latency": latency.reindex(scores.index),
                              "agreement": agree.reindex(scores.index)})
        frame["metric"] = main
        out[task] = frame.dropna(subset=["latency"])
    return out


def _pareto_figure(task: str, points: pd.DataFrame):
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ax.scatter(points["latency"] * 1e3, points["score"], color="tab:blue")
    front = pareto_front(points)
    ax.plot(front["latency"] * 1e3, front["score"], color="tab:orange", drawstyle="steps-post", lw=1,
            label="Pareto front")
    for backend, row in points.iterrows():
        ax.annotate(backend, (row["latency"] * 1e3, row["score"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("attention core latency (ms, log scale)")
    ax.set_ylabel(points["metric"].iloc[0])
    ax.set_title(task)
    ax.legend(fontsize=7)
    return fig


def _history_figure(title: str, history: pd.DataFrame, changes: pd.DataFrame, unit: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    scale = 1e3 if unit in ("s", "seconds") else 1.0
    x = np.arange(len(history))
    ax.plot(x, history["value"] * scale, marker="o", ms=3, lw=1)
    for change in changes.itertuples():
        position = history.index[history["commit"] == change.commit]
        if len(position):
            colour = "tab:red" if change.kind == "regression" else "tab:green"
            ax.axvline(position[0] - 0.5, color=colour, ls="--", lw=1)
            ax.annotate(format_change(change.change, change.scale), (position[0] - 0.5, ax.get_ylim()[1]), color=colour, fontsize=7,
                        va="top")
    ax.set_xticks(x, [c[:7] for c in history["commit"]], rotation=90, fontsize=6)
    ax.set_ylabel("ms" if scale == 1e3 else unit)
    ax.set_title(title, fontsize=9)
    return fig


def build_report(rows: pd.DataFrame, *, run_id: str | None = None, max_history: int = 24) -> str:
    """The report page as one HTML string."""
    import matplotlib

    matplotlib.use("Agg")
    harness_rows = rows[rows["source"] == "harness"]
    sections = []
    if run_id is None and not harness_rows.empty:
        run_id = harness_rows.sort_values("timestamp")["run_id"].iloc[-1]
    if run_id is not None:
        from .slides import run_points, task_figure
        from .verdicts import report_section

        verdicts = report_section(rows, run_id, _figure_html)
        if verdicts:
            sections.append(verdicts)

        figures = "".join(_figure_html(task_figure(task, p, run_id)) for task, p in run_points(rows, run_id).items())
        if figures:
            sections.append(f"<h2>Task metrics with 95 % intervals, speed-ups and paired changes vs dense "
                            f"(run {html.escape(run_id)})</h2><div class='grid'>{figures}</div>")
        points = pareto_points(rows, run_id)
        meta = rows[rows["run_id"] == run_id].iloc[0]
        figures = "".join(_figure_html(_pareto_figure(task, p)) for task, p in points.items() if len(p))
        sections.append(f"<h2>Accuracy against attention-core latency (run {html.escape(run_id)})</h2>"
                        f"<p>Machine {html.escape(str(meta['machine']))}, {meta['threads']} thread(s), commit "
                        f"{html.escape(str(meta['commit'])[:10])}; the orange line is the Pareto front.</p>"
                        f"<div class='grid'>{figures or '<p>No latency and task rows in this run.</p>'}</div>")
    rows = with_variant(rows)  # once, for find_regressions and the series below
    changes = to_frame(find_regressions(rows))
    speed = rows[rows["metric"].isin(HISTORY_METRICS) | rows["metric"].str.startswith("bench_speed.")]
    order = history_order(speed).position
    plots = []
    for key, series in speed[speed["commit"].notna()].groupby(KEY, dropna=False):
        history = per_commit_values(series, order)
        if len(history) < 2:
            continue
        mask = np.ones(len(changes), dtype=bool)
        for column, value in zip(KEY, key):
            if len(changes):
                mask &= (changes[column].isna() & pd.isna(value)) | (changes[column] == value)
        label = " · ".join(f"{k}={format_param(v)}" for k, v in zip(KEY, key)
                           if k in ("backend", "metric", "threads", "seq_len") and pd.notna(v))
        plots.append(_figure_html(_history_figure(f"{label} ({dict(zip(KEY, key))['machine']})", history,
                                                  changes[mask] if len(changes) else changes,
                                                  series["unit"].iloc[0])))
        if len(plots) >= max_history:
            break
    table = changes.to_html(index=False, float_format=lambda v: f"{v:.4g}") if len(changes) else \
        "<p>No significant change points.</p>"
    empty = "<p>Fewer than two commits with timings: run the harness or asv on more commits.</p>"
    sections.append(f"<h2>History over commits</h2><div class='grid'>{''.join(plots) or empty}</div>"
                    f"<h3>Change points</h3>{table}")
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>attnbench report</title><style>"
            "body{font-family:sans-serif;margin:1.5em;} .grid{display:flex;flex-wrap:wrap;gap:8px;}"
            "table{border-collapse:collapse;font-size:12px} td,th{border:1px solid #ccc;padding:2px 6px}"
            f"</style></head><body><h1>attnbench report</h1><p>{len(rows)} rows, generated {generated}.</p>"
            + "".join(sections) + "</body></html>")


def write_report(rows: pd.DataFrame, path: Path | str, *, run_id: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(build_report(rows, run_id=run_id))
    return path
