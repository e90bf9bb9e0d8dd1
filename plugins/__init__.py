"""The built-in backends of attnbench. Each module is a plugin registered through the same hooks a
third-party package uses (the ``attnbench.plugins`` entry points in ``pyproject.toml``)."""
