"""Tests of cython_kernels: exact int8 GEMMs, dequantization, quantizers, the 7-bit rule.

References are NumPy: int64 for the integer GEMM (bit-exact), float64 for the
dequantized variants, and float32 re-implementations of the documented
quantizer arithmetic (exact codes).  Tests that need the compiled extensions
skip with ``cython_kernels.UNAVAILABLE_REASON``; the availability tests run in
subprocesses and need no build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cython_kernels as ck

ROOT = Path(__file__).resolve().parents[1]
needs_kernels = pytest.mark.skipif(not ck.AVAILABLE, reason=f"cython_kernels unavailable: {ck.UNAVAILABLE_REASON}")

# (batch, M, N, K): tiny, odd, K not a multiple of 4/32/64, M above FBGEMM's
# row blocks (MCB is 120 on AVX2), and an attention shape.
SHAPES = [
    (1, 1, 1, 1),
    (2, 37, 19, 53),
    (3, 5, 7, 3),
    (1, 64, 64, 64),
    (2, 130, 70, 200),
    (1, 257, 33, 65),
    (4, 16, 9, 129),
    (12, 128, 128, 64),
]


def ref_gemm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("pmk,pnk->pmn", a.astype(np.int64), b.astype(np.int64))


def random_operands(rng: np.random.Generator, batch: int, m: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    a = rng.integers(0, 128, (batch, m, k), dtype=np.uint8)
    b = rng.integers(-128, 128, (batch, n, k), dtype=np.int8)
    return a, b


def run_python(code: str, env: dict[str, str] | None = None) -> dict:
    """Run ``code`` in a fresh interpreter (repo on sys.path); it prints one JSON object."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- integer GEMM -------------------------------------------------------------


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_s32_bit_exact_random(shape: tuple[int, int, int, int], threads: int) -> None:
    a, b = random_operands(np.random.default_rng(sum(shape)), *shape)
    c = ck.gemm_u8s8_s32(a, b, threads=threads)
    assert c.dtype == np.int32 and c.shape == (shape[0], shape[1], shape[2])
    np.testing.assert_array_equal(c, ref_gemm(a, b))


def adversarial_cases(k: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    alt = np.where(np.arange(k) % 2 == 0, 127, -128).astype(np.int8)
    return {
        "127x127": (np.full(k, 127, np.uint8), np.full(k, 127, np.int8)),
        "127x-128": (np.full(k, 127, np.uint8), np.full(k, -128, np.int8)),
        "127x-127": (np.full(k, 127, np.uint8), np.full(k, -127, np.int8)),
        "127xalternating": (np.full(k, 127, np.uint8), alt),
        "alternating_a": (np.where(np.arange(k) % 2 == 0, 127, 0).astype(np.uint8), np.full(k, 127, np.int8)),
    }


@needs_kernels
@pytest.mark.parametrize("k", [1, 4, 31, 64, 129, 512, 1000])
def test_gemm_s32_adversarial_extremes(k: int) -> None:
    for name, (row_a, row_b) in adversarial_cases(k).items():
        a = np.broadcast_to(row_a, (2, 13, k))
        b = np.broadcast_to(row_b, (2, 11, k))
        np.testing.assert_array_equal(ck.gemm_u8s8_s32(a, b, threads=2), ref_gemm(a, b), err_msg=name)


@needs_kernels
def test_gemm_s32_threads_and_out() -> None:
    a, b = random_operands(np.random.default_rng(7), 5, 40, 24, 48)
    out = np.full((5, 40, 24), -1, np.int32)
    result = ck.gemm_u8s8_s32(a, b, out=out, threads=2)
    assert result is out
    np.testing.assert_array_equal(out, ck.gemm_u8s8_s32(a, b, threads=1))


@needs_kernels
def test_gemm_s32_empty_and_k_zero() -> None:
    assert ck.gemm_u8s8_s32(np.zeros((0, 3, 4), np.uint8), np.zeros((0, 2, 4), np.int8)).shape == (0, 3, 2)
    c = ck.gemm_u8s8_s32(np.zeros((2, 3, 0), np.uint8), np.zeros((2, 5, 0), np.int8))
    np.testing.assert_array_equal(c, np.zeros((2, 3, 5), np.int32))


@needs_kernels
def test_torch_in_torch_out_and_non_contiguous_views() -> None:
    torch = pytest.importorskip("torch")
    a, b = random_operands(np.random.default_rng(3), 3, 9, 17, 20)
    # b handed over as a transposed view, as attention code holds keys
    b_view = torch.from_numpy(np.ascontiguousarray(b.transpose(0, 2, 1))).transpose(1, 2)
    assert not b_view.is_contiguous()
    c = ck.gemm_u8s8_s32(torch.from_numpy(a), b_view)
    assert isinstance(c, torch.Tensor) and c.dtype == torch.int32
    np.testing.assert_array_equal(c.numpy(), ref_gemm(a, b))


# --- the 7-bit rule and validation -------------------------------------------


@needs_kernels
@pytest.mark.parametrize("value", [128, 200, 255])
def test_seven_bit_rule_rejects_8bit_activations(value: int) -> None:
    a, b = random_operands(np.random.default_rng(0), 2, 4, 4, 8)
    a[1, 2, 3] = value
    with pytest.raises(ValueError, match=r"(?s)up to %d.*0\.\.127.*saturation" % value):
        ck.gemm_u8s8_s32(a, b)
    with pytest.raises(ValueError, match="7-bit"):
        ck.gemm_u8s8_f32(a, b, 0.1, 0, 0.1)


@needs_kernels
@pytest.mark.parametrize(
    ("a", "b", "error", "match"),
    [
        (np.zeros((1, 2, 3), np.float32), np.zeros((1, 2, 3), np.int8), TypeError, "a must have dtype uint8"),
        (np.zeros((1, 2, 3), np.int8), np.zeros((1, 2, 3), np.int8), TypeError, "a must have dtype uint8"),
        (np.zeros((1, 2, 3), np.uint8), np.zeros((1, 2, 3), np.uint8), TypeError, "b must have dtype int8"),
        (np.zeros((2, 3), np.uint8), np.zeros((1, 2, 3), np.int8), ValueError, "a must be 3-D"),
        (np.zeros((1, 2, 3), np.uint8), np.zeros((1, 2, 3, 1), np.int8), ValueError, "b must be 3-D"),
        (np.zeros((1, 2, 3), np.uint8), np.zeros((1, 2, 4), np.int8), ValueError, r"K differs \(3 vs 4\)"),
        (np.zeros((2, 2, 3), np.uint8), np.zeros((1, 2, 3), np.int8), ValueError, "same batch size"),
        ([[[1]]], np.zeros((1, 1, 1), np.int8), TypeError, "numpy.ndarray or a torch.Tensor"),
    ],
)
def test_gemm_validation_errors(a: object, b: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ck.gemm_u8s8_s32(a, b)


@needs_kernels
def test_other_argument_errors() -> None:
    a, b = random_operands(np.random.default_rng(0), 2, 3, 4, 5)
    with pytest.raises(ValueError, match="threads"):
        ck.gemm_u8s8_s32(a, b, threads=0)
    with pytest.raises(ValueError, match=r"out must be int32 of shape \(2, 3, 4\)"):
        ck.gemm_u8s8_s32(a, b, out=np.empty((2, 4, 3), np.int32))
    with pytest.raises(ValueError, match="a_zero_point must be in 0..127"):
        ck.gemm_u8s8_f32(a, b, 0.1, 128, 0.1)
    with pytest.raises(ValueError, match="b_scale must be finite and > 0"):
        ck.gemm_u8s8_f32(a, b, 0.1, 3, -1.0)
    with pytest.raises(ValueError, match="a_scale must have shape"):
        ck.gemm_u8s8_f32(a, b, np.ones(3), 3, 1.0)
    with pytest.raises(ValueError, match=r"K = 131073 is too large"):
        ck.gemm_u8s8_s32(np.zeros((1, 1, 131073), np.uint8), np.zeros((1, 1, 131073), np.int8))


# --- dequantized outputs --------------------------------------------------------


def ref_dequant(a, b, a_scale, a_zp, b_scale) -> np.ndarray:
    """float64 of scale_a * scale_b * (a - zp_a) @ b^T with broadcastable (batch, M|1) / (batch, N) params."""
    acc = np.einsum("pmk,pnk->pmn", a.astype(np.float64) - a_zp[..., None], b.astype(np.float64))
    return acc * a_scale[..., None] * b_scale[:, None, :]


def assert_close_to(result: np.ndarray, ref: np.ndarray) -> None:
    # float32 rounding of the int32 accumulator and of two scale products.
    np.testing.assert_allclose(result, ref, rtol=1e-6, atol=1e-6 * max(1.0, float(np.abs(ref).max())))


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_f32_matches_float64_reference(shape: tuple[int, int, int, int], threads: int) -> None:
    batch, m, n, k = shape
    rng = np.random.default_rng(100 + sum(shape))
    a, b = random_operands(rng, *shape)
    a_scale = rng.uniform(1e-3, 1e-1, batch).astype(np.float32)
    a_zp = rng.integers(0, 128, batch).astype(np.int32)
    b_scale = rng.uniform(1e-3, 1e-1, (batch, n)).astype(np.float32)
    out = ck.gemm_u8s8_f32(a, b, a_scale, a_zp, b_scale, threads=threads)
    assert out.dtype == np.float32
    assert_close_to(out, ref_dequant(a, b, a_scale[:, None], a_zp[:, None], b_scale))


@needs_kernels
def test_gemm_f32_scalar_and_per_matrix_scales() -> None:
    a, b = random_operands(np.random.default_rng(5), 3, 6, 5, 70)
    expected = ref_dequant(a, b, np.full((3, 1), 0.5), np.full((3, 1), 64), np.full((3, 5), 0.25))
    assert_close_to(ck.gemm_u8s8_f32(a, b, 0.5, 64, 0.25), expected)
    assert_close_to(ck.gemm_u8s8_f32(a, b, np.full(3, 0.5), np.full(3, 64), np.full(3, 0.25)), expected)


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
def test_dequantize_s32_per_token_parameters(threads: int) -> None:
    batch, m, n, k = 4, 33, 21, 45
    rng = np.random.default_rng(11)
    a, b = random_operands(rng, batch, m, n, k)
    a_scale = rng.uniform(1e-3, 1e-1, (batch, m)).astype(np.float32)
    a_zp = rng.integers(0, 128, (batch, m)).astype(np.int32)
    b_scale = rng.uniform(1e-3, 1e-1, (batch, n)).astype(np.float32)
    c = ck.gemm_u8s8_s32(a, b)
    out = ck.dequantize_s32(c, b, a_scale, a_zp, b_scale, threads=threads)
    assert_close_to(out, ref_dequant(a, b, a_scale, a_zp, b_scale))


@needs_kernels
def test_dequantize_s32_equals_fused_for_per_matrix_a() -> None:
    a, b = random_operands(np.random.default_rng(12), 3, 20, 30, 64)
    sa, za, sb = np.float32([0.1, 0.2, 0.3]), np.int32([0, 60, 127]), np.full((3, 30), 0.05, np.float32)
    fused = ck.gemm_u8s8_f32(a, b, sa, za, sb)
    split = ck.dequantize_s32(ck.gemm_u8s8_s32(a, b), b, sa, za, sb)
    np.testing.assert_allclose(fused, split, rtol=1e-6, atol=1e-6 * float(np.abs(fused).max()))


# --- quantizers -------------------------------------------------------------------


def ref_u7(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 NumPy version of the documented u7 arithmetic (np.rint = half to even)."""
    lo = np.minimum(rows.min(axis=1), np.float32(0))
    hi = np.maximum(rows.max(axis=1), np.float32(0))
    scale = (hi - lo) / np.float32(127)
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.float32(1) / scale
    degenerate = ~(scale > 0) | (inv > np.float32(3e38))
    scale, inv = np.where(degenerate, np.float32(1), scale), np.where(degenerate, np.float32(1), inv)
    zp = np.clip(np.rint(-lo * inv), 0, 127)
    q = np.clip(np.rint(rows * inv[:, None]) + zp[:, None], 0, 127)
    return q.astype(np.uint8), scale.astype(np.float32), zp.astype(np.int32)


def ref_s8(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = np.abs(rows).max(axis=1) / np.float32(127)
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.float32(1) / scale
    degenerate = ~(scale > 0) | (inv > np.float32(3e38))
    scale, inv = np.where(degenerate, np.float32(1), scale), np.where(degenerate, np.float32(1), inv)
    q = np.clip(np.rint(rows * inv[:, None]), -127, 127)
    return q.astype(np.int8), scale.astype(np.float32)


def sample_input(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = (rng.standard_normal(shape) * rng.uniform(0.01, 10, shape[:-1] + (1,))).astype(np.float32)
    x[..., 0, :] = np.abs(x[..., 0, :])  # a row that is all >= 0 (zero point 0)
    return x


@needs_kernels
@pytest.mark.parametrize("per", ["row", "matrix"])
@pytest.mark.parametrize("shape", [(3, 7, 64), (2, 4, 33, 5), (1, 1, 1), (5, 129)])
def test_quantize_u7_asym_matches_reference(shape: tuple[int, ...], per: str) -> None:
    x = sample_input(np.random.default_rng(len(shape) * 100 + shape[-1]), shape)
    q, scale, zp = ck.quantize_u7_asym(x, per=per, threads=2)
    lead = 1 if per == "row" else 2
    rows = x.reshape(-1, int(np.prod(shape[len(shape) - lead :])))
    q_ref, scale_ref, zp_ref = ref_u7(rows)
    assert q.dtype == np.uint8 and q.shape == x.shape and q.max() <= 127
    assert scale.shape == zp.shape == shape[: len(shape) - lead]
    np.testing.assert_array_equal(scale.reshape(-1), scale_ref)
    np.testing.assert_array_equal(zp.reshape(-1), zp_ref)
    np.testing.assert_array_equal(q.reshape(rows.shape), q_ref)
    # round trip: within half a step (plus float32 slack)
    recon = (q.reshape(rows.shape).astype(np.float64) - zp_ref[:, None]) * scale_ref[:, None]
    assert np.all(np.abs(recon - rows) <= scale_ref[:, None] * 0.5001)


@needs_kernels
@pytest.mark.parametrize("per", ["row", "matrix"])
@pytest.mark.parametrize("shape", [(3, 7, 64), (2, 4, 33, 5), (1, 1, 1), (5, 129)])
def test_quantize_s8_sym_matches_reference(shape: tuple[int, ...], per: str) -> None:
    x = sample_input(np.random.default_rng(len(shape) * 200 + shape[-1]), shape)
    q, scale = ck.quantize_s8_sym(x, per=per, threads=2)
    lead = 1 if per == "row" else 2
    rows = x.reshape(-1, int(np.prod(shape[len(shape) - lead :])))
    q_ref, scale_ref = ref_s8(rows)
    assert q.dtype == np.int8 and q.shape == x.shape and q.min() >= -127
    np.testing.assert_array_equal(scale.reshape(-1), scale_ref)
    np.testing.assert_array_equal(q.reshape(rows.shape), q_ref)


@needs_kernels
def test_rounding_is_half_to_even() -> None:
    # max |x| = 127 and lo = 0 give scale 1, so the codes are rint(x) exactly.
    q, scale = ck.quantize_s8_sym(np.float32([[127, 2.5, 3.5, -2.5, -0.5, 0.5, 1.5]]))
    assert scale[0] == 1
    assert q.tolist() == [[127, 2, 4, -2, 0, 0, 2]]
    q, scale, zp = ck.quantize_u7_asym(np.float32([[0, 127, 2.5, 3.5, 4.5, 126.5]]))
    assert (scale[0], zp[0]) == (1, 0)
    assert q.tolist() == [[0, 127, 2, 4, 4, 126]]
    q, scale, zp = ck.quantize_u7_asym(np.float32([[-1, 126, 0.5, -0.5]]))
    assert (scale[0], zp[0]) == (1, 1) and q.tolist() == [[0, 127, 1, 1]]


@needs_kernels
def test_quantize_degenerate_and_nonfinite() -> None:
    q, scale, zp = ck.quantize_u7_asym(np.zeros((2, 3, 4), np.float32))
    assert (q == 0).all() and (scale == 1).all() and (zp == 0).all()
    q8, scale8 = ck.quantize_s8_sym(np.full((1, 3), 1e-45, np.float32))  # 1/scale overflows
    assert scale8[0] == 1 and (q8 == 0).all()
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((2, 5), np.float32)
        x[1, 3] = bad
        with pytest.raises(ValueError, match="NaN or infinity"):
            ck.quantize_u7_asym(x)
        with pytest.raises(ValueError, match="NaN or infinity"):
            ck.quantize_s8_sym(x, per="matrix")


@needs_kernels
def test_quantize_validation() -> None:
    with pytest.raises(TypeError, match="float32"):
        ck.quantize_u7_asym(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="per must be"):
        ck.quantize_s8_sym(np.zeros((2, 3), np.float32), per="head")
    with pytest.raises(ValueError, match="at least 2"):
        ck.quantize_s8_sym(np.zeros(3, np.float32), per="matrix")


@needs_kernels
def test_attention_pipeline_torch() -> None:
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 16, 32, generator=gen), torch.randn(2, 3, 16, 32, generator=gen)
    qq, sa, za = ck.quantize_u7_asym(q.reshape(6, 16, 32), per="matrix")
    kq, sb = ck.quantize_s8_sym(k.reshape(6, 16, 32), per="row")
    assert isinstance(qq, torch.Tensor) and qq.dtype == torch.uint8 and sb.shape == (6, 16)
    scores = ck.gemm_u8s8_f32(qq, kq, sa, za, sb)
    dense = (q @ k.transpose(-1, -2)).reshape(6, 16, 16)
    assert torch.allclose(scores, dense, atol=0.05 * float(dense.abs().max()))


# --- availability ----------------------------------------------------------------


@needs_kernels
def test_cpu_features() -> None:
    features = ck.cpu_features()
    assert features["supported"] and features["avx2"]
    assert features["isa"] in {"avx2", "avx512", "avx512_ymm", "avx512_vnni", "avx512_vnni_ymm"}


REPORT = """
import json, cython_kernels as ck
try:
    ck.gemm_u8s8_s32(None, None)
    error = None
except RuntimeError as exc:
    error = str(exc)
print(json.dumps({"available": ck.AVAILABLE, "reason": ck.UNAVAILABLE_REASON, "error": error}))
"""


def test_unavailable_when_extension_missing() -> None:
    # None in sys.modules makes `import cython_kernels._gemm` fail like a missing build.
    report = run_python("import sys; sys.modules['cython_kernels._gemm'] = None\n" + REPORT)
    assert report["available"] is False
    assert "cython_kernels._gemm not built" in report["reason"] and "pip install" in report["reason"]
    assert report["reason"] in report["error"]


def test_unavailable_when_torch_missing() -> None:
    report = run_python("import sys; sys.modules['torch'] = None\n" + REPORT)
    assert report["available"] is False and "torch cannot be imported" in report["reason"]


def test_unavailable_when_cpu_unsupported() -> None:
    fake = """
    import sys, types
    fake = types.ModuleType('cython_kernels._gemm')
    fake.cpu_supported = lambda: False
    sys.modules['cython_kernels._gemm'] = fake
    """
    report = run_python(textwrap.dedent(fake) + REPORT)
    assert report["available"] is False and "AVX2" in report["reason"]


@needs_kernels
def test_forced_avx2_path_saturates_8bit_but_not_7bit() -> None:
    """On FBGEMM's AVX2 kernel (forced here, the default on AVX2-only CPUs), 8-bit
    activations saturate int16 pair sums, while 7-bit ones stay bit-exact."""
    report = run_python(
        """
        import json
        import numpy as np
        import cython_kernels as ck
        from cython_kernels import _gemm
        isa = _gemm.force_isa("avx2")
        ref = lambda a, b: np.einsum("pmk,pnk->pmn", a.astype(np.int64), b.astype(np.int64))
        def raw(a, b):  # bypasses the Python layer's 7-bit check on purpose
            c = np.empty((a.shape[0], a.shape[1], b.shape[1]), np.int32)
            _gemm.gemm_u8s8_s32(a, b, c, 1)
            return c
        k = 64
        a8, b8 = np.full((1, 8, k), 255, np.uint8), np.full((1, 8, k), 127, np.int8)
        rng = np.random.default_rng(0)
        a7, b7 = rng.integers(0, 128, (2, 37, 70), dtype=np.uint8), rng.integers(-128, 128, (2, 19, 70), dtype=np.int8)
        exact7 = all(
            np.array_equal(ck.gemm_u8s8_s32(a, b, threads=1), ref(a, b))
            for a, b in [(a7, b7), (np.full((1, 8, k), 127, np.uint8), np.full((1, 8, k), -128, np.int8))]
        )
        print(json.dumps({"isa": isa, "got8": int(raw(a8, b8)[0, 0, 0]), "want8": int(ref(a8, b8)[0, 0, 0]), "exact7": exact7}))
        """
    )
    assert report["isa"] == "avx2"
    assert report["want8"] == 255 * 127 * 64
    assert report["got8"] == 32767 * 32  # every int16 pair sum saturated
    assert report["exact7"]


# --- 8-bit activations under the pair rule ------------------------------------------


@needs_kernels
def test_u8_pairs_gemm_is_exact_up_to_the_pair_bound() -> None:
    k = 64
    row = np.tile(np.uint8([129, 129, 255, 3, 0, 255, 200, 58]), k // 8)  # aligned pairs: 258, 258, 255, 258
    a = np.broadcast_to(row, (2, 5, k))
    for b_row in (np.full(k, 127, np.int8), np.full(k, -127, np.int8)):
        b = np.broadcast_to(b_row, (2, 3, k))
        np.testing.assert_array_equal(ck.gemm_u8s8_s32(a, b, a_codes="u8_pairs"), ref_gemm(a, b))
    with pytest.raises(ValueError, match="7-bit"):
        ck.gemm_u8s8_s32(a, np.ones((2, 3, k), np.int8))  # the default rule still applies


@needs_kernels
def test_u8_pairs_rule_rejects_what_could_saturate() -> None:
    a = np.zeros((1, 2, 6), np.uint8)
    a[0, 1, 2:4] = (130, 129)  # aligned pair 2-3 sums to 259
    with pytest.raises(ValueError, match=r"(?s)pair summing to 259.*32766"):
        ck.gemm_u8s8_s32(a, np.ones((1, 3, 6), np.int8), a_codes="u8_pairs")
    a[0, 1, 2:4] = (0, 129)
    a[0, 1, 1] = 200  # 200 + 129 straddles two aligned pairs: allowed
    b = np.ones((1, 3, 6), np.int8)
    np.testing.assert_array_equal(ck.gemm_u8s8_s32(a, b, a_codes="u8_pairs"), ref_gemm(a, b))
    b[0, 2, 5] = -128
    with pytest.raises(ValueError, match="b holds -128"):
        ck.gemm_u8s8_s32(a, b, a_codes="u8_pairs")
    with pytest.raises(ValueError, match="a_codes must be"):
        ck.gemm_u8s8_s32(a, b, a_codes="u8")


# --- fused attention -------------------------------------------------------------


def attention_inputs(batch: int, heads: int, seq: int, dim: int, seed: int = 0):
    """q, k, v as attention layers hold them: (B, H, S, D) views of one (B, S, 3, H, D) projection."""
    torch = pytest.importorskip("torch")
    x = torch.randn(batch, seq, 3, heads, dim, generator=torch.Generator().manual_seed(seed))
    return tuple(x[:, :, i].transpose(1, 2) for i in range(3))


def key_mask(lengths: list[int], seq: int):
    torch = pytest.importorskip("torch")
    return torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]


def dense_attention(q, k, v, valid):
    """SDPA with a key-padding mask, as (B, S, H, D)."""
    torch = pytest.importorskip("torch")
    mask = None if valid is None else valid[:, None, None, :]
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)


def rel_error_and_cosine(out, ref) -> tuple[float, float]:
    torch = pytest.importorskip("torch")
    flat_out, flat_ref = out.reshape(-1, out.shape[-1]), ref.reshape(-1, ref.shape[-1])
    cosine = torch.nn.functional.cosine_similarity(flat_out, flat_ref, dim=-1).mean()
    return float((out - ref).norm() / ref.norm()), float(cosine)


# Measured on these random inputs: relative L2 error <= 0.016 (int8) and 0.011 (float), mean cosine
# >= 0.99985 and 0.99993 (MiniLM's real q/k/v: 0.011-0.017 and 0.008-0.010). Margin about 2x.
TOLERANCE = {"int8": (0.03, 0.9995), "float": (0.02, 0.9998)}


@needs_kernels
@pytest.mark.parametrize("pv", ["int8", "float"])
@pytest.mark.parametrize(("shape", "lengths"), [((3, 2, 7, 8), [7, 4, 1]), ((2, 3, 33, 12), [33, 20]),
                                                ((4, 12, 128, 32), [128, 100, 57, 3])],
                         ids=["tiny", "odd", "minilm"])
def test_attention_close_to_dense_on_padded_batches(shape: tuple[int, ...], lengths: list[int], pv: str) -> None:
    q, k, v = attention_inputs(*shape)
    valid = key_mask(lengths, shape[2])
    out = ck.attention_u8s8(q, k, v, valid, pv=pv)
    assert out.shape == (shape[0], shape[2], shape[1], shape[3]) and out.is_contiguous()
    rel, cosine = rel_error_and_cosine(out, dense_attention(q, k, v, valid))  # padded query rows included
    assert rel < TOLERANCE[pv][0] and cosine > TOLERANCE[pv][1], (rel, cosine)


@needs_kernels
@pytest.mark.parametrize("pv", ["int8", "float"])
def test_attention_of_a_sequence_ignores_padding_and_the_rest_of_the_batch(pv: str) -> None:
    torch = pytest.importorskip("torch")
    q, k, v = attention_inputs(2, 3, 40, 16, seed=4)
    for x in (q, k, v):
        x[1] *= 1000        # a huge neighbour
        x[0, :, 25:] = 1e6  # and huge values in this sequence's padding
    batched = ck.attention_u8s8(q, k, v, key_mask([25, 40], 40), pv=pv)
    alone = ck.attention_u8s8(q[:1, :, :25], k[:1, :, :25], v[:1, :, :25], pv=pv)
    assert torch.equal(batched[0, :25], alone[0])


@needs_kernels
@pytest.mark.parametrize("pv", ["int8", "float"])
def test_masked_keys_inside_the_sequence_get_no_weight(pv: str) -> None:
    q, k, v = attention_inputs(2, 2, 24, 8, seed=5)
    valid = key_mask([24, 24], 24)
    valid[:, :6] = False   # left padding
    valid[1, 10:13] = False  # and a hole
    k[~valid[:, None, :, None].expand_as(k)] = 50.0  # scores that would dominate if attended to
    v[~valid[:, None, :, None].expand_as(v)] = 1e4
    rel, cosine = rel_error_and_cosine(ck.attention_u8s8(q, k, v, valid, pv=pv), dense_attention(q, k, v, valid))
    assert rel < TOLERANCE[pv][0] and cosine > TOLERANCE[pv][1], (rel, cosine)


@needs_kernels
def test_attention_without_valid_keys_is_zero() -> None:
    torch = pytest.importorskip("torch")
    q, k, v = attention_inputs(2, 2, 5, 8)
    valid = key_mask([0, 5], 5)
    valid[1, 2] = False
    out = ck.attention_u8s8(q, k, v, valid)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert out[1].abs().min() > 0


@needs_kernels
@pytest.mark.parametrize("pv", ["int8", "float"])
def test_attention_does_not_depend_on_threads_or_layout(pv: str) -> None:
    torch = pytest.importorskip("torch")
    q, k, v = attention_inputs(2, 3, 70, 32, seed=6)
    valid = key_mask([70, 41], 70)
    one = ck.attention_u8s8(q, k, v, valid, pv=pv, threads=1)
    others = [ck.attention_u8s8(q, k, v, valid, pv=pv, threads=2),
              ck.attention_u8s8(q.contiguous(), k.contiguous(), v.contiguous(), valid, pv=pv)]
    for other in others:
        if pv == "int8":  # integer GEMMs and our own float loops: bit for bit
            assert torch.equal(one, other)
        else:  # MKL's sgemm may round differently with the alignment of a thread's buffer
            torch.testing.assert_close(one, other, atol=1e-6, rtol=0)


@needs_kernels
def test_own_packing_equals_fbgemm_packing() -> None:
    torch = pytest.importorskip("torch")
    from cython_kernels import _attention

    q, k, v = attention_inputs(3, 2, 75, 32, seed=9)
    valid = key_mask([75, 75, 30], 75)  # two shapes of K and V: the packed buffers are rebuilt once
    assert ck.own_packing()
    own = ck.attention_u8s8(q, k, v, valid, threads=1)
    try:
        _attention.use_fbgemm_packing(True)
        assert not ck.own_packing()
        assert torch.equal(own, ck.attention_u8s8(q, k, v, valid, threads=1))
    finally:
        _attention.use_fbgemm_packing(False)
    assert ck.own_packing()


@needs_kernels
def test_smooth_k_removes_a_common_key_offset() -> None:
    torch = pytest.importorskip("torch")
    q, k, v = attention_inputs(2, 4, 64, 32, seed=1)
    shifted = k + 20 * torch.randn(1, 4, 1, 32, generator=torch.Generator().manual_seed(2))
    valid = key_mask([64, 40], 64)
    ref = dense_attention(q, k, v, valid)  # = dense attention with the shifted keys: softmax ignores the shift
    plain = rel_error_and_cosine(ck.attention_u8s8(q, shifted, v, valid, pv="float"), ref)[0]
    smoothed = ck.attention_u8s8(q, shifted, v, valid, pv="float", smooth_k=True)
    assert plain > 0.05
    assert rel_error_and_cosine(smoothed, ref)[0] < TOLERANCE["float"][0]
    torch.testing.assert_close(smoothed, ck.attention_u8s8(q, k, v, valid, pv="float", smooth_k=True),
                               atol=1e-3, rtol=0)


@needs_kernels
def test_attention_numpy_in_numpy_out_and_profile() -> None:
    q, k, v = (x.numpy() for x in attention_inputs(1, 2, 9, 8))
    profile = np.zeros(len(ck.ATTENTION_PHASES))
    out = ck.attention_u8s8(q, k, v, np.ones((1, 9), bool), scaling=0.3, profile=profile)
    assert isinstance(out, np.ndarray) and out.shape == (1, 9, 2, 8)
    assert (profile >= 0).all() and profile[ck.ATTENTION_PHASES.index("gemm_qk")] > 0
    from cython_kernels import _attention

    assert ck.ATTENTION_PHASES == _attention.PHASES


@needs_kernels
def test_attention_validation() -> None:
    q, k, v = attention_inputs(2, 2, 6, 8)
    with pytest.raises(ValueError, match="NaN or infinity"):
        ck.attention_u8s8(q, k, v.clone().fill_(float("nan")))
    with pytest.raises(ValueError, match="same shape"):
        ck.attention_u8s8(q, k[:, :, :5], v)
    with pytest.raises(ValueError, match=r"key_valid must be bool or uint8 of shape \(2, 6\)"):
        ck.attention_u8s8(q, k, v, key_mask([6], 6))
    with pytest.raises(ValueError, match="pv must be"):
        ck.attention_u8s8(q, k, v, pv="int4")
    with pytest.raises(TypeError, match="float32"):
        ck.attention_u8s8(q.double(), k, v)
    with pytest.raises(ValueError, match="4-D"):
        ck.attention_u8s8(q[0], k[0], v[0])


ADVERSARIAL_ATTENTION = """
import numpy as np, torch
import cython_kernels as ck


def adversarial_case():
    b, h, s, d = 2, 2, 64, 32
    g = torch.Generator().manual_seed(0)
    # Each query puts (nearly) all its weight on one aligned pair of keys with equal scores; V rows
    # are +-1 in every channel, so every V code is +-127 and the pair sums approach 258 * 127.
    k = torch.zeros(b, h, s, d)
    k[:, :, :, 0] = 40.0 * (torch.arange(s) // 2 % 4 == 0)
    k[:, :, :, 1] = torch.arange(s) // 2 * 0.01
    q = torch.zeros(b, h, s, d)
    q[:, :, :, 0] = 1.0
    q[:, :, :, 1] = torch.randn(b, h, s, generator=g)
    v = torch.where(torch.rand(b, h, s, d, generator=g) < 0.5, -1.0, 1.0)
    out = ck.attention_u8s8(q, k, v, scaling=1.0, threads=1)
    rand = [torch.randn(b, h, s, d, generator=g) for _ in range(3)]
    out2 = ck.attention_u8s8(*rand, torch.arange(s)[None, :] < torch.tensor([[s], [37]]), threads=2)
    return {"isa": ck.cpu_features()["isa"], "own": ck.own_packing(), "out": out.flatten().tolist(),
            "out2": out2.flatten().tolist()}
"""


@needs_kernels
def test_forced_avx2_attention_is_exact_with_adversarial_weights() -> None:
    """On FBGEMM's AVX2 kernel (int16 pair sums), P.V with pair-saturating weights and V at its
    extremes equals the native (VNNI here) result bit for bit, and own packing passes its check."""
    namespace: dict = {}
    exec(ADVERSARIAL_ATTENTION, namespace)
    native = namespace["adversarial_case"]()
    avx2 = run_python("from cython_kernels import _gemm; _gemm.force_isa('avx2')\n" + ADVERSARIAL_ATTENTION
                      + "\nimport json; print(json.dumps(adversarial_case()))")
    assert avx2["isa"] == "avx2" and avx2["own"] and native["own"]
    assert avx2["out"] == native["out"] and avx2["out2"] == native["out2"]
    assert max(abs(x) for x in avx2["out"]) <= 1.0 + 1e-6  # a convex combination of +-1 rows
