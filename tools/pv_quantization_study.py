"""How to code P (softmax weights) and V for an int8 P·V: error of each scheme on MiniLM's real attention.

    python tools/pv_quantization_study.py [--tasks qnli,mnli-m] [--seq 128 512]

Captures q/k/v of every layer of the embedded MiniLM on GLUE text (batches of real tokens at each --seq,
and one naturally padded batch per task), then simulates each scheme in float64 against exact attention
and prints the relative L2 error of the attention output and the mean and worst per-token cosine. Q·Kᵀ
is exact here: only the P·V coding is compared. ``fbgemm-int8`` (pv=int8) implements the last scheme.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import load_registry  # noqa: E402
from harness.tasks.data import DataSource  # noqa: E402
from harness.tasks.encoding import encode, fixed_shape_inputs  # noqa: E402
from harness.models.loading import load_task_models  # noqa: E402


def capture(model: torch.nn.Module, inputs: dict) -> list[tuple[torch.Tensor, ...]]:
    """(q, k, v, key_valid) of every attention layer for one forward."""
    seen = []

    def record(module, q, k, v, mask, scaling=None, dropout=0.0, **kwargs):
        valid = torch.ones(q.shape[0], q.shape[2], dtype=torch.bool) if mask is None else mask[:, 0, 0, :]
        seen.append((q.double(), k.double(), v.double(), valid))
        return sdpa_attention_forward(module, q, k, v, mask, scaling=scaling, dropout=dropout, **kwargs)

    AttentionInterface.register("pv-study", record)
    AttentionMaskInterface.register("pv-study", sdpa_mask)
    model.set_attn_implementation("pv-study")
    try:
        with torch.inference_mode():
            model(**inputs)
    finally:
        model.set_attn_implementation("sdpa")
    return seen


def code_rows(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.round(w / scale) * scale


def pair_scale(w: torch.Tensor) -> torch.Tensor:
    """Per-row scale whose codes stay <= 255 with aligned pairs <= 258: max(max/255, max pair/257)."""
    padded = torch.nn.functional.pad(w, (0, w.shape[-1] % 2))
    pairs = padded.unflatten(-1, (-1, 2)).sum(-1).amax(-1, keepdim=True)
    return torch.maximum(w.amax(-1, keepdim=True) / 255, pairs / 257).clamp(min=1e-300)


def s8(x: torch.Tensor, dims: int | tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    scale = (x.abs().amax(dims, keepdim=True) / 127).clamp(min=1e-300)
    return torch.round(x / scale).clamp(-127, 127), scale


def schemes(p: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """P·V under each coding of P (b, h, q, k) and V (b, h, k, d); scales from valid keys."""
    vq_c, vs_c = s8(v * valid[:, None, :, None], 2)   # V per channel
    v_channel = vq_c * vs_c
    vq_t, vs_t = s8(v, -1)                             # V per token
    out = {
        "P float, V s8 per channel": p @ v_channel,
        "P float, V s8 per token": p @ (vq_t * vs_t),
        "P u8 fixed 1/255, V per channel": code_rows(p, torch.tensor(1 / 255)) @ v_channel,
        "P u7 fixed 1/127, V per channel": code_rows(p, torch.tensor(1 / 127)) @ v_channel,
        "P u7 row max/127, V per channel": code_rows(p, p.amax(-1, keepdim=True) / 127) @ v_channel,
        "P u8 pair rule, V per channel": code_rows(p, pair_scale(p)) @ v_channel,
    }
    weighted = p * vs_t.transpose(-1, -2)  # V's token scales folded into the weights
    out["P·s_v u8 pair rule, V per token (fbgemm-int8)"] = code_rows(weighted, pair_scale(weighted)) @ vq_t
    return out


def errors(out: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor) -> tuple[float, float, float]:
    o, r = out.transpose(1, 2)[valid].flatten(1), ref.transpose(1, 2)[valid].flatten(1)
    cosine = torch.nn.functional.cosine_similarity(o, r, dim=-1)
    return float((o - r).norm() / r.norm()), float(cosine.mean()), float(cosine.min())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="qnli,mnli-m")
    parser.add_argument("--seq", type=int, nargs="+", default=[128, 512])
    args = parser.parse_args(argv)
    registry = load_registry(entry_points=False)
    tasks = [registry.task(name) for name in args.tasks.split(",")]
    models = load_task_models(None, tasks)
    encoder = models.model(tasks[0]).encoder
    batches = {}
    for task in tasks:
        encoded = encode(task, DataSource.parse("sample").load(task), models.tokenizer(task), models.max_length(task))
        for seq in args.seq:
            batches[f"{task.name} seq {seq}"] = fixed_shape_inputs(encoded, 4, seq)
        batches[f"{task.name} padded"] = next(iter(encoded.batches(16)))[1]
    print("| inputs | scheme | rel. L2 error | mean cosine | worst token cosine |")
    print("|---|---|---:|---:|---:|")
    for name, inputs in batches.items():
        totals: dict[str, list[float]] = {}
        layers = capture(encoder, {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
        for q, k, v, valid in layers:
            scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
            p = torch.softmax(scores.masked_fill(~valid[:, None, None, :], float("-inf")), dim=-1)
            ref = p @ v
            for scheme, out in schemes(p, v, valid).items():
                rel, cos, worst = errors(out, ref, valid)
                entry = totals.setdefault(scheme, [0.0, 0.0, 1.0])
                entry[0] += rel / len(layers)
                entry[1] += cos / len(layers)
                entry[2] = min(entry[2], worst)
        for scheme, (rel, cos, worst) in totals.items():
            print(f"| {name} | {scheme} | {rel:.4f} | {cos:.6f} | {worst:.4f} |")


if __name__ == "__main__":
    main()
