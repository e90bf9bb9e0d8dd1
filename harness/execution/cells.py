"""A run as a set of cells, and which of them the store already holds.

Two kinds of cell: an *eval* cell (one backend on one task: task metrics, agreement with the reference,
attention fidelity, throughput of the pass) and a *speed* cell (one backend at one shape: latency and
memory). Each finished cell is written to the store as one file, atomically, tagged with the cell id and
the run's *plan id* — a hash of everything that defines the results. A file exists only for a complete
cell, so resuming a plan means running the cells whose ids are not in the store yet.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..store.parquet import read_results


@dataclass(frozen=True)
class EvalCell:
    backend: str  # canonical spec
    task: str

    @property
    def id(self) -> str:
        return f"eval/{self.task}/{self.backend}"


@dataclass(frozen=True)
class SpeedCell:
    backend: str
    batch_size: int
    seq_len: int
    threads: int

    @property
    def id(self) -> str:
        return f"speed/{self.batch_size}x{self.seq_len}/t{self.threads}/{self.backend}"


def plan_id(definition: dict[str, Any]) -> str:
    """A stable hash of a run's definition (canonical JSON)."""
    return hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()[:16]


def completed_cells(store: Path | str | None, plan: str) -> tuple[str | None, set[str]]:
    """``(run id, ids of the finished cells)`` of the latest run of ``plan`` in the store (``(None, set())``)."""
    if store is None:
        return None, set()
    rows = read_results(store)
    rows = rows[rows["plan_id"] == plan]
    if rows.empty:
        return None, set()
    run_id = rows.sort_values("timestamp")["run_id"].iloc[-1]
    return run_id, set(rows.loc[rows["run_id"] == run_id, "cell_id"].dropna())
