"""Exceptions of attnbench. Every :class:`UserError` is a mistake the user can fix; the CLI prints its
message on one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (unknown name, bad parameter, missing data): one clear line, no traceback."""


class ParamError(UserError, ValueError):
    """A backend parameter is unknown, malformed or out of range."""


class SpecError(UserError, ValueError):
    """A backend spec string such as ``topk:k=8,bits=4`` cannot be parsed or resolved."""


class DataError(UserError):
    """Task data cannot be found or read."""


class ModelError(UserError):
    """A model cannot be found, loaded, or does not fit the task."""


class StoreError(UserError):
    """The results store cannot be read or written."""


class PluginError(Exception):
    """A plugin registered something invalid. The message names the plugin."""
