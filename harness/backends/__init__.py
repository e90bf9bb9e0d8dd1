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

from ..deprecation import alias_moved_modules

#: old submodule → the module it became
MOVED = {"manager": "harness.registry.manager", "registry": "harness.registry.registry"}

alias_moved_modules(__name__, MOVED)
