"""Change points in the commit history of every measured series.

A series is one measurement over commits: the rows sharing the row schema's key (what is measured and every
setting it was measured with, :data:`harness.store.schema.KEY`).
Per commit, its value is the median of the pooled raw samples (or of the values, for unsampled metrics).
E-divisive with a permutation test (:mod:`harness.analysis.changepoints`) finds the change points; a change is
reported when significant (``p <= alpha``) and larger than ``min_effect`` (relative, for positive quantities
such as seconds and bytes) or ``min_abs_effect`` (absolute, for scores and every other metric that can be
zero or negative; :func:`harness.analysis.scales.scale_of` decides). Working on per-commit values,
not raw samples, is what makes run-to-run drift count as noise. (asv's own ``step_detect`` was tried
first: on 20 commits with 1 % per-commit noise it found a 5 % step in under half of the histories.)
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from .changepoints import e_divisive, smallest_p_value
from .compare import KEY, with_variant
from ..store.schema import SETTINGS
from .scales import Scale, change, format_change, is_worse, scale_of
from ..provenance import git


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
    scale: Scale = "ratio"  # how the step is measured (:func:`harness.analysis.scales.scale_of`)
    change: float = float("nan")  # the step on its scale: after / before, or after - before


@dataclass(frozen=True)
class HistoryOrder:
    """The order of a store's commits, as git's history gives it.

    ``position``: each ordered commit's index, oldest first. ``missing``: commits of the rows that the
    repository does not have (a shallow or partial clone, a branch not fetched): they are left out of the
    history, never placed by guess. ``by``: ``"git"``, or ``"time"`` when none of the commits is in the
    repository (no git, another project's store): then the order is that of the commit dates asv recorded, or
    of the first result of each commit, and :meth:`notes` says so.
    """

    position: dict[str, int]
    missing: tuple[str, ...] = ()
    by: str = "git"
    repo: str = "."

    @property
    def commits(self) -> list[str]:
        """The ordered commits, oldest first."""
        return sorted(self.position, key=self.position.__getitem__)

    def notes(self) -> list[str]:
        """One line per way the order falls short of the whole history (none when it does not)."""
        out = []
        if self.missing:
            out.append(f"{len(self.missing)} commit(s) of the store are not in the git history of {self.repo} "
                       f"(a shallow clone? `git fetch --unshallow`): left out, e.g. "
                       f"{', '.join(c[:10] for c in self.missing[:3])}")
        if self.by == "time":
            out.append(f"none of the store's commits is in the git history of {self.repo}: commits are ordered by "
                       "their commit date (asv) or first result; run inside the measured repository (--repo) "
                       "for git's order")
        return out


def history_order(rows: pd.DataFrame, repo: Path | str | None = None) -> HistoryOrder:
    """The :class:`HistoryOrder` of the commits of ``rows`` (``git rev-list --topo-order --reverse --all`` of
    ``repo``, default the current directory's repository)."""
    repo = Path(repo) if repo is not None else Path.cwd()
    commits = [c for c in pd.unique(rows["commit"].dropna())] if "commit" in rows else []
    try:
        listed = git("rev-list", "--topo-order", "--reverse", "--all", repo=repo, timeout=30).split()
    except (OSError, subprocess.SubprocessError):
        listed = []
    index = {sha: i for i, sha in enumerate(listed)}
    known = {c: index[c] for c in commits if c in index}
    if known or not commits:
        return HistoryOrder(known, tuple(c for c in commits if c not in index), "git", str(repo))
    dated = rows[rows["commit"].notna()]
    first = dated.groupby("commit")["timestamp"].min()
    commit_dates = dated["extra"].map(_commit_date) if "extra" in dated else pd.Series(dtype=object)
    when = {c: first[c] for c in first.index}
    if len(commit_dates):
        by_commit = pd.Series(list(commit_dates), index=list(dated["commit"]), dtype=object).dropna()
        for commit, date in by_commit.groupby(level=0).min().items():
            when[commit] = date
    ordered = sorted(when, key=lambda c: (pd.isna(when[c]), pd.Timestamp(when[c]).value if pd.notna(when[c]) else 0, c))
    return HistoryOrder({c: i for i, c in enumerate(ordered)}, (), "time", str(repo))


def _commit_date(extra: object) -> pd.Timestamp | None:
    if not isinstance(extra, str) or "commit_date" not in extra:
        return None
    try:
        value = json.loads(extra).get("commit_date")
    except ValueError:
        return None
    return pd.Timestamp(value) if value else None


def commit_order(commits: list[str], repo: Path | str | None = None) -> dict[str, int]:
    """Position of each commit in git's history (``git rev-list --topo-order --reverse --all``); commits the
    repository does not have are left out."""
    return history_order(pd.DataFrame({"commit": commits, "timestamp": pd.NaT}), repo).position


def findable_positions(n: int, *, alpha: float = 0.01, min_segment: int = 3) -> list[int]:
    """Indices ``i`` (first commit after a step) at which a clean step in ``n`` per-commit values can be found:
    ``min_segment`` commits on each side, and an exact permutation p-value ``2 / C(n, i)`` that can reach
    ``alpha`` (:func:`~harness.analysis.changepoints.smallest_p_value`)."""
    return [i for i in range(min_segment, n - min_segment + 1) if smallest_p_value(n, i) <= alpha]


def shortest_findable_history(*, alpha: float = 0.01, min_segment: int = 3) -> int:
    """The fewest commits in which any step can be found at ``alpha`` (10 at the defaults)."""
    n = 2 * min_segment
    while not findable_positions(n, alpha=alpha, min_segment=min_segment):
        n += 1
    return n


def coverage_notes(order: HistoryOrder, *, alpha: float = 0.01, min_segment: int = 3) -> list[str]:
    """What the change-point search cannot judge in this history, each with what to do instead.

    A history shorter than :func:`shortest_findable_history` cannot show any step; otherwise the newest
    commits after the last findable position cannot (too few commits after them), and each of them is
    judged against the commit before it by ``attnbench compare``.
    """
    commits = order.commits
    n = len(commits)
    if n == 0:
        return []
    needed = shortest_findable_history(alpha=alpha, min_segment=min_segment)
    if n < needed:
        return [f"the history has {n} commit(s); a step can be found from {needed} commits on (at least "
                f"{min_segment} on each side, p <= {alpha:g}): no commit can be judged here; compare pairs of "
                f"commits instead, e.g. attnbench compare {commits[-2][:10]} {commits[-1][:10]}"
                if n >= 2 else f"the history has {n} commit: a step needs at least {needed}"]
    last = max(findable_positions(n, alpha=alpha, min_segment=min_segment))
    unjudged = commits[last + 1:]
    if not unjudged:
        return []
    pairs = "; ".join(f"attnbench compare {a[:10]} {b[:10]}" for a, b in zip(commits[last:], unjudged))
    return [f"the newest {len(unjudged)} commit(s) {', '.join(c[:10] for c in unjudged)} cannot be judged here "
            f"(a step needs {min_segment}+ commits after it, and p <= {alpha:g}); compare each with the commit "
            f"before it: {pairs}"]


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


#: Units of absolute times: only these are divided by the reference (a speed-up or a ratio already is relative).
TIME_UNITS = ("s", "seconds", "ms")


def relative_rows(rows: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Speed rows divided by the same run's ``reference`` row (same metric and settings).

    The reference is timed interleaved with the other backends of its run, so the ratio cancels what
    slows a whole run down (a busy neighbour, a slower boot): the noise that limits absolute series.
    """
    speed = rows[(rows["category"] == "speed") & rows["run_id"].notna() & rows["unit"].isin(TIME_UNITS)]
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
                     relative_to: str | None = "dense", min_abs_effect: float = 0.01,
                     order: HistoryOrder | None = None) -> list[ChangePoint]:
    """Change points of every series that has results for at least ``2 * min_segment`` commits.

    ``min_effect`` is the smallest relative step of positive quantities (seconds, bytes, rates),
    ``min_abs_effect`` the smallest absolute step of every other metric (scores can be zero or negative).

    With ``relative_to``, every speed series of another backend is also searched as a ratio to that
    backend's value in the same run (see :func:`relative_rows`); those change points carry ``relative_to``.

    Commits are placed in git's order (``order``, default :func:`history_order` of the rows); commits it leaves
    out (missing from the repository) are not searched.
    """
    rows = with_variant(rows[rows["commit"].notna()])
    if categories:
        rows = rows[rows["category"].isin(categories)]
    order = (order or history_order(rows)).position
    rows = rows[rows["commit"].isin(order)]
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


def format_points(points: pd.DataFrame, *, include_improvements: bool = False) -> str:
    """The change points of :func:`to_frame` as a Markdown table (regressions only unless
    ``include_improvements``), or one line saying there are none."""
    from .compare import format_param

    if points.empty:
        return "no significant change points"
    if not include_improvements:
        points = points[points["kind"] == "regression"]
        if points.empty:
            return "no regressions (improvements only: --all lists them)"
    lines = ["| kind | suspected commit | previous | series | before | after | step | p (permutation) |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in points.itertuples():
        parts = []
        for k in ("metric", "backend", "task", "variant", "threads", "seq_len", "machine"):
            value = getattr(r, k, None)
            if k not in points or value is None or (not isinstance(value, str) and pd.isna(value)) or value == "":
                continue
            if k == "variant":  # asv parameters without a column of their own, as canonical JSON
                parts += [f"{name}={format_param(v)}" for name, v in json.loads(value).items()]
            else:
                parts.append(f"{k}={format_param(value)}")
        relative = f" (÷ {r.relative_to} of the same run)" if isinstance(r.relative_to, str) else ""
        lines.append(f"| {r.kind} | {r.commit[:10]} | {r.previous[:10]} | {', '.join(parts)}{relative} | "
                     f"{r.before:.4g} | {r.after:.4g} | {format_change(r.change, r.scale)} | {r.p_value:.3g} |")
    return "\n".join(lines)
