"""Attention fidelity: how far each layer's attention output drifts from the dense reference on real inputs.

Both models run on the same batches; every call of the model's attention function is recorded
(:func:`~harness.backends.architecture.attention_calls`) and its output kept (``(batch, seq, heads · head_dim)``,
before the output projection). Errors are computed over real (non-padding)
tokens, per layer, then summarised as the mean over layers and the worst layer. The backend's model runs
end to end, so the figures include errors that earlier layers (or quantized projections) pass on.

A backend may add its own figures (``Backend.fidelity_stats``, e.g. top-k recall); they are collected by
wrapping its attention function for the duration of the pass.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from ..backends.attention_interface import attention_function, expand_kv_heads, implementation_name
from ..backends.architecture import attention_calls
from ..backends.contract import Backend, ResolvedBackend
from ..tasks.encoding import EncodedSplit

METRICS = {  # name: (unit, direction)
    "attn_cosine_mean": ("cosine", "higher"), "attn_cosine_worst": ("cosine", "higher"),
    "attn_rel_l1_mean": ("ratio", "lower"), "attn_rel_l1_worst": ("ratio", "lower"),
    "attn_max_abs_err": ("abs", "lower"),
    "topk_recall": ("ratio", "higher"), "topk_mass": ("ratio", "higher"),
    "topk_rows_longer": ("ratio", "higher"),  # share of query rows with more than k valid keys (data, not quality)
}


@contextmanager
def captured_attention(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the attention output of every layer, in call order, while the context is open: each
    ``(batch, seq, heads · head_dim)`` float32, as the model's attention function returned it (before the
    output projection), whatever the architecture calls its attention modules."""
    outputs: list[torch.Tensor] = []

    def record(_module, _query, _key, _value, _mask, _kwargs, output: torch.Tensor) -> None:
        outputs.append(output.detach().float().flatten(2))

    with attention_calls(model, record):
        yield outputs


@contextmanager
def observed_stats(model: torch.nn.Module, backend: ResolvedBackend,
                   totals: dict[str, list[float]]) -> Iterator[None]:
    """Switch ``model`` to a wrapper of the backend's attention that also accumulates its fidelity_stats."""
    part = backend.attention_part
    if part is None or type(part).fidelity_stats is Backend.fidelity_stats:
        yield
        return
    inner = attention_function(backend)

    def wrapper(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        keys = key if key.shape[1] == query.shape[1] else expand_kv_heads(key, query.shape[1])
        stats = part.fidelity_stats(query, keys, attention_mask, query.shape[-1] ** -0.5 if scaling is None
                                    else scaling) or {}
        weight = float(query.shape[0] * query.shape[2])
        for name, value_ in stats.items():
            entry = totals.setdefault(name, [0.0, 0.0])
            entry[0] += value_ * weight
            entry[1] += weight
        return inner(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)

    name = implementation_name(backend)
    AttentionInterface.register(name + "+fidelity", wrapper)
    AttentionMaskInterface.register(name + "+fidelity", ALL_MASK_ATTENTION_FUNCTIONS[name])
    model.set_attn_implementation(name + "+fidelity")
    try:
        yield
    finally:
        model.set_attn_implementation(name)


def reference_outputs(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]],
                      forward_kwargs: dict) -> list[list[torch.Tensor]]:
    """Per batch, the reference's attention outputs of every layer."""
    result = []
    with torch.inference_mode():
        for batch in batches:
            with captured_attention(model) as outputs:
                model(**batch, **forward_kwargs)
            result.append(list(outputs))
    return result


def fidelity_batches(encoded: EncodedSplit, n_examples: int, max_tokens: int | None,
                     eval_batch_size: int | None = None) -> list[dict[str, torch.Tensor]]:
    """The first ``n_examples`` of the split (a fixed, task-specific set), length-sorted into batches."""
    subset = encoded.subset(np.arange(min(n_examples, len(encoded))))
    return [batch for _, batch in subset.batches(max_tokens, eval_batch_size)]


def attention_fidelity(model: torch.nn.Module, backend: ResolvedBackend, batches: list[dict[str, torch.Tensor]],
                       reference: list[list[torch.Tensor]], forward_kwargs: dict) -> dict[str, float]:
    """Per-layer attention-output error of ``model`` against the reference outputs, plus backend figures."""
    cos_sum = abs_diff = abs_ref = max_abs = count = None
    totals: dict[str, list[float]] = {}
    with torch.inference_mode(), observed_stats(model, backend, totals):
        for batch, ref_layers in zip(batches, reference):
            with captured_attention(model) as outputs:
                model(**batch, **forward_kwargs)
            valid = batch["attention_mask"].bool()
            ref = torch.stack([r[valid] for r in ref_layers])      # (layers, tokens, hidden)
            out = torch.stack([o[valid] for o in outputs])
            diff = (out - ref).abs()
            cos = torch.nn.functional.cosine_similarity(out, ref, dim=-1, eps=1e-12)
            layer = (cos.sum(1), diff.sum((1, 2)), ref.abs().sum((1, 2)), diff.amax((1, 2)))
            if cos_sum is None:
                cos_sum, abs_diff, abs_ref, max_abs = (x.double() for x in layer)
                count = 0
            else:
                cos_sum, abs_diff, abs_ref = cos_sum + layer[0], abs_diff + layer[1], abs_ref + layer[2]
                max_abs = torch.maximum(max_abs, layer[3].double())
            count += int(valid.sum())
    cosine = cos_sum / count
    rel_l1 = abs_diff / abs_ref
    result = {"attn_cosine_mean": float(cosine.mean()), "attn_cosine_worst": float(cosine.min()),
              "attn_rel_l1_mean": float(rel_l1.mean()), "attn_rel_l1_worst": float(rel_l1.max()),
              "attn_max_abs_err": float(max_abs.max())}
    result.update({name: total / weight for name, (total, weight) in totals.items() if weight})
    return result
