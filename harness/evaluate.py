"""Running a model over an encoded split and comparing predictions with the dense reference."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .encoding import EncodedSplit


def logits_of(output: object) -> torch.Tensor:
    """Logits from a transformers output (``.logits``) or a plain tensor."""
    return output.logits if hasattr(output, "logits") else output


def predict(model: torch.nn.Module, encoded: EncodedSplit, batch_size: int, forward_kwargs: dict | None = None,
            *, desc: str | None = None, progress: bool = True) -> np.ndarray:
    """Logits for every example, in the split's order, from length-sorted batches under ``inference_mode``."""
    out: np.ndarray | None = None
    forward_kwargs = forward_kwargs or {}
    total = -(-len(encoded) // batch_size)
    with torch.inference_mode():
        for positions, batch in tqdm(encoded.batches(batch_size), total=total, desc=desc, unit="batch",
                                     leave=False, disable=not progress):
            logits = logits_of(model(**batch, **forward_kwargs)).float().numpy()
            if out is None:
                out = np.empty((len(encoded), logits.shape[-1]), dtype=np.float32)
            out[positions] = logits
    if out is None:
        raise ValueError("cannot predict on an empty split")
    return out


def agreement(reference: np.ndarray, logits: np.ndarray, regression: bool) -> dict[str, float]:
    """How close a backend's outputs are to the dense reference on the same inputs.

    ``agreement`` (classification only) is the share of identical predicted classes (1 - flip rate);
    ``max_abs_logit_diff`` / ``mean_abs_logit_diff`` compare the raw outputs.
    """
    diff = np.abs(reference.astype(np.float64) - logits.astype(np.float64))
    result = {"max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean())}
    if not regression:
        result["agreement"] = float(np.mean(reference.argmax(-1) == logits.argmax(-1)))
    return result
