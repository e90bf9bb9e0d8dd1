"""attnbench: an asv-style benchmark harness for attention backends of BERT-family models on GLUE.

What a third-party backend needs is importable from here: :data:`hookimpl`, :class:`Backend`,
:class:`Param` (and :class:`Task`, :class:`Metric` for new tasks).
"""

from .backend import Backend, PluginInfo, ResolvedBackend
from .errors import DataError, ModelError, ParamError, PluginError, SpecError, StoreError, UserError
from .hookspecs import hookimpl, hookspec
from .params import REQUIRED, Param
from .plugins import DEFAULT_PLUGINS, get_plugin_manager
from .registry import Registry, load_registry
from .runner import RunResult, RunSpec, run
from .spec import expand_grid, parse_spec
from .store import read_results, write_rows
from .tasks import Metric, Task

__all__ = [
    "Backend", "DEFAULT_PLUGINS", "DataError", "Metric", "ModelError", "Param", "ParamError", "PluginError",
    "PluginInfo", "REQUIRED", "Registry", "ResolvedBackend", "RunResult", "RunSpec", "SpecError", "StoreError", "Task",
    "UserError", "expand_grid", "get_plugin_manager", "hookimpl", "hookspec", "load_registry", "parse_spec",
    "read_results", "run", "write_rows",
]
