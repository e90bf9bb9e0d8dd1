"""Backend spec strings: ``name[:key=value,...][+name[:...]]``, the one way backends are addressed.

The same text is used on the CLI (``-b topk:k=8,bits=4``), from Python (``run(backends=[...])``) and in asv
benchmark parameters. ``+`` composes backends (``dynamic-quant+topk:k=16``). A value written as a list,
``topk:k=[4,8],bits=[4,8]``, is a parameter grid that :func:`expand_grid` turns into concrete specs.

This module only parses text; resolving names and typing values is the registry's job.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from ..errors import SpecError

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass(frozen=True)
class SpecPart:
    """One backend of a spec with its raw (untyped) parameter texts; a list value is a grid."""

    name: str
    params: tuple[tuple[str, str | tuple[str, ...]], ...] = ()

    def is_grid(self) -> bool:
        return any(isinstance(value, tuple) for _, value in self.params)


def _split_top_level(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside square brackets."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise SpecError(f"unbalanced ']' in backend spec {text!r}")
        if char == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise SpecError(f"unbalanced '[' in backend spec {text!r}")
    parts.append("".join(current))
    return parts


def parse_spec(text: str) -> tuple[SpecPart, ...]:
    """Parse ``"dynamic-quant+topk:k=8,bits=[4,8]"`` into its parts. Raises :class:`SpecError`."""
    text = text.strip()
    if not text:
        raise SpecError("empty backend spec; write e.g. 'dense' or 'topk:k=8,bits=4'")
    parts = []
    for chunk in text.split("+"):
        name, _, args = chunk.strip().partition(":")
        name = name.strip()
        if not _NAME.match(name):
            raise SpecError(f"bad backend name {name!r} in spec {text!r}: use lower-case letters, digits and '-'")
        params: dict[str, str | tuple[str, ...]] = {}
        if args.strip():
            for assignment in _split_top_level(args, ","):
                key, eq, value = assignment.partition("=")
                key, value = key.strip(), value.strip()
                if not eq or not key or not value:
                    raise SpecError(f"bad parameter {assignment.strip()!r} in spec {text!r}: write key=value, "
                                    "e.g. 'topk:k=8,bits=4'")
                if key in params:
                    raise SpecError(f"parameter {key!r} given twice for {name!r} in spec {text!r}")
                if value.startswith("[") and value.endswith("]"):
                    items = tuple(item.strip() for item in value[1:-1].split(",") if item.strip())
                    if not items:
                        raise SpecError(f"empty list for {key!r} in spec {text!r}")
                    params[key] = items
                else:
                    params[key] = value
        elif _:
            raise SpecError(f"nothing after ':' in spec {text!r}; write e.g. 'topk:k=8'")
        parts.append(SpecPart(name, tuple(params.items())))
    return tuple(parts)


def format_spec(parts: tuple[SpecPart, ...]) -> str:
    """Inverse of :func:`parse_spec` (parameters in the order given)."""
    def one(part: SpecPart) -> str:
        if not part.params:
            return part.name
        args = ",".join(f"{k}=[{','.join(v)}]" if isinstance(v, tuple) else f"{k}={v}" for k, v in part.params)
        return f"{part.name}:{args}"
    return "+".join(one(part) for part in parts)


def expand_grid(text: str) -> list[str]:
    """Expand list values into the cartesian product of concrete specs, in a stable order.

    ``"topk:k=[4,8],bits=[4,8]"`` → ``["topk:k=4,bits=4", "topk:k=4,bits=8", "topk:k=8,bits=4", "topk:k=8,bits=8"]``.
    A spec without lists expands to itself.
    """
    parts = parse_spec(text)
    slots = [(i, key, value) for i, part in enumerate(parts) for key, value in part.params if isinstance(value, tuple)]
    if not slots:
        return [format_spec(parts)]
    specs = []
    for combo in itertools.product(*(values for _, _, values in slots)):
        chosen = {(i, key): value for (i, key, _), value in zip(slots, combo)}
        concrete = tuple(
            SpecPart(part.name, tuple((k, chosen.get((i, k), v)) for k, v in part.params))
            for i, part in enumerate(parts))
        specs.append(format_spec(concrete))
    return specs
