"""Parameters shared by the asv benchmarks. Backends are spec strings, exactly as on the CLI."""

import os as _os

#: Backends timed and tracked across commits (a backend unavailable on a machine is skipped by asv).
BACKENDS = [
    "dense",
    "dense:impl=eager",
    "dynamic-quant",
    "topk:k=16",
    "topk:k=16,scorer=fbgemm",
    "fbgemm-int8",
]
#: GLUE tasks tracked across commits (all ten splits; TRACK_LIMIT keeps a commit's benchmark run short).
TASKS = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli-m", "mnli-mm", "qnli", "rte", "wnli"]
#: Examples per task for the tracked metrics (the bundled sample holds up to 300).
TRACK_LIMIT = 100


def _flag(name: str) -> bool:
    return _os.environ.get(name, "") not in ("", "0")


#: ``asv run`` measures the per-commit suite by default (``bench_commit``: every backend's attention core and
#: forward, timed and counted under callgrind, and one GEMM ratio; minutes per commit). Two selections are
#: explicit, because they cost far more per commit (docs/reference/asv-suite.md):
#: ``ATTNBENCH_ASV_TASKS=1`` adds ``bench_tasks.TaskQuality`` (every backend evaluated on every task), and
#: ``ATTNBENCH_ASV_EXTENDED=1`` adds the full grids of ``bench_speed`` and ``bench_kernels`` and TaskQuality.
EXTENDED = _flag("ATTNBENCH_ASV_EXTENDED")
TASK_QUALITY = EXTENDED or _flag("ATTNBENCH_ASV_TASKS")
