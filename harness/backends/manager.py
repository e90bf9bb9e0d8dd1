"""The plugin manager factory: built-in plugins and third-party entry points, through the same hooks.

Third-party packages declare, in their ``pyproject.toml``::

    [project.entry-points."attnbench.backends"]
    my-backend = "my_package.plugin"

The environment variable ``ATTNBENCH_PLUGINS`` pins which third-party plugins load: a comma-separated
list of entry-point names (empty: none). Unset, every installed plugin loads. Built-ins always load.

A plugin that fails to import or register never takes the harness down: the failure is recorded as a
:class:`PluginFailure` (plugin name, distribution, error) and every other plugin still works.

Two installed distributions that declare the same entry-point name in the group are a clash: which one
Python would find first depends on ``sys.path`` order, so *neither* loads and one failure names both
distributions (uninstall one, or have one rename its entry point). A distribution whose metadata lacks a
name or a version is recorded with :data:`UNKNOWN` in its place and otherwise loads normally.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from importlib import metadata

import pluggy

from .. import hookspecs

#: Built-in plugin modules, registered exactly like third-party plugins.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "plugins.glue",
    "plugins.dense",
    "plugins.dynamic_quant",
    "plugins.topk",
    "plugins.fbgemm_int8",
)

PLUGINS_ENV = "ATTNBENCH_PLUGINS"
#: Recorded for a distribution name or version that the installed metadata does not state.
UNKNOWN = "unknown"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or registered."""

    plugin: str
    dist: str
    error: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} (distribution {self.dist}) failed: {self.error}"


def _format_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def distribution_identity(dist: object | None) -> tuple[str, str]:
    """``(name, version)`` of an installed distribution, each :data:`UNKNOWN` when its metadata lacks it.

    ``dist`` is an ``importlib.metadata.Distribution``, pluggy's ``DistFacade`` around one, or ``None``
    (an entry point without a distribution). Never raises: missing metadata is recorded, not fatal.
    """
    if dist is None:
        return UNKNOWN, UNKNOWN
    try:
        name = dist.metadata["Name"]
    except Exception:  # no METADATA file at all, or an unreadable one
        name = None
    try:
        version = dist.version
    except Exception:
        version = None
    return (name.strip() if isinstance(name, str) and name.strip() else UNKNOWN,
            version.strip() if isinstance(version, str) and version.strip() else UNKNOWN)


def _builtin_dist() -> tuple[str, str]:
    try:
        return "attnbench", metadata.version("attnbench")
    except metadata.PackageNotFoundError:
        return "attnbench", "0+unknown"


def allowed_entry_points(env: dict[str, str] | None = None) -> set[str] | None:
    """Names of third-party plugins allowed by ``ATTNBENCH_PLUGINS``; ``None`` means all."""
    value = (os.environ if env is None else env).get(PLUGINS_ENV)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def get_plugin_manager(*, entry_points: bool = True, extra_plugins: tuple[object, ...] = (),
                       env: dict[str, str] | None = None) -> tuple[pluggy.PluginManager, list[PluginFailure]]:
    """Build a plugin manager with the built-ins, ``extra_plugins`` and (optionally) installed entry points.

    Returns the manager and the list of plugins that failed to load. Nothing is global: call it again for
    a fresh manager (tests do); the CLI builds one per process.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    failures: list[PluginFailure] = []
    dist, _ = _builtin_dist()
    for module_name in DEFAULT_PLUGINS:
        try:
            pm.register(importlib.import_module(module_name), name=module_name)
        except Exception as exc:  # a broken built-in (e.g. missing optional dependency) must not stop the rest
            failures.append(PluginFailure(module_name, dist, _format_error(exc)))
    for plugin in extra_plugins:
        pm.register(plugin)
    if entry_points:
        failures += _load_entry_points(pm, allowed_entry_points(env))
    return pm, failures


def _load_entry_points(pm: pluggy.PluginManager, allowed: set[str] | None) -> list[PluginFailure]:
    failures = []
    found: dict[str, list[metadata.EntryPoint]] = {}
    for ep in metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
        found.setdefault(ep.name, []).append(ep)
    for name, eps in sorted(found.items()):
        if allowed is not None and name not in allowed:
            continue
        dists = sorted({" ".join(distribution_identity(ep.dist)) + f" ({ep.value})" for ep in eps})
        if len(eps) > 1:
            pm.set_blocked(name)  # neither loads: which one would win depends on sys.path order
            failures.append(PluginFailure(name, " and ".join(d.rsplit(" (", 1)[0] for d in dists),
                                          f"entry point name {name!r} in group {hookspecs.ENTRY_POINT_GROUP!r} is "
                                          f"declared by {len(eps)} distributions: {'; '.join(dists)}; neither is "
                                          "loaded. Uninstall all but one, or rename one of the entry points"))
            continue
        dist = " ".join(distribution_identity(eps[0].dist))
        try:
            # pluggy's own loader, one entry point at a time so that one failure cannot hide the others.
            pm.load_setuptools_entrypoints(hookspecs.ENTRY_POINT_GROUP, name=name)
            pm.check_pending()
        except Exception as exc:
            plugin = pm.get_plugin(name)
            if plugin is not None:
                pm.unregister(plugin)
            failures.append(PluginFailure(name, dist, _format_error(exc)))
    for name in sorted((allowed or set()) - set(found)):
        failures.append(PluginFailure(name, "not installed",
                                      f"{PLUGINS_ENV} names {name!r} but no installed distribution provides an "
                                      f"entry point of that name in group {hookspecs.ENTRY_POINT_GROUP!r}"))
    return failures


def plugin_distribution(pm: pluggy.PluginManager, plugin: object) -> tuple[str, str]:
    """(distribution name, version) of a registered plugin (:data:`UNKNOWN` where its metadata lacks one);
    built-ins belong to attnbench."""
    for loaded, dist in pm.list_plugin_distinfo():
        if loaded is plugin:
            return distribution_identity(dist)
    return _builtin_dist()
