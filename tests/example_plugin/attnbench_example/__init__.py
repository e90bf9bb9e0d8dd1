"""A complete third-party attnbench backend: dense SDPA computed in bfloat16 (or float16)."""

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from harness import Backend, Param, hookimpl


class LowPrecisionSDPA(Backend):
    name = "bf16-sdpa"
    description = "SDPA with query, key and value rounded to a 16-bit float format"
    params = (Param("dtype", str, "bfloat16", "16-bit format", choices=("bfloat16", "float16")),)

    def attention(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        dtype = getattr(torch, self.values["dtype"])
        query, key, value = (t.to(dtype).to(query.dtype) for t in (query, key, value))
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      scaling=scaling, dropout=dropout, **kwargs)


@hookimpl
def register_backends(register):
    register(LowPrecisionSDPA)
