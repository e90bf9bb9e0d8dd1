"""``fbgemm-int8``: self-attention whose matmuls run in int8 on FBGEMM (``cython_kernels.attention_u8s8``).

Per (sequence, head), fused in blocks of 64 query rows on the CPU cores (``docs/explanation/fused-int8.md``):

1. Q as 7-bit u8 per token (asymmetric: the 7-bit rule that keeps FBGEMM exact on AVX2 without VNNI),
   K as s8 per token (symmetric); ``smooth_k`` first subtracts K's mean over the valid tokens, which
   shifts every score of a row by the same constant (softmax unchanged in exact arithmetic) and lets
   the grid fit the spread of K. Q·Kᵀ is exact in int32, then dequantized and scaled.
2. Softmax in float; masked keys get weight exactly 0, as in the dense backend. Any bool mask works: key
   padding, and masks that differ between query rows (ModernBERT's sliding-window layers, causal masks);
   a query row with no allowed key gives 0, as dense SDPA does. ``kernel=online`` (the default) walks the
   keys in blocks with an online softmax (running maximum and sum, as FlashAttention) and writes each
   output row once; ``kernel=materialize`` computes whole score rows per block of 64 queries first.
3. P·V: ``pv=int8`` quantizes V to s8 per token and folds V's token scales into the softmax weights,
   which are coded as u8 with one scale per query row, large enough that any two adjacent codes sum to
   at most 258 (so that AVX2's int16 pair sums cannot saturate), then runs an int32 GEMM; ``pv=float``
   keeps P and V in float (MKL sgemm).

Every scale comes from one sequence's own tokens, so a result never depends on the other sequences of
the batch or on the amount of padding. Accuracy against dense SDPA, measured on MiniLM's real attention
inputs (6 layers, GLUE text, padded batches and seq 128/512): relative L2 error of the attention output
1.1–1.7 % (``pv=int8``) and 0.8–1.0 % (``pv=float``), mean cosine per layer ≥ 0.9997 and ≥ 0.9999
(tests assert < 3 % / 2 % and > 0.9995 / 0.9998 on random inputs). Two alternatives were measured and
dropped: P coded with a fixed scale of 1/255 (16 % off at seq 512, where most weights are below 1/510)
and V per channel (an outlier token coarsens its channel for all others: a worst-token cosine of 0.85).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from harness import Backend, Param, hookimpl

if TYPE_CHECKING:  # torch and the kernels are imported on use: listing plugins stays torch-free
    import torch


def bool_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The attention mask as the kernel takes it: ``(batch, 1, q_len, k_len)`` bool, True = attend, or None.

    Any bool mask is honoured: key padding, sliding windows (ModernBERT's local layers), causal masks.

    :raises TypeError: if the mask is not a bool (batch, 1, q_len, k_len) tensor (an additive float mask
        means the backend was wired without its bool mask builder).
    """
    if attention_mask is None:
        return None
    import torch

    if attention_mask.dtype != torch.bool or attention_mask.ndim != 4 or attention_mask.shape[1] != 1:
        raise TypeError("fbgemm-int8 expects a bool (batch, 1, q_len, k_len) attention mask (mask_kind='bool'), "
                        f"got {attention_mask.dtype} {tuple(attention_mask.shape)}")
    return attention_mask


class FbgemmInt8(Backend):
    name = "fbgemm-int8"
    description = "int8 Q·Kᵀ on FBGEMM (7-bit Q, 8-bit K per token), float softmax, P·V in int8 or float"
    params = (
        Param("pv", str, "int8", "P·V in int8 (u8 weights, s8 V per token) or in float", choices=("int8", "float")),
        Param("smooth_k", bool, False, "subtract K's mean over the valid tokens before quantizing"),
        Param("kernel", str, "online", "online softmax over key blocks, or whole score rows per block of queries",
              choices=("online", "materialize")),
    )

    devices = ("cpu",)  # FBGEMM is a CPU library

    def check_values(self) -> None:
        from cython_kernels import attention_u8s8

        self._kernel = attention_u8s8

    @classmethod
    def unavailable_reason(cls, values=None) -> str | None:
        import cython_kernels as ck

        return None if ck.AVAILABLE else ck.UNAVAILABLE_REASON

    def run_facts(self) -> dict[str, str]:
        """The FBGEMM ISA in use (VNNI or AVX2) and whether the kernel packs K and V itself."""
        import cython_kernels as ck

        if not ck.AVAILABLE:
            return {}
        return {"fbgemm_isa": str(ck.cpu_features()["isa"]), "fbgemm_own_packing": str(ck.own_packing()).lower()}

    def attention(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                  **kwargs) -> tuple[torch.Tensor, None]:
        if dropout:
            raise NotImplementedError("fbgemm-int8 is an inference backend: attention dropout is not supported")
        out = self._kernel(query, key, value, mask=bool_mask(attention_mask), scaling=scaling,
                           pv=self.values["pv"], smooth_k=self.values["smooth_k"], kernel=self.values["kernel"])
        return out, None


@hookimpl
def register_backends(register: Callable[[type[Backend]], None]) -> None:
    register(FbgemmInt8)
