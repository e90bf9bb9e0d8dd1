"""One verdict per backend and task against the reference: accuracy by non-inferiority, speed by a ratio interval.

**Accuracy.** The paired change Δ = metric(backend) − metric(reference) of the task's primary metric, on the
same examples, is tested for non-inferiority with margin ``m`` (default one point of the metric, 0.01):

* **not worse** — the lower bound of Δ's one-sided 95 % interval lies above −m;
* **worse** — its upper bound lies below −m;
* **inconclusive** — otherwise. The line then says what would decide it: the *minimum detectable change*
  (MDC) at 80 % power, ``(z₀.₉₅ + z₀.₈₀) · SE`` for this task's n and rate of changed predictions, and the
  number of examples at which the MDC equals the margin.

For accuracy, Δ's interval is the Wald interval for matched proportions after adding 1/2 to each cell of the
2 × 2 table of (reference right, backend right) (Agresti & Min 2005, *Stat. Med.* 24:729), so that a backend
that changes no prediction still has a positive standard error; SE² = (q̃ − Δ̃²)/(n + 2) with q̃ the smoothed
rate of changed predictions. For any other metric (F1, MCC, Pearson), the interval is the 5th/95th percentile
of the paired bootstrap of Δ (the resamples :func:`harness.stats.paired_test` uses) and SE its standard
deviation; where no prediction changed, the bootstrap runs with one example's prediction changed (the analogue
of the pseudo-counts) and the bounds are Δ ∓ z₀.₉₅ · SE. A lower-is-better metric is judged on −Δ.

**Speed.** At each measured shape, the speed-up median(reference) / median(backend) of the interleaved
forward-latency samples with its 95 % bootstrap interval (:func:`harness.stats.ratio_interval`): **faster**
(interval above 1), **slower** (below 1) or **no clear difference**. Over several sequence lengths, the
*crossover* is the shortest measured length from which the interval lies above 1 at every longer length.

**Family.** Each verdict is one test of one backend on one task at one-sided 5 %, with no multiplicity
correction: "not worse on every task" is an intersection–union test, which needs none (Berger 1982), and no
verdict depends on which other backends or tasks shared the run.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np
import pandas as pd

from .. import stats
# the statistics of the accuracy verdict, re-exported: eval cells compute them, the analysis reads them
from ..noninferiority import (  # noqa: F401
    CONFIDENCE as CONFIDENCE,
    DEFAULT_MARGIN as DEFAULT_MARGIN,
    INCONCLUSIVE as INCONCLUSIVE,
    NOT_WORSE as NOT_WORSE,
    POWER as POWER,
    WORSE as WORSE,
    Z_ONE_SIDED as Z_ONE_SIDED,
    Z_POWER as Z_POWER,
    NonInferiority as NonInferiority,
    accuracy_counts as accuracy_counts,
    accuracy_mdc as accuracy_mdc,
    accuracy_power as accuracy_power,
    check_margin as check_margin,
    classify as classify,
    detectable_change as detectable_change,
    examples_to_resolve as examples_to_resolve,
    noninferiority as noninferiority,
    paired_accuracy as paired_accuracy,
)

#: the backend every verdict is measured against (the run's reference)
REFERENCE = "dense"
FASTER, SLOWER, NO_CLEAR_DIFFERENCE = "faster", "slower", "no clear difference"
#: the latency the speed verdict is read from (end to end); the attention core is drawn beside it in the report
SPEED_METRIC = "latency_forward"
SPEED_METRICS = ("latency_forward", "latency_attention_core")
FAMILY_NOTE = ("family: each verdict is its own one-sided 5 % test of one backend on one task, with no "
               "correction (not worse on every task is an intersection-union test); no verdict depends on "
               "which other backends shared the run")


def speed_word(low: float, high: float) -> str:
    """faster (interval of the speed-up above 1), slower (below 1), no clear difference, or n/a."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "n/a"
    return FASTER if low > 1 else SLOWER if high < 1 else NO_CLEAR_DIFFERENCE


def speed_ratios(rows: pd.DataFrame, reference: str, metrics: tuple[str, ...] = SPEED_METRICS) -> pd.DataFrame:
    """Per backend, metric and shape: the speed-up over ``reference`` with its 95 % interval and the word.

    ``rows``: speed rows of one run (``samples``: seconds per call). Columns: backend, metric, batch_size,
    seq_len, ratio, low, high, speed."""
    columns = ["backend", "metric", "batch_size", "seq_len", "ratio", "low", "high", "speed"]
    if rows.empty or not {"category", "samples", "batch_size", "seq_len"} <= set(rows.columns):
        return pd.DataFrame(columns=columns)
    timed = rows[(rows["category"] == "speed") & rows["metric"].isin(metrics)]
    records = []
    for (batch, seq, metric), group in timed.groupby(["batch_size", "seq_len", "metric"], sort=False):
        samples = group.drop_duplicates("backend", keep="last").set_index("backend")["samples"]
        theirs = samples.get(reference)
        if theirs is None or not len(theirs):
            continue
        for backend, mine in samples.items():
            if backend == reference or mine is None or not len(mine):
                continue
            ratio, low, high = stats.ratio_interval(np.asarray(theirs, float), np.asarray(mine, float))
            records.append({"backend": backend, "metric": metric, "batch_size": int(batch), "seq_len": int(seq),
                            "ratio": ratio, "low": low, "high": high, "speed": speed_word(low, high)})
    return pd.DataFrame(records, columns=columns)


def crossover(ratios: pd.DataFrame) -> int | None:
    """The shortest sequence length from which the speed-up's interval lies above 1 at every longer measured
    length (``ratios``: one backend, metric and batch size, columns ``seq_len`` and ``low``); None if none."""
    ordered = ratios.sort_values("seq_len")
    found = None
    for seq, low in zip(ordered["seq_len"][::-1], ordered["low"][::-1]):
        if not (np.isfinite(low) and low > 1):
            break
        found = int(seq)
    return found


def crossovers(ratios: pd.DataFrame) -> pd.DataFrame:
    """:func:`crossover` per backend, metric and batch size with at least two lengths (column ``crossover``,
    nullable integer; ``lengths``: the measured lengths)."""
    records = []
    for (backend, metric, batch), group in ratios.groupby(["backend", "metric", "batch_size"], sort=False):
        if group["seq_len"].nunique() < 2:
            continue
        records.append({"backend": backend, "metric": metric, "batch_size": batch,
                        "lengths": sorted(group["seq_len"].unique().tolist()), "crossover": crossover(group)})
    frame = pd.DataFrame(records, columns=["backend", "metric", "batch_size", "lengths", "crossover"])
    frame["crossover"] = frame["crossover"].astype("Int64")
    return frame


def describe_crossover(row: Any) -> str:
    if pd.isna(row.crossover):
        return (f"{row.backend} ({row.metric}, batch {row.batch_size}): no crossover in the measured range "
                f"{row.lengths[0]}-{row.lengths[-1]} tokens (not faster at the longest)")
    return (f"{row.backend} ({row.metric}, batch {row.batch_size}): faster from {int(row.crossover)} tokens "
            f"(measured {', '.join(map(str, row.lengths))})")


def crossover_lines(rows: pd.DataFrame, reference: str = "dense") -> list[str]:
    """One text block naming each backend's crossover over sequence length, for runs with several lengths."""
    found = crossovers(speed_ratios(rows, reference))
    if found.empty:
        return []
    return [f"speed-up vs {reference} over sequence length: crossover = shortest length from which the 95 % "
            "interval lies above 1 at every longer measured length\n"
            + "\n".join(f"  {describe_crossover(r)}" for r in found.itertuples())]


# -- the verdict table ---------------------------------------------------------------------------------------
def _facts(extra: Any) -> dict[str, Any]:
    if not isinstance(extra, str) or not extra:
        return {}
    return json.loads(extra).get("noninferiority") or {}


def verdict_table(rows: pd.DataFrame, reference: str = "dense") -> pd.DataFrame:
    """One line per (backend, task) of a run: the primary metric's non-inferiority verdict and the speed words.

    ``rows``: the rows of one run (stored or just measured). Reads the ``paired`` rows whose ``primary`` flag
    is set (their ``verdict``, ``margin``, ``mdc`` and the one-sided bounds kept in ``extra``) and the speed
    rows. Columns: backend, task, metric, n, delta, low, high, margin, accuracy, mdc, n_to_resolve, changed,
    speed (per shape, text), speed_words (list), verdict (the two read together)."""
    columns = ["backend", "task", "metric", "n", "delta", "low", "high", "margin", "accuracy", "mdc",
               "n_to_resolve", "changed", "speed", "speed_words", "verdict"]
    if rows.empty or "verdict" not in rows or "primary" not in rows:
        return pd.DataFrame(columns=columns)
    paired = rows[(rows["category"] == "paired") & rows["primary"].fillna(False).astype(bool)
                  & rows["verdict"].notna()].drop_duplicates(["backend", "task"], keep="last")
    ratios = speed_ratios(rows, reference, (SPEED_METRIC,))
    order = list(dict.fromkeys(rows["backend"].dropna()))
    tasks = list(dict.fromkeys(rows["task"].dropna()))
    records = []
    for r in paired.itertuples():
        facts = _facts(r.extra)
        mine = ratios[ratios["backend"] == r.backend].sort_values(["batch_size", "seq_len"])
        words = mine["speed"].tolist()
        speed = "; ".join(f"{s.batch_size}x{s.seq_len} {s.speed} {s.ratio:.2f}x [{s.low:.2f}, {s.high:.2f}]"
                          for s in mine.itertuples()) or "not timed"
        records.append({"backend": r.backend, "task": r.task, "metric": r.metric.split(":", 1)[-1],
                        "n": int(r.n_examples) if pd.notna(r.n_examples) else None, "delta": float(r.value),
                        "low": facts.get("low", np.nan), "high": facts.get("high", np.nan),
                        "margin": float(r.margin), "accuracy": r.verdict, "mdc": float(r.mdc),
                        "n_to_resolve": facts.get("n_to_resolve"), "changed": facts.get("changed"),
                        "speed": speed, "speed_words": words, "verdict": combined(r.verdict, words)})
    table = pd.DataFrame(records, columns=columns)
    if not table.empty:
        table["_b"] = table["backend"].map(lambda b: order.index(b) if b in order else len(order))
        table["_t"] = table["task"].map(lambda t: tasks.index(t) if t in tasks else len(tasks))
        table = table.sort_values(["_b", "_t"], kind="stable").drop(columns=["_b", "_t"]).reset_index(drop=True)
    return table


def combined(accuracy: str, speed_words: list[str]) -> str:
    """The two parts read together: ``worse`` whatever the speed; else e.g. ``faster, not worse``."""
    if accuracy == WORSE:
        return WORSE
    words = [w for w in dict.fromkeys(speed_words) if w != "n/a"]
    speed = words[0] if len(words) == 1 else "speed differs by shape" if words else "speed not measured"
    return f"{speed}, {accuracy}"


def _points(value: float) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{100 * value:.1f} pts"


def format_verdicts(table: pd.DataFrame, reference: str = "dense", *, markdown: bool = False) -> str:
    """The verdict table as text (run summary) or markdown (``compare --baseline``); empty when no line."""
    if table.empty:
        return ""
    head = (f"verdict vs {reference}: accuracy by non-inferiority on the paired change of each task's primary "
            f"metric (one-sided 95 % bound against -margin), speed by the forward-latency speed-up's 95 % "
            f"interval per shape; MDC: minimum detectable change at 80 % power for this n and rate of changed "
            f"predictions; n to resolve: examples at which the MDC equals the margin")
    header = ["backend", "task", "metric", "n", "Δ [one-sided 95 % bounds]", "margin", "accuracy", "MDC",
              "n to resolve", "speed vs " + reference, "verdict"]
    lines = []
    for r in table.itertuples():
        bounds = f"{r.delta:+.3f} [{r.low:+.3f}, {r.high:+.3f}]" if np.isfinite(r.low) else f"{r.delta:+.3f}"
        resolve = ("-" if r.accuracy != INCONCLUSIVE or r.n_to_resolve is None or pd.isna(r.n_to_resolve)
                   else f"{int(r.n_to_resolve):,}")
        lines.append([r.backend, r.task, r.metric, "-" if r.n is None else str(r.n), bounds, f"{r.margin:g}",
                      r.accuracy, _points(r.mdc), resolve, r.speed, r.verdict])
    if markdown:
        body = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        body += ["| " + " | ".join(line) + " |" for line in lines]
        return f"**{head}**\n\n" + "\n".join(body) + f"\n\n{FAMILY_NOTE}."
    frame = pd.DataFrame(lines, columns=header)
    return head + "\n" + frame.to_string(index=False) + f"\n({FAMILY_NOTE})"


def worsened(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Lines (backend, task) whose accuracy verdict was ``not worse`` in ``before`` and is ``worse`` in
    ``after`` (two :func:`verdict_table` results): what ``compare`` fails on."""
    if before.empty or after.empty:
        return after.iloc[0:0]
    merged = before[["backend", "task", "accuracy"]].merge(after, on=["backend", "task"], suffixes=("_before", ""))
    return merged[(merged["accuracy_before"] == NOT_WORSE) & (merged["accuracy"] == WORSE)]


def format_changes(before: pd.DataFrame, after: pd.DataFrame, label_a: str, label_b: str) -> str:
    """Markdown of every (backend, task) whose accuracy verdict differs between two runs; the gate line."""
    if before.empty or after.empty:
        return ""
    merged = before[["backend", "task", "accuracy"]].merge(after[["backend", "task", "accuracy"]],
                                                           on=["backend", "task"], suffixes=("_a", "_b"))
    changed = merged[merged["accuracy_a"] != merged["accuracy_b"]]
    lines = [f"**verdict changes {label_a} → {label_b}**: "
             + (f"{len(changed)} of {len(merged)} (backend, task) lines" if len(changed) else
                f"none of {len(merged)} (backend, task) lines")]
    if len(changed):
        lines += ["", "| backend | task | A | B |", "|---|---|---|---|"]
        lines += [f"| {r.backend} | {r.task} | {r.accuracy_a} | {r.accuracy_b}"
                  + (" ❌ |" if (r.accuracy_a, r.accuracy_b) == (NOT_WORSE, WORSE) else " |")
                  for r in changed.itertuples()]
    return "\n".join(lines)


# -- the report's figures ------------------------------------------------------------------------------------
def verdict_figure(task: str, table: pd.DataFrame):
    """Per backend of one task: Δ of the primary metric with its one-sided 95 % bounds, against 0 and -margin
    (matplotlib figure; x in points of the metric)."""
    import matplotlib.pyplot as plt

    lines = table[table["task"] == task]
    fig, ax = plt.subplots(figsize=(5.6, 0.5 + 0.45 * len(lines)))
    colours = {NOT_WORSE: "tab:green", WORSE: "tab:red", INCONCLUSIVE: "tab:grey"}
    for y, r in enumerate(lines.itertuples()):
        colour = colours.get(r.accuracy, "black")
        ax.plot([100 * r.low, 100 * r.high], [y, y], color=colour, lw=3, solid_capstyle="butt")
        ax.plot(100 * r.delta, y, "o", color="black", ms=4)
        ax.annotate(f"{r.accuracy}; MDC {_points(r.mdc)}", (100 * r.high, y), xytext=(4, -3),
                    textcoords="offset points", fontsize=7, color=colour)
    margin = lines["margin"].iloc[0]
    ax.axvline(0, color="black", lw=0.8)
    ax.axvline(-100 * margin, color="tab:red", ls="--", lw=1, label=f"-margin ({100 * margin:g} pts)")
    ax.set_yticks(range(len(lines)), lines["backend"].tolist(), fontsize=8)
    ax.set_ylim(-0.7, len(lines) - 0.3)
    ax.set_xlabel(f"Δ {lines['metric'].iloc[0]} vs reference (points), one-sided 95 % bounds", fontsize=8)
    ax.set_title(f"{task} (n = {lines['n'].iloc[0]})", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    return fig


def crossover_figure(ratios: pd.DataFrame, metric: str):
    """Speed-up over the reference against sequence length with 95 % intervals, one line per backend and batch
    size (matplotlib figure, log-2 x axis); the crossover of each line is marked."""
    import matplotlib.pyplot as plt

    mine = ratios[ratios["metric"] == metric]
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    for (backend, batch), group in mine.groupby(["backend", "batch_size"], sort=False):
        group = group.sort_values("seq_len")
        line = ax.errorbar(group["seq_len"], group["ratio"],
                           yerr=[group["ratio"] - group["low"], group["high"] - group["ratio"]], marker="o", ms=4,
                           capsize=3, label=f"{backend} (batch {batch})")
        found = crossover(group)
        if found is not None:
            ax.axvline(found, color=line[0].get_color(), ls=":", lw=1)
    ax.axhline(1, color="black", lw=0.8)
    ax.set_xscale("log", base=2)
    lengths = sorted(mine["seq_len"].unique())
    ax.set_xticks(lengths, [str(v) for v in lengths])
    ax.set_xlabel("sequence length (tokens); dotted: crossover")
    ax.set_ylabel("speed-up vs reference (×)")
    ax.set_title(f"{metric}: speed-up with 95 % interval", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def report_section(rows: pd.DataFrame, run_id: str, figure_html: Callable[[Any], str],
                   reference: str = "dense") -> str:
    """The report's first section: the verdict table, the intervals drawn per task, and the crossover over
    lengths (HTML; ``figure_html`` embeds a matplotlib figure)."""
    import html

    run = rows[rows["run_id"] == run_id]
    table = verdict_table(run, reference)
    if table.empty:
        return ""
    header = ["backend", "task", "metric", "n", "Δ [one-sided 95 % bounds]", "margin", "accuracy",
              "MDC (80 % power)", "n to resolve", f"speed vs {reference}", "verdict"]
    body = []
    for r in table.itertuples():
        resolve = f"{int(r.n_to_resolve):,}" if r.accuracy == INCONCLUSIVE and r.n_to_resolve is not None else "-"
        cells = [r.backend, r.task, r.metric, r.n, f"{r.delta:+.3f} [{r.low:+.3f}, {r.high:+.3f}]",
                 f"{r.margin:g}", r.accuracy, _points(r.mdc), resolve, r.speed, r.verdict]
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    figures = "".join(figure_html(verdict_figure(task, table)) for task in dict.fromkeys(table["task"]))
    ratios = speed_ratios(run, reference)
    found = crossovers(ratios)
    crossing = ""
    if not found.empty:
        crossing = ("<h3>Speed-up over sequence length</h3><ul>"
                    + "".join(f"<li>{html.escape(describe_crossover(r))}</li>" for r in found.itertuples())
                    + "</ul><div class='grid'>"
                    + "".join(figure_html(crossover_figure(ratios, metric))
                              for metric in dict.fromkeys(found["metric"]))
                    + "</div>")
    return (f"<h2>Verdict per backend and task vs {html.escape(reference)} (run {html.escape(run_id)})</h2>"
            f"<p>Accuracy: non-inferiority of the paired change of each task's primary metric (not worse: the "
            f"one-sided 95 % lower bound above -margin; worse: the upper bound below -margin; otherwise "
            f"inconclusive, with the minimum detectable change at 80 % power and the examples that would resolve "
            f"the margin). Speed: the forward-latency speed-up's 95 % interval per shape. "
            f"{html.escape(FAMILY_NOTE)}.</p><table><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" + "".join(body) + "</table>"
            f"<div class='grid'>{figures}</div>{crossing}")
