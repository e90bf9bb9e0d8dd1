"""``attnbench compare`` within one run (backend against backend), and paired tests across runs.

Within a run every backend saw the same examples and its timings were interleaved with the others', so:

* task metrics are compared on the per-example predictions (:mod:`harness.store.predictions`): Δ with a
  paired bootstrap interval and a paired test (exact McNemar for accuracy, paired permutation otherwise),
  Holm-adjusted across the candidates of each task metric (:func:`harness.analysis.paired.paired_from_predictions`);
* latencies are compared as the ratio of medians (speed-up of the candidate over the baseline) with a
  bootstrap interval from the interleaved samples, per shape.

Across two runs, :func:`pair_across_runs` replaces the exact comparison of task metrics by the paired test
when both runs stored predictions for the same examples, and says why not otherwise.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from .. import stats
from ..errors import UserError
from . import verdicts
from .paired import ALPHA, format_paired, paired_from_predictions, verdict
from ..store.predictions import read_predictions


def latest_run(rows: pd.DataFrame) -> str:
    harness = rows[rows["source"] == "harness"]
    if harness.empty:
        raise UserError("the store holds no harness run")
    return str(harness.sort_values("timestamp")["run_id"].iloc[-1])


def compare_within_run(rows: pd.DataFrame, store: str, run_id: str | None, baseline: str,
                       candidates: list[str] | None = None, *, metrics: Callable[[str], list],
                       alpha: float = ALPHA) -> tuple[str, pd.DataFrame]:
    """Markdown of every candidate backend of a run against ``baseline``; returns ``(text, paired table)``."""
    run_id = run_id or latest_run(rows)
    mine = rows[rows["run_id"] == run_id]
    if mine.empty:
        raise UserError(f"no run {run_id!r} in the store")
    backends = list(dict.fromkeys(mine["backend"].dropna()))
    if baseline not in backends:
        raise UserError(f"run {run_id} has no backend {baseline!r}; it has {', '.join(backends)}")
    candidates = candidates or [b for b in backends if b != baseline]
    missing = [c for c in candidates if c not in backends]
    if missing:
        raise UserError(f"run {run_id} has no backend {', '.join(map(repr, missing))}; it has {', '.join(backends)}")
    parts = [f"**run {run_id}**: {', '.join(candidates)} vs **{baseline}** on the same examples"
             + (" and interleaved timings" if (mine["category"] == "speed").any() else "")]
    verdict = verdicts.verdict_table(mine[mine["backend"].isin([baseline, *candidates])], baseline)
    if baseline != verdicts.REFERENCE:
        parts.append(f"no verdicts against {baseline}: they are measured against the run's reference, "
                     f"{verdicts.REFERENCE} (compare --baseline {verdicts.REFERENCE})")
    elif verdict.empty:
        parts.append(f"no verdicts: the run stored none against {baseline} (runs stored before the verdict "
                     "columns of schema 6 have none)")
    else:
        parts.append(verdicts.format_verdicts(verdict, baseline, markdown=True))
    predictions = read_predictions(store, run_id=run_id)
    paired = pd.DataFrame()
    if predictions.empty:
        parts.append("no per-example predictions stored for this run (it predates them, or ran without a store): "
                     "no paired test of task metrics")
    else:
        base = predictions[predictions["backend"] == baseline]
        paired = paired_from_predictions(base, {c: predictions[predictions["backend"] == c] for c in candidates},
                                         metrics, alpha)
        if not paired.empty:
            parts.append(format_paired(paired, baseline))
    speed = speed_within_run(mine, baseline, candidates)
    if speed:
        parts.append(speed)
    return "\n\n".join(parts), paired


def compare_verdicts(rows: pd.DataFrame, run_a: str, run_b: str, baseline: str) -> tuple[str, int]:
    """``compare --baseline BACKEND A B``: each run's verdict table and the lines whose accuracy verdict
    changed; returns ``(markdown, exit code)``, 1 when a backend that was not worse on a task in A is worse in B."""
    if baseline != verdicts.REFERENCE:
        raise UserError(f"verdicts are measured against the run's reference: use --baseline {verdicts.REFERENCE} "
                        f"with two runs, not {baseline!r}")
    tables = []
    for run_id in (run_a, run_b):
        mine = rows[rows["run_id"] == run_id]
        if mine.empty:
            raise UserError(f"no run {run_id!r} in the store; give two run ids (see the runs attnbench run printed)")
        table = verdicts.verdict_table(mine, baseline)
        if table.empty:
            raise UserError(f"run {run_id} holds no verdict against {baseline!r} (runs stored before schema 6, or "
                            "without another backend, have none); rerun it with attnbench run")
        tables.append(table)
    worse = verdicts.worsened(*tables)
    text = "\n\n".join([f"**A: run {run_a}**\n\n" + verdicts.format_verdicts(tables[0], baseline, markdown=True),
                        f"**B: run {run_b}**\n\n" + verdicts.format_verdicts(tables[1], baseline, markdown=True),
                        verdicts.format_changes(tables[0], tables[1], "A", "B")])
    if len(worse):
        text += ("\n\nfailed: not worse in A, worse in B: "
                 + ", ".join(f"{r.backend} on {r.task}" for r in worse.itertuples()))
    return text, 1 if len(worse) else 0


def verdict_gate(rows: pd.DataFrame, run_a: str, run_b: str) -> tuple[str, bool]:
    """For ``compare A B`` of two runs: the accuracy verdicts that changed, and whether one went from not worse
    to worse (``("", False)`` when either is not a run with verdicts)."""
    tables = [verdicts.verdict_table(rows[rows["run_id"] == run_id]) for run_id in (run_a, run_b)]
    if any(t.empty for t in tables):
        return "", False
    worse = verdicts.worsened(*tables)
    return verdicts.format_changes(*tables, "A", "B"), bool(len(worse))


def speed_within_run(rows: pd.DataFrame, baseline: str, candidates: list[str]) -> str:
    timed = rows[(rows["category"] == "speed") & rows["samples"].notna()]
    if timed.empty:
        return ""
    lines = [f"| shape | metric | candidate | {baseline} median | candidate median | speed-up vs {baseline} [95 % CI] | verdict |",
             "|---|---|---|---:|---:|---:|---|"]
    for (batch, seq, metric), group in timed.groupby(["batch_size", "seq_len", "metric"], sort=False):
        by_backend = group.drop_duplicates("backend", keep="last").set_index("backend")["samples"]
        if baseline not in by_backend:
            continue
        for candidate in candidates:
            if candidate not in by_backend:
                continue
            a, b = np.asarray(by_backend[baseline], float), np.asarray(by_backend[candidate], float)
            ratio, low, high = stats.ratio_interval(a, b)
            said = "n/a" if not np.isfinite(low) else ("faster" if low > 1 else "slower" if high < 1 else
                                                        "no significant difference")
            lines.append(f"| {int(batch)}x{int(seq)} | {metric} | {candidate} | {np.median(a) * 1e3:.1f} ms | "
                         f"{np.median(b) * 1e3:.1f} ms | {ratio:.2f}x [{low:.2f}, {high:.2f}] | {said} |")
    loads = timed["foreign_load"].dropna() if "foreign_load" in timed else pd.Series(dtype=float)
    note = f"\n\nother processes kept up to {loads.max():.2f} core(s) busy while timing" if len(loads) else ""
    return "\n".join(lines) + note if len(lines) > 2 else ""


def pair_across_runs(table: pd.DataFrame, rows: pd.DataFrame, store: str, run_a: str | None, run_b: str | None, *,
                     metrics: Callable[[str], list], alpha: float = ALPHA,
                     abs_threshold: float = 0.01) -> pd.DataFrame:
    """``compare``'s table with the task-metric rows of two runs tested on their per-example predictions.

    A task metric of a backend gets a paired interval and p-value (kind ``paired``) when both runs stored
    predictions for the same examples; otherwise its kind says why there is no paired test."""
    if table.empty or "category" not in rows:
        return table
    table = table.copy()
    quality_metrics = set(rows.loc[rows["category"] == "quality", "metric"].dropna())
    mask = table["metric"].isin(quality_metrics) & (table["kind"] == "exact") & table["task"].notna()
    if not mask.any():
        return table
    if run_a is None or run_b is None:
        table.loc[mask, "kind"] = "exact (no paired test across several runs)"
        return table
    preds_a, preds_b = read_predictions(store, run_id=run_a), read_predictions(store, run_id=run_b)
    for index in table.index[mask]:
        r = table.loc[index]
        side_a = preds_a[(preds_a["backend"] == r["backend"]) & (preds_a["task"] == r["task"])]
        side_b = preds_b[(preds_b["backend"] == r["backend"]) & (preds_b["task"] == r["task"])]
        if side_a.empty or side_b.empty:
            table.loc[index, "kind"] = "exact (no per-example predictions)"
            continue
        metric = next((m for m in metrics(r["task"]) if m.name == r["metric"]), None)
        result = paired_from_predictions(side_a, {"b": side_b}, lambda task: [metric] if metric else [], alpha)
        if result.empty or result["verdict"].iloc[0] == "examples differ":
            table.loc[index, ["kind", "verdict", "settings"]] = [
                "examples differ", "settings differ", "per-example ids or labels differ (data or split)"]
            continue
        found = result.iloc[0]
        table.loc[index, ["ci_low", "ci_high", "p_value"]] = [found["ci_low"], found["ci_high"], found["p_value"]]
        table.loc[index, "kind"] = found["test"]
        significant = found["p_value"] < alpha and not (found["ci_low"] <= 0 <= found["ci_high"])
        said = verdict(found["value"], found["p_value"], r["direction"], alpha)
        if not significant:
            table.loc[index, "verdict"] = "not significant" if found["value"] != 0 else "no change"
        elif abs(found["value"]) < abs_threshold:
            table.loc[index, "verdict"] = "within threshold"
        else:
            table.loc[index, "verdict"] = "regression" if said == "significant loss" else "improvement"
    return table
