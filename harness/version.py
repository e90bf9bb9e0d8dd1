"""attnbench's version and the build it runs on, as ``attnbench --version`` prints them."""

from __future__ import annotations

from importlib import metadata

#: Where the documentation lives: the ``docs/`` folder of the source tree, built with ``make docs``.
DOCS_HINT = "docs: docs/ in the source tree (make docs builds docs/_build/html/index.html)"


def package_version(name: str) -> str | None:
    """Installed version of the distribution ``name``, or None where it is not installed (no import)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def attnbench_version() -> str:
    """attnbench's own version (the installed distribution's; ``"unknown"`` in a checkout never installed)."""
    return package_version("attnbench") or "unknown"


def kernels_build() -> str:
    """The compiled kernels' state: ``"fbgemm <isa>"`` (FBGEMM's GEMM ISA on this CPU) or why they are absent.

    Imports torch (the kernels link to ``libtorch_cpu``), which takes a second or two.
    """
    try:
        import cython_kernels
    except Exception as exc:  # noqa: BLE001 - a version line never raises
        return f"unavailable ({type(exc).__name__}: {exc})"
    if not cython_kernels.AVAILABLE:
        return f"unavailable ({cython_kernels.UNAVAILABLE_REASON})"
    isa = cython_kernels.cpu_features().get("isa", "unknown ISA")
    topk = "fused top-k available" if cython_kernels.TOPK_AVAILABLE else (
        f"fused top-k unavailable: {cython_kernels.TOPK_UNAVAILABLE_REASON}")
    return f"FBGEMM int8 kernels built, GEMM ISA {isa}; {topk}"


def version_text() -> str:
    """The lines ``attnbench --version`` prints: attnbench, torch, transformers, Python and the kernels."""
    import platform

    lines = [f"attnbench {attnbench_version()}"]
    for name in ("torch", "transformers"):
        lines.append(f"{name} {package_version(name) or 'not installed'}")
    lines.append(f"python {platform.python_version()}")
    lines.append(f"kernels: {kernels_build()}")
    return "\n".join(lines)
