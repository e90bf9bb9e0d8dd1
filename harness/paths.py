"""Default locations: the results store and the on-disk cache."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_STORE = Path("results") / "store"
CACHE_ENV = "ATTNBENCH_CACHE"


def cache_dir() -> Path:
    """``$ATTNBENCH_CACHE``, else ``$XDG_CACHE_HOME/attnbench``, else ``~/.cache/attnbench``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "attnbench"
