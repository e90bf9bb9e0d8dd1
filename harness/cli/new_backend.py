"""``attnbench new-backend``: write a backend plugin package that passes the conformance kit."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from ..scaffold import new_backend

    for path in new_backend(args.name, args.directory):
        print(path)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``new-backend`` command's options."""
    p = sub.add_parser("new-backend", help="write a backend plugin package (entry point, backend, kit tests, README)")
    p.add_argument("name", metavar="NAME", help="backend name: lower-case letters, digits and '-', e.g. relu-attention")
    p.add_argument("directory", metavar="DIR", nargs="?", help="where to write it (default ./attnbench-NAME)")
    p.set_defaults(func=run)
