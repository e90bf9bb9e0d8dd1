"""Top-k under masks that differ between query rows (ModernBERT's sliding window, any bool mask).

A masked key is never selected, whatever its score; with k at least the keys a row may attend, top-k equals
dense attention under the same mask. Key-padding masks keep the native kernels; other masks run the torch steps.
"""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import cython_kernels as ck
from plugins.topk import TopK, allowed_keys, key_validity

needs_kernels = pytest.mark.skipif(not ck.AVAILABLE, reason=f"cython_kernels unavailable: {ck.UNAVAILABLE_REASON}")
SCORERS = ["fake", pytest.param("fbgemm", marks=needs_kernels)]
SEQ, HALF = 14, 2  # a window of 2 keys on each side: 5 keys for an inner row


class _Module(torch.nn.Module):
    is_causal = False


def qkv(batch=2, heads=3, seq=SEQ, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, seq, dim, generator=g) for _ in range(3)]


def window_mask(lengths, seq=SEQ, half=HALF):
    """Bool ``(batch, 1, seq, seq)``: query i attends key j when |i - j| <= half and j is a real token."""
    positions = torch.arange(seq)
    window = (positions[:, None] - positions[None, :]).abs() <= half
    real = positions[None, :] < torch.tensor(lengths)[:, None]
    return (window[None] & real[:, None, :])[:, None]


def backend(k, scorer):
    return TopK(k=k, bits=8) if scorer == "fake" else TopK(k=k, scorer="fbgemm")


@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("k", [5, 8, 64])
def test_k_at_least_the_window_equals_dense_restricted_to_the_window(scorer, k):
    q, key, v = qkv()
    lengths = [SEQ, 9]
    mask = window_mask(lengths)
    out = backend(k, scorer).attention(_Module(), q, key, v, mask, scaling=16 ** -0.5)[0]
    ref = sdpa_attention_forward(_Module(), q, key, v, mask, scaling=16 ** -0.5)[0]
    for row, n in enumerate(lengths):
        torch.testing.assert_close(out[row, :n], ref[row, :n], atol=1e-6, rtol=0)
    # and not dense without the window: the mask really changed the result
    unwindowed = sdpa_attention_forward(_Module(), q, key, v, window_mask(lengths, half=SEQ), scaling=16 ** -0.5)[0]
    assert (out[0] - unwindowed[0]).abs().max() > 1e-3


@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("k_factor", [1, 3])
def test_keys_outside_the_window_are_never_selected_even_when_they_score_highest(scorer, k_factor):
    q, key, _ = qkv()
    mask = window_mask([SEQ, 10])
    key = key.clone()
    key[:, :, ::4] = q[:, :, :1] * 50  # keys aligned with the queries: the best scores, mostly outside windows
    top = backend(2, scorer) if k_factor == 1 else TopK(k=2, k_factor=k_factor, scorer=scorer)
    valid = key_validity(mask, q)
    allowed = allowed_keys(mask, valid)
    index, selected = top.select(top.approximate_scores(q, key, valid), q, key, allowed, 16 ** -0.5)
    picked = allowed.expand(-1, q.shape[1], -1, -1).gather(-1, index)
    assert picked[selected].all()
    assert (selected.sum(-1) == allowed.sum(-1).clamp(max=2).expand(-1, q.shape[1], -1)).all()


@pytest.mark.parametrize("scorer", SCORERS)
def test_output_under_a_window_only_mixes_values_inside_the_window(scorer):
    q, key, v = qkv(batch=1)
    mask = window_mask([SEQ])
    v = v.clone()
    v[:, :, 10:] = 1e6  # values of keys 10.. lie outside the windows of queries 0..7
    out = backend(3, scorer).attention(_Module(), q, key, v, mask, scaling=16 ** -0.5)[0]
    assert out[0, : 10 - HALF].abs().max() < 10  # a convex mix of window values, all standard normal
    assert out[0, 10 - HALF:].abs().max() > 1e5  # queries 8.. do reach them


def test_key_padding_masks_are_recognised_and_other_masks_kept_whole():
    q, _, _ = qkv()
    padding = window_mask([SEQ, 9], half=SEQ)
    assert allowed_keys(padding, key_validity(padding, q)) is None  # native kernels apply
    window = window_mask([SEQ, 9])
    assert torch.equal(allowed_keys(window, key_validity(window, q)), window)
    assert allowed_keys(None, key_validity(None, q)) is None


@pytest.mark.parametrize("scorer", SCORERS)
def test_fidelity_stats_rank_within_the_window(scorer):
    q, key, _ = qkv()
    mask = window_mask([SEQ, 10])
    stats = backend(64, scorer).fidelity_stats(q, key, mask, 16 ** -0.5)
    assert stats["topk_recall"] == 1.0 and stats["topk_mass"] == pytest.approx(1.0, abs=1e-6)
    assert stats["topk_rows_longer"] == 0.0  # no row may attend more than 5 keys
