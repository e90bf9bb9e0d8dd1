"""Attaching attention functions: padding must be honoured (the AttentionMaskInterface gotcha)."""

from __future__ import annotations

import copy

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from harness.backends.attention_interface import attach
from harness.execution.runner import prepare_model

from conftest import tiny_classifier


def padded_batch():
    torch.manual_seed(1)
    ids = torch.randint(1000, 5000, (3, 20))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    mask[1, 13:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def logits(model, batch):
    with torch.inference_mode():
        return model(**batch).logits


def test_dense_eager_and_sdpa_agree_on_a_padded_batch(registry):
    base = tiny_classifier()
    batch = padded_batch()
    sdpa = logits(prepare_model(base, registry.resolve("dense")), batch)
    eager = logits(prepare_model(base, registry.resolve("dense:impl=eager")), batch)
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=0)
    assert base.config._attn_implementation == "sdpa"  # the base model was never modified


def test_padding_does_not_change_a_sequence_result(registry):
    """Each padded row equals the same sequence run alone without padding: padding keys are masked."""
    base = tiny_classifier()
    batch = padded_batch()
    for spec in ("dense", "dense:impl=eager"):
        model = prepare_model(base, registry.resolve(spec))
        padded = logits(model, batch)
        for row, length in enumerate(batch["attention_mask"].sum(1).tolist()):
            alone = logits(model, {k: v[row:row + 1, :length] for k, v in batch.items()})
            torch.testing.assert_close(padded[row], alone[0], atol=1e-5, rtol=0)


def test_attention_registered_without_mask_builder_ignores_padding():
    """The gotcha this harness guards against: AttentionInterface alone gets attention_mask=None."""
    seen = []

    def spy(module, q, k, v, attention_mask, **kwargs):
        seen.append(attention_mask)
        return sdpa_attention_forward(module, q, k, v, attention_mask, **kwargs)

    AttentionInterface.register("test-no-mask-builder", spy)
    model = copy.deepcopy(tiny_classifier())
    model.set_attn_implementation("test-no-mask-builder")
    logits(model, padded_batch())
    assert seen and all(m is None for m in seen)  # padding silently ignored
    # With attach() a mask builder is registered too, so the padded rows get a real mask.
    seen.clear()
    model = copy.deepcopy(tiny_classifier())
    from harness import Backend
    from harness.backends.contract import PluginInfo, ResolvedBackend

    class Spy(Backend):
        name = "spy"

        def attention(self, module, q, k, v, attention_mask, **kwargs):
            return spy(module, q, k, v, attention_mask, **kwargs)

    attach(model, ResolvedBackend((Spy(),), (PluginInfo("t", "t", "0"),)))
    logits(model, padded_batch())
    assert seen and all(m is not None and m.dtype == torch.bool for m in seen)
    assert not seen[0][0, 0, 0, 7:].any() and seen[0][0, 0, 0, :7].all()
