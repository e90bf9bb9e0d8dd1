"""Paired verdicts: backends against a baseline on the same examples, with Holm's correction.

Two sources:

* the ``paired`` rows an eval cell stores (``delta_vs_reference:<metric>``: Δ against the run's reference,
  paired 95 % interval, unadjusted p) — :func:`with_holm` adds the Holm-adjusted p-value and a word for its significance;
* the per-example predictions table (:mod:`harness.store.predictions`) — :func:`paired_from_predictions`
  compares any baseline backend with any other backend of a run, or two runs on the same examples.

The family of Holm's correction is one backend's task metrics of one run (each of its paired changes against
the baseline), so that no backend's adjusted p-value depends on which other backends shared the run. The
verdict a researcher reads first is the non-inferiority verdict of :mod:`harness.analysis.verdicts`.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import pandas as pd

from .. import stats

from ..store.schema import BASELINE_PREFIX, PAIRED_PREFIX  # noqa: F401  (re-exported: the analysis reads them here)

ALPHA = 0.05
HOLM_NOTE = ("p: two-sided, exact McNemar for accuracy, paired permutation otherwise; Holm-adjusted across each "
             "backend's own task metrics (family: one backend of one run, never the other backends)")


def verdict(delta: float, p_holm: float, direction: str, alpha: float = ALPHA) -> str:
    if not np.isfinite(p_holm) or not np.isfinite(delta):
        return "n/a"
    if p_holm >= alpha or delta == 0:
        return "no significant change"
    better = delta > 0 if direction != "lower" else delta < 0
    return "significant gain" if better else "significant loss"


#: Holm's family: one backend's paired changes (every task metric) against the reference in one run, device and dtype
HOLM_FAMILY = ("run_id", "backend", "device", "dtype")


def _holm_within(rows: pd.DataFrame, family: Iterable[str]) -> pd.Series:
    """Holm-adjusted ``p_value`` of ``rows`` within each family (NaN p-values stay NaN and do not count)."""
    keys = [k for k in family if k in rows]
    return rows.groupby(keys, dropna=False)["p_value"].transform(lambda p: stats.holm(p.to_numpy()))


def holm_adjusted(rows: pd.DataFrame, family: Iterable[str] = HOLM_FAMILY) -> pd.Series:
    """Holm-adjusted p-values (Holm 1979, :func:`harness.stats.holm`) of the ``paired`` rows of ``rows``, within
    each family; NaN on every other row. Index: ``rows.index``."""
    out = pd.Series(np.nan, index=rows.index, dtype=float)
    if rows.empty or "category" not in rows:
        return out
    paired = rows[rows["category"] == "paired"]
    if not paired.empty:
        out.loc[paired.index] = _holm_within(paired, family)
    return out


def with_holm(paired: pd.DataFrame, alpha: float = ALPHA, family: Iterable[str] = HOLM_FAMILY) -> pd.DataFrame:
    """``paired`` rows with ``p_holm`` (Holm within each family) and ``significance`` (a word for the test of no
    change; the stored non-inferiority ``verdict`` column is left as it is)."""
    out = paired.copy()
    if out.empty:
        return out.assign(p_holm=pd.Series(dtype=float), significance=pd.Series(dtype=object))
    out["p_holm"] = _holm_within(out, family)
    out["significance"] = [verdict(d, p, direction, alpha) for d, p, direction
                      in zip(out["value"], out["p_holm"], out.get("direction", pd.Series("higher", index=out.index)))]
    return out


def same_examples(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether two cells' predictions cover the same examples with the same labels (in any order)."""
    if len(a) != len(b) or a.empty:
        return False
    a, b = a.sort_values("idx"), b.sort_values("idx")
    return bool(np.array_equal(a["idx"].to_numpy(), b["idx"].to_numpy())
                and np.allclose(a["label"].to_numpy(), b["label"].to_numpy(), equal_nan=True))


def paired_from_predictions(baseline: pd.DataFrame, candidates: dict[str, pd.DataFrame],
                            metrics: Callable[[str], list], alpha: float = ALPHA) -> pd.DataFrame:
    """Paired tests of each candidate's predictions against ``baseline``'s, per task and metric.

    ``baseline`` and each candidate are prediction frames (one backend or run each, any tasks);
    ``metrics(task)`` gives the task's :class:`~harness.tasks.contract.Metric` list. A task whose examples
    differ (another limit, data or split) gets the verdict ``examples differ`` and no test. Holm's correction
    runs over each candidate's task metrics.
    """
    records = []
    for name, candidate in candidates.items():
        for task, base in baseline.groupby("task", sort=False):
            other = candidate[candidate["task"] == task]
            if other.empty:
                continue
            for metric in metrics(task):
                record = {"candidate": name, "task": task, "metric": metric.name, "direction": metric.direction,
                          "n": len(base)}
                if not same_examples(base, other):
                    records.append({**record, "verdict": "examples differ",
                                    "note": f"{len(base)} vs {len(other)} examples or different labels"})
                    continue
                a, b = base.sort_values("idx"), other.sort_values("idx")
                labels = a["label"].to_numpy()
                values = np.concatenate([labels, a["prediction"].to_numpy(), b["prediction"].to_numpy()])
                integral = bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))
                cast = (lambda v: v.astype(np.int64)) if integral else (lambda v: v)  # class ids, or scores
                result = stats.paired_test(metric.fn, cast(labels), cast(a["prediction"].to_numpy()),
                                           cast(b["prediction"].to_numpy()))
                records.append({**record, "baseline_value": float(metric.fn(cast(labels), cast(a["prediction"].to_numpy()))),
                                "value": result.delta, "ci_low": result.low, "ci_high": result.high,
                                "p_value": result.p_value, "test": result.test})
    frame = pd.DataFrame(records)
    if frame.empty:
        return frame
    tasks = list(dict.fromkeys(baseline["task"]))
    frame = frame.sort_values(["task", "metric"], key=lambda s: s.map(tasks.index) if s.name == "task" else
                              s.map({m: i for i, m in enumerate(dict.fromkeys(frame["metric"]))}),
                              kind="stable").reset_index(drop=True)
    tested = frame["p_value"].notna() if "p_value" in frame else pd.Series(False, index=frame.index)
    frame["p_holm"] = np.nan
    if tested.any():
        frame.loc[tested, "p_holm"] = _holm_within(frame[tested], ("candidate",))
        frame.loc[tested, "verdict"] = [verdict(d, p, direction, alpha) for d, p, direction in
                                        frame.loc[tested, ["value", "p_holm", "direction"]].itertuples(index=False)]
    return frame


def format_paired(frame: pd.DataFrame, baseline: str) -> str:
    """Markdown table of :func:`paired_from_predictions`' result."""
    lines = [f"| task | metric | candidate | {baseline} | Δ vs {baseline} [95 % paired CI] | p | p (Holm) | verdict |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in frame.to_dict("records"):
        if r.get("verdict") == "examples differ":
            lines.append(f"| {r['task']} | {r['metric']} | {r['candidate']} | | | | | examples differ: "
                         f"{r['note']}; no paired test |")
            continue
        lines.append(f"| {r['task']} | {r['metric']} | {r['candidate']} | {r['baseline_value']:.4f} | "
                     f"{r['value']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | {r['p_value']:.3g} | "
                     f"{r['p_holm']:.3g} | {r['verdict']} |")
    return "\n".join(lines) + f"\n\n{HOLM_NOTE}; n = examples paired per task."
