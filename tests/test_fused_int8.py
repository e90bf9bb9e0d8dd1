"""The fused int8 attention kernels (``cython_kernels.attention_u8s8``, online and materialising) against
NumPy references: the same quantized pipeline in float64 with exact integer products, and float64 attention
on the unquantized inputs; general masks, padding, the NaN/infinity rule, and saturation on AVX2."""

from __future__ import annotations

import numpy as np
import pytest

import cython_kernels as ck

from test_kernels import ADVERSARIAL_ATTENTION, run_python

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not ck.AVAILABLE, reason=f"cython_kernels unavailable: {ck.UNAVAILABLE_REASON}")

KERNELS = ["online", "materialize"]
# Against the float64 quantized pipeline (same codes, exact products): what is left is P's 8-bit codes
# (pv=int8) or float32 rounding and the polynomial exponential (pv=float).  Measured maxima on these
# inputs (relative L2): 8.2e-3 (one block per row; 5-7e-3 with blocks of 32-64 keys, whose codes are
# scaled per block) and 2.2e-7; the bounds leave about 2x and 5x.
QUANTIZED_TOLERANCE = {"int8": 0.015, "float": 1e-6}
# Against float64 attention on the unquantized inputs (docs/explanation/fused-int8.md): relative L2 error
# and mean cosine per output row.
TOLERANCE = {"int8": (0.03, 0.9995), "float": (0.02, 0.9998)}


@pytest.fixture(params=[None, 32, 64], ids=["default-block", "block32", "block64"])
def key_block(request):
    """The online kernel's keys per block: the default (one block at these lengths) and small blocks (many)."""
    from cython_kernels import _attention

    old = _attention.key_block()
    if request.param is not None:
        _attention.set_key_block(request.param)
    yield request.param
    _attention.set_key_block(old)


def inputs(batch: int, heads: int, seq: int, dim: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, seq, 3, heads, dim), dtype=np.float32)
    return tuple(np.ascontiguousarray(x[:, :, i].transpose(0, 2, 1, 3)) for i in range(3))


def allowed(mask: np.ndarray | None, key_valid: np.ndarray | None, batch: int, seq: int) -> np.ndarray:
    """(batch, seq, seq) bool: query i of sequence b may attend to key j."""
    if mask is not None:
        return np.broadcast_to(mask.reshape(batch, -1, seq, seq)[:, 0] != 0, (batch, seq, seq))
    if key_valid is not None:
        return np.broadcast_to(key_valid[:, None, :] != 0, (batch, seq, seq))
    return np.ones((batch, seq, seq), bool)


def softmax_v(scores: np.ndarray, ok: np.ndarray, v: np.ndarray) -> np.ndarray:
    """float64 softmax(scores) . v over allowed keys per (batch, head); rows without one give 0; (B, S, H, D)."""
    s = np.where(ok[:, None], scores, -np.inf)
    top = s.max(axis=-1, keepdims=True)
    w = np.where(ok[:, None], np.exp(s - np.where(np.isfinite(top), top, 0)), 0)
    total = w.sum(axis=-1, keepdims=True)
    p = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
    return (p @ v).transpose(0, 2, 1, 3)


def float64_attention(q, k, v, ok, scaling):
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    return softmax_v(q @ k.transpose(0, 1, 3, 2) * scaling, ok, v)


def quantized_attention(q, k, v, ok, scaling, pv):
    """The kernels' pipeline in float64: Q as 7-bit u8 and K (and V) as s8 per token (the package's own
    quantizers, which the fused kernels match code for code), Q.K^T as exact int64 products, then float64."""
    qq, q_scale, q_zp = (np.asarray(x) for x in ck.quantize_u7_asym(q, per="row"))
    kq, k_scale = (np.asarray(x) for x in ck.quantize_s8_sym(k, per="row"))
    acc = np.einsum("bhid,bhjd->bhij", qq.astype(np.int64) - q_zp[..., None], kq.astype(np.int64))
    scores = acc * q_scale[..., :, None].astype(np.float64) * k_scale[..., None, :] * scaling
    if pv == "int8":
        vq, v_scale = (np.asarray(x) for x in ck.quantize_s8_sym(v, per="row"))
        v = vq.astype(np.float64) * v_scale[..., None]
    return softmax_v(scores, ok, v.astype(np.float64))


def rel_and_cosine(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    o, r = out.reshape(-1, out.shape[-1]).astype(np.float64), ref.reshape(-1, ref.shape[-1])
    keep = np.linalg.norm(r, axis=1) > 0
    cos = (o[keep] * r[keep]).sum(1) / np.linalg.norm(o[keep], axis=1) / np.linalg.norm(r[keep], axis=1)
    return float(np.linalg.norm(o - r) / np.linalg.norm(r)), float(cos.mean())


def window(lengths: list[int], seq: int, half: int) -> np.ndarray:
    """(batch, 1, seq, seq) bool: key padding and |i - j| <= half (ModernBERT's local layers)."""
    i = np.arange(seq)
    near = np.abs(i[:, None] - i[None, :]) <= half
    valid = i[None, :] < np.asarray(lengths)[:, None]
    return (near[None] & valid[:, None, :])[:, None]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("pv", ["int8", "float"])
@pytest.mark.parametrize("dim", [16, 32, 64, 13])
def test_quantized_reference_with_exact_products(dim, pv, kernel, key_block):
    q, k, v = inputs(2, 3, 150, dim, seed=dim)
    key_valid = np.arange(150)[None, :] < np.array([[150], [77]])
    scaling = dim ** -0.5
    out = ck.attention_u8s8(q, k, v, key_valid, pv=pv, kernel=kernel, threads=2)
    ok = allowed(None, key_valid, 2, 150)
    rel, _ = rel_and_cosine(out, quantized_attention(q, k, v, ok, scaling, pv))
    assert rel < QUANTIZED_TOLERANCE[pv], rel


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("pv", ["int8", "float"])
@pytest.mark.parametrize(("dim", "seq"), [(16, 96), (32, 128), (64, 200), (13, 70), (32, 512)])
def test_close_to_float64_attention(dim, seq, pv, kernel, key_block):
    q, k, v = inputs(2, 2, seq, dim, seed=seq)
    key_valid = np.arange(seq)[None, :] < np.array([[seq], [seq // 3]])
    out = ck.attention_u8s8(q, k, v, key_valid, pv=pv, kernel=kernel)
    rel, cosine = rel_and_cosine(out, float64_attention(q, k, v, allowed(None, key_valid, 2, seq), dim ** -0.5))
    assert rel < TOLERANCE[pv][0] and cosine > TOLERANCE[pv][1], (rel, cosine)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("pv", ["int8", "float"])
def test_window_and_causal_masks_are_honoured(pv, kernel, key_block):
    seq = 160
    q, k, v = inputs(3, 2, seq, 32, seed=7)
    v[:, :, 100:] *= 100.0  # late keys that would dominate the early rows' outputs if a mask leaked
    masks = {"window": window([seq, 120, 30], seq, 24),
             "causal": np.broadcast_to(np.tril(np.ones((seq, seq), bool)), (3, 1, seq, seq))}
    for name, mask in masks.items():
        out = ck.attention_u8s8(q, k, v, mask=mask, pv=pv, kernel=kernel)
        ok = allowed(mask, None, 3, seq)
        ref = float64_attention(q, k, v, ok, 32 ** -0.5)
        rows = ok.any(-1)  # (batch, query): rows with an allowed key
        rel, cosine = rel_and_cosine(out[rows], ref[rows])
        assert rel < TOLERANCE[pv][0] and cosine > TOLERANCE[pv][1], (name, rel, cosine)
        quantized = quantized_attention(q, k, v, ok, 32 ** -0.5, pv)
        assert rel_and_cosine(out[rows], quantized[rows])[0] < QUANTIZED_TOLERANCE[pv], name
        assert np.array_equal(out[~rows], np.zeros_like(out[~rows]))


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_row_without_allowed_keys_gives_what_dense_sdpa_gives(kernel):
    q, k, v = (torch.from_numpy(x) for x in inputs(2, 2, 40, 16, seed=2))
    mask = torch.from_numpy(window([40, 25], 40, 3).copy())
    mask[0, 0, 5] = False      # a query row with no allowed key
    mask[1, 0, 30:] = False    # padded query rows of the second sequence
    out = ck.attention_u8s8(q, k, v, mask=mask, kernel=kernel)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    empty = ~mask[:, 0].any(-1)
    assert empty.sum() == 1 + 12  # row 5; rows 28..39 (the window of half-width 3 ends at key 24)
    assert torch.equal(ref[empty], torch.zeros_like(ref[empty]))  # what SDPA gives on this CPU
    assert torch.equal(out[empty], ref[empty])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("pv", ["int8", "float"])
def test_a_key_padding_mask_in_any_form_gives_the_same_bits(pv, kernel):
    q, k, v = inputs(2, 2, 50, 32, seed=9)
    key_valid = np.arange(50)[None, :] < np.array([[50], [31]])
    expected = ck.attention_u8s8(q, k, v, key_valid, pv=pv, kernel=kernel)
    expanded = np.broadcast_to(key_valid[:, None, None, :], (2, 1, 50, 50))
    for mask in (expanded, np.ascontiguousarray(expanded), expanded[:, 0].astype(np.uint8),
                 torch.from_numpy(np.ascontiguousarray(expanded))):
        assert np.array_equal(np.asarray(ck.attention_u8s8(q, k, v, mask=mask, pv=pv, kernel=kernel)), expected)


@pytest.mark.parametrize("pv", ["int8", "float"])
def test_online_and_materialising_kernels_agree(pv, key_block):
    q, k, v = inputs(2, 3, 300, 32, seed=11)
    mask = window([300, 211], 300, 64)
    online = ck.attention_u8s8(q, k, v, mask=mask, pv=pv, kernel="online")
    whole = ck.attention_u8s8(q, k, v, mask=mask, pv=pv, kernel="materialize")
    # pv=float: only the order of float32 sums differs; pv=int8: P's codes are scaled per key block.
    bound = 1e-5 if pv == "float" or key_block is None else QUANTIZED_TOLERANCE["int8"]
    assert rel_and_cosine(online, whole)[0] < bound


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_sequence_ignores_padding_and_its_neighbours(kernel, key_block):
    q, k, v = inputs(2, 3, 200, 32, seed=5)
    for x in (q, k, v):
        x[1] *= 1000.0        # a huge neighbour
        x[0, :, 130:] = 1e6   # huge values in this sequence's padding
    batched = ck.attention_u8s8(q, k, v, np.arange(200)[None, :] < np.array([[130], [200]]), kernel=kernel)
    alone = ck.attention_u8s8(q[:1, :, :130], k[:1, :, :130], v[:1, :, :130], kernel=kernel)
    assert np.array_equal(batched[0, :130], alone[0])


@pytest.mark.parametrize("kernel", KERNELS)
def test_nonfinite_inputs_raise_unless_never_read(kernel):
    q, k, v = inputs(1, 2, 40, 16, seed=3)
    key_valid = np.arange(40)[None, :] < 30
    for x in (q, k, v):
        bad = x.copy()
        bad[0, 1, 7, 3] = np.nan
        args = {"q": q, "k": k, "v": v} | {name: bad for name, y in (("q", q), ("k", k), ("v", v)) if y is x}
        with pytest.raises(ValueError, match="NaN or infinity"):
            ck.attention_u8s8(args["q"], args["k"], args["v"], key_valid, kernel=kernel)
    k_pad, v_pad = k.copy(), v.copy()
    k_pad[0, :, 35], v_pad[0, :, 36] = np.inf, np.nan  # trailing padding keys: never read
    assert np.array_equal(ck.attention_u8s8(q, k_pad, v_pad, key_valid, kernel=kernel),
                          ck.attention_u8s8(q, k, v, key_valid, kernel=kernel))


def test_mask_arguments_are_validated():
    q, k, v = inputs(2, 1, 6, 8)
    with pytest.raises(ValueError, match="not both"):
        ck.attention_u8s8(q, k, v, np.ones((2, 6), bool), mask=np.ones((2, 1, 6, 6), bool))
    with pytest.raises(ValueError, match=r"mask must be bool or uint8 of shape \(2, 1, 6, 6\)"):
        ck.attention_u8s8(q, k, v, mask=np.ones((2, 1, 6, 5), bool))
    with pytest.raises(ValueError, match="mask must be bool or uint8"):
        ck.attention_u8s8(q, k, v, mask=np.zeros((2, 1, 6, 6), np.float32))
    with pytest.raises(ValueError, match="kernel must be 'online' or 'materialize'"):
        ck.attention_u8s8(q, k, v, kernel="flash")
    from cython_kernels import _attention

    with pytest.raises(ValueError, match="multiple of 32"):
        _attention.set_key_block(48)


def test_online_kernel_is_exact_on_avx2_with_adversarial_weights_in_many_blocks():
    """FBGEMM's AVX2 kernel (int16 pair sums) on pair-saturating P codes and V at its extremes, in key
    blocks of 32: bit for bit the native (VNNI here) result."""
    code = ("from cython_kernels import _attention; _attention.set_key_block(32)\n" + ADVERSARIAL_ATTENTION
            + "\nimport json; print(json.dumps(adversarial_case()))")
    native = run_python(code)
    avx2 = run_python("from cython_kernels import _gemm; _gemm.force_isa('avx2')\n" + code)
    assert avx2["isa"] == "avx2" and avx2["own"] and native["own"]
    assert avx2["out"] == native["out"] and avx2["out2"] == native["out2"]
    assert max(abs(x) for x in avx2["out"]) <= 1.0 + 1e-6  # a convex combination of +-1 rows
