"""The registry: every backend and task the loaded plugins registered, validated, with its origin.

Built from a plugin manager by calling each plugin's ``register_backends`` / ``register_tasks`` with a
``register`` callback that validates what it receives and names the plugin in every error. Hook
implementations are called one plugin at a time so that one failing plugin is reported and skipped
while every other plugin's backends and tasks stay available.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any

import pluggy

from ..backends.contract import Backend, PluginInfo, ResolvedBackend
from ..errors import ParamError, PluginError, SpecError, UserError
from .manager import PluginFailure, _format_error, get_plugin_manager, plugin_distribution
from ..backends.spec import parse_spec
from ..tasks.contract import Task

_BACKEND_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass(frozen=True)
class BackendEntry:
    cls: type[Backend]
    plugin: PluginInfo


@dataclass(frozen=True)
class TaskEntry:
    task: Task
    plugin: PluginInfo


@dataclass
class Registry:
    """Backends and tasks by name, plus the plugins that failed to load or register."""

    backends: dict[str, BackendEntry] = field(default_factory=dict)
    tasks: dict[str, TaskEntry] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)

    # -- building -------------------------------------------------------------------------------------
    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager, failures: list[PluginFailure] = ()) -> "Registry":
        registry = cls(failures=list(failures))
        registry._collect(pm, pm.hook.register_backends, registry._add_backend, registry.backends)
        registry._collect(pm, pm.hook.register_tasks, registry._add_task, registry.tasks)
        return registry

    def _collect(self, pm: pluggy.PluginManager, hook: Any, add: Any, table: dict) -> None:
        """Call one hook plugin by plugin; a plugin that raises adds nothing and is recorded as a failure."""
        for impl in hook.get_hookimpls():
            dist, version = plugin_distribution(pm, impl.plugin)
            info = PluginInfo(impl.plugin_name, dist, version)
            added: list[str] = []

            def register(obj: Any, info: PluginInfo = info, added: list[str] = added) -> None:
                added.append(add(obj, info))

            try:
                impl.function(*[{"register": register}[arg] for arg in impl.argnames])
            except Exception as exc:
                for name in added:
                    del table[name]
                self.failures.append(PluginFailure(info.name, f"{dist} {version}", _format_error(exc)))

    def _add_backend(self, obj: Any, plugin: PluginInfo) -> str:
        where = f"plugin {plugin.name!r} ({plugin.dist} {plugin.version})"
        if not (inspect.isclass(obj) and issubclass(obj, Backend)):
            raise PluginError(f"{where} registered {obj!r}; register() takes a subclass of harness.Backend "
                              "(the class itself, not an instance)")
        if not isinstance(obj.name, str) or not _BACKEND_NAME.match(obj.name):
            raise PluginError(f"{where}: backend class {obj.__name__} has name {obj.name!r}; a name is lower-case "
                              "letters, digits and '-'")
        if obj.name in self.backends:
            other = self.backends[obj.name].plugin
            raise PluginError(f"{where}: backend name {obj.name!r} is already registered by plugin "
                              f"{other.name!r} ({other.dist})")
        if not isinstance(obj.params, tuple):
            raise PluginError(f"{where}: {obj.__name__}.params must be a tuple of harness.Param")
        seen = set()
        for param in obj.params:
            try:
                if param.name in seen:
                    raise ValueError(f"parameter {param.name!r} declared twice")
                seen.add(param.name)
                param.check_declaration()
            except (AttributeError, ValueError) as exc:
                raise PluginError(f"{where}: backend {obj.name!r} has a bad parameter spec: {exc}") from None
        if obj.mask_kind not in ("bool", "additive"):
            raise PluginError(f"{where}: backend {obj.name!r} has mask_kind {obj.mask_kind!r}; "
                              "use 'bool' or 'additive'")
        self.backends[obj.name] = BackendEntry(obj, plugin)
        return obj.name

    def _add_task(self, obj: Any, plugin: PluginInfo) -> str:
        where = f"plugin {plugin.name!r} ({plugin.dist} {plugin.version})"
        if not isinstance(obj, Task):
            raise PluginError(f"{where} registered {obj!r}; register() takes a harness.Task")
        if obj.name in self.tasks:
            raise PluginError(f"{where}: task name {obj.name!r} is already registered by plugin "
                              f"{self.tasks[obj.name].plugin.name!r}")
        self.tasks[obj.name] = TaskEntry(obj, plugin)
        return obj.name

    # -- lookups ----------------------------------------------------------------------------------------
    def task(self, name: str) -> Task:
        try:
            return self.tasks[name].task
        except KeyError:
            raise UserError(f"unknown task {name!r}; valid tasks: {', '.join(self.tasks)}") from None

    def resolve(self, spec: str) -> ResolvedBackend:
        """Resolve a concrete spec (``"dynamic-quant+topk:k=8"``) to configured backends.

        Raises :class:`SpecError` / :class:`ParamError` with the valid names or parameters listed.
        """
        parts, plugins = [], []
        for part in parse_spec(spec):
            if part.is_grid():
                raise SpecError(f"{spec!r} is a parameter grid; expand it first (harness.expand_grid)")
            entry = self.backends.get(part.name)
            if entry is None:
                raise SpecError(f"unknown backend {part.name!r}; valid backends: {', '.join(sorted(self.backends))}")
            declared = {p.name: p for p in entry.cls.params}
            values = {}
            for key, text in part.params:
                if key not in declared:
                    takes = ", ".join(p.describe() for p in entry.cls.params) or "no parameters"
                    raise ParamError(f"{part.name}: unknown parameter {key!r}; {part.name} takes {takes}")
                values[key] = declared[key].parse(text, backend=part.name)
            parts.append(entry.cls(**values))
            plugins.append(entry.plugin)
        return ResolvedBackend(tuple(parts), tuple(plugins))


def load_registry(*, entry_points: bool = True, extra_plugins: tuple[object, ...] = (),
                  env: dict[str, str] | None = None) -> Registry:
    """Build a fresh plugin manager and registry (see :func:`harness.registry.manager.get_plugin_manager`)."""
    pm, failures = get_plugin_manager(entry_points=entry_points, extra_plugins=extra_plugins, env=env)
    return Registry.from_plugin_manager(pm, failures)
