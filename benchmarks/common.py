"""Parameters shared by the asv benchmarks. Backends are spec strings, exactly as on the CLI."""

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
#: The full grids of ``bench_speed`` and ``bench_kernels`` run only with ``ATTNBENCH_ASV_EXTENDED=1``; by default
#: ``asv run`` is the per-commit suite (``bench_commit``, ``bench_tasks``). See docs/reference/asv-suite.md.
EXTENDED = __import__("os").environ.get("ATTNBENCH_ASV_EXTENDED", "") not in ("", "0")
