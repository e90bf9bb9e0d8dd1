"""Where task data comes from: the bundled sample (offline default), a local directory, or the hub.

All three go through Hugging Face ``datasets``. A local directory is laid out as
``<config>/<split>.parquet`` (the layout of the Hugging Face Parquet export of ``nyu-mll/glue``).
The source actually used is recorded with every result (:attr:`DataSource.label`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import datasets

from ..errors import DataError
from .contract import Task

SAMPLE_DIR = Path(__file__).resolve().parent / "glue_sample"


@dataclass(frozen=True)
class DataSource:
    """``kind`` is ``"sample"``, ``"dir"`` or ``"hub"``; ``path`` is the directory for the first two."""

    kind: str
    path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> "DataSource":
        """``sample``, ``hub`` or a directory path (``~`` expanded). Raises :class:`DataError`."""
        if text == "sample":
            return cls("sample", SAMPLE_DIR)
        if text == "hub":
            return cls("hub")
        path = Path(text).expanduser().resolve()
        if not path.is_dir():
            raise DataError(f"--data {text!r}: no such directory; give 'sample', 'hub' or a directory laid out as "
                            "<task>/<split>.parquet (e.g. ../shared/data/glue)")
        return cls("dir", path)

    @cached_property
    def label(self) -> str:
        """What results record as ``data_source``: ``sample@<manifest hash>``, ``hub:<dataset>`` or ``dir:<path>``."""
        if self.kind == "sample":
            digest = hashlib.sha256((SAMPLE_DIR / "MANIFEST.json").read_bytes()).hexdigest()[:12]
            return f"sample@{digest}"
        if self.kind == "hub":
            return "hub"
        return f"dir:{self.path}"

    def load(self, task: Task, split: str | None = None) -> datasets.Dataset:
        """Rows of ``split`` (default: the task's evaluation split) as a ``datasets.Dataset``."""
        split = split or task.split
        if self.kind == "hub":
            try:
                return datasets.load_dataset(task.dataset, task.config, split=split)
            except Exception as exc:
                raise DataError(f"cannot load {task.dataset}/{task.config} split {split!r} from the Hugging Face hub "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                "offline, use --data sample or --data DIR") from None
        file = self.path / task.config / f"{split}.parquet"
        if not file.is_file():
            raise DataError(f"task {task.name!r}: {file} not found; the data directory must hold "
                            f"<task>/<split>.parquet files, e.g. {task.config}/{split}.parquet")
        try:
            return datasets.Dataset.from_parquet(str(file))
        except Exception as exc:
            raise DataError(f"task {task.name!r}: cannot read {file}: {type(exc).__name__}: {exc}") from None


def sample_manifest() -> dict:
    """The bundled sample's ``MANIFEST.json``: source split and sha256 of every file (see tools/make_glue_sample.py)."""
    return json.loads((SAMPLE_DIR / "MANIFEST.json").read_text())
