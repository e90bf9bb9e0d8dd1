"""The top-k backend with both scorers: selection rules, equality with dense, parameter validation, recall."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import cython_kernels as ck
from harness import ParamError
from harness.execution.runner import prepare_model
from plugins.topk import TopK, fake_quantize, key_validity, select_keys

from conftest import tiny_classifier

needs_kernels = pytest.mark.skipif(not ck.AVAILABLE, reason=f"cython_kernels unavailable: {ck.UNAVAILABLE_REASON}")
SCORERS = ["fake", pytest.param("fbgemm", marks=needs_kernels)]


class _Module(torch.nn.Module):
    is_causal = False


def qkv(batch=3, heads=4, seq=12, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, seq, dim, generator=g) for _ in range(3)]


def padding_mask(lengths, seq):
    valid = torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]
    return valid[:, None, None, :].expand(len(lengths), 1, seq, seq)


def dense(q, k, v, mask):
    return sdpa_attention_forward(_Module(), q, k, v, mask, scaling=q.shape[-1] ** -0.5)[0]


@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("k", [5, 12, 50])
def test_k_at_least_the_valid_length_equals_dense(k, scorer):
    q, key, v = qkv()
    lengths = [5, 12, 3]
    mask = padding_mask(lengths, 12)
    backend = TopK(k=k, bits=4) if scorer == "fake" else TopK(k=k, scorer="fbgemm")
    out = backend.attention(_Module(), q, key, v, mask, scaling=16 ** -0.5)[0]
    ref = dense(q, key, v, mask)
    for row, n in enumerate(lengths):
        if k >= n:
            torch.testing.assert_close(out[row, :n], ref[row, :n], atol=1e-6, rtol=0)


def test_padding_keys_are_never_selected():
    q, key, _ = qkv(seq=10)
    lengths = [4, 10, 7]
    mask = padding_mask(lengths, 10)
    valid = key_validity(mask, q)
    # Padding keys get huge approximate scores: they still must not be selected.
    scores = torch.randn(3, 4, 10, 10)
    scores[~valid.expand_as(scores)] = 1e6
    for k in (2, 6, 20):
        index, selected = select_keys(scores, valid, k)
        for row, n in enumerate(lengths):
            chosen = index[row][selected[row]]
            assert (chosen < n).all()
            assert (selected[row].sum(-1) == min(k, n)).all()  # every row gets min(k, valid length) keys


def test_ties_go_to_the_lower_key_index_deterministically():
    scores = torch.tensor([[[[1.0, 3.0, 3.0, 3.0, 0.0, 3.0]]]])
    valid = torch.ones(1, 1, 1, 6, dtype=torch.bool)
    index, _ = select_keys(scores, valid, 3)
    assert sorted(index.flatten().tolist()) == [1, 2, 3]
    zeros = torch.tensor([[[[-0.0, 0.0, 0.0, -1.0]]]])
    index, _ = select_keys(zeros, torch.ones(1, 1, 1, 4, dtype=torch.bool), 2)
    assert sorted(index.flatten().tolist()) == [0, 1]  # -0.0 ties with +0.0


@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("granularity", ["tensor", "head", "token"])
def test_scales_ignore_other_sequences_and_padding(scorer, granularity):
    """A sequence gives the same output alone, unpadded, as inside a padded batch with a huge neighbour."""
    q, key, v = qkv(batch=2, seq=9)
    q[1] *= 1000
    key[1] *= 1000
    q[0, :, 6:] = key[0, :, 6:] = 1e4  # and huge padding
    mask = padding_mask([6, 9], 9)
    bits = {"bits": 3} if scorer == "fake" else {}
    backend = TopK(k=3, granularity=granularity, smooth_k=True, scorer=scorer, **bits)
    batched = backend.attention(_Module(), q, key, v, mask, scaling=0.25)[0]
    alone = backend.attention(_Module(), q[:1, :, :6], key[:1, :, :6], v[:1, :, :6], None, scaling=0.25)[0]
    torch.testing.assert_close(batched[0, :6], alone[0], atol=1e-6, rtol=0)


def test_fake_quantize_grid():
    x = torch.tensor([[[[0.0, 0.5, -1.0, 0.26]]]])
    valid = torch.ones(1, 1, 1, 1, dtype=torch.bool)
    out = fake_quantize(x, 2, "tensor", valid)  # 2 bits: levels -1, 0, 1 times max|x|
    torch.testing.assert_close(out, torch.tensor([[[[0.0, 0.0, -1.0, 0.0]]]]))
    assert torch.equal(fake_quantize(x, 16, "token", valid).sign(), x.sign())


def test_sixteen_bits_recall_is_about_one_and_recall_falls_with_bits():
    q, key, _ = qkv(batch=2, heads=4, seq=64, dim=32, seed=3)
    recall = {bits: TopK(k=8, bits=bits).fidelity_stats(q, key, None, 32 ** -0.5)["topk_recall"]
              for bits in (2, 3, 4, 8, 16)}
    assert recall[16] > 0.995
    assert recall[2] < recall[4] < recall[8] <= recall[16]
    assert recall[2] < 0.8


def test_fidelity_stats_by_hand():
    """One query, four keys, k=2: recall and softmax mass checked against values computed by hand."""
    q = torch.tensor([[[[1.0, 0.0]]]])
    key = torch.tensor([[[[4.0, 0.0], [3.0, 0.0], [1.0, 0.0], [0.0, 0.0]]]])
    stats = TopK(k=2, bits=16).fidelity_stats(q, key, None, 1.0)
    probs = torch.softmax(torch.tensor([4.0, 3.0, 1.0, 0.0]), 0)
    assert stats["topk_recall"] == 1.0
    assert stats["topk_mass"] == pytest.approx(float(probs[0] + probs[1]), abs=1e-6)
    # 2 bits: levels {-4, 0, 4} → keys 4 and 3 both round to 4 → still the right two keys
    assert TopK(k=2, bits=2).fidelity_stats(q, key, None, 1.0)["topk_recall"] == 1.0


def test_share_of_rows_longer_than_k_counts_valid_query_rows():
    """Lengths 5 and 2 with k=2: the 5 real rows of sequence 0 have more than k keys, the 2 of sequence 1
    do not (their recall is 1 by construction), padding rows are not counted: 5 / 7."""
    q, key, _ = qkv(batch=2, heads=3, seq=5, dim=8, seed=11)
    valid = torch.tensor([[True] * 5, [True, True, False, False, False]])
    mask = valid[:, None, None, :].expand(2, 1, 5, 5)
    stats = TopK(k=2, bits=3).fidelity_stats(q, key, mask, 8 ** -0.5)
    assert stats["topk_rows_longer"] == pytest.approx(5 / 7)
    short_only = TopK(k=2, bits=3).fidelity_stats(q[1:, :, :2], key[1:, :, :2], None, 8 ** -0.5)
    assert short_only["topk_rows_longer"] == 0 and short_only["topk_recall"] == 1.0
    assert TopK(k=4, bits=3).fidelity_stats(q, key, None, 8 ** -0.5)["topk_rows_longer"] == 1.0


@pytest.mark.parametrize("scorer", SCORERS)
def test_padding_keys_are_never_selected_by_either_scorer(scorer):
    q, key, _ = qkv(batch=3, seq=16, seed=7)
    lengths = [16, 9, 2]
    mask = padding_mask(lengths, 16)
    key[1, :, 9:] = q[1].mean(dim=1, keepdim=True) * 100  # padding keys aligned with every query
    backend = TopK(k=4, scorer=scorer)
    valid = key_validity(mask, q)
    index, selected = select_keys(backend.approximate_scores(q, key, valid), valid, 4)
    for row, n in enumerate(lengths):
        assert (index[row][selected[row]] < n).all()
        assert (selected[row].sum(-1) == min(4, n)).all()


@needs_kernels
def test_fbgemm_scorer_breaks_ties_towards_the_lower_key():
    q, key, _ = qkv(batch=1, heads=2, seq=10, seed=8)
    key[:] = key[:, :, :1]  # every key the same: every score of a row ties
    valid = key_validity(None, q)
    index, _ = select_keys(TopK(k=3, scorer="fbgemm").approximate_scores(q, key, valid), valid, 3)
    assert (index.sort(dim=-1).values == torch.arange(3)).all()


@needs_kernels
@pytest.mark.parametrize("granularity", ["tensor", "head", "token"])
def test_fbgemm_scores_rank_like_the_exact_ones(granularity):
    q, key, _ = qkv(batch=2, heads=4, seq=64, dim=32, seed=3)
    stats = TopK(k=8, scorer="fbgemm", granularity=granularity).fidelity_stats(q, key, None, 32 ** -0.5)
    fake = TopK(k=8, bits=8, granularity=granularity).fidelity_stats(q, key, None, 32 ** -0.5)
    assert stats["topk_recall"] > 0.97 and abs(stats["topk_recall"] - fake["topk_recall"]) < 0.03


def test_fbgemm_scorer_is_unavailable_without_the_kernels(registry, monkeypatch):
    monkeypatch.setattr(ck, "AVAILABLE", False)
    monkeypatch.setattr(ck, "UNAVAILABLE_REASON", "extension not built")
    assert registry.resolve("topk:k=4").unavailable_reason() is None
    assert registry.resolve("topk:k=4,scorer=fbgemm").unavailable_reason() == (
        "topk: scorer=fbgemm needs cython_kernels: extension not built")
    assert TopK.unavailable_reason() is None  # the backend as a whole stays available


@pytest.mark.parametrize("spec, message", [
    ("topk", r"parameter\(s\) k required"),
    ("topk:k=0", "must be in 1.."),
    ("topk:k=4,bits=1", "must be in 2..16"),
    ("topk:k=4,bits=17", "must be in 2..16"),
    ("topk:k=4,granularity=row", "one of tensor, head, token"),
    ("topk:k=4,smooth_k=perhaps", "true or false"),
    ("topk:k=4,kk=2", "unknown parameter 'kk'"),
    ("topk:k=4,scorer=int4", "one of fake, fbgemm"),
    ("topk:k=4,bits=4,scorer=fbgemm", r"bits=4 cannot apply; write 'topk:k=4,scorer=fbgemm' \(no bits\) or "
                                      r"'topk:k=4,bits=4' \(the fake scorer\)"),
])
def test_parameters_are_validated(registry, spec, message):
    with pytest.raises(ParamError, match=message):
        registry.resolve(spec)


def test_canonical_spec_keeps_the_required_k(registry):
    assert registry.resolve("topk:bits=4,k=16").spec == "topk:k=16,bits=4"
    assert registry.resolve("dynamic-quant+topk:k=16").spec == "dynamic-quant+topk:k=16"


def test_topk_in_a_model_with_large_k_matches_dense(registry):
    base = tiny_classifier()
    ids = torch.randint(1000, 5000, (2, 10))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    with torch.inference_mode():
        ref = prepare_model(base, registry.resolve("dense"))(**batch).logits
        out = prepare_model(base, registry.resolve("topk:k=64,bits=2"))(**batch).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_all_finite_is_false_for_any_nan_or_infinity():
    from plugins.topk import all_finite
    q, key, v = qkv()
    assert all_finite(q, key, v)
    for value in (float("nan"), float("inf"), float("-inf")):
        bad = v.clone()
        bad[2, 3, 11, 15] = value
        assert not all_finite(q, key, bad)
    big = torch.full((4, 4), 3e38)  # finite, but its sum overflows: False only costs the exact checks
    assert not all_finite(big) and bool(torch.isfinite(big).all())
    assert all_finite(q.double(), key.to(torch.bfloat16))
