"""Facts recorded with every result: the project's commit, the machine, library versions."""

from __future__ import annotations

import hashlib
import json
import platform
import socket
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

LIBRARIES = ("attnbench", "torch", "transformers", "datasets", "numpy", "scikit-learn", "pyarrow", "pluggy")
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Commit:
    sha: str | None
    dirty: bool | None


def git(*args: str, repo: Path = ROOT, timeout: float = 10) -> str:
    """Output of ``git -C repo ARGS`` (stripped); raises ``OSError`` or ``subprocess.SubprocessError``."""
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          timeout=timeout).stdout.strip()


def git_commit(path: Path = ROOT) -> Commit:
    """The checked-out commit of the attnbench source tree and whether it has uncommitted changes.

    ``Commit(None, None)`` when the code does not run from a git checkout (an installed wheel).
    """
    try:
        sha = git("rev-parse", "HEAD", repo=path)
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", repo=path))
        return Commit(sha, dirty)
    except (OSError, subprocess.SubprocessError):
        return Commit(None, None)


@lru_cache(maxsize=1)
def cpu_facts() -> dict[str, object]:
    """CPU model, logical cores and the SIMD features that matter for the kernels."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    import os

    features = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return {"model": model, "cores": os.cpu_count(), "features": features}


@lru_cache(maxsize=1)
def machine_id() -> str:
    """A stable, readable machine identity: host name plus a short hash of the CPU facts.

    Timing rows carry it, and comparisons only pair rows of the same machine.
    """
    digest = hashlib.sha256(json.dumps(cpu_facts(), sort_keys=True).encode()).hexdigest()[:8]
    host = socket.gethostname().split(".")[0] or "host"
    return f"{host}-{digest}"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions
