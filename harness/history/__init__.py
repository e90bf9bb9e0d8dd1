"""Deprecated: the former ``harness.history`` package, split into :mod:`harness.store` and
:mod:`harness.analysis`.

``harness.history.<module>`` still imports, with a :class:`DeprecationWarning`, as the module it became; the
old names go in the next minor release. Import the public names from :mod:`harness` (``read_results``,
``write_rows``), or from their new modules.
"""

from __future__ import annotations

from ..deprecation import alias_moved_modules

#: old submodule → the module it became
MOVED = {
    "schema": "harness.store.schema", "store": "harness.store.parquet", "predictions": "harness.store.predictions",
    "asv_import": "harness.store.asv_import", "compare": "harness.analysis.compare",
    "paired": "harness.analysis.paired", "within": "harness.analysis.within", "ab": "harness.analysis.ab",
    "changepoints": "harness.analysis.changepoints", "regressions": "harness.analysis.regressions",
    "report": "harness.analysis.report", "slides": "harness.analysis.slides", "scales": "harness.analysis.scales",
}

alias_moved_modules(__name__, MOVED)
