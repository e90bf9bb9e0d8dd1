"""Build the Cython extensions of ``cython_kernels``; all metadata is in pyproject.toml.

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

import sys
from pathlib import Path

from setuptools import Extension, setup


def _need(module: str):
    try:
        return __import__(module)
    except ImportError as exc:
        sys.exit(
            f"error: building cython_kernels needs {module!r} in the build environment ({exc}).\n"
            "Install the build requirements into the environment you build in "
            "(pip install 'Cython>=3,<4' numpy setuptools wheel torch==2.13.0) and build "
            "without isolation: pip install --no-build-isolation -e ."
        )


def _extensions() -> list[Extension]:
    _need("Cython")
    torch = _need("torch")
    from Cython.Build import cythonize

    torch_dir = Path(torch.__file__).resolve().parent
    torch_lib = torch_dir / "lib"
    if not (torch_dir / "include" / "fbgemm" / "Fbgemm.h").is_file():
        sys.exit(f"error: {torch_dir}/include/fbgemm/Fbgemm.h not found: this torch wheel does not ship FBGEMM")

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
        return Extension(f"cython_kernels.{name}", [f"cython_kernels/{name}.pyx"], language="c++",
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
    # Generated C++ goes under build/, so it is neither committed nor packaged.
    return cythonize([gemm, quant, attention], language_level=3, build_dir="build/cython")


setup(ext_modules=_extensions())
