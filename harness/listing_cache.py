"""The listings of ``attnbench tasks`` and ``attnbench backends``, cached per environment.

Building a listing loads every plugin, which imports torch and transformers (about 5 s on an idle machine,
far more on a busy one). The text printed is stored in the cache directory under a fingerprint of the
environment — the Python executable, every installed distribution and its version (which covers plugins
installed or removed, entry points included), ``$ATTNBENCH_PLUGINS``, and the size and modification time
of every source file of attnbench and its bundled plugins — so a second listing answers without importing
torch. Availability checks (``backends --check``) are never cached. ``--refresh`` rebuilds.

This module imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable

from .paths import cache_dir

_ROOT = Path(__file__).resolve().parents[1]
PLUGINS_ENV = "ATTNBENCH_PLUGINS"  # as harness.registry.manager.PLUGINS_ENV (not imported: it pulls torch)


def fingerprint() -> str:
    digest = hashlib.sha256()
    digest.update(f"{sys.executable}\0{sys.version}\0{os.environ.get(PLUGINS_ENV)}\0".encode())
    for dist in sorted(f"{d.metadata['Name']}=={d.version}@{getattr(d, '_path', '')}"
                       for d in metadata.distributions()):
        digest.update(dist.encode() + b"\0")
    for folder in ("harness", "plugins"):
        for path in sorted((_ROOT / folder).rglob("*.py")):
            stat = path.stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:20]


def cached_listing(kind: str, build: Callable[[], tuple[str, bool]], *, refresh: bool = False) -> str:
    """The text of a listing: from the cache when the environment is unchanged, else ``build()``, which returns
    ``(text, cacheable)`` (a listing with a failed plugin is not stored: the failure may be passing)."""
    path = cache_dir() / "listings" / f"{kind}-{fingerprint()}.txt"
    if not refresh:
        try:
            return path.read_text()
        except OSError:
            pass
    text, cacheable = build()
    if not cacheable:
        return text
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs speed
        pass
    return text
