"""Backends layer: the plugin contract, parameters, spec strings, and the wiring of an attention function
into transformers.

* :mod:`.contract` — :class:`Backend` (what a plugin implements), :class:`ResolvedBackend`, :class:`PluginInfo`;
* :mod:`.params` — :class:`Param`, typed backend parameters;
* :mod:`.spec` — spec strings (``topk:k=8``, ``dynamic-quant+topk:k=16``) and parameter grids;
* :mod:`.attention_interface` — registration with transformers' ``AttentionInterface`` and mask interface.

The plugin manager and the registry moved to :mod:`harness.registry`; ``harness.backends.manager`` and
``harness.backends.registry`` still import, with a :class:`DeprecationWarning`, until the next minor release.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

#: old submodule → the module it became
MOVED = {"manager": "harness.registry.manager", "registry": "harness.registry.registry"}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``harness.backends.<old>`` to the module it became (the same module object)."""

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        package, _, name = fullname.rpartition(".")
        if package == __name__ and name in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec) -> ModuleType:
        new = MOVED[spec.name.rpartition(".")[2]]
        warnings.warn(f"{spec.name} is deprecated: it moved to {new}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        pass


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())
