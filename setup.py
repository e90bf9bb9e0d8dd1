"""Build the Cython extensions of ``cython_kernels`` where they can be built; all metadata is in pyproject.toml.

attnbench installs everywhere: where the extensions cannot be built (no Cython or torch in the build
environment, a torch wheel without FBGEMM's headers as on macOS or ARM, a compiler error), setup prints one
line saying why and installs the pure-Python project; the int8 backends then report themselves unavailable
with the reason (``attnbench backends``).

The extensions compile against the FBGEMM headers that the torch CPU wheel
ships (``torch/include/fbgemm``) and link to ``libtorch_cpu`` (which exports
the FBGEMM instances used) and to torch's bundled ``libgomp`` (so the OpenMP
runtime is the one torch already loaded).  Build without isolation so that
the installed ``torch==2.13.0`` CPU wheel is used::

    pip install --no-build-isolation -e .
    pip wheel --no-deps --no-build-isolation -w dist .
    python setup.py build_ext --inplace        # development
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

from setuptools import Extension, setup


class SkipExtensions(Exception):
    """The extensions cannot be built here; the message says why."""


def _skip(reason: str) -> list[Extension]:
    print(f"attnbench: building without cython_kernels' extensions: {reason}. The fbgemm-int8 backend and "
          "topk's fbgemm scorer will be unavailable; the rest of attnbench works.", file=sys.stderr)
    return []


def _need(module: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise SkipExtensions(
            f"{module!r} is not importable in the build environment ({exc}); to build them, install "
            "'Cython>=3,<4' numpy setuptools wheel torch==2.13.0 and build without isolation: "
            "pip install --no-build-isolation -e .") from None


def _extensions() -> list[Extension]:
    _need("Cython")
    torch = _need("torch")
    from Cython.Build import cythonize

    torch_dir = Path(torch.__file__).resolve().parent
    torch_lib = torch_dir / "lib"
    if not (torch_dir / "include" / "fbgemm" / "Fbgemm.h").is_file():
        raise SkipExtensions(f"{torch_dir}/include/fbgemm/Fbgemm.h not found: this torch wheel does not ship FBGEMM")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise SkipExtensions(f"the kernels need an x86-64 CPU (AVX2); this is {platform.machine()}")

    # Link torch's own libgomp (same soname, libgomp.so.1) rather than the
    # compiler's, so the symbol versions we need are the ones torch provides.
    gomp = sorted(torch_lib.glob("libgomp*.so*"))
    openmp_link = [str(gomp[0])] if gomp else ["-fopenmp"]
    # $ORIGIN/../torch/lib: installed next to torch in site-packages.  The
    # absolute path: in-place and editable builds.  Either way the Python
    # layer imports torch first, so the libraries are already loaded.
    rpaths = ["$ORIGIN/../torch/lib", str(torch_lib)]

    compile_args = ["-std=c++17", "-O3", "-g0", "-fopenmp", "-Wno-unused-function", "-fno-strict-aliasing",
                    "-Wno-maybe-uninitialized"]
    link_args = [*openmp_link, *(f"-Wl,-rpath,{p}" for p in rpaths)]

    def extension(name: str, extra_compile_args: tuple[str, ...] = (), **kwargs) -> Extension:
        # optional: a compiler error is reported as a warning and the install goes on without the module.
        return Extension(f"cython_kernels.{name}", [f"cython_kernels/{name}.pyx"], language="c++", optional=True,
                         include_dirs=[str(torch_dir / "include")],
                         extra_compile_args=[*compile_args, *extra_compile_args], extra_link_args=list(link_args),
                         **kwargs)

    torch_libs = dict(library_dirs=[str(torch_lib)], libraries=["torch_cpu"])
    gemm = extension("_gemm", **torch_libs)
    # Finite-math lets GCC turn the min/max and clamp loops into SIMD min/max;
    # non-finite inputs are detected from their bit patterns and rejected.
    quant = extension("_quant", ("-ffinite-math-only", "-fno-signed-zeros", "-ffp-contract=off"))
    # The fused attention kernel is compiled for AVX2 + FMA (its exp and softmax loops vectorize 8 wide);
    # _loader imports it only on a CPU that has both. Same finite-math flags as _quant (masks are -1e30,
    # not -inf); no trapping math, so that GCC if-converts the clamps of its loops; fp-contract=off keeps
    # the shared row quantizers (_rows.pxd) bit-identical to _quant's.
    attention = extension("_attention", ("-mavx2", "-mfma", "-ffinite-math-only", "-fno-signed-zeros",
                                         "-fno-trapping-math", "-ffp-contract=off"), **torch_libs)
    # The fused top-k kernel (topk:scorer=fbgemm): same flags as _attention.
    topk = extension("_topk", ("-mavx2", "-mfma", "-ffinite-math-only", "-fno-signed-zeros",
                               "-fno-trapping-math", "-ffp-contract=off"), **torch_libs)
    # Generated C++ goes under build/, so it is neither committed nor packaged.
    return cythonize([gemm, quant, attention, topk], language_level=3, build_dir="build/cython")


def _extensions_or_none() -> list[Extension]:
    try:
        return _extensions()
    except SkipExtensions as exc:
        return _skip(str(exc))


setup(ext_modules=_extensions_or_none())
