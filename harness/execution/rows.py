"""Tidy result rows: the fields every row of a run shares, and one row per measured value."""

from __future__ import annotations

import json
from typing import Any

from ..backends.contract import ResolvedBackend
from ..store.schema import check_vocabulary
from ..provenance import cpu_facts, git_commit, library_versions, machine_id


def process_fields(threads: int) -> dict[str, Any]:
    """Fields that describe the process that measures: commit, machine, CPU, threads, library versions.

    Computed where the measurement runs, so rows from a remote worker carry that worker's machine.
    """
    commit = git_commit()
    return {"source": "harness", "commit": commit.sha, "dirty": commit.dirty, "machine": machine_id(),
            "cpu": json.dumps(cpu_facts(), sort_keys=True), "threads": threads,
            "versions": json.dumps(library_versions(), sort_keys=True)}


def row(common: dict[str, Any], backend: ResolvedBackend, category: str, metric: str, value: float, unit: str,
        direction: str, *, facts: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """One tidy row: ``common`` run fields, the backend's identity, the measured value, and ``fields``.

    ``extra`` (JSON) holds the backend's :meth:`~harness.Backend.run_facts` plus ``facts`` of the measurement.
    """
    check_vocabulary(category, direction, where=f"row {metric!r}")
    extra = {**backend.run_facts(), **(facts or {})}
    return {**common, "plugin": backend.plugin, "plugin_dist": backend.plugin_dist,
            "plugin_version": backend.plugin_version, "backend": backend.spec, "backend_name": backend.name,
            "backend_params": backend.params_json, "category": category, "metric": metric, "value": float(value),
            "unit": unit, "direction": direction, "extra": json.dumps(extra, sort_keys=True) if extra else None,
            **fields}
