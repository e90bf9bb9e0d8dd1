"""The plugin API of attnbench: pluggy markers and hook specifications.

A plugin is any module or object with functions decorated by :data:`hookimpl` whose names match the
hooks below. Built-in plugins (``plugins/*``, ``plugins.glue``) and third-party plugins (installed
packages exposing an entry point in the group ``attnbench.backends``) are registered the same way.

Each hook's docstring is its contract.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from .backends.contract import Backend
    from .tasks.contract import Task

PROJECT_NAME = "attnbench"
#: The entry-point group of plugins, attnbench's own and third-party ones, backends and tasks alike.
ENTRY_POINT_GROUP = "attnbench.plugins"
#: The group of earlier versions, still read (third-party packages may declare it).
LEGACY_ENTRY_POINT_GROUPS: tuple[str, ...] = ("attnbench.backends",)

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_backends(register: Callable[[type["Backend"]], None]) -> None:
    """Register attention backends.

    Called once per plugin manager, when the registry is first built.

    :param register: call it once per backend with a *subclass* of :class:`harness.Backend` (not an
        instance): ``register(MyBackend)``. The class must set ``name`` (lower-case letters, digits and
        ``-``; unique across all plugins), ``description`` and, if it takes parameters, ``params``
        (a tuple of :class:`harness.Param`, each with a valid default). ``register`` validates the
        class at once and raises :class:`harness.PluginError` naming this plugin if something is wrong;
        a plugin that raises here is reported and skipped, the other plugins still load.

    Return nothing.
    """


@hookspec
def register_tasks(register: Callable[["Task"], None]) -> None:
    """Register evaluation tasks (the built-in plugin ``plugins.glue`` registers the nine GLUE tasks).

    Called once per plugin manager, when the registry is first built.

    :param register: call it once per task with a :class:`harness.Task` instance. Task names must be
        unique across plugins; ``register`` raises :class:`harness.PluginError` naming this plugin on a
        duplicate or a malformed task.

    Return nothing.
    """
