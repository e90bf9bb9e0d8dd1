"""``dynamic-quant``: PyTorch dynamic int8 quantization of BERT's ``nn.Linear`` layers; attention stays SDPA.

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

_ATTENTION = re.compile(r"(^|\.)attention\.(self\.(query|key|value)|output\.dense)$")
_FFN = re.compile(r"(^|\.)layer\.\d+\.(intermediate\.dense|output\.dense)$")

# torch 2.13 deprecates torch.ao.quantization (in favour of torchao) and quantized tensor creation. The API
# still works and is what this backend measures, so exactly these two warnings are expected and recorded in
# run_facts(); any other warning is passed on.
_EXPECTED_DEPRECATIONS = re.compile(r"torch\.ao\.quantization is deprecated|quantized tensor creation functions")
DEPRECATION_NOTE = "torch.ao.quantization.quantize_dynamic is deprecated in torch 2.13 (migration target: torchao)"


def linear_layers(model: torch.nn.Module, modules: str) -> set[str]:
    """Qualified names of the encoder Linear layers that ``modules`` selects."""
    import torch

    wanted = {"attention": (_ATTENTION,), "ffn": (_FFN,), "all": (_ATTENTION, _FFN)}[modules]
    return {name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and any(p.search(name) for p in wanted)}


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
            raise ValueError(f"dynamic-quant: no BERT-style {self.values['modules']} Linear layers found in "
                             f"{type(model).__name__}")
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
