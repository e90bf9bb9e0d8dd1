"""Modules that moved: their old import paths keep working for one minor release, with a warning.

:func:`alias_moved_modules` installs one import hook per package that resolves ``<package>.<old name>`` to the
module it became (the same module object, so ``isinstance`` checks and monkeypatching still agree) and warns
with a :class:`DeprecationWarning` naming the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``package.<old>`` to ``moved[old]``, the module it became."""

    def __init__(self, package: str, moved: dict[str, str]) -> None:
        self.package, self.moved = package, dict(moved)

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        package, _, name = fullname.rpartition(".")
        if package == self.package and name in self.moved:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec) -> ModuleType:
        new = self.moved[spec.name.rpartition(".")[2]]
        warnings.warn(f"{spec.name} is deprecated: it moved to {new}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        pass


def alias_moved_modules(package: str, moved: dict[str, str]) -> None:
    """Make ``import package.<old>`` give the module ``moved[old]`` (once per package, whatever reloads do)."""
    if not any(isinstance(f, MovedModules) and f.package == package for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModules(package, moved))
