"""Quality figures of one harness run in a form asv's ``track_*`` benchmarks can hold and query."""

from __future__ import annotations

from dataclasses import dataclass, field



@dataclass
class TrackedRun:
    """Values by (backend spec, task, metric) from one run, plus the backends that could not run (picklable)."""

    values: dict[tuple[str, str, str], float] = field(default_factory=dict)
    main_metrics: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @classmethod
    def measure(cls, backends: list[str], tasks: list[str], *, limit: int | None = None,
                model: list[str] | None = None) -> "TrackedRun":
        """Evaluate every available backend on every task once (no timing, nothing stored)."""
        # Imported here: asv unpickles a TrackedRun in a fresh interpreter per benchmark parameter, which
        # then needs only this module, not torch or transformers.
        from .registry.registry import load_registry
        from .execution.runner import RunSpec, run
        from .execution.speed_cases import unavailable

        registry = load_registry()
        reasons = {b: unavailable(registry, b) for b in backends}
        skipped = {b: reason for b, reason in reasons.items() if reason}
        available = [b for b in backends if b not in skipped]
        spec = RunSpec(backends=available, tasks=tasks, model=model, limit=limit, store=None, progress=False,
                       speed=False)
        rows = run(spec, registry, log=lambda message: None).rows
        rows = rows[rows["task"].notna()]
        values = {(r.backend, r.task, r.metric): float(r.value) for r in rows.itertuples()}
        mains = {name: registry.task(name).main_metric for name in tasks}
        canonical = {b: registry.resolve(b).spec for b in available}
        values = {(original, task, metric): value for original, spec in canonical.items()
                  for (b, task, metric), value in values.items() if b == spec}
        return cls(values, mains, skipped)

    def require(self, backend: str) -> None:
        """Raise ``NotImplementedError`` (asv: skipped) if the backend could not run on this machine."""
        if backend in self.skipped:
            raise NotImplementedError(self.skipped[backend])

    def value(self, backend: str, task: str, metric: str) -> float:
        """The recorded value, or NaN where the metric does not apply (e.g. agreement of the reference)."""
        return self.values.get((backend, task, metric), float("nan"))

    def main_metric(self, backend: str, task: str) -> float:
        return self.value(backend, task, self.main_metrics[task])
