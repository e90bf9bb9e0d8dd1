"""``dynamic-quant``: PyTorch dynamic int8 quantization of an encoder's ``nn.Linear`` layers; attention stays SDPA.

Weights are quantized once when the model copy is prepared (PyTorch's default dynamic qconfig: int8,
per-tensor); activations are quantized per batch at run time. ``modules`` picks which Linear layers: ``attention`` (Q/K/V and the attention
output projection), ``ffn`` (intermediate and output) or ``all`` (both). Task heads stay float.
"""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING, Callable

from harness import Backend, Param, hookimpl

if TYPE_CHECKING:  # torch is imported on use: listing plugins stays torch-free
    import torch

# torch 2.13 deprecates torch.ao.quantization (in favour of torchao) and quantized tensor creation. The API
# still works and is what this backend measures, so exactly these two warnings are expected and recorded in
# run_facts(); any other warning is passed on.
_EXPECTED_DEPRECATIONS = re.compile(r"torch\.ao\.quantization is deprecated|quantized tensor creation functions")
DEPRECATION_NOTE = "torch.ao.quantization.quantize_dynamic is deprecated in torch 2.13 (migration target: torchao)"


def linear_layers(model: torch.nn.Module, modules: str) -> set[str]:
    """Qualified names of the encoder Linear layers that ``modules`` selects, found from the model's attention
    calls (:func:`harness.backends.architecture.probe_attention`), whatever the architecture names them.

    Each module that calls the attention function lies in an encoder layer: its nearest enclosing module that
    is an item of a ``ModuleList`` (the layer stack every transformers encoder keeps). ``attention`` selects
    the Linear layers of the layer's branch that holds the attention module (BERT's
    ``attention.self.query/key/value`` and ``attention.output.dense``, ModernBERT's ``attn.Wqkv`` and
    ``attn.Wo``, EuroBERT's ``self_attn.*_proj``); ``ffn`` every other Linear layer of the encoder layer
    (BERT's ``intermediate.dense`` and ``output.dense``, ModernBERT's ``mlp.Wi`` and ``mlp.Wo``); ``all``
    both. Empty for a model whose attention calls cannot be observed (no ``config``, or attention outside
    transformers' attention interface).
    """
    import torch

    from harness.backends.architecture import probe_attention

    if not hasattr(model, "config"):
        return set()
    try:
        profile = probe_attention(model)
    except Exception:  # not a transformers model: nothing this backend recognises
        return set()
    modules_by_name = dict(model.named_modules())
    names = {id(m): name for name, m in modules_by_name.items()}
    linears = {name for name, m in modules_by_name.items() if isinstance(m, torch.nn.Linear)}
    selected: set[str] = set()
    for module in profile.modules:
        path = names.get(id(module))
        if not path:
            continue
        parts = path.split(".")
        # the encoder layer: the deepest prefix whose parent is a ModuleList; the branch: one level below it
        cut = next((i for i in range(len(parts) - 1, 0, -1)
                    if isinstance(modules_by_name.get(".".join(parts[:i])), torch.nn.ModuleList)), None)
        if cut is None:
            continue
        layer, branch = ".".join(parts[:cut + 1]), ".".join(parts[:cut + 2])
        attention = _inside(linears, branch)
        if modules in ("attention", "all"):
            selected |= attention
        if modules in ("ffn", "all"):
            selected |= _inside(linears, layer) - attention
    return selected


def _inside(names: set[str], prefix: str) -> set[str]:
    return {name for name in names if name == prefix or name.startswith(prefix + ".")}


class DynamicQuant(Backend):
    name = "dynamic-quant"
    description = "int8 dynamic quantization of nn.Linear (torch.ao quantize_dynamic); attention stays SDPA"
    params = (
        Param("modules", str, "all", "which Linear layers to quantize", choices=("all", "attention", "ffn")),
        Param("engine", str, "x86", "quantized engine (FBGEMM-based x86 or fbgemm)", choices=("x86", "fbgemm")),
    )

    devices = ("cpu",)  # torch.ao dynamic quantization has CPU kernels only

    @classmethod
    def unavailable_reason(cls, values=None) -> str | None:
        import torch

        missing = {"x86", "fbgemm"} - set(torch.backends.quantized.supported_engines)
        return f"this torch build lacks quantized engine(s) {', '.join(sorted(missing))}" if missing else None

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        import torch

        names = linear_layers(model, self.values["modules"])
        if not names:
            raise ValueError(f"dynamic-quant: no {self.values['modules']} Linear layers found around the attention "
                             f"modules of {type(model).__name__}")
        torch.backends.quantized.engine = self.values["engine"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = torch.ao.quantization.quantize_dynamic(model, qconfig_spec=names, dtype=torch.qint8,
                                                           inplace=True)
        for warning in caught:
            if not _EXPECTED_DEPRECATIONS.search(str(warning.message)):
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        return model

    def run_facts(self) -> dict[str, str]:
        return {"quantized_engine": self.values["engine"], "quantization": "quantize_dynamic qint8, default_dynamic_qconfig",
                "deprecation": DEPRECATION_NOTE}


@hookimpl
def register_backends(register: Callable[[type[Backend]], None]) -> None:
    register(DynamicQuant)
