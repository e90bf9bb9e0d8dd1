"""Latency and memory of each backend at fixed shapes (``time_*``, ``peakmem_*``)."""

from harness.speed import speed_case

from .common import BACKENDS, EXTENDED


class BackendSpeed:
    """Whole forward and attention core of the embedded default, batch 8, per backend × seq_len × threads."""

    params = (BACKENDS, [128, 512], [1, 2])
    param_names = ["backend", "seq_len", "threads"]
    #: asv keys stored results by this instead of a hash of the source: bump it only when what the benchmarks
    #: of this class measure, or their parameter names or order, change (see docs/reference/asv-suite.md).
    version = "1"
    number = 1
    repeat = (3, 7, 10.0)  # 3 to 7 samples, at most ~10 s per parameter combination
    warmup_time = 0.3
    timeout = 300

    def setup(self, backend, seq_len, threads):
        self.case = speed_case(backend, seq_len=seq_len, batch_size=8, threads=threads)

    def time_forward(self, backend, seq_len, threads):
        self.case.forward()

    def time_attention_core(self, backend, seq_len, threads):
        self.case.attention_core()

    def peakmem_forward(self, backend, seq_len, threads):
        self.case.forward()


if not EXTENDED:  # per commit, bench_commit.CommitSpeed covers one shape; the grid is the extended selection
    del BackendSpeed
