"""A complete third-party attnbench backend: dense SDPA computed in bfloat16 (or float16).

torch and transformers are imported inside the method that computes, so that ``attnbench backends``
lists this plugin without importing them.
"""

from harness import Backend, Param, hookimpl


class LowPrecisionSDPA(Backend):
    name = "bf16-sdpa"
    description = "SDPA with query, key and value rounded to a 16-bit float format"
    params = (Param("dtype", str, "bfloat16", "16-bit format", choices=("bfloat16", "float16")),)
    dtypes = ("float32", "bfloat16", "float16")
    devices = ("cpu", "cuda")

    def attention(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        import torch
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        # round to the 16-bit format, then back to the input's own dtype (the output keeps it)
        dtype, original = getattr(torch, self.values["dtype"]), query.dtype
        query, key, value = (t.to(dtype).to(original) for t in (query, key, value))
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      scaling=scaling, dropout=dropout, **kwargs)


@hookimpl
def register_backends(register):
    register(LowPrecisionSDPA)
