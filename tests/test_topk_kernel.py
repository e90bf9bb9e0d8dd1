"""The fused top-k kernel (``cython_kernels.topk_attention_u8s8``, ``_topk.pyx``): its selection against a NumPy
reference on the same int32 scores, equality with dense attention, padding, non-finite inputs, threads, and the
``topk`` backend's use of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cython_kernels as ck
from harness import load_registry
from plugins.topk import select_keys, sparse_attention

pytestmark = pytest.mark.skipif(not ck.TOPK_AVAILABLE,
                                reason=f"fused top-k kernel unavailable: {ck.TOPK_UNAVAILABLE_REASON}")

INT32_MIN = np.iinfo(np.int32).min
INT32_MAX = np.iinfo(np.int32).max
GRANULARITIES = ("head", "token", "tensor")


def reference_select(scores: np.ndarray, valid: np.ndarray, k: int) -> list[list[int]]:
    """Per row, the indices (ascending) of the k largest valid scores, ties to the lower index."""
    keys = np.flatnonzero(valid)
    rows = []
    for row in scores:
        order = sorted(keys, key=lambda j: (-int(row[j]), int(j)))
        rows.append(sorted(int(j) for j in order[:k]))
    return rows


def check_selection(scores: np.ndarray, valid: np.ndarray | None, k: int) -> None:
    valid_arr = np.ones(scores.shape[1], bool) if valid is None else valid
    index, count = ck.topk_select(scores, valid, k)
    expected = reference_select(scores, valid_arr, k)
    for i, want in enumerate(expected):
        assert index[i, :count[i]].tolist() == want, (i, k, scores[i].tolist(), valid_arr.tolist())


@pytest.mark.parametrize("n", [1, 7, 8, 33, 128, 200, 512])
@pytest.mark.parametrize("k", [1, 2, 5, 16, 32, 200, 600])
def test_selection_equals_numpy_reference_on_random_rows(n, k):
    rng = np.random.default_rng(n * 1000 + k)
    wide = rng.integers(-2_000_000, 2_000_000, size=(20, n), dtype=np.int32)
    narrow = rng.integers(-3, 4, size=(20, n), dtype=np.int32)  # many ties
    check_selection(np.concatenate([wide, narrow]), None, k)


@pytest.mark.parametrize("k", [1, 3, 16, 64])
def test_selection_all_equal_rows_and_extreme_values(k):
    n = 130
    rows = np.stack([np.full(n, 5, np.int32), np.full(n, INT32_MAX, np.int32), np.full(n, INT32_MIN + 1, np.int32),
                     np.where(np.arange(n) % 2, INT32_MAX, INT32_MIN + 1).astype(np.int32),
                     np.arange(n, dtype=np.int32)[::-1].copy(), np.arange(n, dtype=np.int32)])
    check_selection(rows, None, k)


@pytest.mark.parametrize("k", [1, 4, 16, 40])
def test_selection_with_masked_keys_and_fewer_valid_keys_than_k(k):
    rng = np.random.default_rng(k)
    n = 96
    scores = rng.integers(-50, 50, size=(10, n), dtype=np.int32)
    scores[:, ::3] = 10_000  # masked keys with the best scores must never be chosen
    for density in (0.05, 0.3, 0.9):
        valid = rng.random(n) < density
        valid[::3] = False
        check_selection(scores, valid, k)
    few = np.zeros(n, bool)
    few[[5, 50, 90]] = True  # 3 valid keys: all of them, whatever k
    index, count = ck.topk_select(scores, few, k)
    assert (count == min(k, 3)).all()
    if k >= 3:
        assert index[0, :3].tolist() == [5, 50, 90]


def qkv(batch=3, heads=4, seq=40, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, seq, dim, generator=g) for _ in range(3)]


def dense(q, k, v, valid):
    mask = None if valid is None else valid[:, None, None, :]
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("dim", [32, 64, 12])
def test_k_at_least_the_valid_length_is_dense_attention(granularity, dim):
    q, k, v = qkv(dim=dim)
    valid = torch.ones(3, 40, dtype=torch.bool)
    valid[1, 25:] = False
    valid[2, 3] = False  # a masked key inside the sequence
    for topk in (40, 41, 100):
        out = ck.topk_attention_u8s8(q, k, v, valid, topk=topk, granularity=granularity)
        rows = valid[:, :, None, None].expand_as(out)
        torch.testing.assert_close(out[rows], dense(q, k, v, valid)[rows], atol=1e-5, rtol=0)
    out = ck.topk_attention_u8s8(q, k, v, None, topk=40, granularity=granularity, smooth_k=True)
    torch.testing.assert_close(out, dense(q, k, v, None), atol=1e-5, rtol=0)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("smooth_k", [False, True])
def test_same_selection_as_the_unfused_fbgemm_scorer(granularity, smooth_k):
    q, k, v = qkv(seq=100)
    valid = torch.ones(3, 100, dtype=torch.bool)
    valid[0, 60:] = False
    mask = valid[:, None, None, :].expand(3, 1, 100, 100)
    backend = load_registry().resolve(
        f"topk:k=8,scorer=fbgemm,granularity={granularity},smooth_k={str(smooth_k).lower()}").attention_part
    unfused_scores = backend.approximate_scores(q, k, valid[:, None, None, :])
    index, selected = select_keys(unfused_scores, valid[:, None, None, :], 8)
    unfused = sparse_attention(q, k, v, index, selected, 32 ** -0.5).transpose(1, 2)
    fused = backend.attention(None, q, k, v, mask, scaling=32 ** -0.5)[0]
    rows = valid[:, :, None, None].expand_as(fused)
    torch.testing.assert_close(fused[rows], unfused[rows], atol=1e-6, rtol=0)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_padded_batch_equals_unpadded_sequences(granularity):
    q, k, v = qkv(seq=70)
    lengths = [70, 41, 9]
    valid = torch.arange(70)[None, :] < torch.tensor(lengths)[:, None]
    padded = ck.topk_attention_u8s8(q, k, v, valid, topk=8, granularity=granularity)
    for b, n in enumerate(lengths):
        alone = ck.topk_attention_u8s8(q[b:b + 1, :, :n], k[b:b + 1, :, :n], v[b:b + 1, :, :n], None, topk=8,
                                       granularity=granularity)
        assert torch.equal(padded[b:b + 1, :n], alone)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_non_finite_inputs_propagate_like_dense(granularity):
    q, k, v = qkv()
    valid = torch.ones(3, 40, dtype=torch.bool)
    valid[2, 30:] = False
    clean = ck.topk_attention_u8s8(q, k, v, valid, topk=6, granularity=granularity)
    assert torch.isfinite(clean).all()
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    q2[0, 1, 7, 3] = float("nan")        # one query row of one head
    k2[1, 2, 11, 0] = float("inf")      # a valid key: the whole head
    v2[0, 3, 20, 5] = float("-inf")     # a valid value: the whole head
    k2[2, 0, 35, :] = float("nan")      # a padding key: no effect
    v2[2, 0, 36, :] = float("nan")
    out = ck.topk_attention_u8s8(q2, k2, v2, valid, topk=6, granularity=granularity)
    nan_rows = torch.isnan(out).any(-1)                   # (batch, seq, heads)
    expected = torch.zeros_like(nan_rows)
    expected[0, 7, 1] = True
    expected[1, :, 2] = True
    expected[0, :, 3] = True
    assert torch.equal(nan_rows, expected)
    assert torch.isnan(out[expected]).all()
    # every output row without a non-finite input equals the clean run (scales depend on the row's head only)
    same = ~expected
    if granularity == "token":
        assert torch.equal(out[same], clean[same])
    else:  # the head's (sequence's) Q scale excludes the NaN, so only head (0, 1) (sequence 0) may differ
        assert torch.isfinite(out[same]).all()


def test_one_and_two_threads_identical():
    q, k, v = qkv(batch=4, heads=6, seq=130)
    valid = torch.arange(130)[None, :] < torch.tensor([130, 100, 64, 7])[:, None]
    for granularity in GRANULARITIES:
        one = ck.topk_attention_u8s8(q, k, v, valid, topk=16, granularity=granularity, threads=1)
        two = ck.topk_attention_u8s8(q, k, v, valid, topk=16, granularity=granularity, threads=2)
        assert torch.equal(one, two)


def test_rows_without_valid_keys_and_profile():
    q, k, v = qkv(batch=2)
    valid = torch.ones(2, 40, dtype=torch.bool)
    valid[1] = False
    profile = np.zeros(len(ck.TOPK_PHASES))
    out = ck.topk_attention_u8s8(q, k, v, valid, topk=4, profile=profile)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert (profile >= 0).all() and profile.sum() > 0


def test_strided_views_and_numpy_inputs():
    q, k, v = qkv(seq=50)
    # (batch, seq, heads, dim) storage seen as (batch, heads, seq, dim), as attention layers hold them
    qt, kt, vt = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    a = ck.topk_attention_u8s8(q, k, v, topk=5)
    b = ck.topk_attention_u8s8(qt, kt, vt, topk=5)
    c = ck.topk_attention_u8s8(q.numpy(), k.numpy(), v.numpy(), topk=5)
    assert torch.equal(a, b) and np.array_equal(a.numpy(), c)


def test_argument_validation():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="topk"):
        ck.topk_attention_u8s8(q, k, v, topk=0)
    with pytest.raises(ValueError, match="granularity"):
        ck.topk_attention_u8s8(q, k, v, topk=4, granularity="row")
    with pytest.raises(TypeError):
        ck.topk_attention_u8s8(q.double(), k, v, topk=4)
    with pytest.raises(ValueError, match="INT32_MIN"):
        ck.topk_select(np.full((1, 4), INT32_MIN, np.int32), None, 2)


@pytest.mark.parametrize("spec,fused", [("topk:k=4,scorer=fbgemm", True),
                                        ("topk:k=4,scorer=fbgemm,granularity=token,smooth_k=true", True),
                                        ("topk:k=4,scorer=fbgemm,granularity=tensor", True),
                                        ("topk:k=4", False)])
def test_backend_uses_the_fused_kernel_for_the_fbgemm_scorer(spec, fused):
    assert load_registry().resolve(spec).attention_part.fused() is fused


# ---------------------------------------------------------------------------------------------------
# The fake scorer's float scores on the native select (ck.topk_attention_scores)


class _Module(torch.nn.Module):
    is_causal = False


def torch_selection(scores: torch.Tensor, valid: torch.Tensor, k: int) -> list[list[int]]:
    """``select_keys``' index sets (ascending) of a (rows, n) float score matrix; ``valid`` (n,) bool."""
    index, selected = select_keys(scores[None, None], valid[None, None, None, :], k)
    return [sorted(int(j) for j in row[ok]) for row, ok in zip(index[0, 0], selected[0, 0])]


def float_rows(seed: int, n: int) -> torch.Tensor:
    """Random float32 rows: wide values, few distinct values (ties), signed zeros, infinities and NaNs."""
    g = torch.Generator().manual_seed(seed)
    wide = torch.randn(12, n, generator=g) * 1e3
    ties = torch.randint(-2, 3, (12, n), generator=g).float() * 0.25   # the grid of a 2-bit fake scorer
    zeros = torch.where(torch.rand(6, n, generator=g) < 0.5, torch.tensor(-0.0), torch.tensor(0.0))
    zeros[:, ::5] = -1.0
    special = torch.randn(6, n, generator=g)
    for value, every in ((float("inf"), 7), (float("-inf"), 5), (float("nan"), 11), (-float("nan"), 13)):
        special[:, ::every] = value
    return torch.cat([wide, ties, zeros, special, torch.full((2, n), 3.5), -wide[:2].abs() - 1e-30])


@pytest.mark.parametrize("n", [1, 9, 64, 130, 512])
@pytest.mark.parametrize("k", [1, 3, 16, 64, 600])
def test_float_selection_equals_select_keys(n, k):
    scores = float_rows(n * 7 + k, n)
    g = torch.Generator().manual_seed(k)
    for valid in (torch.ones(n, dtype=torch.bool), torch.rand(n, generator=g) < 0.6, torch.arange(n) < max(1, n // 3)):
        index, count = ck.topk_select(scores.numpy(), valid.numpy(), k)
        want = torch_selection(scores, valid, k)
        for i, expected in enumerate(want):
            assert index[i, :count[i]].tolist() == expected, (i, scores[i].tolist(), valid.tolist())


def test_float_mapping_ties_signed_zeros_and_ranks_nan_like_select_keys():
    scores = torch.tensor([[0.0, -0.0, 0.0, -0.0, -1e-45, 1e-45],
                           [float("nan"), float("inf"), 1.0, -float("nan"), float("-inf"), 0.0]])
    valid = torch.ones(6, dtype=torch.bool)
    for k in range(1, 6):
        index, count = ck.topk_select(scores.numpy(), None, k)
        assert [index[i, :count[i]].tolist() for i in range(2)] == torch_selection(scores, valid, k)
    index, count = ck.topk_select(scores.numpy(), None, 3)
    assert index[0, :3].tolist() == [0, 1, 5]          # -0.0 ties with +0.0: lower indices first
    assert index[1, :2].tolist() == [0, 1]             # +NaN above +inf


def backend_pair(spec: str):
    """The backend of ``spec``, and a call of its torch path (``native`` forced off) for comparison."""
    backend = load_registry().resolve(spec).attention_part

    def torch_path(*args, **kwargs):
        original = backend.native
        backend.native = lambda *a: False
        try:
            return backend.attention(*args, **kwargs)[0]
        finally:
            backend.native = original
    return backend, torch_path


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("bits,smooth_k", [(2, False), (3, True), (8, False), (16, True)])
def test_fake_scorer_native_path_equals_the_torch_path(granularity, bits, smooth_k):
    q, k, v = qkv(batch=3, heads=4, seq=70, dim=32, seed=bits)
    lengths = [70, 41, 9]
    valid = torch.arange(70)[None, :] < torch.tensor(lengths)[:, None]
    mask = valid[:, None, None, :].expand(3, 1, 70, 70)
    for topk in (1, 5, 16, 70):
        backend, torch_path = backend_pair(
            f"topk:k={topk},bits={bits},granularity={granularity},smooth_k={str(smooth_k).lower()}")
        assert backend.native(q, k, v)
        native = backend.attention(_Module(), q, k, v, mask, scaling=0.2)[0]
        reference = torch_path(_Module(), q, k, v, mask, scaling=0.2)
        assert native.shape == reference.shape == (3, 70, 4, 32) and native.is_contiguous()
        torch.testing.assert_close(native, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_fake_scorer_native_path_in_chunks_equals_one_chunk(granularity, monkeypatch):
    """The native path computes the scores a few sequences at a time (``SCORE_CHUNK_BYTES``); chunks of one
    and of two sequences (a last, shorter chunk) give the outputs of one whole-batch chunk, bit for bit, and
    of the torch path within 1e-5 (padding, smooth_k and a non-finite query row included)."""
    import plugins.topk as topk_module

    q, k, v = qkv(batch=5, heads=3, seq=30, dim=32, seed=21)
    q[2, 1, 4, 0] = float("nan")
    lengths = [30, 17, 30, 5, 22]
    valid = torch.arange(30)[None, :] < torch.tensor(lengths)[:, None]
    mask = valid[:, None, None, :].expand(5, 1, 30, 30)
    backend, torch_path = backend_pair(f"topk:k=6,bits=4,granularity={granularity},smooth_k=true")
    whole = backend.attention(_Module(), q, k, v, mask, scaling=0.25)[0]
    per_sequence = 3 * 30 * 30 * 4
    for chunk_bytes in (1, 2 * per_sequence):
        monkeypatch.setattr(topk_module, "SCORE_CHUNK_BYTES", chunk_bytes)
        chunked = backend.attention(_Module(), q, k, v, mask, scaling=0.25)[0]
        assert torch.equal(chunked.isnan(), whole.isnan())
        assert torch.equal(torch.nan_to_num(chunked), torch.nan_to_num(whole))
    reference = torch_path(_Module(), q, k, v, mask, scaling=0.25)
    torch.testing.assert_close(whole, reference, atol=1e-5, rtol=0, equal_nan=True)


@pytest.mark.parametrize("dim", [64, 48, 12])
def test_fake_scorer_native_path_equals_the_torch_path_at_other_head_dims(dim):
    """The exact scores and V sums have their own loops for head dims 32 and 64 and a generic one."""
    q, k, v = qkv(batch=2, heads=3, seq=50, dim=dim, seed=dim)
    valid = torch.arange(50)[None, :] < torch.tensor([50, 23])[:, None]
    mask = valid[:, None, None, :].expand(2, 1, 50, 50)
    for topk in (5, 16):
        backend, torch_path = backend_pair(f"topk:k={topk}")
        native = backend.attention(_Module(), q, k, v, mask, scaling=0.3)[0]
        reference = torch_path(_Module(), q, k, v, mask, scaling=0.3)
        assert native.shape == (2, 50, 3, dim)
        torch.testing.assert_close(native, reference, atol=1e-5, rtol=0)


def test_fake_scorer_native_selection_on_tie_heavy_scores_matches_select_keys():
    """Many exactly tied scores (2 bits): the weighted V rows reveal any other choice among the ties."""
    q, k, _ = qkv(batch=2, heads=3, seq=48, dim=16, seed=5)
    v = torch.eye(48).expand(2, 3, 48, 48).contiguous()      # output row = the softmax weights per key
    q, k = q.repeat(1, 1, 1, 3), k.repeat(1, 1, 1, 3)        # dim 48 like v
    valid = torch.arange(48)[None, :] < torch.tensor([48, 30])[:, None]
    backend, torch_path = backend_pair("topk:k=6,bits=2,granularity=tensor")
    scores = backend.approximate_scores(q, k, valid[:, None, None, :])
    assert (scores.unsqueeze(-1) == scores.unsqueeze(-2)).sum() > 10 * scores.numel()  # ties are common
    mask = valid[:, None, None, :].expand(2, 1, 48, 48)
    native = backend.attention(_Module(), q, k, v, mask, scaling=0.1)[0]
    chosen = (native > 0).permute(0, 2, 1, 3)                 # (batch, heads, query, key)
    index, selected = select_keys(scores, valid[:, None, None, :], 6)
    expected = torch.zeros_like(chosen).scatter_(-1, index, selected)
    assert torch.equal(chosen, expected)
    torch.testing.assert_close(native, torch_path(_Module(), q, k, v, mask, scaling=0.1), atol=1e-6, rtol=0)


def test_topk_attention_scores_given_int32_scores_and_threads():
    q, k, v = qkv(batch=2, heads=3, seq=100, dim=32)
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(-5, 5, (2, 3, 100, 100), generator=g, dtype=torch.int32)
    valid = torch.arange(100)[None, :] < torch.tensor([100, 77])[:, None]
    one = ck.topk_attention_scores(q, k, v, valid, scores, topk=8, threads=1)
    two = ck.topk_attention_scores(q, k, v, valid, scores, topk=8, threads=2)
    assert torch.equal(one, two)
    index, selected = select_keys(scores.float(), valid[:, None, None, :], 8)
    reference = sparse_attention(q, k, v, index, selected, 32 ** -0.5).transpose(1, 2)
    torch.testing.assert_close(one, reference, atol=1e-5, rtol=0)
    # a strided score view (transposed rows) is copied, not misread
    t = scores.transpose(-1, -2)
    torch.testing.assert_close(ck.topk_attention_scores(q, k, v, valid, t, topk=8),
                               ck.topk_attention_scores(q, k, v, valid, t.contiguous(), topk=8), atol=0, rtol=0)
    with pytest.raises(ValueError, match="scores must have shape"):
        ck.topk_attention_scores(q, k, v, valid, scores[:, :, :50], topk=8)
    with pytest.raises(TypeError, match="float32 or int32"):
        ck.topk_attention_scores(q, k, v, valid, scores.double(), topk=8)


def test_fake_scorer_native_k_at_least_the_valid_length_is_dense():
    q, k, v = qkv(seq=40)
    valid = torch.ones(3, 40, dtype=torch.bool)
    valid[1, 25:] = False
    valid[2, 3] = False
    backend = load_registry().resolve("topk:k=40,bits=4").attention_part
    out = backend.attention(_Module(), q, k, v, valid[:, None, None, :].expand(3, 1, 40, 40), scaling=32 ** -0.5)[0]
    rows = valid[:, :, None, None].expand_as(out)
    torch.testing.assert_close(out[rows], dense(q, k, v, valid)[rows], atol=1e-5, rtol=0)


def test_fake_scorer_native_non_finite_inputs_like_the_torch_path():
    q, k, v = qkv()
    valid = torch.ones(3, 40, dtype=torch.bool)
    valid[2, 30:] = False
    q[0, 1, 7, 3] = float("nan")
    q[1, 0, 2, 0] = float("inf")
    k[1, 2, 11, 0] = float("inf")
    v[0, 3, 20, 5] = float("-inf")
    mask = valid[:, None, None, :].expand(3, 1, 40, 40)
    backend, torch_path = backend_pair("topk:k=6,bits=4")
    native = backend.attention(_Module(), q, k, v, mask, scaling=0.2)[0]
    reference = torch_path(_Module(), q, k, v, mask, scaling=0.2)
    assert torch.equal(torch.isnan(native), torch.isnan(reference))
    assert torch.isnan(native[0, 7, 1]).all() and torch.isnan(native[:, :, 2][1]).all()
    torch.testing.assert_close(native, reference, atol=1e-5, rtol=0, equal_nan=True)


def test_fake_scorer_keeps_the_torch_path_off_float32_cpu():
    q, k, v = qkv(seq=12)
    backend = load_registry().resolve("topk:k=4,bits=4").attention_part
    assert backend.native(q, k, v) and not backend.native(q.double(), k.double(), v.double())
    q, k, v = q.double(), k.double(), v.double()
    out = backend.attention(_Module(), q, k, v, None, scaling=0.25)[0]
    valid = torch.ones(3, 1, 1, 12, dtype=torch.bool)
    index, selected = select_keys(backend.approximate_scores(q, k, valid), valid, 4)
    assert out.dtype == torch.float64
    assert torch.equal(out, sparse_attention(q, k, v, index, selected, 0.25).transpose(1, 2).contiguous())
