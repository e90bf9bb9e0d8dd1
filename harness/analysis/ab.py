"""Paired analysis of A/B rows: two revisions measured alternately, process by process (``attnbench ab``).

``attnbench ab`` starts one measuring process per revision and pair, alternating A B, B A, … so that whatever
slows the machine down for a minute slows both sides of a pair. Each process writes its rows with the same
``plan_id`` (the A/B session), ``run_id`` ``<session>-A`` or ``<session>-B`` and the pairing id in
``cell_id`` (``pair-<i>``) and ``extra.ab``. This module only analyses such rows (measurement stays in
``run``/``ab``):

* per series (backend × metric, and the same divided by the reference backend's value *of the same process*),
  the paired log-ratios ``d_i = log(B_i / A_i)``;
* the change is ``exp(median d) − 1`` with a bootstrap confidence interval of that median (seeded);
* significance: Wilcoxon signed-rank test on the ``d_i`` (two-sided; exact for small ``n`` without ties);
* the smallest change the comparison could have detected (minimum detectable effect at ``alpha`` with power
  0.8, from the observed paired spread): ``exp((z_{1−α/2} + z_{0.8}) · sd(d) / √n) − 1``;
* verdict: ``regression`` when ``p < alpha`` and the change is at least ``threshold`` in the bad direction
  (``improvement`` likewise), else ``no change``; ``n`` and the detectable change are always reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

AB_PREFIX = "ab-"
POWER = 0.8


@dataclass(frozen=True)
class PairedResult:
    backend: str
    metric: str
    relative_to: str | None       # the series was divided by this backend's value of the same process
    n: int                        # pairs
    a: float                      # median of A
    b: float                      # median of B
    change: float                 # exp(median log(B/A)) - 1
    ci_low: float
    ci_high: float
    p_value: float
    detectable: float             # minimum detectable effect (relative), alpha, power 0.8
    direction: str
    verdict: str                  # regression | improvement | no change | too few pairs


def paired_log_ratios(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.log(b / a)


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (1.0 when all are zero)."""
    d = np.asarray(d, float)
    if len(d) == 0 or np.all(d == 0):
        return 1.0
    return float(stats.wilcoxon(d, alternative="two-sided").pvalue)


def bootstrap_median_ci(d: np.ndarray, *, alpha: float = 0.05, resamples: int = 4000,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``d`` (same as ``scipy.stats.bootstrap`` with
    ``method="percentile"`` up to resampling noise)."""
    d = np.asarray(d, float)
    rng = np.random.default_rng(seed)
    medians = np.median(d[rng.integers(0, len(d), size=(resamples, len(d)))], axis=1)
    low, high = np.quantile(medians, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def minimum_detectable_effect(d: np.ndarray, *, alpha: float = 0.05, power: float = POWER) -> float:
    """Smallest relative change a paired test of ``n`` pairs with this spread detects with ``power``:
    ``exp((z_{1−α/2} + z_power) · sd / √n) − 1`` (normal approximation of the paired t-test; the signed-rank
    test needs about 5 % more pairs for normal data). ``inf`` with fewer than two pairs."""
    d = np.asarray(d, float)
    if len(d) < 2:
        return float("inf")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(np.expm1(z * np.std(d, ddof=1) / np.sqrt(len(d))))


def analyse_pairs(a: np.ndarray, b: np.ndarray, *, backend: str, metric: str, direction: str = "lower",
                  relative_to: str | None = None, threshold: float = 0.03, alpha: float = 0.05,
                  seed: int = 0) -> PairedResult:
    d = paired_log_ratios(a, b)
    n = len(d)
    if n < 2:
        return PairedResult(backend, metric, relative_to, n, float(np.median(a)) if n else np.nan,
                            float(np.median(b)) if n else np.nan, np.nan, np.nan, np.nan, np.nan, np.inf,
                            direction, "too few pairs")
    change = float(np.expm1(np.median(d)))
    low, high = bootstrap_median_ci(d, alpha=alpha, seed=seed)
    p = wilcoxon_p(d)
    worse = change if direction == "lower" else -change
    verdict = "no change"
    if p < alpha and worse >= threshold:
        verdict = "regression"
    elif p < alpha and -worse >= threshold:
        verdict = "improvement"
    return PairedResult(backend, metric, relative_to, n, float(np.median(a)), float(np.median(b)), change,
                        float(np.expm1(low)), float(np.expm1(high)), p,
                        minimum_detectable_effect(d, alpha=alpha), direction, verdict)


def _ab_info(extra: str | None) -> dict:
    try:
        return json.loads(extra).get("ab") or {} if extra else {}
    except (TypeError, ValueError, AttributeError):
        return {}


def ab_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows written by ``attnbench ab`` with their session, side and pair as columns."""
    rows = rows[rows["plan_id"].fillna("").str.startswith(AB_PREFIX) & rows["extra"].notna()]
    info = rows["extra"].map(_ab_info)
    rows = rows.assign(ab_session=info.map(lambda i: i.get("session")), ab_side=info.map(lambda i: i.get("side")),
                       ab_pair=info.map(lambda i: i.get("pair")))
    return rows[rows["ab_session"].notna() & rows["ab_side"].isin(["A", "B"]) & rows["ab_pair"].notna()]


def select_session(rows: pd.DataFrame, a: str, b: str) -> pd.DataFrame | None:
    """The A/B rows in which ``a`` is side A and ``b`` side B (run id, session-side or commit prefix), of the
    latest such session; ``None`` when there is none (``compare`` then compares unpaired runs)."""
    rows = ab_rows(rows)
    if rows.empty:
        return None

    def matches(frame: pd.DataFrame, ref: str) -> pd.Series:
        return (frame["run_id"] == ref) | frame["commit"].fillna("").str.startswith(ref) | \
               frame["extra"].map(lambda e: _ab_info(e).get("rev") == ref)

    candidates = []
    for session, group in rows.groupby("ab_session"):
        side_a, side_b = group[group["ab_side"] == "A"], group[group["ab_side"] == "B"]
        if matches(side_a, a).all() and matches(side_b, b).all() and len(side_a) and len(side_b):
            candidates.append((group["timestamp"].max(), session, group))
    if not candidates:
        return None
    return max(candidates, key=lambda c: c[0])[2]


def analyse_session(rows: pd.DataFrame, *, reference: str | None = "dense", threshold: float = 0.03,
                    alpha: float = 0.05) -> list[PairedResult]:
    """Paired results of every backend × metric of one session (:func:`select_session`), absolute and ÷
    ``reference`` of the same process."""
    rows = rows[rows["value"].notna()]
    results = []
    per_process = rows.pivot_table(index=["ab_pair", "ab_side"], columns=["backend", "metric"], values="value",
                                   aggfunc="median")
    directions = rows.groupby(["backend", "metric"])["direction"].first()
    for backend, metric in per_process.columns:
        direction = directions.get((backend, metric), "lower")
        series = [(per_process[(backend, metric)], None)]
        if reference and backend != reference and (reference, metric) in per_process.columns:
            series.append((per_process[(backend, metric)] / per_process[(reference, metric)], reference))
        for values, relative_to in series:
            wide = values.unstack("ab_side").dropna()
            if "A" not in wide or "B" not in wide:
                continue
            results.append(analyse_pairs(wide["A"].to_numpy(), wide["B"].to_numpy(), backend=backend,
                                         metric=metric, direction=direction, relative_to=relative_to,
                                         threshold=threshold, alpha=alpha))
    return results


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x * 100:+.1f} %"


def to_markdown(results: list[PairedResult], *, a: str, b: str, threshold: float, alpha: float) -> str:
    lines = [f"Paired A/B: A = {a}, B = {b}; Wilcoxon signed-rank on log(B/A) per pair, α = {alpha}, "
             f"threshold {threshold:.1%}; detectable = smallest change this n and spread detect with power 0.8.",
             "",
             "| verdict | backend | metric | n | A | B | change | CI | p | detectable |",
             "|---|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in sorted(results, key=lambda r: (r.verdict != "regression", r.backend, r.metric, r.relative_to or "")):
        metric = r.metric + (f" ÷ {r.relative_to}" if r.relative_to else "")
        lines.append(f"| {r.verdict} | {r.backend} | {metric} | {r.n} | {r.a:.4g} | {r.b:.4g} | {_pct(r.change)} | "
                     f"[{_pct(r.ci_low)}, {_pct(r.ci_high)}] | {r.p_value:.3g} | ±{abs(r.detectable) * 100:.1f} % |")
    regressions = sum(r.verdict == "regression" for r in results)
    lines += ["", f"{regressions} regression(s) in {len(results)} series" if results else "no paired series"]
    return "\n".join(lines)
