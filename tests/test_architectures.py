"""Every built-in backend on every supported encoder architecture, end to end through ``attnbench run``.

Tiny random-weight ``*ForSequenceClassification`` checkpoints of each architecture are built here from
configs (hidden 64, 2 layers, 4 heads; nothing downloaded) and saved with the packaged MiniLM tokenizer, as a
user's own checkpoint would be. Each is run through eval, fidelity and speed cells for every built-in
backend; the tests read the stored rows back and check that the backends really replaced attention.
ModernBERT's second layer is a local one whose sliding window (``local_attention=8``) is shorter than the
MRPC pairs; EuroBERT's attention is grouped-query (2 key/value heads for 4 query heads).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from harness import read_results
from harness.cli import main

COMMON = dict(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
              max_position_embeddings=512, num_labels=2)
ARCHITECTURES = {  # model_type: config overrides (ids inside the MiniLM tokenizer's vocabulary)
    "bert": dict(type_vocab_size=2),
    "roberta": dict(type_vocab_size=2, max_position_embeddings=514, pad_token_id=1),
    "xlm-roberta": dict(type_vocab_size=2, max_position_embeddings=514, pad_token_id=1),
    "distilbert": dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128),
    "albert": dict(embedding_size=32),
    "electra": dict(embedding_size=32, type_vocab_size=2),
    "modernbert": dict(local_attention=8, global_attn_every_n_layers=2, pad_token_id=0, bos_token_id=101,
                       eos_token_id=102, cls_token_id=101, sep_token_id=102),
    "eurobert": dict(num_key_value_heads=2, pad_token_id=0, bos_token_id=101, eos_token_id=102,
                     mask_token_id=103),
}
BACKENDS = ("dense", "dense:impl=eager", "dynamic-quant", "topk:k=2", "topk:k=2,scorer=fbgemm", "fbgemm-int8")
#: Backends whose scores differ from dense attention: their logits must differ from dense's.
CHANGES_LOGITS = ("dynamic-quant", "topk:k=2", "topk:k=2,scorer=fbgemm", "fbgemm-int8")

RUN = ["--tasks", "mrpc", "--limit", "8", "--fidelity-examples", "8", "--shape", "1x16", "--repeats", "2",
       "--warmup", "1", "--no-progress"]


def build_checkpoint(model_type: str, path: Path, tokenizer) -> Path:
    """A tiny random-weight checkpoint of ``model_type`` with the packaged tokenizer beside it."""
    settings = {**COMMON, **ARCHITECTURES[model_type]}
    if model_type == "distilbert":
        settings = {k: v for k, v in settings.items()
                    if k not in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")}
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(model_type, **settings))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer):
    made: dict[str, Path] = {}

    def get(model_type: str) -> Path:
        if model_type not in made:
            made[model_type] = build_checkpoint(model_type, tmp_path_factory.mktemp(model_type), tokenizer)
        return made[model_type]

    return get


@pytest.fixture(scope="module")
def matrix_runs(checkpoints, tmp_path_factory):
    """``run(model_type, backend)`` → (exit code, stderr, rows of that backend's run). One ``attnbench run`` per
    architecture holds every backend."""
    done: dict[tuple[str, str], tuple] = {}

    def run(model_type: str, backend: str, capsys) -> tuple:
        key = (model_type, "*")
        if key not in done:
            specs = list(BACKENDS)
            store = tmp_path_factory.mktemp(f"store-{model_type}")
            capsys.readouterr()
            code = main(["run", *sum((["-b", s] for s in specs), []), "--model", str(checkpoints(model_type)),
                         "--store", str(store), *RUN])
            done[key] = (code, capsys.readouterr().err, read_results(str(store)))
        return done[key]

    return run


CASES = [(m, b) for m in ARCHITECTURES for b in BACKENDS]


@pytest.mark.parametrize("model_type, backend", CASES)
def test_every_backend_runs_every_cell_kind_on_every_architecture(matrix_runs, model_type, backend, capsys):
    code, err, rows = matrix_runs(model_type, backend, capsys)
    assert code == 0, err
    mine = rows[rows["backend"] == backend]
    metrics = set(mine["metric"])
    assert {"accuracy", "latency_forward", "latency_attention_core", "peak_memory_forward"} <= metrics
    if backend != "dense":  # the reference: agreement and fidelity are measured against it
        assert {"max_abs_logit_diff", "agreement", "attn_cosine_mean", "attn_max_abs_err"} <= metrics
        value = dict(zip(mine["metric"], mine["value"]))
        if backend in CHANGES_LOGITS:  # the backend really replaced attention (or the Linear layers)
            assert value["max_abs_logit_diff"] > 0 and value["attn_max_abs_err"] > 0
        else:  # eager dense: the same attention (window and padding masks honoured) to rounding
            assert value["max_abs_logit_diff"] < 1e-4 and value["attn_cosine_mean"] > 0.99999
    assert set(rows[rows["category"] == "speed"]["seq_len"]) == {16}


def test_topk_with_k_over_the_window_is_dense_on_modernbert(checkpoints, tmp_path, capsys):
    """k ≥ every row's allowed keys: top-k is dense attention restricted to the sliding window, with either scorer."""
    code = main(["run", "-b", "topk:k=512", "-b", "topk:k=512,scorer=fbgemm", "--model", str(checkpoints("modernbert")),
                 "--store", str(tmp_path), "--no-speed", *RUN])
    assert code == 0, capsys.readouterr().err
    rows = read_results(str(tmp_path))
    for spec in ("topk:k=512", "topk:k=512,scorer=fbgemm"):
        value = dict(zip(*(rows[rows["backend"] == spec][c] for c in ("metric", "value"))))
        assert value["max_abs_logit_diff"] < 1e-5
        assert value["attn_max_abs_err"] < 1e-4 and value["topk_recall"] == 1.0


@pytest.mark.parametrize("model_type, config", [
    ("deberta-v2", dict(type_vocab_size=2)), ("mpnet", {}), ("roformer", dict(type_vocab_size=2)),
    ("megatron-bert", dict(type_vocab_size=2))])
def test_architecture_that_bypasses_the_interface_is_refused_in_one_line(tmp_path, tokenizer, capsys,
                                                                         model_type, config):
    ARCHITECTURES[model_type] = config
    try:
        path = build_checkpoint(model_type, tmp_path / model_type, tokenizer)
    finally:
        del ARCHITECTURES[model_type]
    store = tmp_path / "store"
    capsys.readouterr()
    code = main(["run", "-b", "topk:k=2", "--model", str(path), "--store", str(store), *RUN])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "computes attention in its own modules, not through transformers' attention interface" in err
    assert "ModernBERT" in err and "attnbench models" in err
    assert "sdpa" not in err.lower() and "http" not in err
    assert not store.exists() or not any(store.rglob("*.parquet"))


def test_models_reports_masks_heads_and_backends(checkpoints, capsys):
    code = main(["models", str(checkpoints("modernbert")), str(checkpoints("eurobert")), "--seq-len", "32",
                 "-b", "topk:k=4", "-b", "dynamic-quant", "--json"])
    modern, euro = json.loads(capsys.readouterr().out)
    assert code == 0
    assert modern["architecture"] == "ModernBertForSequenceClassification" and modern["swappable"]
    assert modern["attention_calls"] == 2 and modern["head_dim"] == [16]
    # layer 0 global (key padding), layer 1 local: keys within local_attention // 2 = 4 positions; transformers
    # passes sliding_window = local_attention // 2 + 1
    assert modern["masks"] == {"key-padding": 1, "per-query": 1} and modern["sliding_windows"] == {"5": [1]}
    assert euro["heads"] == [4] and euro["kv_heads"] == [2]
    for report in (modern, euro):
        assert [(b["spec"], b["applies"]) for b in report["backends"]] == [("topk:k=4", True), ("dynamic-quant", True)]


def test_models_says_why_a_checkpoint_cannot_be_used(tmp_path, tokenizer, capsys):
    ARCHITECTURES["deberta-v2"] = dict(type_vocab_size=2)
    try:
        path = build_checkpoint("deberta-v2", tmp_path / "deberta", tokenizer)
    finally:
        del ARCHITECTURES["deberta-v2"]
    code = main(["models", str(path), "-b", "topk:k=4"])
    out = capsys.readouterr().out
    assert code == 1
    assert "NOT SUPPORTED: DebertaV2ForSequenceClassification computes attention in its own modules" in out
    assert "topk" not in out


def test_models_reports_a_bert_checkpoint(checkpoints, capsys):
    code = main(["models", str(checkpoints("bert")), "-b", "dense", "-b", "fbgemm-int8:pv=float", "--seq-len", "16"])
    out = capsys.readouterr().out
    assert code == 0
    assert "BertForSequenceClassification" in out
    assert "2 attention call(s) per forward" in out and "2 call(s) key-padding" in out
    assert "fbgemm-int8:pv=float (replaces attention): applies" in out


@pytest.mark.parametrize("model_type, attention, ffn", [
    ("modernbert", {"attn.Wqkv", "attn.Wo"}, {"mlp.Wi", "mlp.Wo"}),
    ("eurobert", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"},
     {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}),
    ("distilbert", {"attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin"},
     {"ffn.lin1", "ffn.lin2"}),
    ("albert", {"attention.query", "attention.key", "attention.value", "attention.dense"}, {"ffn", "ffn_output"}),
])
def test_dynamic_quant_finds_the_linear_layers_of_each_architecture(checkpoints, model_type, attention, ffn):
    from plugins.dynamic_quant import linear_layers

    model = AutoModelForSequenceClassification.from_pretrained(checkpoints(model_type)).eval()
    layers = 1 if model_type == "albert" else 2  # ALBERT shares one layer's weights
    for modules, suffixes in (("attention", attention), ("ffn", ffn)):
        names = linear_layers(model, modules)
        assert {s for s in suffixes if any(n.endswith("." + s) for n in names)} == suffixes
        assert len(names) == len(suffixes) * layers
    assert linear_layers(model, "all") == linear_layers(model, "attention") | linear_layers(model, "ffn")


def test_probing_leaves_the_model_and_the_attention_registry_as_they_were():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from conftest import tiny_classifier
    from harness.backends.architecture import probe_attention

    model = tiny_classifier()
    before = (set(AttentionInterface._global_mapping), set(AttentionMaskInterface._global_mapping))
    profile = probe_attention(model)
    assert [c.module_type for c in profile.calls] == ["BertSelfAttention"] * 2
    assert (set(AttentionInterface._global_mapping), set(AttentionMaskInterface._global_mapping)) == before
    assert model.config._attn_implementation == "sdpa"


def test_models_refuses_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    code = main(["models", str(tmp_path / "missing")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "cannot load model" in err
