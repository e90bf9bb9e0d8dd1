"""A complete third-party attnbench backend: dense SDPA computed in bfloat16 (or float16)."""

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from harness import Backend, Param, hookimpl


class LowPrecisionSDPA(Backend):
    name = "bf16-sdpa"
    description = "SDPA with query, key and value rounded to a 16-bit float format"
    params = (Param("dtype", str, "bfloat16", "16-bit format", choices=("bfloat16", "float16")),)
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    devices = ("cpu", "cuda")

    def attention(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        # round to the 16-bit format, then back to the input's own dtype (the output keeps it)
        dtype, original = getattr(torch, self.values["dtype"]), query.dtype
        query, key, value = (t.to(dtype).to(original) for t in (query, key, value))
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      scaling=scaling, dropout=dropout, **kwargs)


@hookimpl
def register_backends(register):
    register(LowPrecisionSDPA)
