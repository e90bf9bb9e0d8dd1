"""The dense reference backend: transformers' own SDPA or eager attention, unchanged.

``dense`` (SDPA) is the reference every other backend is compared with; ``dense:impl=eager`` is the
matmul–softmax–matmul of BERT's eager path and agrees with SDPA to about 1e-6.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from harness import Backend, Param, hookimpl

if TYPE_CHECKING:  # transformers is imported when a backend is configured: listing plugins stays torch-free
    import torch


class Dense(Backend):
    name = "dense"
    description = "dense attention as transformers computes it (the reference)"
    params = (Param("impl", str, "sdpa", "PyTorch scaled_dot_product_attention or BERT's eager path",
                    choices=("sdpa", "eager")),)
    dtypes = ("float32", "float64", "bfloat16", "float16")
    devices = ("cpu", "cuda")

    def check_values(self) -> None:
        if self.values["impl"] == "sdpa":
            from transformers.integrations.sdpa_attention import sdpa_attention_forward as forward

            self.mask_kind = "bool"
        else:
            from transformers.models.bert.modeling_bert import eager_attention_forward as forward

            self.mask_kind = "additive"
        self._forward = forward

    def attention(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                  **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        groups = getattr(module, "num_key_value_groups", 1)
        if self.values["impl"] == "sdpa" and isinstance(groups, int) and groups > 1 and key.shape[1] == query.shape[1]:
            # The harness hands every backend key/value heads repeated to the query's (grouped-query attention);
            # transformers' SDPA repeats them itself by the module's num_key_value_groups: give it the originals.
            key, value = key[:, ::groups], value[:, ::groups]
        return self._forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


@hookimpl
def register_backends(register: Callable[[type[Backend]], None]) -> None:
    register(Dense)
