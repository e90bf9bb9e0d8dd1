"""dynamic-quant quantizes exactly what it names; composition; attention-fidelity figures by hand."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
from transformers import BertForSequenceClassification

from harness import Backend, SpecError
from harness.backends.contract import PluginInfo, ResolvedBackend
from harness.execution.fidelity import attention_fidelity, captured_attention, reference_outputs
from harness.execution.runner import prepare_model
from plugins.dynamic_quant import linear_layers

from conftest import tiny_classifier, tiny_config

ATTENTION = {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"}
FFN = {"intermediate.dense", "output.dense"}


def quantized_names(model):
    return {name for name, m in model.named_modules() if isinstance(m, DynamicLinear)}


def layer_suffixes(names):
    return {name.split("layer.", 1)[1].split(".", 1)[1] for name in names}


@pytest.mark.parametrize("modules, expected", [("attention", ATTENTION), ("ffn", FFN), ("all", ATTENTION | FFN)])
def test_variants_quantize_exactly_the_modules_they_name(registry, modules, expected):
    base = tiny_classifier()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the expected deprecations are handled inside prepare()
        model = prepare_model(base, registry.resolve(f"dynamic-quant:modules={modules}"))
    names = quantized_names(model)
    assert layer_suffixes(names) == expected
    assert len(names) == len(expected) * base.config.num_hidden_layers
    assert not isinstance(model.classifier, DynamicLinear) and not quantized_names(base)


def test_quantized_model_stays_close_to_dense(registry):
    base = tiny_classifier()
    batch = {"input_ids": torch.randint(1000, 5000, (4, 12))}
    with torch.inference_mode():
        ref = base(**batch).logits
        out = prepare_model(base, registry.resolve("dynamic-quant")).eval()(**batch).logits
    assert 0 < (out - ref).abs().max() < 0.05


def test_run_facts_record_the_engine(registry):
    facts = registry.resolve("dynamic-quant:engine=fbgemm").run_facts()
    assert facts["quantized_engine"] == "fbgemm" and "deprecated" in facts["deprecation"]


def test_linear_layers_requires_bert_names():
    assert linear_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)), "all") == set()


def test_composition_applies_the_transform_and_the_attention(registry):
    backend = registry.resolve("dynamic-quant:modules=ffn+topk:k=4")
    model = prepare_model(tiny_classifier(), backend)
    assert layer_suffixes(quantized_names(model)) == FFN
    assert model.config._attn_implementation.startswith("attnbench:topk:k=4")
    assert backend.params_json == ('{"dynamic-quant": {"engine": "x86", "modules": "ffn"}, '
                                   '"topk": {"bits": 8, "granularity": "head", "k": 4, "k_factor": 1, "scorer": "fake", "smooth_k": false}}')


def test_composing_two_attention_functions_is_an_error(registry):
    with pytest.raises(SpecError, match="cannot compose 'topk' and 'dense'"):
        registry.resolve("topk:k=4+dense")


class Doubled(Backend):
    """Test backend: exactly twice the dense attention output."""

    name = "doubled"

    def attention(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                               scale=scaling)
        return 2 * out.transpose(1, 2).contiguous(), None


def test_fidelity_figures_equal_hand_computed_values(registry):
    torch.manual_seed(0)
    base = BertForSequenceClassification(tiny_config(num_hidden_layers=1)).eval()
    reference = prepare_model(base, registry.resolve("dense"))
    doubled = ResolvedBackend((Doubled(),), (PluginInfo("test", "test", "0"),))
    model = prepare_model(base, doubled)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    batches = [{"input_ids": torch.randint(1000, 5000, (2, 6)), "attention_mask": mask}]
    ref = reference_outputs(reference, batches, {})
    figures = attention_fidelity(model, doubled, batches, ref, {})
    real = ref[0][0][mask.bool()]  # (10 real tokens, hidden)
    assert figures["attn_cosine_mean"] == pytest.approx(1.0, abs=1e-6)
    assert figures["attn_rel_l1_mean"] == pytest.approx(1.0, abs=1e-6)  # |2x - x| / |x|
    assert figures["attn_max_abs_err"] == pytest.approx(float(real.abs().max()), rel=1e-6)
    assert figures["attn_cosine_worst"] == figures["attn_cosine_mean"]  # one layer


def test_captured_attention_sees_every_layer():
    model = tiny_classifier()
    with torch.inference_mode(), captured_attention(model) as outputs:
        model(input_ids=torch.randint(1000, 5000, (1, 5)))
    assert len(outputs) == model.config.num_hidden_layers and outputs[0].shape == (1, 5, 32)


def test_topk_fidelity_pass_reports_recall(registry):
    base = tiny_classifier()
    backend = registry.resolve("topk:k=2,bits=3")
    batches = [{"input_ids": torch.randint(1000, 5000, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}]
    ref = reference_outputs(prepare_model(base, registry.resolve("dense")), batches, {})
    model = prepare_model(base, backend)
    figures = attention_fidelity(model, backend, batches, ref, {})
    assert 0 < figures["topk_recall"] <= 1 and 0 < figures["topk_mass"] <= 1
    assert figures["attn_cosine_mean"] < 1
    assert model.config._attn_implementation.endswith(f"{id(backend.attention_part):x}")  # restored after the pass
