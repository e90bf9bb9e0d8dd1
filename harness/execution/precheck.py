"""Checks of a run's request that need no torch: names, the number of cells, and the cell budget.

Importing torch and transformers takes seconds (far more on a busy machine). A misspelled backend,
parameter or task, or a grid far larger than intended, is answered before that: names are checked against
the listing of backends and tasks cached per environment (:mod:`harness.listing_cache`; built once, by
loading the plugins, when the environment changed), and cells are counted from the spec strings alone.
The runner checks everything again, fully (parameter values, availability), after loading the plugins.

This module imports nothing heavy.
"""

from __future__ import annotations

import json
import math
from typing import Iterable

from ..backends.spec import parse_spec
from ..errors import SpecError, UserError

#: Cells a run may have without ``--yes`` (``RunSpec.max_cells``).
DEFAULT_MAX_CELLS = 500


def grid_size(spec: str) -> int:
    """Concrete backends a spec string expands to (the product of its list lengths), without expanding it.

    :raises SpecError: the spec cannot be parsed.
    """
    return math.prod(len(value) for part in parse_spec(spec) for _, value in part.params if isinstance(value, tuple))


def count_cells(backends: Iterable[str], n_tasks: int, n_shapes: int, speed: bool = True) -> tuple[int, int]:
    """``(cells, backends)`` of a run: one eval cell per backend and task, one speed cell per backend and
    latency shape. Backends are counted as the grids expand, before duplicates are dropped (an upper bound)."""
    n_backends = sum(grid_size(spec) for spec in backends)
    return n_backends * (n_tasks + (n_shapes if speed else 0)), n_backends


def check_cell_budget(cells: int, n_backends: int, n_tasks: int, n_shapes: int, *, max_cells: int | None,
                      confirmed: bool) -> None:
    """Refuse a run of more than ``max_cells`` cells unless ``confirmed`` (``--yes``); ``None``: no limit.

    :raises UserError: naming the count, how it arises, and how to go on.
    """
    if confirmed or max_cells is None or cells <= max_cells:
        return
    raise UserError(f"this run has {cells:,} cells ({n_backends:,} backend(s) × ({n_tasks} task(s) + "
                    f"{n_shapes} speed shape(s))), more than {max_cells:,}; nothing was started. Narrow the "
                    "backend grid or the tasks, or pass --yes to run them all")


def names_listing() -> dict:
    """``{"backends": {name: {parameter: its summary}}, "tasks": [names and dataset configs], "task_names":
    [names]}`` of this environment,
    cached per environment (:func:`harness.listing_cache.cached_listing`); building it loads the plugins."""
    from ..listing_cache import cached_listing

    def build() -> tuple[str, bool]:
        from ..registry.registry import load_registry

        registry = load_registry()
        tasks = sorted({*registry.tasks, *(e.task.config for e in registry.tasks.values())})
        text = json.dumps({"backends": {name: {p.name: p.describe() for p in e.cls.params}
                                        for name, e in sorted(registry.backends.items())},
                           "tasks": tasks, "task_names": list(registry.tasks)})
        return text + "\n", not registry.failures

    return json.loads(cached_listing("names", build))


def check_names(backends: Iterable[str], tasks: Iterable[str] | None, listing: dict) -> None:
    """Refuse an unknown backend, backend parameter or task, with the valid names, as the registry would.

    :raises SpecError: a spec that cannot be parsed, an unknown backend or parameter.
    :raises UserError: an unknown task.
    """
    known = listing["backends"]
    for spec in backends:
        for part in parse_spec(spec):
            if part.name not in known:
                raise SpecError(f"unknown backend {part.name!r}; valid backends: {', '.join(sorted(known))}")
            for key, _ in part.params:
                if key not in known[part.name]:
                    takes = ", ".join(known[part.name].values()) or "no parameters"
                    raise SpecError(f"{part.name}: unknown parameter {key!r}; {part.name} takes {takes}")
    for name in tasks or ():
        if name not in listing["tasks"]:
            raise UserError(f"unknown task {name!r}; valid tasks: {', '.join(listing['task_names'])}")


def precheck_run(backends: list[str], tasks: list[str] | None, *, n_shapes: int, speed: bool,
                 max_cells: int | None, confirmed: bool) -> None:
    """What ``attnbench run`` checks before importing torch: backend, parameter and task names
    (:func:`check_names`), then the number of cells against ``max_cells`` (:func:`check_cell_budget`).

    :raises UserError: the first problem found.
    """
    listing = names_listing()
    check_names(backends, tasks, listing)
    n_tasks = len(dict.fromkeys(tasks)) if tasks else len(listing["task_names"])
    cells, n_backends = count_cells(backends, n_tasks, n_shapes, speed)
    check_cell_budget(cells, n_backends, n_tasks, n_shapes if speed else 0, max_cells=max_cells,
                      confirmed=confirmed)
