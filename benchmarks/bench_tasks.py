"""Task metric, agreement with dense and attention fidelity per backend × GLUE task (``track_*``).

One harness run in ``setup_cache`` measures every backend on every task (the first ``TRACK_LIMIT`` examples
of the bundled sample); the ``track_*`` methods read its rows. An explicit selection (``ATTNBENCH_ASV_TASKS=1``
or ``ATTNBENCH_ASV_EXTENDED=1``): it costs far more per commit than the per-commit suite.
"""

from harness.tracking import TrackedRun

from .common import BACKENDS, TASK_QUALITY, TASKS, TRACK_LIMIT


class TaskQuality:
    params = (BACKENDS, TASKS)
    param_names = ["backend", "task"]
    #: asv keys stored results by this instead of a hash of the source: bump it only when what the benchmarks
    #: of this class measure, or their parameter names or order, change (see docs/reference/asv-suite.md).
    version = "1"
    timeout = 3600  # setup_cache: one evaluation of every backend on every task
    processes = 1  # the values are deterministic; asv's default second round would only double the time

    def setup_cache(self):
        return TrackedRun.measure(BACKENDS, TASKS, limit=TRACK_LIMIT)

    def setup(self, run, backend, task):
        run.require(backend)

    def track_metric(self, run, backend, task):
        return run.main_metric(backend, task)

    track_metric.unit = "score"
    track_metric.category = "quality"
    track_metric.direction = "higher"

    def track_agreement(self, run, backend, task):
        return run.value(backend, task, "agreement")

    track_agreement.unit = "ratio"
    track_agreement.category = "agreement"
    track_agreement.direction = "higher"

    def track_attention_cosine(self, run, backend, task):
        return run.value(backend, task, "attn_cosine_mean")

    track_attention_cosine.unit = "cosine"
    track_attention_cosine.category = "fidelity"
    track_attention_cosine.direction = "higher"


if not TASK_QUALITY:  # an explicit selection: ATTNBENCH_ASV_TASKS=1 (or ATTNBENCH_ASV_EXTENDED=1)
    del TaskQuality
