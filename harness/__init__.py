"""attnbench: an asv-style benchmark harness for attention backends of BERT-family models on GLUE.

Layers, lowest first, each importing only the layers below it (import-linter holds them; the contract is in
``pyproject.toml``): :mod:`harness.errors` and the other base modules → :mod:`harness.devices` →
:mod:`harness.tasks` (tasks, metrics, data) → :mod:`harness.models` and :mod:`harness.backends` (the backend
contract, spec strings, transformers wiring) → :mod:`harness.registry` (plugin manager, registry) and
:mod:`harness.stats` → :mod:`harness.store` (schema, Parquet store, asv import) → :mod:`harness.execution`
(runner, cells, measurement) → the asv entry points (:mod:`harness.speed`, :mod:`harness.tracking`,
:mod:`harness.kernels_bench`) → :mod:`harness.analysis` (compare, change points, report) → :mod:`harness.cli`.

The plugin API — everything a third-party backend or task plugin may import — is :data:`PLUGIN_API`;
every other name is internal and may move between versions. :mod:`harness.testing` is the plugin author's
kit: the contract's rules as checks a plugin's own test suite runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public names and the module that defines each. They are imported on first use (PEP 562), so that
# ``import harness`` and light submodules (``harness.tracking``, ``harness.hookspecs``) do not pay for torch,
# transformers and scikit-learn: asv starts a fresh interpreter for every parameter of every benchmark.
_EXPORTS = {
    "Backend": "backends.contract", "PluginInfo": "backends.contract", "ResolvedBackend": "backends.contract",
    "DataError": "errors", "ModelError": "errors", "ParamError": "errors", "PluginError": "errors",
    "SpecError": "errors", "StoreError": "errors", "UserError": "errors",
    "hookimpl": "hookspecs", "hookspec": "hookspecs",
    "REQUIRED": "backends.params", "Param": "backends.params",
    "DEFAULT_PLUGINS": "registry.manager", "get_plugin_manager": "registry.manager",
    "Registry": "registry.registry", "load_registry": "registry.registry",
    "RunResult": "execution.runner", "RunSpec": "execution.runner", "run": "execution.runner",
    "expand_grid": "backends.spec", "parse_spec": "backends.spec",
    "read_results": "store.parquet", "write_rows": "store.parquet",
    "Metric": "tasks.contract", "Task": "tasks.contract",
}

#: The names a third-party plugin may import from ``harness`` (stable across versions), plus the metric
#: functions of :mod:`harness.tasks.metrics` for task plugins. Hooks: :mod:`harness.hookspecs`.
PLUGIN_API: tuple[str, ...] = ("hookimpl", "Backend", "Param", "REQUIRED", "ParamError", "Task", "Metric",
                               "DataError", "ModelError")

if TYPE_CHECKING:
    from .backends.contract import Backend, PluginInfo, ResolvedBackend
    from .errors import DataError, ModelError, ParamError, PluginError, SpecError, StoreError, UserError
    from .hookspecs import hookimpl, hookspec
    from .backends.params import REQUIRED, Param
    from .registry.manager import DEFAULT_PLUGINS, get_plugin_manager
    from .registry.registry import Registry, load_registry
    from .execution.runner import RunResult, RunSpec, run
    from .backends.spec import expand_grid, parse_spec
    from .store.parquet import read_results, write_rows
    from .tasks.contract import Metric, Task


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "Backend", "DEFAULT_PLUGINS", "PLUGIN_API", "DataError", "Metric", "ModelError", "Param", "ParamError", "PluginError",
    "PluginInfo", "REQUIRED", "Registry", "ResolvedBackend", "RunResult", "RunSpec", "SpecError", "StoreError", "Task",
    "UserError", "expand_grid", "get_plugin_manager", "hookimpl", "hookspec", "load_registry", "parse_spec",
    "read_results", "run", "write_rows",
]
