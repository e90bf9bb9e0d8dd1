"""Tokenized task splits and length-sorted, dynamically padded batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import datasets
import numpy as np
import torch

from .tasks import Task


@dataclass
class EncodedSplit:
    """Token ids of every example (unpadded), with labels and the dataset's ``idx`` column."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray]
    labels: np.ndarray
    idx: np.ndarray
    pad_token_id: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """Yield ``(example positions, model inputs)``, longest examples first, each batch padded to its longest.

        Sorting by length keeps padding small; the longest batch comes first so memory peaks early.
        """
        order = np.argsort(-self.lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            yield rows, self.collate(rows)

    def collate(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        width = max(len(self.input_ids[i]) for i in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        token_type_ids = torch.zeros((len(rows), width), dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, i in enumerate(rows):
            n = len(self.input_ids[i])
            input_ids[j, :n] = torch.from_numpy(self.input_ids[i])
            token_type_ids[j, :n] = torch.from_numpy(self.token_type_ids[i])
            attention_mask[j, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}

    def subset(self, positions: np.ndarray) -> "EncodedSplit":
        return EncodedSplit([self.input_ids[i] for i in positions], [self.token_type_ids[i] for i in positions],
                            self.labels[positions], self.idx[positions], self.pad_token_id)


def encode(task: Task, rows: datasets.Dataset, tokenizer, max_length: int) -> EncodedSplit:
    """Tokenize a split with the (fast) tokenizer in one batched call; pairs are encoded as one sequence."""
    texts = [list(rows[field]) for field in task.text_fields]
    encoded = tokenizer(*texts, truncation=True, max_length=max_length, return_token_type_ids=True)
    return EncodedSplit(
        input_ids=[np.asarray(ids, dtype=np.int64) for ids in encoded["input_ids"]],
        token_type_ids=[np.asarray(ids, dtype=np.int64) for ids in encoded["token_type_ids"]],
        labels=np.asarray(list(rows["label"]), dtype=np.float32 if task.is_regression else np.int64),
        idx=np.asarray(list(rows["idx"]) if "idx" in rows.column_names else np.arange(len(rows)), dtype=np.int64),
        pad_token_id=tokenizer.pad_token_id or 0,
    )


def fixed_shape_inputs(encoded: EncodedSplit, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    """A ``batch_size × seq_len`` batch of real tokens with no padding, for latency measurements.

    Each row concatenates the split's examples (cycling) until it is ``seq_len`` long, so every shape is
    measured on real token statistics and the same input for every backend.
    """
    stream = np.concatenate(encoded.input_ids)
    need = batch_size * seq_len
    stream = np.tile(stream, -(-need // len(stream)))[:need]
    input_ids = torch.from_numpy(stream.reshape(batch_size, seq_len).copy())
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "token_type_ids": torch.zeros_like(input_ids)}
