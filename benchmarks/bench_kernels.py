"""int8 FBGEMM GEMM against fp32 torch.matmul at attention shapes (Q·Kᵀ per batch × head)."""

from harness.kernels_bench import GemmCase, speedup_int8_vs_fp32


class Gemm:
    """``(batch·heads, seq, head_dim) × (batch·heads, seq, head_dim)ᵀ``, packing and checks included."""

    params = (["int8-fbgemm", "fp32-matmul"], [12, 96], [128, 512], [32, 64], [1, 2])
    param_names = ["impl", "batch_heads", "seq", "head_dim", "threads"]
    #: asv keys stored results by this instead of a hash of the source: bump it only when what the benchmarks
    #: of this class measure, or their parameter names or order, change (see docs/reference/asv-suite.md).
    version = "1"
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
    #: asv keys stored results by this instead of a hash of the source: bump it only when what the benchmarks
    #: of this class measure, or their parameter names or order, change (see docs/reference/asv-suite.md).
    version = "1"
    timeout = 120

    def track_int8_speedup(self, batch_heads, seq, head_dim, threads):
        return speedup_int8_vs_fp32(batch_heads, seq, head_dim, threads)

    track_int8_speedup.unit = "x"
    track_int8_speedup.category = "speed"
    track_int8_speedup.direction = "higher"  # fp32 time ÷ int8 time


class TopkAttention:
    """The fused top-k kernel alone (``cython_kernels.topk_attention_u8s8``, per-head scales as
    ``topk:k=K,scorer=fbgemm``) on seeded random q/k/v of shape (batch 8, 12 heads, seq, head_dim)."""

    version = "1"
    params = ([16, 32], [128, 512], [32, 64], [1, 2])
    param_names = ["k", "seq", "head_dim", "threads"]
    number = 1
    repeat = (3, 20, 10.0)

    def setup(self, k, seq, head_dim, threads):
        import torch

        import cython_kernels as ck
        if not ck.TOPK_AVAILABLE:
            raise NotImplementedError(ck.TOPK_UNAVAILABLE_REASON)
        generator = torch.Generator().manual_seed(0)
        self.qkv = [torch.randn(8, 12, seq, head_dim, generator=generator) for _ in range(3)]
        self.fn = ck.topk_attention_u8s8

    def time_topk_attention(self, k, seq, head_dim, threads):
        q, kk, v = self.qkv
        self.fn(q, kk, v, topk=k, granularity="head", threads=threads)


class TopkRerankAttention(TopkAttention):
    """The fused top-k kernel with re-ranking (``topk:k=16,scorer=fbgemm,k_factor=F``: 16 · F candidates by the
    int8 scores, the 16 of largest exact score kept), same inputs as :class:`TopkAttention`."""

    version = "1"
    params = ([2, 3], [128, 512], [32, 64], [2])
    param_names = ["k_factor", "seq", "head_dim", "threads"]

    def setup(self, k_factor, seq, head_dim, threads):
        import inspect

        import cython_kernels as ck
        # asv runs today's suite on older commits: check before the inputs are made
        if ck.TOPK_AVAILABLE and "k_factor" not in inspect.signature(ck.topk_attention_u8s8).parameters:
            raise NotImplementedError("topk_attention_u8s8 has no k_factor in this version of attnbench")
        super().setup(16, seq, head_dim, threads)

    def time_topk_attention(self, k_factor, seq, head_dim, threads):
        q, kk, v = self.qkv
        self.fn(q, kk, v, topk=16, granularity="head", k_factor=k_factor, threads=threads)


from .common import EXTENDED  # noqa: E402

if not EXTENDED:  # per commit, bench_commit covers one shape; these grids are the extended selection
    del Gemm, GemmSpeedup, TopkAttention, TopkRerankAttention
