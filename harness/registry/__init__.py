"""The plugin host: the pluggy plugin manager and the registry of validated backends and tasks.

* :mod:`.manager` — the plugin-manager factory: attnbench's own plugins and third-party ones, both found
  through the entry points of group ``attnbench.plugins`` (the older group ``attnbench.backends`` is still read);
* :mod:`.registry` — the validated backends and tasks of one plugin manager.

It sits above the contracts (:mod:`harness.backends`, :mod:`harness.tasks`), which it validates plugins
against, and below everything that runs or lists plugins.
"""
