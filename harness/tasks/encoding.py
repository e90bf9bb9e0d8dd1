"""Tokenized task splits and length-sorted, dynamically padded batches.

Tokenization goes through ``datasets.Dataset.map``, so it is cached on disk (Arrow files) per split
content, tokenizer and maximum length: a task is tokenized once, not per backend and not per run, and a
split whose rows change is tokenized again (the key is the rows' content hash, never a path or a time). The token ids are kept flat with row offsets, as Arrow stores them, and batches are
padded with vectorised NumPy indexing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import datasets
import numpy as np
import torch

from ..errors import DataError
from ..paths import cache_dir
from .contract import Task


@dataclass
class EncodedSplit:
    """Token ids of every example, flat (``ids[offsets[i]:offsets[i+1]]`` is example ``i``), with labels and
    the dataset's ``idx`` column."""

    ids: np.ndarray
    type_ids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    idx: np.ndarray
    pad_token_id: int = 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1] - self.offsets[0])

    def batch_rows(self, max_tokens: int | None = None, max_examples: int | None = None) -> list[np.ndarray]:
        """Example positions per batch: longest first, each batch at most ``max_tokens`` padded tokens and
        ``max_examples`` examples (at least one example per batch)."""
        order = np.argsort(-self.lengths, kind="stable")
        lengths = self.lengths[order]
        batches, start = [], 0
        while start < len(order):
            width = max(int(lengths[start]), 1)  # the first example of a batch is its longest
            count = len(order) - start
            if max_tokens:
                count = min(count, max(1, max_tokens // width))
            if max_examples:
                count = min(count, max_examples)
            batches.append(order[start:start + count])
            start += count
        return batches

    def batches(self, max_tokens: int | None = None, max_examples: int | None = None
                ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """Yield ``(example positions, model inputs)`` for :meth:`batch_rows`."""
        for rows in self.batch_rows(max_tokens, max_examples):
            yield rows, self.collate(rows)

    def collate(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Pad the examples at ``rows`` to the longest of them."""
        starts, lengths = self.offsets[rows], self.lengths[rows]
        width = int(lengths.max())
        positions = starts[:, None] + np.arange(width)[None, :]
        mask = np.arange(width)[None, :] < lengths[:, None]
        positions = np.where(mask, positions, 0)
        input_ids = np.where(mask, self.ids[positions], self.pad_token_id).astype(np.int64)
        type_ids = np.where(mask, self.type_ids[positions], 0).astype(np.int64)
        return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask.astype(np.int64)),
                "token_type_ids": torch.from_numpy(type_ids)}

    def padded_tokens(self, max_tokens: int | None = None, max_examples: int | None = None) -> int:
        """Tokens the batches of :meth:`batch_rows` feed the model, padding included."""
        return int(sum(len(rows) * self.lengths[rows].max() for rows in self.batch_rows(max_tokens, max_examples)))

    def subset(self, positions: np.ndarray) -> "EncodedSplit":
        positions = np.asarray(positions, dtype=np.int64)
        lengths = self.lengths[positions]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        take = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in positions]) \
            if len(positions) else np.array([], dtype=np.int64)
        return EncodedSplit(self.ids[take], self.type_ids[take], offsets, self.labels[positions],
                            self.idx[positions], self.pad_token_id)


def _tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    identity = backend.to_str() if backend is not None else repr(tokenizer)
    return hashlib.sha256(identity.encode()).hexdigest()


def tokenize(task: Task, rows: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
    """``rows`` with ``input_ids`` and ``token_type_ids`` columns instead of the text, cached by ``datasets``.

    Pairs are encoded as one sequence (``[CLS] a [SEP] b [SEP]``), truncated to ``max_length``.
    """
    fields = list(task.text_fields)

    def tokenize_batch(batch: dict) -> dict:
        return tokenizer(*[batch[f] for f in fields], truncation=True, max_length=max_length,
                         return_token_type_ids=True)

    fingerprint = hashlib.sha256("\0".join([rows._fingerprint, _tokenizer_fingerprint(tokenizer), str(max_length),
                                            *fields]).encode()).hexdigest()[:16]
    drop = [c for c in rows.column_names if c in fields or c == "attention_mask"]
    cache_file = None
    if not rows.cache_files:  # rows read into memory (harness.tasks.data.read_parquet_rows): cache here
        directory = cache_dir() / "tokenized"
        directory.mkdir(parents=True, exist_ok=True)
        cache_file = str(directory / f"{fingerprint}.arrow")
    return rows.map(tokenize_batch, batched=True, batch_size=2000, remove_columns=drop, new_fingerprint=fingerprint,
                    cache_file_name=cache_file, desc=f"tokenize {task.name}")


def _flat(column) -> tuple[np.ndarray, np.ndarray]:
    chunked = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    offsets = chunked.offsets.to_numpy().astype(np.int64)
    return chunked.values.to_numpy(), offsets


def from_tokenized(task: Task, tokenized: datasets.Dataset, pad_token_id: int) -> EncodedSplit:
    """An :class:`EncodedSplit` over the Arrow columns of :func:`tokenize`'s output (no copies per example)."""
    table = tokenized.data.table if tokenized._indices is None else tokenized.flatten_indices().data.table
    ids, offsets = _flat(table.column("input_ids"))
    if "token_type_ids" in table.column_names:
        type_ids, _ = _flat(table.column("token_type_ids"))
    else:
        type_ids = np.zeros_like(ids)
    start = offsets[0]
    labels = table.column(task.label_field).to_numpy()
    idx = table.column("idx").to_numpy() if "idx" in table.column_names else np.arange(len(labels))
    return EncodedSplit(ids[start:offsets[-1]], type_ids[start:offsets[-1]], offsets - start,
                        labels.astype(np.float32 if task.is_regression else np.int64), idx.astype(np.int64),
                        pad_token_id)


def encode(task: Task, rows: datasets.Dataset, tokenizer, max_length: int) -> EncodedSplit:
    """Tokenize (cached) and load a split as an :class:`EncodedSplit`.

    :raises DataError: the rows lack a text column or the label column of ``task``.
    """
    missing = [c for c in (*task.text_fields, task.label_field) if c not in rows.column_names]
    if missing:
        raise DataError(f"task {task.name!r}: the data has no column(s) {', '.join(map(repr, missing))} (it has "
                        f"{', '.join(rows.column_names)}); the task reads text from {', '.join(task.text_fields)} "
                        f"and labels from {task.label_field!r}")
    return from_tokenized(task, tokenize(task, rows, tokenizer, max_length), tokenizer.pad_token_id or 0)


def fixed_shape_inputs(encoded: EncodedSplit, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    """A ``batch_size × seq_len`` batch of real tokens with no padding, for latency measurements.

    Each row concatenates the split's tokens (cycling) until it is ``seq_len`` long, so every shape is
    measured on real token statistics and the same input for every backend.
    """
    stream = encoded.ids[encoded.offsets[0]:encoded.offsets[-1]].astype(np.int64)
    need = batch_size * seq_len
    stream = np.tile(stream, -(-need // len(stream)))[:need]
    input_ids = torch.from_numpy(stream.reshape(batch_size, seq_len).copy())
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "token_type_ids": torch.zeros_like(input_ids)}
