"""The plugin manager factory: attnbench's own plugins and third-party ones, found the same way.

Every plugin, built-in or not, is an entry point of group ``attnbench.plugins`` (backends and tasks alike).
A third-party package declares, in its ``pyproject.toml``::

    [project.entry-points."attnbench.plugins"]
    my-backend = "my_package.plugin"

attnbench's own plugins are the entry points of its own distribution (its ``pyproject.toml`` lists them; a
source tree that is not installed is read from that file), so adding a built-in needs a module in
``plugins/`` and one line there, nothing in the harness. The group of earlier versions,
``attnbench.backends``, is still read.

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

OWN_DISTRIBUTION = "attnbench"


def builtin_plugins() -> tuple[str, ...]:
    """Module names of attnbench's own plugins: the ``attnbench.plugins`` entry points of its distribution,
    or of ``pyproject.toml`` beside the source tree when attnbench runs uninstalled (``PYTHONPATH``)."""
    try:
        dist = metadata.distribution(OWN_DISTRIBUTION)
        found = {ep.name: ep.value for ep in dist.entry_points if ep.group == hookspecs.ENTRY_POINT_GROUP}
    except metadata.PackageNotFoundError:
        found = {}
    if not found:
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        if pyproject.is_file():
            declared = tomllib.loads(pyproject.read_text()).get("project", {}).get("entry-points", {})
            found = dict(declared.get(hookspecs.ENTRY_POINT_GROUP, {}))
    return tuple(found[name] for name in sorted(found))


#: attnbench's own plugin modules, registered exactly like third-party plugins (:func:`builtin_plugins`).
DEFAULT_PLUGINS: tuple[str, ...] = builtin_plugins()

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


def _third_party_entry_points() -> dict[str, list[tuple[str, metadata.EntryPoint]]]:
    """``{name: [(group, entry point), ...]}`` of every installed plugin but attnbench's own, in the current group
    and the legacy ones; one distribution declaring the same plugin in both groups counts once."""
    found: dict[str, list[tuple[str, metadata.EntryPoint]]] = {}
    for group in (hookspecs.ENTRY_POINT_GROUP, *hookspecs.LEGACY_ENTRY_POINT_GROUPS):
        for ep in metadata.entry_points(group=group):
            if distribution_identity(ep.dist)[0] == OWN_DISTRIBUTION or ep.value in DEFAULT_PLUGINS:
                continue  # a built-in, already registered
            same = [e for _, e in found.get(ep.name, []) if e.value == ep.value
                    and distribution_identity(e.dist) == distribution_identity(ep.dist)]
            if not same:
                found.setdefault(ep.name, []).append((group, ep))
    return found


def _load_entry_points(pm: pluggy.PluginManager, allowed: set[str] | None) -> list[PluginFailure]:
    failures = []
    found = _third_party_entry_points()
    for name, entries in sorted(found.items()):
        if allowed is not None and name not in allowed:
            continue
        eps = [ep for _, ep in entries]
        dists = sorted({" ".join(distribution_identity(ep.dist)) + f" ({ep.value})" for ep in eps})
        if len(eps) > 1:
            pm.set_blocked(name)  # neither loads: which one would win depends on sys.path order
            failures.append(PluginFailure(name, " and ".join(d.rsplit(" (", 1)[0] for d in dists),
                                          f"entry point name {name!r} in group {hookspecs.ENTRY_POINT_GROUP!r} is "
                                          f"declared by {len(eps)} distributions: {'; '.join(dists)}; neither is "
                                          "loaded. Uninstall all but one, or rename one of the entry points"))
            continue
        group, ep = entries[0]
        dist = " ".join(distribution_identity(ep.dist))
        try:
            # pluggy's own loader, one entry point at a time so that one failure cannot hide the others.
            pm.load_setuptools_entrypoints(group, name=name)
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
