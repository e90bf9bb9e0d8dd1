"""The built-in backends of attnbench. Each module is a plugin registered through the same hooks a
third-party package uses (see ``harness.backends.manager.DEFAULT_PLUGINS``)."""
