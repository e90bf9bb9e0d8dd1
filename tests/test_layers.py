"""The stated layers of ``harness/`` are the real ones: import-linter's contracts (``pyproject.toml``) hold,
and break when a lower layer imports a higher one."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint(config: Path, cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True))"
    return subprocess.run([sys.executable, "-c", code, str(config)], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_the_import_contracts_hold():
    result = lint(ROOT / "pyproject.toml", ROOT, ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_climb_breaks_the_layers_contract(tmp_path):
    """The store importing the analysis (what the split removed) is reported as a broken contract."""
    shutil.copytree(ROOT / "harness", tmp_path / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    schema = tmp_path / "harness" / "store" / "schema.py"
    schema.write_text(schema.read_text() + "\nfrom ..analysis import paired  # a climb\n")
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in settings["contracts"] if c["type"] == "layers")
    config = tmp_path / ".importlinter"
    config.write_text("[importlinter]\nroot_packages =\n    harness\nexclude_type_checking_imports = True\n\n"
                      "[importlinter:contract:layers]\nname = harness layers\ntype = layers\ncontainers =\n"
                      "    harness\nlayers =\n" + "".join(f"    {layer}\n" for layer in layers["layers"]))
    result = lint(config, tmp_path, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "harness layers BROKEN" in result.stdout
    assert "harness.store.schema -> harness.analysis.paired" in result.stdout


def test_the_harness_reaches_no_private_kernel_module():
    """``cython_kernels`` is used through its public package only (compiled modules are invisible to
    import-linter, so this is read from the source)."""
    private = re.compile(r"cython_kernels\._\w+|from cython_kernels import _\w+|from cython_kernels\._")
    offenders = [f"{path.relative_to(ROOT)}:{n}" for path in sorted((ROOT / "harness").rglob("*.py"))
                 for n, line in enumerate(path.read_text().splitlines(), 1) if private.search(line)]
    assert offenders == []


def test_moved_modules_still_import_from_their_old_paths_with_a_warning():
    """Users told to import ``harness.history.store`` or ``harness.backends.registry`` keep working for a
    release: the old path gives the very module it became, and says where it went."""
    import importlib

    import pytest

    for old, new in (("harness.history.store", "harness.store.parquet"),
                     ("harness.history.regressions", "harness.analysis.regressions"),
                     ("harness.backends.registry", "harness.registry.registry")):
        sys.modules.pop(old, None)
        with pytest.warns(DeprecationWarning, match=f"{old} is deprecated: it moved to {new}"):
            module = importlib.import_module(old)
        assert module is importlib.import_module(new)


def test_the_tree_passes_the_linter():
    """ruff, configured in ``pyproject.toml`` (pyflakes' errors: unused imports and names, undefined names)."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
