"""Running a model over an encoded split and comparing predictions with the dense reference."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..devices import Placement, move_batch, synchronize
from ..tasks.encoding import EncodedSplit


def logits_of(output: object) -> torch.Tensor:
    """Logits from a transformers output (``.logits``) or a plain tensor."""
    return output.logits if hasattr(output, "logits") else output


@dataclass
class PassStats:
    """What one pass over a split cost: wall time, time inside the model, tokens real and padded."""

    wall_time: float = 0.0
    model_time: float = 0.0
    tokens: int = 0
    padded_tokens: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.wall_time if self.wall_time else float("nan")

    @property
    def padding_waste(self) -> float:
        """Share of the tokens fed to the model that are padding."""
        return 1 - self.tokens / self.padded_tokens if self.padded_tokens else float("nan")

    @property
    def outside_model(self) -> float:
        """Share of the wall time spent outside the model's forward (batching, copies, bookkeeping)."""
        return 1 - self.model_time / self.wall_time if self.wall_time else float("nan")


def predict(model: torch.nn.Module, encoded: EncodedSplit, *, max_tokens: int | None = None,
            eval_batch_size: int | None = None, forward_kwargs: dict | None = None, desc: str | None = None,
            progress: bool = True, stats: PassStats | None = None, placement: Placement | None = None) -> np.ndarray:
    """Logits for every example, in the split's order, from length-sorted batches under ``inference_mode``.

    Batches hold at most ``max_tokens`` padded tokens and ``eval_batch_size`` examples. Pass a
    :class:`PassStats` to have the pass's cost recorded in it. With a CUDA ``placement`` the batches are moved
    to the device and the device is synchronised before the model time is read.
    """
    out: np.ndarray | None = None
    forward_kwargs = forward_kwargs or {}
    batches = encoded.batch_rows(max_tokens, eval_batch_size)
    stats = stats if stats is not None else PassStats()
    started = time.perf_counter()
    with torch.inference_mode():
        for rows in tqdm(batches, desc=desc, unit="batch", leave=False, disable=not progress):
            batch = move_batch(encoded.collate(rows), placement)
            before = time.perf_counter()
            logits = logits_of(model(**batch, **forward_kwargs))
            synchronize(placement)
            stats.model_time += time.perf_counter() - before
            stats.padded_tokens += batch["input_ids"].numel()
            logits = logits.float().cpu().numpy()
            if out is None:
                out = np.empty((len(encoded), logits.shape[-1]), dtype=np.float32)
            out[rows] = logits
    stats.wall_time += time.perf_counter() - started
    stats.tokens += encoded.n_tokens
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
