"""Backends layer: the plugin contract, parameters, spec strings, the plugin manager, the registry, and the
wiring of an attention function into transformers.

* :mod:`.contract` — :class:`Backend` (what a plugin implements), :class:`ResolvedBackend`, :class:`PluginInfo`;
* :mod:`.params` — :class:`Param`, typed backend parameters;
* :mod:`.spec` — spec strings (``topk:k=8``, ``dynamic-quant+topk:k=16``) and parameter grids;
* :mod:`.manager` — the pluggy plugin-manager factory (built-ins and the ``attnbench.backends`` entry points);
* :mod:`.registry` — validated backends and tasks of one plugin manager;
* :mod:`.attention_interface` — registration with transformers' ``AttentionInterface`` and mask interface.
"""
