"""int8 GEMM kernels for attention on FBGEMM (from the torch CPU wheel).

Three layers, as in pyarrow: ``_fbgemm.pxd`` declares FBGEMM, the ``_gemm`` and
``_quant`` extensions are thin nogil loops, and this package (``ops``) checks
dtypes, shapes, layout and the 7-bit rule before calling them.

Importing never raises: when the extensions are missing, fail to load, or the
CPU lacks AVX2, ``AVAILABLE`` is False, ``UNAVAILABLE_REASON`` says why, and the
functions raise RuntimeError with that reason.

Typical Q @ K^T on per-head tensors (batch*heads, seq, head_dim)::

    qq, q_scale, q_zp = quantize_u7_asym(q, per="matrix")   # A: one scale per head
    kq, k_scale = quantize_s8_sym(k, per="row")             # B: one scale per key token
    scores = gemm_u8s8_f32(qq, kq, q_scale, q_zp, k_scale)  # float32 (B*H, seq, seq)

Whole self-attention with Q.K^T (and optionally P.V) in int8, fused per head::

    out = attention_u8s8(q, k, v, key_valid, pv="int8")    # (B, H, S, D) views -> (B, S, H, D)

Top-k sparse self-attention (int8 selection, exact softmax over the k chosen keys), fused per head::

    out = topk_attention_u8s8(q, k, v, key_valid, topk=16)  # (B, H, S, D) views -> (B, S, H, D)
    out = topk_attention_scores(q, k, v, key_valid, scores, topk=16)  # the same, keys ranked by given scores
"""

from .ops import (
    ATTENTION_PHASES,
    AVAILABLE,
    UNAVAILABLE_REASON,
    attention_u8s8,
    cpu_features,
    dequantize_s32,
    gemm_u8s8_f32,
    gemm_u8s8_s32,
    own_packing,
    quantize_s8_sym,
    quantize_u7_asym,
    TOPK_AVAILABLE,
    TOPK_PHASES,
    TOPK_UNAVAILABLE_REASON,
    topk_attention_scores,
    topk_attention_u8s8,
    topk_select,
)

__all__ = [
    "ATTENTION_PHASES",
    "AVAILABLE",
    "UNAVAILABLE_REASON",
    "attention_u8s8",
    "cpu_features",
    "dequantize_s32",
    "gemm_u8s8_f32",
    "gemm_u8s8_s32",
    "own_packing",
    "quantize_s8_sym",
    "quantize_u7_asym",
    "TOPK_AVAILABLE",
    "TOPK_PHASES",
    "TOPK_UNAVAILABLE_REASON",
    "topk_attention_scores",
    "topk_attention_u8s8",
    "topk_select",
]
