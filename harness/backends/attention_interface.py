"""Attaching a backend's attention function to a transformers model.

transformers (5.x) looks attention functions up by ``config._attn_implementation`` in
``AttentionInterface`` — and, separately, builds the padding mask with the function registered under the
same name in ``AttentionMaskInterface``. A name registered only in the first receives
``attention_mask=None`` and silently attends to padding (verified with transformers 5.x: padding is then silently ignored), so both are always registered.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from .contract import ResolvedBackend

REFERENCE_IMPLEMENTATION = "sdpa"
_MASK_BUILDERS = {"bool": sdpa_mask, "additive": eager_mask}

AttentionFn = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def implementation_name(backend: ResolvedBackend) -> str:
    """The transformers implementation name of the backend's attention (``"sdpa"`` if it has none)."""
    part = backend.attention_part
    if part is None:
        return REFERENCE_IMPLEMENTATION
    # One name per configured instance: stateful backends must not share a registration.
    return f"attnbench:{part.spec}@{id(part):x}"


def attention_function(backend: ResolvedBackend) -> AttentionFn:
    """The callable that computes attention for this backend (transformers' SDPA if it has none).

    It refuses q/k/v of a dtype outside the backend's declared ``dtypes`` with a ``TypeError`` that names them,
    before the backend sees them (one tuple lookup per call).
    """
    part = backend.attention_part
    if part is None:
        return sdpa_attention_forward
    inner, dtypes, spec = part.attention, tuple(part.dtypes), part.spec

    def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        if query.dtype not in dtypes or key.dtype != query.dtype or value.dtype != query.dtype:
            raise TypeError(f"backend {spec!r} takes query, key and value of one dtype among "
                            f"{', '.join(str(d).removeprefix('torch.') for d in dtypes)}; got "
                            f"{', '.join(str(t.dtype).removeprefix('torch.') for t in (query, key, value))}")
        return inner(module, query, key, value, attention_mask, *args, **kwargs)

    return attention


def attach(model: torch.nn.Module, backend: ResolvedBackend) -> str:
    """Register the backend's attention and mask builder with transformers and select it on ``model``.

    ``model`` is a transformers ``PreTrainedModel`` or any module with ``set_attn_implementation``.
    Returns the implementation name.
    """
    name = implementation_name(backend)
    if name != REFERENCE_IMPLEMENTATION:
        AttentionInterface.register(name, attention_function(backend))
        AttentionMaskInterface.register(name, _MASK_BUILDERS[backend.mask_kind])
    model.set_attn_implementation(name)
    return name


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention modules of a transformers model (those that call the attention interface), in order."""
    return [m for m in model.modules() if hasattr(m, "scaling") and hasattr(m, "is_causal")]
