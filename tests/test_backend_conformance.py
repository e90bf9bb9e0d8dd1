"""The backend contract, checked for every registered backend: the built-ins and the example third-party plugin.

Each rule is the one stated in :class:`harness.Backend`'s docstring: output shape and layout, padding never
influences valid positions, limits such as ``k >= length`` give dense attention, dtypes outside the declared
ones are refused with a clear ``TypeError``, and whole-model transforms keep padded inputs equal to unpadded ones.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from harness import load_registry
from harness.backends.attention_interface import attention_function, attention_modules, attach
from harness.devices import dtype_names
from harness.execution.runner import prepare_model

from conftest import tiny_encoder

# Loaded from its file, not through sys.path: its directory holds an .egg-info whose entry point would
# otherwise register it in every other test's registry.
_SPEC = importlib.util.spec_from_file_location(
    "attnbench_example", Path(__file__).parent / "example_plugin" / "attnbench_example" / "__init__.py")
attnbench_example = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(attnbench_example)

REGISTRY = load_registry(entry_points=False, extra_plugins=(attnbench_example,))
#: Specs to check for backends whose defaults are not enough (a required parameter, a second code path).
EXTRA_SPECS = {"topk": ["topk:k=4", "topk:k=4,scorer=fbgemm", "topk:k=4,granularity=token,smooth_k=true"],
               "dense": ["dense", "dense:impl=eager"], "fbgemm-int8": ["fbgemm-int8", "fbgemm-int8:pv=float"]}


def _specs() -> list[str]:
    specs = []
    for name, entry in sorted(REGISTRY.backends.items()):
        if name in EXTRA_SPECS:
            specs += EXTRA_SPECS[name]
        elif any(p.required for p in entry.cls.params):
            raise AssertionError(f"backend {name!r} has a required parameter: add example specs to EXTRA_SPECS")
        else:
            specs.append(name)
    return specs


SPECS = _specs()
ATTENTION_SPECS = [s for s in SPECS if REGISTRY.resolve(s).attention_part is not None]


def _resolve_or_skip(spec: str):
    backend = REGISTRY.resolve(spec)
    reason = backend.unavailable_reason()
    if reason:
        pytest.skip(f"{spec} unavailable here: {reason}")
    return backend


def _module():
    return attention_modules(tiny_encoder())[0]


def _qkv(batch=2, heads=4, seq=12, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, heads, seq, dim, generator=gen) for _ in range(3))


def _padding_mask(lengths: list[int], seq: int, kind: str) -> torch.Tensor:
    valid = torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]          # (batch, k_len)
    mask = valid[:, None, None, :].expand(len(lengths), 1, seq, seq)
    if kind == "bool":
        return mask
    return torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)


def test_every_registered_backend_is_checked():
    assert {"dense", "dynamic-quant", "topk", "fbgemm-int8", "bf16-sdpa"} <= set(REGISTRY.backends)
    assert len(SPECS) >= 8


@pytest.mark.parametrize("spec", ATTENTION_SPECS)
def test_output_shape_layout_and_dtype(spec):
    backend = _resolve_or_skip(spec)
    fn, (q, k, v) = attention_function(backend), _qkv()
    out, weights = fn(_module(), q, k, v, None, scaling=0.25)
    assert out.shape == (2, 12, 4, 16), "output must be (batch, seq, heads, head_dim)"
    assert out.dtype == q.dtype
    assert weights is None or weights.shape == (2, 4, 12, 12)
    # Layout: the transposition is real (heads and seq are not merely reshaped).
    dense = attention_function(REGISTRY.resolve("dense"))(_module(), q, k, v, None, scaling=0.25)[0]
    assert torch.nn.functional.cosine_similarity(out.flatten(), dense.flatten(), dim=0) > 0.9


@pytest.mark.parametrize("spec", ATTENTION_SPECS)
def test_padding_never_influences_valid_positions(spec):
    backend = _resolve_or_skip(spec)
    fn, module = attention_function(backend), _module()
    q, k, v = _qkv()
    lengths = [12, 7]
    mask = _padding_mask(lengths, 12, backend.mask_kind)
    out = fn(module, q, k, v, mask, scaling=0.25)[0]
    # Garbage in the padded keys and values of sequence 1 must not reach its valid rows...
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 7:] = 50 * torch.randn_like(k2[1, :, 7:])
    v2[1, :, 7:] = -50
    out2 = fn(module, q, k2, v2, mask, scaling=0.25)[0]
    torch.testing.assert_close(out2[1, :7], out[1, :7], rtol=0, atol=1e-5)
    # ...and the valid rows equal those of the sequence computed alone, without padding.
    alone = fn(module, q[1:, :, :7], k[1:, :, :7], v[1:, :, :7], None, scaling=0.25)[0]
    torch.testing.assert_close(out[1:, :7], alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(out[:1], fn(module, q[:1], k[:1], v[:1], None, scaling=0.25)[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("spec", [s for s in ATTENTION_SPECS if s.startswith("topk")])
def test_k_at_least_the_length_is_dense_attention(spec):
    backend = _resolve_or_skip(spec.replace("k=4", "k=12"))
    q, k, v = _qkv()
    mask = _padding_mask([12, 5], 12, backend.mask_kind)
    out = attention_function(backend)(_module(), q, k, v, mask, scaling=0.25)[0]
    dense = attention_function(REGISTRY.resolve("dense"))(_module(), q, k, v, mask, scaling=0.25)[0]
    torch.testing.assert_close(out[0], dense[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1, :5], dense[1, :5], rtol=0, atol=1e-5)


@pytest.mark.parametrize("spec", ATTENTION_SPECS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int32])
def test_undeclared_dtype_is_refused_clearly(spec, dtype):
    backend = _resolve_or_skip(spec)
    q, k, v = (t.to(dtype) for t in _qkv())
    fn = attention_function(backend)
    if str(dtype).removeprefix("torch.") in dtype_names(backend.attention_part.dtypes):
        out = fn(_module(), q, k, v, None, scaling=0.25)[0]
        assert out.dtype == dtype and out.shape == (2, 12, 4, 16)
        return
    with pytest.raises(TypeError, match=f"{spec.split(':')[0]}.*takes query, key and value of one dtype among "
                                         f"float32.*got {str(dtype).removeprefix('torch.')}"):
        fn(_module(), q, k, v, None, scaling=0.25)


@pytest.mark.parametrize("spec", SPECS)
def test_whole_model_padded_equals_unpadded(spec):
    """Through prepare() and the transformers wiring: a padded batch gives each sequence its unpadded output."""
    backend = _resolve_or_skip(spec)
    model = prepare_model(tiny_encoder(), backend)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 2000, (2, 10), generator=gen)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.inference_mode():
        padded = model(input_ids=ids, attention_mask=mask).last_hidden_state
        alone = model(input_ids=ids[1:, :6], attention_mask=mask[1:, :6]).last_hidden_state
    # dynamic quantization scales activations per batch: its rows agree only to quantization error.
    atol = 5e-2 if "dynamic-quant" in spec else 1e-4
    torch.testing.assert_close(padded[1:, :6], alone, rtol=0, atol=atol)


def _window_mask(lengths: list[int], seq: int, half: int, kind: str) -> torch.Tensor:
    """ModernBERT's local-layer mask: query i attends the real keys j with |i - j| <= half."""
    positions = torch.arange(seq)
    window = (positions[:, None] - positions[None, :]).abs() <= half
    real = positions[None, :] < torch.tensor(lengths)[:, None]
    mask = (window[None] & real[:, None, :])[:, None]                                  # (batch, 1, seq, seq)
    if kind == "bool":
        return mask
    return torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)


_WINDOW_SPECS = list(ATTENTION_SPECS)


@pytest.mark.parametrize("spec", _WINDOW_SPECS)
def test_sliding_window_masks_are_honoured_row_by_row(spec):
    """Values outside a query's window never reach its output; those inside do (a per-query mask, not padding)."""
    backend = _resolve_or_skip(spec)
    fn, module = attention_function(backend), _module()
    q, k, v = _qkv()
    mask = _window_mask([12, 12], 12, 2, backend.mask_kind)
    out = fn(module, q, k, v, mask, scaling=0.25)[0]
    v2 = v.clone()
    v2[:, :, 8:] = -50  # outside the windows of queries 0..5, inside those of queries 6..11
    out2 = fn(module, q, k, v2, mask, scaling=0.25)[0]
    torch.testing.assert_close(out2[:, :6], out[:, :6], rtol=0, atol=1e-5)
    assert (out2[:, 10:] - out[:, 10:]).abs().max() > 1  # queries 10, 11 attend only keys 8..11
