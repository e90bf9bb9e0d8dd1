"""int8 FBGEMM GEMM against fp32 torch.matmul at attention shapes (Q·Kᵀ per batch × head)."""

from harness.kernels_bench import GemmCase, speedup_int8_vs_fp32


class Gemm:
    """``(batch·heads, seq, head_dim) × (batch·heads, seq, head_dim)ᵀ``, packing and checks included."""

    params = (["int8-fbgemm", "fp32-matmul"], [12, 96], [128, 512], [32, 64], [1, 2])
    param_names = ["impl", "batch_heads", "seq", "head_dim", "threads"]
    number = 1
    repeat = (3, 20, 10.0)

    def setup(self, impl, batch_heads, seq, head_dim, threads):
        self.case = GemmCase.create(impl, batch_heads, seq, head_dim, threads)

    def time_gemm(self, impl, batch_heads, seq, head_dim, threads):
        self.case.run()


class GemmSpeedup:
    """int8/fp32 speed ratio measured side by side (interleaved) inside one benchmark process."""

    params = ([12, 96], [128, 512], [32, 64], [1, 2])
    param_names = ["batch_heads", "seq", "head_dim", "threads"]
    timeout = 120

    def track_int8_speedup(self, batch_heads, seq, head_dim, threads):
        return speedup_int8_vs_fp32(batch_heads, seq, head_dim, threads)

    track_int8_speedup.unit = "x"


from .common import EXTENDED  # noqa: E402

if not EXTENDED:  # per commit, bench_commit.CommitGemm covers one shape; the grids are the extended selection
    del Gemm, GemmSpeedup
