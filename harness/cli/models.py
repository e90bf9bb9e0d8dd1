"""``attnbench models``: whether attnbench can swap a checkpoint's attention, and which backends apply."""

from __future__ import annotations

import argparse
import json

from .options import quiet_libraries as _quiet_libraries
from .options import registry as _registry


def run(args: argparse.Namespace) -> int:
    from ..execution.model_check import check_model, format_check

    _quiet_libraries()
    checks = [check_model(source, _registry(), args.backend, args.seq_len) for source in args.model]
    print(json.dumps([c.as_dict() for c in checks], indent=2) if args.json else
          "\n".join(format_check(c) for c in checks), end="\n" if args.json else "")
    return 0 if all(c.swappable for c in checks) else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``models`` command's options."""
    p = sub.add_parser("models", help="check checkpoints: can attnbench swap their attention, which backends "
                       "apply (exit 1 if one cannot be used)")
    p.add_argument("model", nargs="+", metavar="ID|DIR", help="checkpoint directory, hub id, or 'embedded'")
    p.add_argument("-b", "--backend", action="append", metavar="SPEC",
                   help="backend spec to try, repeatable (default: every registered backend)")
    p.add_argument("--seq-len", type=int, default=256, metavar="N", help="tokens of the probe batch (default 256)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)
