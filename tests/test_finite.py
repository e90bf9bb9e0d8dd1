"""No backend turns non-finite attention inputs into finite outputs; evaluation enforces it
outside every timed call, and an eval cell that breaks it (or yields non-finite logits) fails with the reason."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_classifier
from harness import Backend, RunSpec, hookimpl, load_registry, read_results, run
from harness.backends import attention_interface as ai
from harness.backends.attention_interface import NonFiniteAttentionError, attention_modules, check_finite
from harness.execution.eval_cells import prepare_model
from harness.speed import attention_core_call, forward_call

BUILT_IN = ["dense", "dense:impl=eager", "dynamic-quant", "topk:k=2", "topk:k=2,scorer=fbgemm",
            "topk:k=2,granularity=tensor,smooth_k=true", "topk:k=2,granularity=token", "fbgemm-int8",
            "fbgemm-int8:pv=float"]
NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def module():
    return attention_modules(tiny_classifier())[0]


def mask_for(backend, valid: torch.Tensor) -> torch.Tensor:
    """The padding mask of the backend's kind for ``valid`` (batch, seq) bool."""
    attend = valid[:, None, None, :].expand(valid.shape[0], 1, valid.shape[1], valid.shape[1])
    if backend.mask_kind == "bool":
        return attend
    return torch.zeros(attend.shape).masked_fill(~attend, torch.finfo(torch.float32).min)


def call(registry, spec, module, q, k, v, valid=None):
    """The backend's attention on q/k/v, then the harness's rule check; a backend may instead refuse
    non-finite inputs with an error that says so."""
    backend = registry.resolve(spec)
    reason = backend.unavailable_reason()
    if reason:
        pytest.skip(f"{spec} unavailable here: {reason}")
    mask = None if valid is None else mask_for(backend, valid)
    try:
        out = ai.attention_function(backend)(module, q, k, v, mask, scaling=q.shape[-1] ** -0.5, dropout=0.0)[0]
    except ValueError as exc:
        assert "NaN or infinity" in str(exc) and not all(torch.isfinite(t).all() for t in (q, k, v))
        return None
    check_finite(spec, q, k, v, mask, out)
    return out


def qkv(batch=1, heads=1, seq=4, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, seq, dim, generator=generator) for _ in range(3)]


@pytest.mark.parametrize("spec", BUILT_IN)
def test_the_issue_case_one_nan_key(registry, module, spec):
    """(1, 1, 4, 8) with one NaN in one key: dense is NaN everywhere; topk used to return finite values."""
    q, k, v = qkv()
    k[0, 0, 2, 3] = NAN
    out = call(registry, spec, module, q, k, v)
    assert out is None or not torch.isfinite(out).all()


@pytest.mark.parametrize("spec", BUILT_IN)
@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_non_finite_inputs_stay_non_finite_and_finite_ones_finite(registry, module, spec, where, bad):
    """Two padded sequences; a bad value in sequence 0 only: the rule holds per sequence (check_finite
    raises otherwise), and sequence 1, whose inputs are finite, stays finite."""
    q, k, v = qkv(batch=2, heads=2, seq=6, seed=1)
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    {"q": q, "k": k, "v": v}[where][0, 1, 4, 5] = bad
    out = call(registry, spec, module, q, k, v, valid)
    if out is not None:
        assert not torch.isfinite(out[0]).all() and torch.isfinite(out[1, :4]).all()


@pytest.mark.parametrize("spec", BUILT_IN)
def test_finite_inputs_give_finite_outputs(registry, module, spec):
    q, k, v = qkv(batch=2, heads=2, seq=6, seed=2)
    out = call(registry, spec, module, q, k, v, torch.tensor([[True] * 6, [True] * 3 + [False] * 3]))
    assert torch.isfinite(out).all()


def test_topk_keeps_the_selection_of_other_heads_when_one_head_is_bad(registry, module):
    q, k, v = qkv(batch=1, heads=2, seq=8, seed=3)
    clean = call(registry, "topk:k=3,granularity=tensor", module, q, k, v)
    k[0, 0, 5, 0] = NAN
    out = call(registry, "topk:k=3,granularity=tensor", module, q, k, v)
    assert out[:, :, 0].isnan().all()                       # the bad head: NaN for every query, as in dense
    torch.testing.assert_close(out[:, :, 1], clean[:, :, 1])  # the other head: unchanged


def test_the_check_names_both_ways_of_breaking_the_rule():
    q, k, v = qkv()
    k[0, 0, 2, 3] = NAN
    with pytest.raises(NonFiniteAttentionError, match=r"'hider' returned an all-finite attention output for "
                                                      r"sequence\(s\) \[0\]"):
        check_finite("hider", q, k, v, None, torch.zeros(1, 4, 1, 8))
    q, k, v = qkv()
    out = torch.zeros(1, 4, 1, 8)
    out[0, 1] = NAN
    with pytest.raises(NonFiniteAttentionError, match=r"'maker' returned NaN or infinity .* sequence\(s\) \[0\] of a "
                                                      "batch whose q/k/v are finite"):
        check_finite("maker", q, k, v, None, out)
    valid = torch.tensor([[True, True, True, False]])
    out[0, 1] = 0.0
    out[0, 3] = NAN  # padding rows are not checked
    check_finite("ok", q, k, v, valid[:, None, None, :].expand(1, 1, 4, 4), out)


def test_timed_calls_never_pay_for_the_check(registry, monkeypatch, tokenizer):
    calls = []
    monkeypatch.setattr(ai, "check_finite", lambda *args: calls.append(args[0]))
    backend = registry.resolve("topk:k=2")
    model = prepare_model(tiny_classifier(), backend)
    inputs = dict(tokenizer(["a short sentence", "another"], padding=True, return_tensors="pt"))
    forward_call(model, inputs, {})()
    attention_core_call(backend, model, qkv(batch=1, heads=4, seq=4))()
    assert calls == []
    with ai.finite_checked(model, backend) as timer, torch.inference_mode():
        model(**inputs)
    assert calls == ["topk:k=2", "topk:k=2"]  # once per layer
    assert timer.seconds > 0  # counted, so that evaluation can take it out of its throughput figures
    forward_call(model, inputs, {})()
    assert len(calls) == 2  # the plain registration is back for timing


# -- eval cells -------------------------------------------------------------------------------------------
SEP = 102  # [SEP] of the packaged (BERT uncased) vocabulary: in every example, never among the first tokens


class PoisonSep(Backend):
    """A whole-model transform that makes the [SEP] embedding NaN: one bad token per sequence."""

    name = "poison-sep"

    def prepare(self, model):
        with torch.no_grad():
            model.bert.embeddings.word_embeddings.weight[SEP] = NAN
        return model


class Hider(Backend):
    """SDPA whose non-finite outputs are replaced by zeros: breaks the rule."""

    name = "hider"

    def attention(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        out, weights = ai.sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                                 dropout=dropout, **kwargs)
        return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0), weights


class Plugin:
    @hookimpl
    def register_backends(self, register):
        register(PoisonSep)
        register(Hider)


@pytest.mark.parametrize("spec, reason", [
    ("poison-sep+hider", "'poison-sep+hider' returned an all-finite attention output"),
    ("poison-sep+topk:k=2", "the model's outputs are NaN or infinite for 8 of 8 examples"),
    ("poison-sep", "the model's outputs are NaN or infinite for 8 of 8 examples"),
])
def test_an_eval_cell_that_breaks_the_rule_fails_and_stores_no_metric(tmp_path, tiny_model_dir, spec, reason):
    """Old code stored accuracy for the first two: hider and topk turned the NaN [SEP] into plausible numbers."""
    registry = load_registry(entry_points=False, extra_plugins=(Plugin(),))
    result = run(RunSpec(backends=["dense", spec], tasks=["sst2"], model=[str(tiny_model_dir)], limit=8,
                         eval_batch_size=4, speed=False, fidelity_examples=4, store=tmp_path / "store",
                         progress=False), registry, log=lambda m: None)
    assert list(result.failures) == [f"eval/sst2/{spec}"] and reason in result.failures[f"eval/sst2/{spec}"]
    stored = read_results(tmp_path / "store")
    assert set(stored["backend"]) == {"dense"}
