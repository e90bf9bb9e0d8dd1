"""Typed backend parameters: declaration, parsing from spec strings, validation."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import ParamError

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


class _Required:
    """Sentinel default of a parameter every spec must give (``topk:k=8``)."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Param:
    """One parameter of a backend.

    :param name: lower-case identifier used in specs (``topk:k=8``).
    :param type: ``int``, ``float``, ``str`` or ``bool``.
    :param default: value used when the spec does not name the parameter; must itself be valid. Use
        :data:`REQUIRED` for a parameter every spec must give; it then always shows in the canonical spec.
    :param help: one line shown by ``attnbench backends``.
    :param choices: allowed values, if the parameter is an enumeration.
    :param min, max: inclusive bounds for numbers.
    """

    name: str
    type: type
    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None

    def check_declaration(self) -> None:
        """Raise ``ValueError`` if this declaration itself is malformed (used at registration)."""
        if not _IDENTIFIER.match(self.name):
            raise ValueError(f"parameter name {self.name!r} must be a lower-case identifier")
        if self.type not in (int, float, str, bool):
            raise ValueError(f"parameter {self.name!r}: type must be int, float, str or bool, not {self.type!r}")
        if self.choices is not None and (self.min is not None or self.max is not None):
            raise ValueError(f"parameter {self.name!r}: give either choices or bounds, not both")
        if self.required:
            return
        try:
            self.validate(self.default, backend="(declaration)")
        except ParamError as exc:
            raise ValueError(f"parameter {self.name!r}: default is invalid: {exc}") from None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def parse(self, text: str, *, backend: str) -> Any:
        """Convert the text of a spec (``"8"``) to a validated value."""
        text = text.strip()
        if self.type is bool:
            low = text.lower()
            if low not in _TRUE | _FALSE:
                raise ParamError(f"{backend}: parameter {self.name!r} must be true or false, got {text!r}")
            return self.validate(low in _TRUE, backend=backend)
        if self.type in (int, float):
            try:
                value = self.type(text)
            except ValueError:
                kind = "an integer" if self.type is int else "a number"
                raise ParamError(
                    f"{backend}: parameter {self.name!r} must be {kind}, got {text!r} ({self.describe()})") from None
            return self.validate(value, backend=backend)
        return self.validate(text, backend=backend)

    def validate(self, value: Any, *, backend: str) -> Any:
        """Check (and lightly coerce: int → float) a Python value; raise :class:`ParamError` if invalid."""
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise ParamError(f"{backend}: parameter {self.name!r} must be of type {self.type.__name__}, "
                             f"got {value!r} ({self.describe()})")
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(map(str, self.choices))
            raise ParamError(f"{backend}: parameter {self.name!r} must be one of {allowed}; got {value!r}")
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise ParamError(f"{backend}: parameter {self.name!r} must be in {self._range()}, got {value!r}")
        return value

    def _range(self) -> str:
        low = "" if self.min is None else f"{self.min:g}"
        high = "" if self.max is None else f"{self.max:g}"
        return f"{low}..{high}"

    def describe(self) -> str:
        """``k: int = 8 (1..)`` — a one-line summary for listings and error messages."""
        text = f"{self.name}: {self.type.__name__}" + (" (required)" if self.required else
                                                         f" = {format_value(self.default)}")
        if self.choices is not None:
            text += " {" + "|".join(map(format_value, self.choices)) + "}"
        elif self.min is not None or self.max is not None:
            text += f" [{self._range()}]"
        return text


def format_value(value: Any) -> str:
    """Render a parameter value as it is written in a spec (``true``, ``8``, ``0.5``, ``head``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
