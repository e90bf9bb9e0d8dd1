"""The LoRA adapter files written by tools/train_adapters.py: format, manifest, and no evaluation row trained.

Pure safetensors/numpy/pandas (peft is not needed to load or merge adapters).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
ADAPTERS = REPO / "harness" / "models" / "adapters"
SAMPLE = REPO / "harness" / "tasks" / "glue_sample"
LAYER_MODULES = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                 "intermediate.dense", "output.dense"]
PAIR = {"cola": False, "sst2": False}
OUTPUTS = {"stsb": 1, "mnli": 3}

safetensors = pytest.importorskip("safetensors")
pytestmark = pytest.mark.skipif(not (ADAPTERS / "MANIFEST.json").exists(), reason="no adapters built")


def _manifest() -> dict:
    return json.loads((ADAPTERS / "MANIFEST.json").read_text())


def _files() -> list[str]:
    return sorted(_manifest()["files"]) if (ADAPTERS / "MANIFEST.json").exists() else []


@pytest.mark.parametrize("name", _files())
def test_adapter_file(name: str) -> None:
    from safetensors import safe_open

    entry = _manifest()["files"][name]
    path = ADAPTERS / name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    assert path.stat().st_size == entry["size"]
    config = entry["config"]
    with safe_open(path, "np") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["format"] == "1" and meta["config"] == config and meta["train_split"] == entry["train_split"]
    rank, alpha = int(meta["rank"]), int(meta["alpha"])
    assert float(meta["scaling"]) == alpha / rank
    pair = meta["pair"] == "1"
    assert pair == PAIR.get(config, True)
    for layer in range(6):
        for module in LAYER_MODULES:
            a = tensors[f"encoder.layer.{layer}.{module}.lora_A"]
            b = tensors[f"encoder.layer.{layer}.{module}.lora_B"]
            assert a.dtype == np.float16 and b.dtype == np.float16
            assert a.shape[0] == rank and b.shape[1] == rank
    assert len(tensors) == 6 * len(LAYER_MODULES) * 2 + 3
    head = tensors["head.weight"]
    assert head.dtype == np.float32 and head.shape == (OUTPUTS.get(config, 2), 1536 if pair else 384)
    assert tensors["head.bias"].shape == (head.shape[0],)
    train_idx = tensors["train_idx"]
    assert train_idx.dtype == np.int64 and len(train_idx) == entry["n_train"] == len(np.unique(train_idx))
    # Rows of the bundled sample's evaluation file of the training split never train an adapter.
    sample_eval = SAMPLE / config / f"{meta['train_split']}.parquet"
    if meta["train_split"].startswith("validation"):
        assert not np.isin(train_idx, pd.read_parquet(sample_eval, columns=["idx"])["idx"]).any()


def test_total_size_small() -> None:
    assert sum(p.stat().st_size for p in ADAPTERS.iterdir()) < 8_000_000
