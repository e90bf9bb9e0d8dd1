"""Plain-text tables of a run's rows, printed at the end of ``attnbench run``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import stats
from .paired import BASELINE_PREFIX, HOLM_NOTE, PAIRED_PREFIX, with_holm
from .verdicts import crossover_lines, format_verdicts, verdict_table

#: foreign load (cores other processes kept busy while timing) and relative IQR above which a timing is flagged
HIGH_FOREIGN_LOAD = 0.5
WIDE_SPREAD = 0.10


_VERSUS = (  # (title, metric, format)
    ("flip rate % (changed predictions)", "agreement", "{:.1f}"),
    ("attention-output cosine, mean over layers", "attn_cosine_mean", "{:.4f}"),
    ("top-k recall of the exact top-k", "topk_recall", "{:.3f}"),
)


def _versus_reference(rows: pd.DataFrame, order: list[str], reference: str) -> list[str]:
    """Small task × backend tables of each backend against the reference, side by side."""
    quality = rows[rows["category"] == "quality"]
    others = [b for b in order if b != reference]
    if reference not in set(quality["backend"]) or not others:
        return []
    values = rows.drop_duplicates(["task", "backend", "metric"], keep="last").set_index(
        ["task", "backend", "metric"])["value"]
    main = quality.groupby("task", sort=False)["metric"].first()
    tables = []
    for title, metric, fmt in _VERSUS:
        table = {}
        for backend in others:
            column = {}
            for task, task_metric in main.items():
                if metric is None:
                    value = values.get((task, backend, task_metric), float("nan")) - values.get(
                        (task, reference, task_metric), float("nan"))
                elif metric == "agreement":
                    value = 100 * (1 - values.get((task, backend, metric), float("nan")))
                else:
                    value = values.get((task, backend, metric), float("nan"))
                column[f"{task} ({task_metric})" if metric is None else task] = value
            table[backend] = column
        frame = pd.DataFrame(table)
        if frame.notna().any().any():
            tables.append(f"{title} vs {reference}\n" + frame.to_string(
                na_rep="-", float_format=lambda v, fmt=fmt: fmt.format(v)))
    return tables


def _throughput(rows: pd.DataFrame, order: list[str]) -> str:
    """Per backend, over its eval cells: tokens/s, padding share and time spent outside the model."""
    cells = rows[rows["category"] == "throughput"].pivot_table(index=["backend", "task"], columns="metric",
                                                               values="value", aggfunc="first")
    if cells.empty or "eval_wall_time" not in cells:
        return ""
    lines = ["evaluation passes (all tasks): tokens/s, padding share of the fed tokens, time outside the model "
             "(backends run one after another, not interleaved: background load differs between them, so these "
             "rates are not comparable across backends; compare speed with the interleaved latency cells)"]
    for backend in [b for b in order if b in cells.index.get_level_values(0)]:
        part = cells.loc[backend]
        wall = part["eval_wall_time"]
        tokens = (part["eval_tokens_per_s"] * wall).sum()
        busy = rows[(rows["category"] == "throughput") & (rows["backend"] == backend)]
        busy = busy["foreign_load"].dropna() if "foreign_load" in busy else busy.iloc[0:0]
        lines.append(f"  {backend}: {tokens / wall.sum():,.0f} tokens/s over {tokens:,.0f} tokens in {wall.sum():.1f} s; "
                     f"padding {100 * (part['padding_waste'] * wall).sum() / wall.sum():.1f} %; outside the model "
                     f"{100 * (part['time_outside_model'] * wall).sum() / wall.sum():.1f} %"
                     + (f"; other processes used {busy.mean():.2f} core(s) meanwhile" if len(busy) else ""))
    return "\n".join(lines)


def run_summary(rows: pd.DataFrame, reference: str = "dense") -> str:
    """Quality per task × backend with intervals, n and the majority baseline; the verdict per backend and task
    (:mod:`harness.analysis.verdicts`) and the speed crossover over lengths; paired changes against the
    reference (Holm); agreement and fidelity; throughput; speed/memory per shape with speed-up intervals."""
    if rows.empty:
        return "no results"
    order = list(dict.fromkeys(rows["backend"]))
    parts = []
    quality = rows[rows["category"] == "quality"]
    if not quality.empty:
        parts.append(_quality(rows, order, reference))
    verdict = format_verdicts(verdict_table(rows, reference), reference)
    if verdict:
        parts.append(verdict)
        parts.extend(crossover_lines(rows, reference))
    paired = _paired(rows, order, reference)
    if paired:
        parts.append(paired)
    parts.extend(_versus_reference(rows, order, reference))
    throughput = _throughput(rows, order)
    if throughput:
        parts.append(throughput)
    dtype_cost = _dtype_cost(rows, reference)
    if dtype_cost:
        parts.append(dtype_cost)
    speed = rows[rows["category"].isin(["speed", "memory"])]
    if not speed.empty:
        parts.extend(_speed(speed, order, reference))
    return "\n\n".join(parts)


def _cell(value: float, low: float, high: float) -> str:
    if not np.isfinite(low) or not np.isfinite(high):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _quality(rows: pd.DataFrame, order: list[str], reference: str) -> str:
    """Task metrics with 95 % intervals, n and the majority-class baseline; a warning where the reference
    scores at or below the majority class on the main metric."""
    quality = rows[rows["category"] == "quality"]
    baseline = rows[(rows["category"] == "baseline") & rows["metric"].fillna("").str.startswith(BASELINE_PREFIX)]
    majority = {(r.task, r.metric[len(BASELINE_PREFIX):]): r.value for r in baseline.itertuples()}
    records, warnings = {}, []
    main = quality.groupby("task", sort=False)["metric"].first()
    for r in quality.itertuples():
        key = (r.task, r.metric)
        record = records.setdefault(key, {"n": int(r.n_examples) if pd.notna(r.n_examples) else None,
                                          "majority": majority.get(key, float("nan"))})
        low = getattr(r, "ci_low", float("nan"))
        high = getattr(r, "ci_high", float("nan"))
        record[r.backend] = _cell(r.value, float(low) if pd.notna(low) else float("nan"),
                                  float(high) if pd.notna(high) else float("nan"))
        if r.backend == reference and r.metric == main.get(r.task) and key in majority \
                and r.value <= majority[key] + 1e-12:
            warnings.append(f"warning: {reference} scores {r.value:.3f} on {r.task} ({r.metric}), not above the "
                            f"majority-class baseline {majority[key]:.3f}: the model has not learnt this task, "
                            "so its differences between backends say little")
    frame = pd.DataFrame.from_dict(records, orient="index")
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=["task", "metric"])
    columns = [b for b in order if b in frame.columns] + ["majority", "n"]
    frame = frame[columns]
    frame["majority"] = frame["majority"].map(lambda v: "-" if pd.isna(v) else f"{v:.3f}")
    frame["n"] = frame["n"].map(lambda v: "-" if v is None or pd.isna(v) else str(int(v)))
    text = ("task metrics (validation) with 95 % intervals (Wilson for accuracy, seeded bootstrap over examples "
            "otherwise); majority: the majority-class predictor on the same examples; n: examples\n"
            + frame.to_string(na_rep="-"))
    return "\n".join([text] + warnings)


def _paired(rows: pd.DataFrame, order: list[str], reference: str) -> str:
    """Per backend and task metric: Δ vs the reference on the same examples, paired interval, Holm p, verdict."""
    paired = rows[(rows["category"] == "paired") & rows["metric"].fillna("").str.startswith(PAIRED_PREFIX)]
    if paired.empty:
        return ""
    paired = with_holm(paired)
    lines = [f"change vs {reference} on the same examples: Δ [95 % paired bootstrap interval], p (Holm)"]
    for (task, metric), group in paired.groupby(["task", "metric"], sort=False):
        lines.append(f"  {task} {metric[len(PAIRED_PREFIX):]}:")
        for r in sorted(group.itertuples(), key=lambda r: order.index(r.backend) if r.backend in order else 0):
            flag = "" if r.significance == "no significant change" else f"  ← {r.significance.upper()}"
            lines.append(f"    {r.backend}: {r.value:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}], p = {r.p_value:.3g} "
                         f"(Holm {r.p_holm:.3g}){flag}")
    lines.append(f"  ({HOLM_NOTE}; significant: Holm p < 0.05)")
    return "\n".join(lines)


def _speed(speed: pd.DataFrame, order: list[str], reference: str) -> list[str]:
    """Speed and memory per latency shape: medians, speed-ups vs the reference with bootstrap intervals from
    the interleaved samples, and a warning where the machine was busy or the spread wide."""
    out = []
    for (batch, seq), shape_rows in speed.groupby(["batch_size", "seq_len"], sort=False, dropna=False):
        table = shape_rows.pivot_table(index="backend", columns="metric", values="value", aggfunc="first", sort=False)
        timed = shape_rows[shape_rows["category"] == "speed"].drop_duplicates(["backend", "metric"], keep="last")
        samples = timed.set_index(["backend", "metric"])["samples"].to_dict()
        load = timed["foreign_load"] if "foreign_load" in timed else pd.Series(dtype=float)
        threads = shape_rows["threads"].iloc[0]
        where = _placement(shape_rows.iloc[0])
        lines = [f"speed and memory (batch {int(batch)} x seq {int(seq)}, {threads} thread(s){where}; median [IQR]; "
                 f"speed-up vs {reference}: ratio of medians [95 % bootstrap interval])"]
        warnings = []
        for backend in [b for b in order if b in table.index]:
            cells = []
            for metric, label in (("latency_forward", "forward"), ("latency_attention_core", "attention core")):
                if metric not in table.columns or pd.isna(table.loc[backend, metric]):
                    continue
                value = table.loc[backend, metric]
                mine = np.asarray(samples.get((backend, metric)) if samples.get((backend, metric)) is not None
                                  else [value], float)
                q1, q3 = np.percentile(mine, [25, 75])
                ratio = ""
                theirs = samples.get((reference, metric))
                if backend != reference and theirs is not None and len(theirs):
                    r, low, high = stats.ratio_interval(theirs, mine)
                    ratio = f", {r:.2f}x" + (f" [{low:.2f}, {high:.2f}]" if np.isfinite(low) else "") + f" vs {reference}"
                cells.append(f"{label} {value * 1e3:.1f} ms [{(q3 - q1) * 1e3:.1f}]{ratio}")
                if (q3 - q1) / value > WIDE_SPREAD:
                    warnings.append(f"{backend} {label}: IQR {100 * (q3 - q1) / value:.0f} % of the median")
            if "peak_memory_forward" in table.columns:
                cells.append(f"peak tensors {table.loc[backend, 'peak_memory_forward'] / 2**20:.1f} MiB")
            if "model_size" in table.columns:
                cells.append(f"weights {table.loc[backend, 'model_size'] / 2**20:.1f} MiB")
            if "attention_core_tflops" in table.columns:
                cells.append(f"attention core {table.loc[backend, 'attention_core_tflops']:.1f} TFLOP/s")
            lines.append(f"  {backend}: " + "; ".join(cells))
        busy = load.dropna()
        if len(busy):
            lines.append(f"  other processes kept {busy.max():.2f} core(s) busy on average while timing")
            if busy.max() > HIGH_FOREIGN_LOAD:
                warnings.insert(0, f"the machine was busy ({busy.max():.2f} cores used by other processes)")
        if warnings:
            lines.append("  warning: disturbed timing: " + "; ".join(warnings) + " — rerun on a quieter machine or "
                         "with more --repeats before trusting small speed-ups")
        out.append("\n".join(lines))
    return out


def _placement(row: pd.Series) -> str:
    """``", cuda:NVIDIA H200 bfloat16"`` for rows off the CPU or below float32; empty for CPU float32."""
    device, dtype = row.get("device"), row.get("dtype")
    device = device if isinstance(device, str) else "cpu"
    dtype = dtype if isinstance(dtype, str) else "float32"
    return "" if (device, dtype) == ("cpu", "float32") else f", {device} {dtype}"


def _dtype_cost(rows: pd.DataFrame, reference: str) -> str:
    """Below float32: the reference at the run's dtype against the reference in float32 (``*_vs_fp32`` rows)."""
    cost = rows[(rows["backend"] == reference) & rows["metric"].astype(str).str.endswith("_vs_fp32")]
    if cost.empty:
        return ""
    table = cost.pivot_table(index="task", columns="metric", values="value", aggfunc="first", sort=False)
    table.columns = [c.removesuffix("_vs_fp32") for c in table.columns]
    keep = [c for c in ("agreement", "max_abs_logit_diff", "attn_cosine_mean") if c in table.columns]
    dtype = cost["dtype"].iloc[0] if "dtype" in cost else "this dtype"
    return (f"what {dtype} alone costs: {reference} in {dtype} vs {reference} in float32, same device and inputs\n"
            + table[keep].to_string(float_format=lambda v: f"{v:.6g}"))
