"""Deprecated: the former ``harness.history`` package, split into :mod:`harness.store` and
:mod:`harness.analysis`.

``harness.history.<module>`` still imports, with a :class:`DeprecationWarning`, as the module it became; the
old names go in the next minor release. Import the public names from :mod:`harness` (``read_results``,
``write_rows``), or from their new modules.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

#: old submodule → the module it became
MOVED = {
    "schema": "harness.store.schema", "store": "harness.store.parquet", "predictions": "harness.store.predictions",
    "asv_import": "harness.store.asv_import", "compare": "harness.analysis.compare",
    "paired": "harness.analysis.paired", "within": "harness.analysis.within", "ab": "harness.analysis.ab",
    "changepoints": "harness.analysis.changepoints", "regressions": "harness.analysis.regressions",
    "report": "harness.analysis.report", "slides": "harness.analysis.slides", "scales": "harness.analysis.scales",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``harness.history.<old>`` to the module it became (the same module object)."""

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
