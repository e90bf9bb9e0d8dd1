"""``attnbench tasks``: the registered tasks with their data and metrics."""

from __future__ import annotations

import argparse

from .options import registry as _registry


def run(args: argparse.Namespace) -> int:
    from ..listing_cache import cached_listing

    print(cached_listing("tasks", _tasks_text, refresh=args.refresh), end="")
    return 0


def _tasks_text() -> tuple[str, bool]:
    registry = _registry()
    lines = []
    for name, entry in registry.tasks.items():
        task = entry.task
        kind = "regression" if task.is_regression else f"{task.num_labels} classes"
        metrics = ", ".join(m.name for m in task.metrics)
        lines.append(f"{name:8s} {task.dataset}/{task.config} [{task.split}]  {kind}; metrics: {metrics}"
                     f"  ({task.description}; plugin {entry.plugin.name})")
    return "\n".join(lines) + "\n", not registry.failures


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``tasks`` command's options."""
    p = sub.add_parser("tasks", help="list tasks with data source and metrics")
    p.add_argument("--refresh", action="store_true", help="rebuild the listing cached for this environment")
    p.set_defaults(func=run)
