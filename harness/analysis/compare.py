"""Compare two commits or runs: per benchmark, the change B/A or B − A with a confidence interval and a verdict.

Rows are paired by the key of the row schema (:data:`harness.store.schema.KEY`): what is measured (source,
backend, task, metric) and every setting it was measured with (machine, model, data, limit, batching, threads,
shape, …), never across machines. Rows that measure the same thing with different settings get the verdict
``settings differ``, naming the settings, and never a regression or improvement.

Positive quantities (seconds, bytes, tokens/s, speed-ups) are
compared by the ratio of medians B/A, every other metric (scores, agreement, fidelity: they can be zero or
negative) by the difference B − A; :func:`harness.analysis.scales.scale_of` decides per unit. Where both
sides have repeated samples (timings), the change gets a bootstrap 95 % confidence interval
(``scipy.stats.bootstrap``) and a two-sided Mann–Whitney U test; a change is *significant* when p < alpha
and the interval excludes "no change". Values without samples (task metrics, which are deterministic for a
given code and data) are compared exactly; a single timing with neither samples nor an interval (an eval
pass's ``eval_wall_time`` or ``eval_tokens_per_s``, say) gets no verdict at all (``unrepeated``), since
one reading cannot tell a change from the machine's noise. A *regression* is a significant (or exact) change in the bad
direction (the sign of B − A) larger than the threshold: relative (``threshold``) on the ratio scale,
absolute (``abs_threshold``) on the difference scale.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ..store import schema
from ..store.asv_import import PARAM_COLUMNS
from .scales import Scale, change, exceeds, format_change, is_worse, no_change, scale_of
from ..errors import UserError
from ..provenance import ROOT, git

KEY = schema.KEY  # identity and settings columns of the row schema: the one definition of what pairs rows
SETTINGS_DIFFER = "settings differ"
#: The verdict of a single unrepeated timing on either side (see :func:`_unrepeated`): none.
UNREPEATED = "unrepeated (no verdict)"


@dataclass(frozen=True)
class Comparison:
    table: pd.DataFrame          # one row per paired measurement
    label_a: str
    label_b: str

    @property
    def regressions(self) -> pd.DataFrame:
        return self.table[self.table["verdict"] == "regression"]


def select(rows: pd.DataFrame, ref: str) -> tuple[pd.DataFrame, str]:
    """Rows of a run id, of a commit given by a prefix of at least 4 hex digits, or of a git revision of
    the attnbench checkout (``HEAD~1``, a branch or tag name), as ``asv compare`` accepts."""
    by_run = rows[rows["run_id"] == ref]
    if not by_run.empty:
        return by_run, f"run {ref}"
    asked = ref
    if not re.fullmatch(r"[0-9a-fA-F]{4,40}", ref):
        ref = rev_parse(ref) or ref
    if len(ref) >= 4:
        by_commit = rows[rows["commit"].fillna("").str.startswith(ref)]
        commits = by_commit["commit"].unique()
        if len(commits) > 1:
            raise UserError(f"{ref!r} matches several commits ({', '.join(c[:10] for c in commits)}); "
                            "give more digits")
        if len(commits) == 1:
            return by_commit, f"commit {commits[0][:10]}"
    recent = rows.sort_values("timestamp").drop_duplicates("run_id", keep="last").tail(5)
    hint = "; ".join(f"{r.run_id} (commit {str(r.commit)[:10]})" for r in recent.itertuples())
    resolved = f" (commit {ref[:10]})" if ref != asked else ""
    raise UserError(f"no results for {asked!r}{resolved} in the store; give a run id, a commit (prefix) or a git "
                    f"revision with results. Recent: {hint or 'none'}")


def with_variant(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with the ``variant`` column of :data:`KEY`: the asv benchmark parameters that have no column
    of their own (``Gemm``'s ``impl`` and ``head_dim``, say) as canonical JSON, ``""`` for every other row.
    Without it, different parameter combinations of one asv benchmark would be pooled into one series."""
    if "variant" in rows:
        return rows
    variant = pd.Series("", index=rows.index, dtype=object)
    if "extra" not in rows:
        return rows.assign(variant=variant)
    asv = rows["source"].eq("asv") & rows["extra"].notna()
    if asv.any():
        variant[asv] = [_variant(extra) for extra in rows.loc[asv, "extra"]]
    return rows.assign(variant=variant)


def _variant(extra: str) -> str:
    params = json.loads(extra).get("params") or {}
    rest = {k: v for k, v in params.items() if k not in PARAM_COLUMNS}
    return json.dumps(rest, sort_keys=True) if rest else ""


def _hashable(key: tuple) -> tuple:
    """A group key usable for dict lookups: NaN != NaN, so missing values become None."""
    return tuple(None if pd.isna(v) else v for v in key)


def rev_parse(revision: str, repo: Path = ROOT) -> str | None:
    """The full sha of a git revision of ``repo``, or None when it is not one (or git is unavailable)."""
    try:
        return git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}", repo=repo) or None
    except (OSError, subprocess.SubprocessError):
        return None


def _pool(group: pd.DataFrame) -> np.ndarray:
    """Raw samples of all rows of a side; rows without samples contribute their value."""
    values: list[float] = []
    for value, samples in zip(group["value"], group["samples"]):
        values.extend(samples if samples is not None and len(samples) else [value])
    return np.asarray(values, dtype=float)


def _change_ci(a: np.ndarray, b: np.ndarray, scale: Scale, seed: int) -> tuple[float, float]:
    """Percentile bootstrap 95 % interval of the ratio (or difference) of medians (Efron & Tibshirani 1993)."""
    def median_change(x, y, axis=-1):
        if scale == "ratio":
            return np.median(y, axis=axis) / np.median(x, axis=axis)
        return np.median(y, axis=axis) - np.median(x, axis=axis)
    result = stats.bootstrap((a, b), median_change, vectorized=True, paired=False, n_resamples=2000,
                             confidence_level=0.95, method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def compare_samples(a: np.ndarray, b: np.ndarray, direction: str, *, threshold: float = 0.05,
                    alpha: float = 0.05, seed: int = 0, scale: Scale = "ratio",
                    abs_threshold: float = 0.01) -> dict:
    """Change of the medians of ``a`` to ``b`` on ``scale`` (ratio B/A or difference B − A), its bootstrap
    CI and Mann–Whitney p-value (Mann & Whitney 1947; when both sides have ≥ 3 samples), and the verdict.

    The direction of a change comes from the sign of B − A; its size is compared with ``threshold``
    (relative, ratio scale) or ``abs_threshold`` (absolute, difference scale). A ratio needs positive
    medians: otherwise the verdict is ``n/a``.
    """
    med_a, med_b = float(np.median(a)), float(np.median(b))
    effect = change(med_a, med_b, scale)
    null = no_change(scale)
    worse = is_worse(med_a, med_b, direction)
    big = exceeds(effect, scale, relative=threshold, absolute=abs_threshold)
    if len(a) >= 3 and len(b) >= 3 and np.isfinite(effect):
        low, high = _change_ci(a, b, scale, seed)
        p = float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
        significant = p < alpha and not (low <= null <= high)
        kind = "sampled"
    else:
        low = high = p = float("nan")
        significant = med_b != med_a
        kind = "exact"
    if not np.isfinite(effect):
        verdict = "n/a"
    elif not significant:
        verdict = "no change" if kind == "exact" else "not significant"
    elif not big:
        verdict = "within threshold"
    else:
        verdict = "regression" if worse else "improvement"
    return {"a": med_a, "b": med_b, "scale": scale, "change": effect,
            "ratio": effect if scale == "ratio" else float("nan"), "difference": med_b - med_a,
            "ci_low": low, "ci_high": high, "p_value": p, "n_a": len(a), "n_b": len(b), "kind": kind,
            "verdict": verdict}


def compare(rows: pd.DataFrame, ref_a: str, ref_b: str, *, threshold: float = 0.05, alpha: float = 0.05,
            abs_threshold: float = 0.01) -> Comparison:
    """Pair the rows of A and B and compare every measurement both have, each on its unit's scale
    (:func:`harness.analysis.scales.scale_of`): ``threshold`` is relative (ratio scale), ``abs_threshold``
    absolute (difference scale)."""
    rows = with_variant(rows)
    side_a, label_a = select(rows, ref_a)
    side_b, label_b = select(rows, ref_b)
    groups_a = {_hashable(k): g for k, g in side_a.groupby(KEY, dropna=False)}
    out = []
    for key, group_b in side_b.groupby(KEY, dropna=False):
        group_a = groups_a.get(_hashable(key))
        if group_a is None:
            differing = _settings_differ(groups_a, _hashable(key), group_b)
            if differing is not None:
                out.append(differing)
            continue
        direction, unit = group_b["direction"].iloc[0], group_b["unit"].iloc[0]
        result = compare_samples(_pool(group_a), _pool(group_b), direction, threshold=threshold, alpha=alpha,
                                 scale=scale_of(unit), abs_threshold=abs_threshold)
        if result["kind"] == "exact" and (_unrepeated(group_a) or _unrepeated(group_b)):
            result = {**result, "kind": UNREPEATED, "verdict": UNREPEATED}
        out.append({**dict(zip(KEY, key)), "unit": unit, "direction": direction, **result})
    if not out:
        raise UserError(f"{label_a} and {label_b} have no measurement in common (same source, backend, task "
                        "and metric)")
    table = pd.DataFrame(out)
    order = {"regression": 0, "improvement": 1, SETTINGS_DIFFER: 2, "within threshold": 3, "not significant": 4,
             UNREPEATED: 5, "no change": 6, "n/a": 7}
    table = table.sort_values(["verdict", "metric", "backend", "task"], key=lambda s: s.map(order) if s.name ==
                              "verdict" else s, kind="stable").reset_index(drop=True)
    return Comparison(table, label_a, label_b)


#: Categories whose values are read off a clock: one reading of them is a sample of a noisy quantity.
TIMED_CATEGORIES = ("speed", "throughput")


def _unrepeated(group: pd.DataFrame) -> bool:
    """True when one side of a timed measurement is a single reading: one row of a clock-measured category
    (:data:`TIMED_CATEGORIES`) with no raw samples and no interval. Such a value says nothing about noise,
    so it carries no verdict (two runs of one command differ by the machine's noise alone); deterministic
    values (task metrics, agreement, sizes) are still compared exactly."""
    if len(group) != 1 or group["category"].iloc[0] not in TIMED_CATEGORIES:
        return False
    samples = group["samples"].iloc[0]
    has_interval = "ci_low" in group and pd.notna(group["ci_low"].iloc[0]) and pd.notna(group["ci_high"].iloc[0])
    return (samples is None or len(samples) < 2) and not has_interval


def _settings_differ(groups_a: dict[tuple, pd.DataFrame], key_b: tuple, group_b: pd.DataFrame) -> dict | None:
    """The ``settings differ`` row for a measurement of B that A has only with other settings (the A group
    whose settings differ least), or None when A does not measure it at all."""
    named_b = dict(zip(KEY, key_b))
    identity = [KEY.index(name) for name in schema.IDENTITY_COLUMNS]
    candidates = [k for k in groups_a if all(k[i] == key_b[i] for i in identity)]
    if not candidates:
        return None
    key_a = min(candidates, key=lambda k: len(schema.differing_settings(dict(zip(KEY, k)), named_b)))
    differences = schema.differing_settings(dict(zip(KEY, key_a)), named_b)
    a, b = _pool(groups_a[key_a]), _pool(group_b)
    return {**named_b, "unit": group_b["unit"].iloc[0], "direction": group_b["direction"].iloc[0],
            "a": float(np.median(a)), "b": float(np.median(b)), "ratio": float("nan"), "ci_low": float("nan"),
            "ci_high": float("nan"), "p_value": float("nan"), "n_a": len(a), "n_b": len(b), "kind": "settings",
            "verdict": SETTINGS_DIFFER, "settings": schema.describe_differences(differences)}


def _fmt(value: float, unit: str | None) -> str:
    if not np.isfinite(value):
        return "-"
    if unit in ("s", "seconds"):
        return f"{value * 1e3:.3g} ms"
    if unit == "bytes":
        return f"{value / 2**20:.3g} MiB"
    return f"{value:.4g}"


def format_param(value: object) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def to_markdown(comparison: Comparison, *, threshold: float, only_changes: bool = False,
                abs_threshold: float = 0.01) -> str:
    """A table for a pull request: regressions first; the change column shows B/A (``1.146x``) for
    positive quantities and B − A (``+0.063``) for the others."""
    table = comparison.table
    if only_changes:
        table = table[table["verdict"].isin(["regression", "improvement", SETTINGS_DIFFER])]
    counts = comparison.table["verdict"].value_counts()
    lines = [f"**{comparison.label_b}** vs **{comparison.label_a}** (B/A for times, sizes and rates, threshold "
             f"{threshold:.0%}; B − A for scores and other metrics, threshold {abs_threshold:g}): "
             + ", ".join(f"{n} {v}" for v, n in counts.items()), "",
             "| verdict | benchmark | params | A | B | B/A or B − A [95% CI] | p |", "|---|---|---|---:|---:|---|---:|"]
    for r in table.itertuples():
        params = ", ".join(f"{k}={format_param(getattr(r, k))}" for k in ("backend", "task", "threads", "seq_len")
                           if getattr(r, k) is not None and pd.notna(getattr(r, k)))
        if r.variant:
            params = ", ".join([params, *(f"{k}={v}" for k, v in json.loads(r.variant).items())]).strip(", ")
        ci = f" [{r.ci_low:.3f}, {r.ci_high:.3f}]" if np.isfinite(r.ci_low) else ""
        if np.isfinite(r.ci_low) and r.scale == "difference":
            ci = f" [{r.ci_low:+.4g}, {r.ci_high:+.4g}]"
        p = f"{r.p_value:.2g}" if np.isfinite(r.p_value) else r.kind
        mark = {"regression": "❌ regression", "improvement": "✅ improvement"}.get(r.verdict, r.verdict)
        if r.verdict == SETTINGS_DIFFER:  # not comparable: no change, the settings instead
            mark, ratio, p = f"⚠️ settings differ: {r.settings}", "-", "-"
        else:
            ratio = f"{format_change(r.change, r.scale)}{ci}"
        lines.append(f"| {mark} | {r.metric} ({r.direction} is better) | {params} | {_fmt(r.a, r.unit)} | "
                     f"{_fmt(r.b, r.unit)} | {ratio} | {p} |")
    return "\n".join(lines)
