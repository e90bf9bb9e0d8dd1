"""Plain-text tables of a run's rows, printed at the end of ``attnbench run``."""

from __future__ import annotations

import pandas as pd


def _pivot(frame: pd.DataFrame, metric_filter: pd.Series, order: list[str]) -> pd.DataFrame:
    table = frame[metric_filter].pivot_table(index=["task", "metric"], columns="backend", values="value",
                                             aggfunc="first", sort=False)
    return table[[b for b in order if b in table.columns]]


_VERSUS = (  # (title, metric or None for the main-metric change, format)
    ("main-metric change", None, "{:+.3f}"),
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
    lines = ["evaluation passes (all tasks): tokens/s, padding share of the fed tokens, time outside the model"]
    for backend in [b for b in order if b in cells.index.get_level_values(0)]:
        part = cells.loc[backend]
        wall = part["eval_wall_time"]
        tokens = (part["eval_tokens_per_s"] * wall).sum()
        lines.append(f"  {backend}: {tokens / wall.sum():,.0f} tokens/s over {tokens:,.0f} tokens in {wall.sum():.1f} s; "
                     f"padding {100 * (part['padding_waste'] * wall).sum() / wall.sum():.1f} %; outside the model "
                     f"{100 * (part['time_outside_model'] * wall).sum() / wall.sum():.1f} %")
    return "\n".join(lines)


def run_summary(rows: pd.DataFrame, reference: str = "dense") -> str:
    """Quality per task × backend, agreement with the reference, and speed/memory per backend."""
    if rows.empty:
        return "no results"
    order = list(dict.fromkeys(rows["backend"]))
    parts = []
    quality = rows[rows["category"] == "quality"]
    if not quality.empty:
        parts.append("task metrics (validation)\n" + _pivot(quality, quality["metric"].notna(), order)
                     .to_string(float_format=lambda v: f"{v:.4f}", na_rep="-"))
    parts.extend(_versus_reference(rows, order, reference))
    throughput = _throughput(rows, order)
    if throughput:
        parts.append(throughput)
    dtype_cost = _dtype_cost(rows, reference)
    if dtype_cost:
        parts.append(dtype_cost)
    speed = rows[rows["category"].isin(["speed", "memory"])]
    if not speed.empty:
        shape = speed.iloc[0]
        main_shape = (speed["batch_size"] == shape["batch_size"]) & (speed["seq_len"] == shape["seq_len"])
        other_shapes = speed[~main_shape]
        speed = speed[main_shape]
        table = speed.pivot_table(index="backend", columns="metric", values="value", aggfunc="first", sort=False)
        iqr = speed[speed["category"] == "speed"].set_index(["backend", "metric"])["samples"].map(
            lambda s: pd.Series(s).quantile(0.75) - pd.Series(s).quantile(0.25) if s is not None and len(s)
            else float("nan"))
        iqr = iqr[~iqr.index.duplicated()]
        where = _placement(shape)
        lines = [f"speed and memory (batch {int(shape['batch_size'])} x seq {int(shape['seq_len'])}, "
                 f"{shape['threads']} thread(s){where}; median [IQR])"]
        for backend in [b for b in order if b in table.index]:
            cells = []
            for metric, label in (("latency_forward", "forward"), ("latency_attention_core", "attention core")):
                if metric in table.columns:
                    value = table.loc[backend, metric]
                    ratio = ""
                    if reference in table.index and backend != reference:
                        ratio = f", {table.loc[reference, metric] / value:.2f}x vs {reference}"
                    cells.append(f"{label} {value * 1e3:.1f} ms [{iqr.get((backend, metric), float('nan')) * 1e3:.1f}]"
                                 f"{ratio}")
            if "peak_memory_forward" in table.columns:
                cells.append(f"peak tensors {table.loc[backend, 'peak_memory_forward'] / 2**20:.1f} MiB")
            if "model_size" in table.columns:
                cells.append(f"weights {table.loc[backend, 'model_size'] / 2**20:.1f} MiB")
            if "attention_core_tflops" in table.columns:
                cells.append(f"attention core {table.loc[backend, 'attention_core_tflops']:.1f} TFLOP/s")
            lines.append(f"  {backend}: " + "; ".join(cells))
        lines += _other_shapes(other_shapes, order)
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _placement(row: pd.Series) -> str:
    """``", cuda:NVIDIA H200 bfloat16"`` for rows off the CPU or below float32; empty for CPU float32."""
    device, dtype = row.get("device"), row.get("dtype")
    device = device if isinstance(device, str) else "cpu"
    dtype = dtype if isinstance(dtype, str) else "float32"
    return "" if (device, dtype) == ("cpu", "float32") else f", {device} {dtype}"


def _other_shapes(speed: pd.DataFrame, order: list[str]) -> list[str]:
    """One line per further latency shape (CUDA: batch 1 and the throughput batch): forward latency, tokens/s."""
    forward = speed[speed["metric"] == "latency_forward"]
    lines = []
    for (batch, seq), group in forward.groupby(["batch_size", "seq_len"], sort=False):
        values = group.drop_duplicates("backend").set_index("backend")["value"]
        cells = [f"{b} {values[b] * 1e3:.2f} ms ({batch * seq / values[b]:,.0f} tokens/s)"
                 for b in order if b in values.index]
        lines.append(f"  batch {int(batch)} x seq {int(seq)}, forward: " + "; ".join(cells))
    return lines


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
