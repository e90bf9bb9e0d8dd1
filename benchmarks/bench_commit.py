"""The per-commit suite: every backend's attention core and whole forward at one shape, timed in one process,
their instruction counts under callgrind (one valgrind process) and the int8/fp32 GEMM ratio at one shape.

asv starts a fresh interpreter per benchmark parameter; these classes measure everything once in
``setup_cache`` (one process for the wall times, interleaved across backends; one valgrind process for the
instruction counts) and the ``track_*`` methods only read plain numbers (no torch import), so a commit costs
two measuring processes instead of one per backend × shape × benchmark. The full grids (``BackendSpeed``,
``Gemm``, ``GemmSpeedup`` over every shape and thread count) are the extended selection:
``ATTNBENCH_ASV_EXTENDED=1 asv run …`` (docs/reference/asv-suite.md).
"""

from .common import BACKENDS, EXTENDED

PARTS = ["attention_core", "forward"]


def _unavailable(cache, backend, part=None):
    if "error" in cache:
        raise NotImplementedError(cache["error"])
    if backend in cache["skipped"]:
        raise NotImplementedError(cache["skipped"][backend])
    if part is not None and (backend, part) not in cache["values"]:
        raise NotImplementedError(f"{backend} {part}: not measured per commit (ATTNBENCH_ASV_EXTENDED=1 measures it)")


class CommitSpeed:
    """Wall time per call, batch 8 × 128 tokens, one thread: all backends interleaved in one process
    (15 rounds after 2 warm-up rounds); ``track_vs_dense`` is the ratio to dense of the same rounds."""

    version = "commit-speed-1"
    params = (BACKENDS, PARTS)
    param_names = ["backend", "part"]
    processes = 1
    timeout = 1800

    def setup_cache(self):
        try:
            from harness.execution.sampling import time_interleaved
            from harness.speed import speed_case
        except ImportError as exc:  # a commit before the sampling API
            return {"error": f"not available in this version of attnbench: {exc}"}
        cases, skipped = {}, {}
        for backend in BACKENDS:
            try:
                case = speed_case(backend, seq_len=128, batch_size=8, threads=1)
            except NotImplementedError as exc:
                skipped[backend] = str(exc)
                continue
            for part in PARTS:
                cases[(backend, part)] = getattr(case, part)
        timings = time_interleaved(cases, repeats=15, warmup=2, number=None, min_time=0.02)
        return {"values": {key: t.median for key, t in timings.items()}, "skipped": skipped}

    def setup(self, cache, backend, part):
        # NotImplementedError in setup: asv reports the combination as skipped (n/a), not as failed
        _unavailable(cache, backend, part)
        _unavailable(cache, "dense", part)

    def track_seconds(self, cache, backend, part):
        return cache["values"][(backend, part)]

    track_seconds.unit = "seconds"
    track_seconds.category = "speed"
    track_seconds.direction = "lower"

    def track_vs_dense(self, cache, backend, part):
        return cache["values"][(backend, part)] / cache["values"][("dense", part)]

    track_vs_dense.unit = "x"
    track_vs_dense.category = "speed"
    track_vs_dense.direction = "lower"  # time ÷ dense's time: below 1 is faster


class CommitInstructions:
    """Instructions (callgrind ``Ir``) per call, batch 1 × 128 tokens, one thread, every backend in one
    valgrind process; skipped with the reason where valgrind is missing. The FBGEMM path under valgrind is
    AVX2 (it emulates no AVX-512). Per commit: every attention core and dense's whole forward (the other
    backends' forwards differ from it only in the core); every forward with ``ATTNBENCH_ASV_EXTENDED=1``."""

    version = "commit-instructions-1"
    params = (BACKENDS, PARTS)
    param_names = ["backend", "part"]
    processes = 1
    timeout = 3600

    def setup_cache(self):
        try:
            from harness.execution.instructions import InstructionsUnavailable, measure_instructions
        except ImportError as exc:
            return {"error": f"not available in this version of attnbench: {exc}"}
        try:
            # the whole forward of every backend is the extended selection (about 1.5 min CPU each under
            # callgrind here); per commit: every attention core and dense's forward
            counts = measure_instructions(BACKENDS, forward_for=None if EXTENDED else ["dense"])
        except InstructionsUnavailable as exc:
            return {"error": str(exc)}
        values = {(b, part): sorted(samples)[len(samples) // 2] for b, parts in counts.counts.items()
                  for part, samples in parts.items()}
        return {"values": values, "skipped": counts.skipped, "isa": counts.isa, "fbgemm_isa": counts.fbgemm_isa}

    def setup(self, cache, backend, part):
        # NotImplementedError in setup: asv reports the combination as skipped (n/a), not as failed
        _unavailable(cache, backend, part)

    def track_instructions(self, cache, backend, part):
        return cache["values"][(backend, part)]

    track_instructions.unit = "instructions"
    track_instructions.category = "instructions"
    track_instructions.direction = "lower"


class CommitGemm:
    """int8 FBGEMM / fp32 matmul speed ratio at one attention shape (12 × 128 × 64, one thread)."""

    version = "commit-gemm-1"
    processes = 1
    timeout = 300

    def track_int8_speedup(self):
        from harness.kernels_bench import speedup_int8_vs_fp32

        return speedup_int8_vs_fp32(12, 128, 64, 1)

    track_int8_speedup.unit = "x"
    track_int8_speedup.category = "speed"
    track_int8_speedup.direction = "higher"  # fp32 time ÷ int8 time
