"""The embedded default's fine-tuned adapters: LoRA weights and a linear head per GLUE config, shipped as
package data (``harness/models/adapters/<config>.safetensors`` + ``MANIFEST.json`` with sha256).

They were trained by ``tools/train_adapters.py`` (``peft`` LoRA on the packaged MiniLM; see that tool for the
rank, targets, schedule, the rows each adapter trained on and the measured time). At load time they are
merged into plain ``nn.Linear`` weights in plain torch — ``W += scaling · B·A`` (Hu et al., "LoRA: Low-Rank
Adaptation of Large Language Models", 2021) — so ``peft`` is not a runtime dependency and every backend sees an
ordinary BERT encoder.

File format (safetensors): ``<module path in BertModel>.lora_A`` ``(r, in)`` and ``.lora_B`` ``(out, r)``
(float16) for every adapted Linear; ``head.weight`` ``(num_labels, features)`` and ``head.bias``
(float32); ``train_idx`` (int64: the ``idx`` of every row that trained the adapter). Metadata (strings):
``format``, ``config``, ``train_split``, ``rank``, ``alpha``, ``scaling``, ``pair``, ``base_model``,
``base_model_version``, ``seed``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelError

ADAPTER_DIR = Path(__file__).resolve().parent / "adapters"
FORMAT = "1"


@dataclass(frozen=True)
class Adapter:
    """One config's LoRA factors, scaling, head and the rows that trained it."""

    config: str
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]]   # module path -> (A (r, in), B (out, r))
    scaling: float
    head_weight: torch.Tensor                               # (num_labels, features) float32
    head_bias: torch.Tensor                                 # (num_labels,) float32
    pair: bool
    train_split: str
    train_idx: np.ndarray                                   # int64
    sha256: str

    def head(self) -> torch.nn.Linear:
        """The trained head as an ``nn.Linear``."""
        linear = torch.nn.Linear(self.head_weight.shape[1], self.head_weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(self.head_weight)
            linear.bias.copy_(self.head_bias)
        return linear


@lru_cache(maxsize=1)
def adapter_manifest() -> dict:
    """``MANIFEST.json`` of the shipped adapters (``{"files": {}}`` when none ship)."""
    path = ADAPTER_DIR / "MANIFEST.json"
    return json.loads(path.read_text()) if path.is_file() else {"files": {}}


def manifest_digest() -> str:
    """Short sha256 of the manifest: names the adapters' version in the model identifier of result rows."""
    path = ADAPTER_DIR / "MANIFEST.json"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8] if path.is_file() else "none"


def shipped_configs() -> list[str]:
    """The GLUE configs that have an adapter."""
    return sorted(name.removesuffix(".safetensors") for name in adapter_manifest()["files"])


def load_adapter(config: str) -> Adapter | None:
    """The adapter of ``config``, checked against its manifest sha256, or ``None`` when none ships.

    :raises ModelError: the file is missing, damaged or does not match the manifest (reinstall attnbench).
    """
    entry = adapter_manifest()["files"].get(f"{config}.safetensors")
    if entry is None:
        return None
    from safetensors import safe_open

    path = ADAPTER_DIR / f"{config}.safetensors"
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ModelError(f"adapter {path} listed in MANIFEST.json cannot be read ({exc}); reinstall attnbench") from None
    if digest != entry["sha256"]:
        raise ModelError(f"adapter {path} does not match MANIFEST.json (sha256 {digest[:12]}, expected "
                         f"{entry['sha256'][:12]}); reinstall attnbench or retrain with tools/train_adapters.py")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    if meta.get("format") != FORMAT:
        raise ModelError(f"adapter {path} has format {meta.get('format')!r}; this attnbench reads format {FORMAT}")
    lora = {key.removesuffix(".lora_A"): (tensors[key], tensors[key.removesuffix(".lora_A") + ".lora_B"])
            for key in tensors if key.endswith(".lora_A")}
    return Adapter(config, lora, float(meta["scaling"]), tensors["head.weight"].float(), tensors["head.bias"].float(),
                   meta["pair"] == "1", meta["train_split"], tensors["train_idx"].numpy().astype(np.int64), digest)


@torch.no_grad()
def merge_adapter(encoder: torch.nn.Module, adapter: Adapter) -> int:
    """Fold the LoRA factors into ``encoder``'s ``nn.Linear`` weights in place: ``W += scaling · (B @ A)``,
    computed in float32. Returns the number of merged layers.

    :raises ModelError: a module path of the adapter is not an ``nn.Linear`` of the right shape in ``encoder``.
    """
    for path, (a, b) in adapter.lora.items():
        try:
            linear = encoder.get_submodule(path)
        except AttributeError:
            linear = None
        delta = adapter.scaling * (b.float() @ a.float())
        if not isinstance(linear, torch.nn.Linear) or linear.weight.shape != delta.shape:
            raise ModelError(f"adapter {adapter.config}: {path} is not a Linear of shape {tuple(delta.shape)} in "
                             f"{type(encoder).__name__}; the adapters fit the packaged MiniLM only")
        linear.weight += delta.to(linear.weight.dtype)
    return len(adapter.lora)
