"""Re-ranking in ``topk`` (``k_factor``): ``k * k_factor`` candidates chosen by the low-precision scores, of which
the ``k`` with the largest exact scores are kept (FAISS ``IndexRefine``'s scheme). The native kernel and the torch
steps against a NumPy reference on the same scores, the backend's paths against each other, and the recall it buys.

Exact scores are made unambiguous by integer-valued q and k (their dot products are exact in float32, so equal
dot products are real ties, broken to the lower key index), and the kept keys are read from the output with
one-hot value rows (output column j > 0 exactly when key j carries weight)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cython_kernels as ck
from harness import ParamError, SpecError, load_registry
from plugins.topk import refine_keys, select_keys

needs_kernel = pytest.mark.skipif(not ck.TOPK_AVAILABLE,
                                  reason=f"fused top-k kernel unavailable: {ck.TOPK_UNAVAILABLE_REASON}")

GRANULARITIES = ("head", "token", "tensor")
SCALING = 2.0 ** -4


def reference_rerank(approx: np.ndarray, exact: np.ndarray, valid: np.ndarray, k: int, factor: int) -> list[int]:
    """The kept keys of one query row, ascending: the ``k * factor`` valid keys of largest ``approx``, then of
    those the ``k`` of largest ``exact``; ties to the lower key index at both steps."""
    keys = [j for j in range(len(valid)) if valid[j]]
    candidates = sorted(keys, key=lambda j: (-approx[j], j))[:k * factor]
    return sorted(sorted(candidates, key=lambda j: (-exact[j], j))[:k])


def integer_case(batch: int, heads: int, seq: int, dim: int, seed: int):
    """Integer-valued q, k (exact dot products, many ties), one-hot v (dim >= seq), small-integer approximate
    scores (many ties), and a validity mask with a padded sequence and a masked key inside one."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-2, 3, (batch, heads, seq, dim), generator=g).float()
    k = torch.randint(-2, 3, (batch, heads, seq, dim), generator=g).float()
    v = torch.eye(seq, dim).expand(batch, heads, seq, dim).contiguous()
    approx = torch.randint(-4, 5, (batch, heads, seq, seq), generator=g, dtype=torch.int32)
    approx[0, 0, :3] = 7                                    # rows of equal scores
    lengths = [seq, seq * 2 // 3, 11][:batch]
    valid = torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]
    valid[0, 5] = False
    return q, k, v, approx, valid


def expected_kept(q, k, approx, valid, topk, factor) -> torch.Tensor:
    exact = (q.double() @ k.double().transpose(-1, -2)).numpy()
    batch, heads, seq, _ = q.shape
    kept = torch.zeros(batch, heads, seq, seq, dtype=torch.bool)
    for b in range(batch):
        for h in range(heads):
            for i in range(seq):
                kept[b, h, i, reference_rerank(approx[b, h, i].numpy(), exact[b, h, i], valid[b].numpy(), topk,
                                               factor)] = True
    return kept


# (dim >= seq for the one-hot values; head dims 32 and 64 take their own loops, 48 and 96 the generic ones; more
# than 64 candidates take _kth_select)
CASES = [(32, 32, 4, 3), (32, 32, 1, 16), (64, 64, 1, 2), (64, 64, 3, 3), (64, 64, 16, 2), (64, 64, 8, 8), (96, 96, 16, 3), (96, 96, 20, 4),
         (96, 96, 16, 1), (40, 48, 5, 16)]


@needs_kernel
@pytest.mark.parametrize("seq,dim,topk,factor", CASES)
def test_native_rerank_equals_the_numpy_reference(seq, dim, topk, factor):
    q, k, v, approx, valid = integer_case(3, 2, seq, dim, seed=seq + topk * factor)
    out = ck.topk_attention_scores(q, k, v, valid, approx, topk=topk, scaling=SCALING, k_factor=factor)
    kept = (out[..., :seq] > 0).permute(0, 2, 1, 3)        # (batch, heads, query, key)
    expected = expected_kept(q, k, approx, valid, topk, factor)
    rows = valid[:, None, :].expand(-1, q.shape[1], -1)    # valid query rows
    assert torch.equal(kept[rows], expected[rows])


@pytest.mark.parametrize("seq,dim,topk,factor", CASES)
def test_torch_refine_equals_the_numpy_reference(seq, dim, topk, factor):
    q, k, _, approx, valid = integer_case(3, 2, seq, dim, seed=seq + topk * factor)
    valid_keys = valid[:, None, None, :]
    index, selected = select_keys(approx.float(), valid_keys, topk * factor)
    index, selected = refine_keys(q, k, index, selected, topk, SCALING)
    assert index.shape[-1] == min(topk, index.shape[-1])
    kept = torch.zeros(approx.shape, dtype=torch.bool).scatter_(-1, index, selected)
    rows = valid[:, None, :].expand(-1, q.shape[1], -1)
    assert torch.equal(kept[rows], expected_kept(q, k, approx, valid, topk, factor)[rows])


class _Module(torch.nn.Module):
    is_causal = False


def random_case(seq=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(3, 4, seq, 32, generator=g) for _ in range(3))
    valid = torch.arange(seq)[None, :] < torch.tensor([seq, seq * 3 // 5, 20])[:, None]
    return q, k, v, valid, valid[:, None, None, :].expand(3, 1, seq, seq)


def torch_steps(backend, q, k, v, mask, scaling):
    """The backend's torch steps (native and fused paths off)."""
    fused, native = backend.fused, backend.native
    backend.fused, backend.native = (lambda: False), (lambda *a: False)
    try:
        return backend.attention(_Module(), q, k, v, mask, scaling=scaling)[0]
    finally:
        backend.fused, backend.native = fused, native


@needs_kernel
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("factor", [2, 3, 16])
def test_fused_kernel_rerank_equals_the_torch_steps(granularity, factor):
    q, k, v, valid, mask = random_case(seed=factor)
    backend = load_registry().resolve(f"topk:k=8,scorer=fbgemm,granularity={granularity},k_factor={factor}"
                                      ).attention_part
    assert backend.fused()
    fused = backend.attention(_Module(), q, k, v, mask, scaling=32 ** -0.5)[0]
    reference = torch_steps(backend, q, k, v, mask, 32 ** -0.5)
    rows = valid[:, :, None, None].expand_as(fused)
    torch.testing.assert_close(fused[rows], reference[rows], atol=1e-6, rtol=0)


@needs_kernel
@pytest.mark.parametrize("bits,factor", [(3, 2), (8, 3), (4, 16)])
def test_fake_scorer_native_rerank_equals_the_torch_steps(bits, factor):
    q, k, v, valid, mask = random_case(seed=bits)
    backend = load_registry().resolve(f"topk:k=8,bits={bits},k_factor={factor}").attention_part
    assert backend.native(q, k, v)
    native = backend.attention(_Module(), q, k, v, mask, scaling=0.2)[0]
    torch.testing.assert_close(native, torch_steps(backend, q, k, v, mask, 0.2), atol=1e-5, rtol=0)


@needs_kernel
def test_rerank_changes_the_selection_and_k_factor_one_does_not():
    """Re-ranking is not a no-op (a coarse scorer's keys change), and k_factor=1 is the plain selection."""
    q, k, v, valid, mask = random_case(seed=5)
    plain = load_registry().resolve("topk:k=8,bits=2").attention_part.attention(_Module(), q, k, v, mask)[0]
    one = load_registry().resolve("topk:k=8,bits=2,k_factor=1").attention_part.attention(_Module(), q, k, v, mask)[0]
    two = load_registry().resolve("topk:k=8,bits=2,k_factor=2").attention_part.attention(_Module(), q, k, v, mask)[0]
    assert torch.equal(plain, one)
    assert (two - plain).abs().max() > 1e-3


@needs_kernel
@pytest.mark.parametrize("scorer", ["fbgemm", "fake"])
def test_recall_is_one_when_every_key_is_a_candidate(scorer):
    """With k * k_factor >= the keys, re-ranking picks the exact top-k: recall 1 and the exact softmax mass, where
    the plain 2-bit (fake) or 8-bit (fbgemm) selection misses some keys."""
    q, k, _, valid, mask = random_case(seq=60, seed=11)
    bits = "" if scorer == "fbgemm" else ",bits=2"
    stats = {}
    for factor in (1, 8):
        backend = load_registry().resolve(f"topk:k=8,scorer={scorer}{bits},k_factor={factor}").attention_part
        stats[factor] = backend.fidelity_stats(q, k, mask, 32 ** -0.5)
    assert stats[8]["topk_recall"] == pytest.approx(1.0, abs=1e-6)
    assert stats[1]["topk_recall"] < 0.999 and stats[8]["topk_mass"] > stats[1]["topk_mass"]


@needs_kernel
def test_k_at_least_the_valid_length_is_dense_and_padding_threads_do_not_matter():
    q, k, v, valid, _ = random_case(seq=70, seed=2)
    lengths = [70, 42, 20]
    one = ck.topk_attention_u8s8(q, k, v, valid, topk=6, k_factor=3, threads=1)
    two = ck.topk_attention_u8s8(q, k, v, valid, topk=6, k_factor=3, threads=2)
    assert torch.equal(one, two)
    for b, n in enumerate(lengths):
        alone = ck.topk_attention_u8s8(q[b:b + 1, :, :n], k[b:b + 1, :, :n], v[b:b + 1, :, :n], None, topk=6,
                                       k_factor=3)
        assert torch.equal(one[b:b + 1, :n], alone)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])
    out = ck.topk_attention_u8s8(q, k, v, valid, topk=70, k_factor=2)
    rows = valid[:, :, None, None].expand_as(out)
    torch.testing.assert_close(out[rows], dense.transpose(1, 2)[rows], atol=1e-5, rtol=0)


@needs_kernel
def test_non_finite_query_rows_and_profile():
    q, k, v, valid, mask = random_case(seed=3)
    q[0, 1, 7, 3] = float("nan")
    profile = np.zeros(len(ck.TOPK_PHASES))
    out = ck.topk_attention_u8s8(q, k, v, valid, topk=8, k_factor=2, profile=profile)
    assert torch.isnan(out[0, 7, 1]).all() and torch.isfinite(out[1]).all()
    assert profile[ck.TOPK_PHASES.index("rerank")] > 0
    backend = load_registry().resolve("topk:k=8,k_factor=2").attention_part
    native = backend.attention(_Module(), q, k, v, mask, scaling=0.2)[0]
    torch.testing.assert_close(native, torch_steps(backend, q, k, v, mask, 0.2), atol=1e-5, rtol=0, equal_nan=True)


@needs_kernel
def test_bad_k_factor_is_refused():
    q, k, v, valid, _ = random_case(seq=20)
    with pytest.raises(ValueError, match="k_factor"):
        ck.topk_attention_u8s8(q, k, v, valid, topk=4, k_factor=0)
    with pytest.raises(ValueError, match="k_factor"):
        ck.topk_attention_scores(q, k, v, valid, torch.zeros(3, 4, 20, 20), topk=4, k_factor=True)
    for spec in ("topk:k=4,k_factor=0", "topk:k=4,k_factor=17", "topk:k=4,k_factor=two"):
        with pytest.raises((ParamError, SpecError), match="k_factor"):
            load_registry().resolve(spec)


def test_torch_steps_rerank_without_the_kernel(monkeypatch):
    """Without the compiled kernel (or off float32 CPU), the torch steps re-rank: a float64 model input with
    every key a candidate gives the exact top-k attention, which with k >= the length is dense attention."""
    monkeypatch.setattr(ck, "TOPK_AVAILABLE", False)
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 3, 12, 16, generator=g, dtype=torch.float64) for _ in range(3))
    backend = load_registry().resolve("topk:k=12,bits=2,k_factor=2").attention_part
    assert not backend.native(q, k, v) and not backend.fused()
    out = backend.attention(_Module(), q, k, v, None, scaling=0.25)[0]
    dense = torch.softmax((q @ k.transpose(-1, -2)) * 0.25, dim=-1) @ v
    torch.testing.assert_close(out, dense.transpose(1, 2), atol=1e-12, rtol=0)
    exact = load_registry().resolve("topk:k=3,bits=2,k_factor=4").attention_part  # all 12 keys are candidates
    scores = (q @ k.transpose(-1, -2)) * 0.25
    top = scores.topk(3, dim=-1).indices
    weights = torch.softmax(scores.gather(-1, top), dim=-1)
    expected = (weights.unsqueeze(-1) * v[:, :, None].expand(-1, -1, 12, -1, -1).gather(
        -2, top.unsqueeze(-1).expand(-1, -1, -1, -1, 16))).sum(-2)
    torch.testing.assert_close(exact.attention(_Module(), q, k, v, None, scaling=0.25)[0], expected.transpose(1, 2),
                               atol=1e-12, rtol=0)


@needs_kernel
def test_asv_rerank_track_runs_and_skips_on_a_version_without_k_factor(monkeypatch):
    """asv runs today's suite against older commits: there the kernel has no ``k_factor``, a skip, not a
    failure."""
    import importlib

    monkeypatch.setenv("ATTNBENCH_ASV_EXTENDED", "1")
    importlib.reload(importlib.import_module("benchmarks.common"))
    bench = importlib.reload(importlib.import_module("benchmarks.bench_kernels"))
    case = bench.TopkRerankAttention()
    case.setup(2, 128, 32, 1)
    case.qkv = [x[:1, :2] for x in case.qkv]  # a small slice: the call, not its speed, is under test
    case.time_topk_attention(2, 128, 32, 1)

    def without_k_factor(q, k, v, key_valid=None, *, topk, scaling=None, granularity="token", smooth_k=False,
                         threads=None, profile=None):
        raise AssertionError("not called")
    monkeypatch.setattr(ck, "topk_attention_u8s8", without_k_factor)
    with pytest.raises(NotImplementedError, match="no k_factor"):
        case.setup(2, 128, 32, 1)
    monkeypatch.delenv("ATTNBENCH_ASV_EXTENDED")
    importlib.reload(importlib.import_module("benchmarks.common"))
    importlib.reload(bench)
