"""``attnbench new-backend``: the package it writes installs with ``pip install -e``, is listed by
``attnbench backends``, passes its own kit tests unchanged and runs with ``attnbench run``; broken, it is
refused by ``attnbench run`` before anything is measured.

The package is installed into a throwaway virtual environment that sees this project's environment
(its site-packages added through a ``.pth`` file, as ``--system-site-packages`` would for a base
interpreter), so the shared environment is never modified.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from harness.cli import main
from harness.scaffold import package_names

ROOT = Path(__file__).resolve().parents[1]


def _venv(path: Path) -> Path:
    """A virtual environment at ``path`` that also sees the running interpreter's site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    parent = sysconfig.get_paths()["purelib"]
    Path(purelib, "_attnbench_parent.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    return python


def _run(python: Path, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ATTNBENCH_CACHE": str(cwd / "cache")}
    env.pop("ATTNBENCH_PLUGINS", None)
    done = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                             f"{done.stderr[-3000:]}")
    return done


def test_generated_package_installs_passes_the_kit_and_runs(tmp_path, tiny_model_dir, capsys):
    package = tmp_path / "relu"
    assert main(["new-backend", "relu-attention", str(package)]) == 0
    written = capsys.readouterr().out.split()
    assert sorted(Path(p).relative_to(package).as_posix() for p in written) == [
        "README.md", "attnbench_relu_attention/__init__.py", "pyproject.toml", "tests/test_conformance.py"]

    python = _venv(tmp_path / "venv")
    _run(python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "-e",
         str(package), cwd=tmp_path)

    listing = _run(python, "-m", "harness", "backends", "--refresh", cwd=tmp_path).stdout
    assert "relu-attention  —  relu-attention attention" in listing
    assert "plugin relu-attention (attnbench-relu-attention 0.1.0)" in listing

    tests = _run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package), cwd=tmp_path).stdout
    assert "30 passed" in tests and "failed" not in tests   # 2 specs x 15 checks, distribution included

    store = tmp_path / "store"
    run_args = ["-m", "harness", "run", "-b", "dense", "-b", "relu-attention", "--tasks", "mrpc", "--limit", "8",
                "--model", str(tiny_model_dir), "--no-speed", "--fidelity-examples", "0", "--no-progress",
                "--store", str(store)]
    ran = _run(python, *run_args, cwd=tmp_path)
    assert "relu-attention" in ran.stdout and "cell(s) written" in ran.stdout

    # Broken the way a plugin author might break it, the same package is refused before anything is measured.
    module = package / "attnbench_relu_attention" / "__init__.py"
    source = module.read_text()
    assert "return output.transpose(1, 2), None" in source
    module.write_text(source.replace("return output.transpose(1, 2), None",
                                     "return output.reshape(output.shape[0], output.shape[2], output.shape[1], "
                                     "-1), None"))
    files_before = sorted(store.rglob("*.parquet"))
    refused = _run(python, *run_args, cwd=tmp_path, check=False)
    assert refused.returncode == 2, refused.stderr
    assert "'relu-attention' breaks the backend contract (output layout:" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 or "error:" in refused.stderr.strip().splitlines()[-1]
    assert sorted(store.rglob("*.parquet")) == files_before


def test_package_names():
    assert package_names("relu-attention") == {
        "name": "relu-attention", "dist": "attnbench-relu-attention", "module": "attnbench_relu_attention",
        "cls": "ReluAttention", "group": "attnbench.plugins"}


@pytest.mark.parametrize("name", ["Relu", "relu_attention", "relu-", "relu--attention", "2relu", ""])
def test_bad_name_is_refused_in_one_line(name, tmp_path, capsys):
    assert main(["new-backend", name, str(tmp_path / "pkg")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lower-case letters, digits and single '-'" in err
    assert not (tmp_path / "pkg").exists()


def test_existing_directory_is_never_overwritten(tmp_path, capsys):
    target = tmp_path / "pkg"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    assert main(["new-backend", "relu-attention", str(target)]) == 2
    assert "already exists and is not an empty directory" in capsys.readouterr().err
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_default_directory_is_named_after_the_package(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["new-backend", "relu-attention"]) == 0
    assert (tmp_path / "attnbench-relu-attention" / "pyproject.toml").is_file()


def test_the_tutorials_relu_attention_passes_the_kit(tmp_path):
    """The attention written in docs/tutorials/write-a-backend.md, put into the generated module, passes every
    check for both values of its parameter."""
    import importlib.util
    import re
    import textwrap

    from harness.scaffold import new_backend
    from harness.testing import check_backend, registry_with

    tutorial = (ROOT / "docs" / "tutorials" / "write-a-backend.md").read_text()
    snippet = re.search(r"## 4\. Write the attention.*?```py\n(.*?)```", tutorial, flags=re.S).group(1)
    module_path = next(p for p in new_backend("relu-attention", tmp_path / "pkg") if p.name == "__init__.py")
    source = module_path.read_text()
    start = source.index("        scores = torch.matmul(query")
    end = source.index("return output.transpose(1, 2), None") + len("return output.transpose(1, 2), None")
    module_path.write_text(source[:start] + textwrap.indent(snippet, " " * 8).rstrip() + source[end:])
    spec = importlib.util.spec_from_file_location("tutorial_relu_attention", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "torch.relu(scores)" in module_path.read_text()
    registry = registry_with(module.ReluAttention)
    for spec_text in ("relu-attention", "relu-attention:causal=true"):
        results = check_backend(spec_text, registry=registry)
        assert {r.check for r in results if r.status != "passed"} == {"distribution"}
