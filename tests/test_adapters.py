"""The embedded default's shipped adapters: files match their manifest, loading merges them into plain
``nn.Linear`` weights, no evaluated row ever trained an adapter, and a task without an adapter falls back."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from harness.models import adapters as ad
from harness.models import loading
from harness.tasks.data import SAMPLE_DIR, DataSource
from plugins.glue import GLUE_TASKS

from conftest import tiny_encoder

TASKS = {t.name: t for t in GLUE_TASKS}
SHIPPED = ad.shipped_configs()
pytestmark = pytest.mark.skipif(not SHIPPED, reason="no adapters ship in this checkout (tools/train_adapters.py)")


def test_every_glue_config_ships_an_adapter_matching_the_manifest():
    assert set(SHIPPED) == {t.config for t in GLUE_TASKS}
    manifest = ad.adapter_manifest()
    total = 0
    for name, entry in manifest["files"].items():
        data = (ad.ADAPTER_DIR / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        total += len(data)
    assert total < 10 * 2**20  # about 10 MB in all at most


def test_a_damaged_adapter_is_refused(monkeypatch, tmp_path):
    (tmp_path / "MANIFEST.json").write_text(json.dumps({"files": {"rte.safetensors": {"sha256": "0" * 64}}}))
    (tmp_path / "rte.safetensors").write_bytes((ad.ADAPTER_DIR / "rte.safetensors").read_bytes())
    monkeypatch.setattr(ad, "ADAPTER_DIR", tmp_path)
    ad.adapter_manifest.cache_clear()
    try:
        with pytest.raises(Exception, match="does not match MANIFEST.json"):
            ad.load_adapter("rte")
    finally:
        ad.adapter_manifest.cache_clear()


def test_merge_is_w_plus_scaling_b_a_on_plain_linear_layers():
    encoder = tiny_encoder()
    before = {n: m.weight.detach().clone() for n, m in encoder.named_modules() if isinstance(m, torch.nn.Linear)}
    gen = torch.Generator().manual_seed(0)
    path = "encoder.layer.0.attention.self.query"
    a, b = torch.randn(4, 32, generator=gen).half(), torch.randn(32, 4, generator=gen).half()
    adapter = ad.Adapter("x", {path: (a, b)}, 2.0, torch.zeros(2, 32), torch.zeros(2), False, "train",
                         np.array([], np.int64), "")
    assert ad.merge_adapter(encoder, adapter) == 1
    torch.testing.assert_close(encoder.get_submodule(path).weight, before[path] + 2.0 * (b.float() @ a.float()))
    for name, weight in before.items():
        if name != path:
            assert torch.equal(encoder.get_submodule(name).weight, weight)


def test_loading_merges_adapters_and_leaves_plain_modules():
    task = TASKS["rte"]
    models = loading.load_task_models(None, [task])
    model = models.model(task)
    names = [type(m).__name__ for m in model.modules()]
    assert not any("lora" in n.lower() or "peft" in n.lower() for n in names)
    assert all(type(m) is torch.nn.Linear for m in model.modules() if "Linear" in type(m).__name__)
    assert models.name(task).startswith("embedded-lora@") and models.notes == []
    # The merged weights differ from the packaged encoder's: the adapter is really applied.
    base = loading.load_task_models(None, [task])  # a second load gives the same weights (deterministic)
    q = "encoder.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(dict(model.named_parameters())[q], dict(base.model(task).named_parameters())[q])
    from transformers import AutoModel
    from harness.models.embedded import embedded_model_dir
    packaged = AutoModel.from_pretrained(embedded_model_dir())
    assert not torch.equal(dict(model.named_parameters())[q],
                           dict(packaged.named_parameters())["encoder.layer.0.attention.self.query.weight"])


@pytest.mark.parametrize("name", [t.name for t in GLUE_TASKS])
def test_no_evaluated_row_ever_trained_an_adapter(name):
    """Rows that trained an adapter are excluded from evaluation, and the bundled sample's evaluation rows
    never trained one."""
    task = TASKS[name]
    adapter = ad.load_adapter(task.config)
    sample = pd.read_parquet(SAMPLE_DIR / task.config / f"{task.split}.parquet")
    if adapter.train_split == task.split:
        assert not set(sample["idx"]) & set(adapter.train_idx.tolist())
    # Whatever the evaluation rows are, the model excludes the training rows of its own split.
    models = loading.EmbeddedDefault.__new__(loading.EmbeddedDefault)
    models._excluded = {task.config: (adapter.train_split, adapter.train_idx)}
    excluded = models.excluded_idx(task)
    expected = adapter.train_idx if adapter.train_split == task.split else np.array([], np.int64)
    np.testing.assert_array_equal(excluded, expected)
    if task.config in ("qqp", "mnli", "qnli"):  # trained on at most half of a validation split
        assert adapter.train_split.startswith("validation") and len(adapter.train_idx) > 0


def test_fine_tuned_default_scores_on_the_sample():
    """The shipped RTE adapter beats the majority class on the bundled sample (the probe did not: 0.513)."""
    from harness.execution.forward import predict
    from harness.tasks.encoding import encode

    task = TASKS["rte"]
    models = loading.load_task_models(None, [task])
    rows = DataSource.parse("sample").load(task)
    encoded = encode(task, rows, models.tokenizer(task), models.max_length(task))
    logits = predict(models.model(task), encoded, progress=False)
    accuracy = task.score(encoded.labels, task.predictions(logits))["accuracy"]
    majority = max(np.mean(encoded.labels == 0), np.mean(encoded.labels == 1))
    assert accuracy > majority
