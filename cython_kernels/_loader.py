"""Load the compiled extensions without ever raising.

``load()`` imports torch first (the extensions link to ``libtorch_cpu`` and to
torch's ``libgomp``; once torch is loaded the dynamic loader reuses them), then
the extensions, then asks FBGEMM whether the CPU is supported.  ``_attention``
is compiled for AVX2 + FMA, so it is imported only after the CPU check.  Any
failure becomes a reason string instead of an exception.
"""

from __future__ import annotations

import importlib
from types import ModuleType

BUILD_HINT = (
    "build it with `pip install --no-build-isolation -e .` "
    "(or `python setup.py build_ext --inplace`) in an environment with torch==2.13.0 and Cython"
)


def _import(name: str) -> tuple[ModuleType | None, str | None]:
    qualified = f"{__package__}.{name}"
    try:
        return importlib.import_module(qualified), None
    except ModuleNotFoundError as exc:
        return None, f"extension {qualified} not built: {exc}; {BUILD_HINT}"
    except Exception as exc:  # noqa: BLE001 - e.g. undefined symbol after a torch upgrade
        return None, f"extension {qualified} failed to load ({type(exc).__name__}: {exc}); rebuild it: {BUILD_HINT}"


def load() -> tuple[ModuleType | None, ModuleType | None, ModuleType | None, str | None]:
    """Return ``(gemm, quant, attention, None)`` or ``(None, None, None, reason)``."""
    try:
        import torch  # noqa: F401  (loads libtorch_cpu, libc10 and libgomp)
    except Exception as exc:  # noqa: BLE001 - availability is data, never an exception
        return None, None, None, f"torch cannot be imported ({type(exc).__name__}: {exc}); the kernels link to libtorch_cpu"

    modules: list[ModuleType] = []
    for name in ("_gemm", "_quant"):
        module, reason = _import(name)
        if reason:
            return None, None, None, reason
        modules.append(module)
    gemm, quant = modules
    try:
        supported = bool(gemm.cpu_supported()) and bool(gemm.cpu_has_avx2_fma())
    except Exception as exc:  # noqa: BLE001
        return None, None, None, f"FBGEMM CPU detection failed ({type(exc).__name__}: {exc})"
    if not supported:
        return None, None, None, (
            "this CPU is not supported by FBGEMM (fbgemmSupportedCPU() is false: "
            "x86-64 with AVX2 and FMA is required for its int8 kernels)"
        )
    attention, reason = _import("_attention")
    if reason:
        return None, None, None, reason
    return gemm, quant, attention, None


def load_extra(name: str) -> tuple[ModuleType | None, str | None]:
    """Import one more AVX2 + FMA extension (e.g. ``_topk``); call it only after ``load()`` succeeded (the
    CPU check). Returns ``(module, None)`` or ``(None, reason)``, never raises."""
    return _import(name)
