"""Change points in the commit history of every measured series.

A series is one measurement over commits: the rows sharing the row schema's key (what is measured and every
setting it was measured with, :data:`harness.history.schema.KEY`).
Per commit, its value is the median of the pooled raw samples (or of the values, for unsampled metrics).
E-divisive with a permutation test (:mod:`harness.history.changepoints`) finds the change points; a change is
reported when significant (``p <= alpha``) and larger than ``min_effect`` (relative, for positive quantities
such as seconds and bytes) or ``min_abs_effect`` (absolute, for scores and every other metric that can be
zero or negative; :func:`harness.history.scales.scale_of` decides). Working on per-commit values,
not raw samples, is what makes run-to-run drift count as noise. (asv's own ``step_detect`` was tried
first: on 20 commits with 1 % per-commit noise it found a 5 % step in under half of the histories.)
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from .changepoints import e_divisive
from .compare import KEY, with_variant
from .schema import SETTINGS
from .scales import Scale, change, is_worse, scale_of
from ..provenance import ROOT, git


@dataclass(frozen=True)
class ChangePoint:
    series: tuple
    commit: str            # first commit after the step (the suspect)
    previous: str          # last commit before it
    position: int          # index of ``commit`` in the series' commit order
    before: float          # median of the per-commit values of the segment before
    after: float
    ratio: float           # after / before on the ratio scale, NaN on the difference scale
    p_value: float
    direction: str
    regression: bool       # the step goes in the bad direction (sign of after - before)
    relative_to: str | None = None  # the series was divided by this backend's value of the same run
    scale: Scale = "ratio"  # how the step is measured (:func:`harness.history.scales.scale_of`)
    change: float = float("nan")  # the step on its scale: after / before, or after - before


def commit_order(commits: list[str], repo: Path = ROOT) -> dict[str, int]:
    """Position of each commit in ``git rev-list --topo-order --reverse --all``. Commits unknown to the
    repository all get the same last position, so their results are ordered by time."""
    try:
        listed = git("rev-list", "--topo-order", "--reverse", "--all", repo=repo, timeout=30).split()
    except (OSError, subprocess.SubprocessError):
        listed = []
    position = {sha: i for i, sha in enumerate(listed)}
    return {c: position.get(c, len(listed)) for c in commits}


def newest_commits(rows: pd.DataFrame, count: int, repo: Path = ROOT) -> list[str]:
    """The ``count`` newest commits of ``rows``, oldest first, in the order :func:`find_regressions` uses
    (git history, then time of the first result)."""
    rows = rows[rows["commit"].notna()]
    if rows.empty or count <= 0:
        return []
    order = commit_order(list(rows["commit"].unique()), repo)
    first_seen = rows.groupby("commit")["timestamp"].min()
    return sorted(first_seen.index, key=lambda c: (order[c], first_seen[c]))[-count:]


def compare_hint(rows: pd.DataFrame, min_segment: int = 3) -> str | None:
    """One line for ``attnbench regressions``: a step needs ``min_segment`` commits after it, so the newest
    ``min_segment - 1`` commits cannot be judged by the change-point search; ``attnbench compare`` can."""
    newest = newest_commits(rows, min_segment)
    if len(newest) < 2:
        return None
    unjudged = ", ".join(c[:10] for c in newest[1:])
    return (f"the newest commit(s) {unjudged} cannot be judged here (a step needs {min_segment} commits after "
            f"it); whether the newest commit regressed is `attnbench compare`'s job: "
            f"attnbench compare {newest[-2][:10]} {newest[-1][:10]}")


def per_commit_values(series: pd.DataFrame, order: dict[str, int]) -> pd.DataFrame:
    """One row per commit (in history order): commit, median of pooled samples, number of samples."""
    out = []
    for commit, group in series.groupby("commit"):
        pooled: list[float] = []
        for value, samples in zip(group["value"], group["samples"]):
            pooled.extend(samples if samples is not None and len(samples) else [value])
        out.append({"commit": commit, "value": float(np.median(pooled)), "n": len(pooled),
                    "timestamp": group["timestamp"].min(), "position": order.get(commit, 1 << 30)})
    return pd.DataFrame(out).sort_values(["position", "timestamp"]).reset_index(drop=True)


def detect_change_points(values: np.ndarray, *, alpha: float = 0.01, min_effect: float = 0.02,
                         min_segment: int = 3, scale: Scale = "ratio",
                         min_abs_effect: float = 0.01) -> list[tuple[int, float, float, float]]:
    """Steps in a series of per-commit values: ``(first index after the step, before, after, p)``.

    ``before``/``after`` are the medians of the adjacent segments between change points. A step counts when
    ``|after / before - 1| >= min_effect`` on the ratio scale (both medians positive) or
    ``|after - before| >= min_abs_effect`` on the difference scale, so a step from exactly 0 is judged too.
    """
    points = e_divisive(values, alpha=alpha, min_segment=min_segment)
    bounds = [0] + [index for index, _ in points] + [len(values)]
    found = []
    for (index, p), start, stop in zip(points, bounds, bounds[2:]):
        before, after = float(np.median(values[start:index])), float(np.median(values[index:stop]))
        step = change(before, after, scale)
        big = abs(step - 1) >= min_effect if scale == "ratio" else abs(step) >= min_abs_effect
        if np.isfinite(step) and big:
            found.append((index, before, after, p))
    return found


def relative_rows(rows: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Speed rows divided by the same run's ``reference`` row (same metric and settings).

    The reference is timed interleaved with the other backends of its run, so the ratio cancels what
    slows a whole run down (a busy neighbour, a slower boot): the noise that limits absolute series.
    """
    speed = rows[(rows["category"] == "speed") & rows["run_id"].notna()]
    match = ["run_id", "source", "metric", *SETTINGS]
    ref = speed[speed["backend"] == reference][match + ["value"]].rename(columns={"value": "reference"})
    others = speed[speed["backend"] != reference].merge(ref, on=match, how="inner")
    others = others.assign(value=others["value"] / others["reference"], samples=None, unit="x")
    return others.drop(columns="reference")


def _series_points(rows: pd.DataFrame, order: dict[str, int], relative_to: str | None, alpha: float,
                   min_effect: float, min_segment: int, min_abs_effect: float) -> list[ChangePoint]:
    points = []
    for key, series in rows.groupby(KEY, dropna=False):
        history = per_commit_values(series, order)
        direction = series["direction"].iloc[0]
        scale = scale_of(series["unit"].iloc[0])
        for index, before, after, p in detect_change_points(history["value"].to_numpy(), alpha=alpha,
                                                            min_effect=min_effect, min_segment=min_segment,
                                                            scale=scale, min_abs_effect=min_abs_effect):
            step = change(before, after, scale)
            points.append(ChangePoint(key, history["commit"][index], history["commit"][index - 1], index, before,
                                      after, step if scale == "ratio" else float("nan"), p, direction,
                                      is_worse(before, after, direction), relative_to, scale, step))
    return points


def find_regressions(rows: pd.DataFrame, *, alpha: float = 0.01, min_effect: float = 0.02,
                     min_segment: int = 3, categories: tuple[str, ...] | None = None,
                     relative_to: str | None = "dense", min_abs_effect: float = 0.01) -> list[ChangePoint]:
    """Change points of every series that has results for at least ``2 * min_segment`` commits.

    ``min_effect`` is the smallest relative step of positive quantities (seconds, bytes, rates),
    ``min_abs_effect`` the smallest absolute step of every other metric (scores can be zero or negative).

    With ``relative_to``, every speed series of another backend is also searched as a ratio to that
    backend's value in the same run (see :func:`relative_rows`); those change points carry ``relative_to``.
    """
    rows = with_variant(rows[rows["commit"].notna()])
    if categories:
        rows = rows[rows["category"].isin(categories)]
    order = commit_order(list(rows["commit"].unique()))
    points = _series_points(rows, order, None, alpha, min_effect, min_segment, min_abs_effect)
    if relative_to:
        points += _series_points(relative_rows(rows, relative_to), order, relative_to, alpha, min_effect,
                                 min_segment, min_abs_effect)
    return points


def to_frame(points: list[ChangePoint]) -> pd.DataFrame:
    records = []
    for point in points:
        record = dict(zip(KEY, point.series))
        record.update({"commit": point.commit, "previous": point.previous, "before": point.before,
                       "after": point.after, "scale": point.scale, "change": point.change,
                       "ratio": point.ratio, "p_value": point.p_value,
                       "direction": point.direction, "relative_to": point.relative_to,
                       "kind": "regression" if point.regression else "improvement"})
        records.append(record)
    return pd.DataFrame(records)
