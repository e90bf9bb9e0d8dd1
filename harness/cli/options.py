"""Options and argument types shared by the commands, declared once."""

from __future__ import annotations

import argparse

from ..errors import UserError
from ..paths import DEFAULT_STORE

STORE_HELP = f"results store, a directory or an fsspec URL such as s3://bucket/results (default {DEFAULT_STORE})"


def add_store(parser: argparse.ArgumentParser) -> None:
    """``--store DIR|URL``, the results store every storing or reading command takes."""
    parser.add_argument("--store", default=str(DEFAULT_STORE), metavar="DIR|URL", help=STORE_HELP)


def add_alpha(parser: argparse.ArgumentParser, default: float, what: str = "significance level") -> None:
    """``--alpha``: the significance level of a command's tests."""
    parser.add_argument("--alpha", type=float, default=default, help=f"{what} (default {default:g})")


def registry():
    """The registry of every installed plugin (imported on use: listing commands stay light)."""
    from ..registry.registry import load_registry

    return load_registry()


def split(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def shape(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(f"expected a shape BATCHxTOKENS such as 1x128, got {text!r}")
    return int(parts[0]), int(parts[1])


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def check_thresholds(args: argparse.Namespace, *names: str) -> None:
    """Thresholds are sizes (``>= 0``) and ``--alpha`` a probability in (0, 1)."""
    for name in names:
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be 0 or more, not {getattr(args, name)}")
    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha must be between 0 and 1, not {args.alpha}")


def quiet_libraries() -> None:
    """Keep the terminal for attnbench's own progress: silence transformers' and datasets' bars and notices."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
