"""Load the compiled extensions without ever raising.

``load()`` imports torch first (the extensions link to ``libtorch_cpu`` and to
torch's ``libgomp``; once torch is loaded the dynamic loader reuses them), then
the extensions, then asks FBGEMM whether the CPU is supported.  Any failure
becomes a reason string instead of an exception.
"""

from __future__ import annotations

import importlib
from types import ModuleType

BUILD_HINT = (
    "build it with `pip install --no-build-isolation -e .` "
    "(or `python setup.py build_ext --inplace`) in an environment with torch==2.13.0 and Cython"
)


def load() -> tuple[ModuleType | None, ModuleType | None, str | None]:
    """Return ``(gemm_module, quant_module, None)`` or ``(None, None, reason)``."""
    try:
        import torch  # noqa: F401  (loads libtorch_cpu, libc10 and libgomp)
    except Exception as exc:  # noqa: BLE001 - availability is data, never an exception
        return None, None, f"torch cannot be imported ({type(exc).__name__}: {exc}); the kernels link to libtorch_cpu"

    modules: list[ModuleType] = []
    for name in ("_gemm", "_quant"):
        qualified = f"{__package__}.{name}"
        try:
            modules.append(importlib.import_module(qualified))
        except ModuleNotFoundError as exc:
            return None, None, f"extension {qualified} not built: {exc}; {BUILD_HINT}"
        except Exception as exc:  # noqa: BLE001 - e.g. undefined symbol after a torch upgrade
            return None, None, f"extension {qualified} failed to load ({type(exc).__name__}: {exc}); rebuild it: {BUILD_HINT}"

    gemm, quant = modules
    try:
        supported = bool(gemm.cpu_supported())
    except Exception as exc:  # noqa: BLE001
        return None, None, f"FBGEMM CPU detection failed ({type(exc).__name__}: {exc})"
    if not supported:
        return None, None, (
            "this CPU is not supported by FBGEMM (fbgemmSupportedCPU() is false: "
            "x86-64 with AVX2 is required for its int8 kernels)"
        )
    return gemm, quant, None
