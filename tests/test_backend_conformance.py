"""The backend contract, checked by the plugin kit (:mod:`harness.testing`) for every registered backend:
the built-ins and the example third-party plugin. One test id per (backend spec, check).

Beside the kit: the rules specific to one backend (top-k with ``k`` at least the length is dense attention)
and the exact wording of the harness's dtype refusal.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from harness import load_registry
from harness.backends.attention_interface import attention_function, attention_modules
from harness.devices import dtype_names
from harness.testing import CHECKS, parametrize_with_checks

from conftest import tiny_encoder

# Loaded from its file, not through sys.path: its directory may hold an .egg-info whose entry point would
# otherwise register it in every other test's registry.
_SPEC = importlib.util.spec_from_file_location(
    "attnbench_example", Path(__file__).parent / "example_plugin" / "attnbench_example" / "__init__.py")
attnbench_example = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(attnbench_example)

REGISTRY = load_registry(entry_points=False, extra_plugins=(attnbench_example,))
#: Specs to check for backends whose defaults are not enough (a required parameter, a second code path).
EXTRA_SPECS = {"topk": ["topk:k=4", "topk:k=4,scorer=fbgemm", "topk:k=4,granularity=token,smooth_k=true",
                        "topk:k=4,granularity=tensor,k_factor=2"],
               "dense": ["dense", "dense:impl=eager"], "fbgemm-int8": ["fbgemm-int8", "fbgemm-int8:pv=float", "fbgemm-int8:kernel=materialize"]}
#: Rules a built-in is known to break today, by backend name, with the reason (the kit requires them to fail:
#: strict xfail). None.
KNOWN_FAILURES: dict[str, dict[str, str]] = {}


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


def test_every_registered_backend_is_checked():
    assert {"dense", "dynamic-quant", "topk", "fbgemm-int8", "bf16-sdpa"} <= set(REGISTRY.backends)
    assert len(SPECS) >= 9
    assert {c.name for c in CHECKS} >= {"output_layout", "padding", "sliding_window", "finiteness", "scaling",
                                        "undeclared_dtypes_refused", "whole_model_padding", "distribution"}


@parametrize_with_checks(SPECS, registry=REGISTRY,
                         expected_failed_checks=lambda spec: KNOWN_FAILURES.get(spec.split(":")[0], {}))
def test_backend_conformance(backend, check):
    check(backend)


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
def test_undeclared_dtype_is_refused_in_these_words(spec, dtype):
    backend = _resolve_or_skip(spec)
    if str(dtype).removeprefix("torch.") in dtype_names(backend.attention_part.dtypes):
        pytest.skip(f"{spec} declares {dtype}")
    q, k, v = (t.to(dtype) for t in _qkv())
    with pytest.raises(TypeError, match=f"{spec.split(':')[0]}.*takes query, key and value of one dtype among "
                                         f"float32.*got {str(dtype).removeprefix('torch.')}"):
        attention_function(backend)(_module(), q, k, v, None, scaling=0.25)
