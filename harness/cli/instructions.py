"""``attnbench instructions``: instruction counts of each backend under valgrind's callgrind.

Counts repeat to about 1e-5 from run to run, whatever else the machine does, so a small step between commits
stands out where wall time cannot show it. ``attnbench run --instructions[-only]`` calls the same code.
"""

from __future__ import annotations

import argparse

from .options import add_store, positive
from .options import split as _split


def count_instructions(args: argparse.Namespace, run_id: str | None) -> int:
    """``run --instructions``: instruction counts under callgrind (harness.execution.instructions)."""
    from ..execution.instructions import run_instructions
    from ..store.parquet import parse_store

    store = None if args.no_store else parse_store(args.store)
    rows, skipped = run_instructions(args.backend or ["dense"], store=store, model=args.model,
                                     repeats=args.instruction_repeats, run_id=run_id,
                                     parts=tuple(_split(args.instruction_parts)))
    for r in rows:
        print(f"{r['backend']:28s} {r['metric']:28s} {r['value']:>16,.0f} instructions")
    if store is not None and rows:
        print(f"{len(rows)} instruction-count rows written to {store}")
    return 0


def run(args: argparse.Namespace) -> int:
    return count_instructions(args, run_id=None)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``instructions`` command's options."""
    p = sub.add_parser("instructions", help="count the instructions of each backend under valgrind's callgrind "
                       "(batch 1 x 128, one thread) and store them")
    p.add_argument("-b", "--backend", action="append", metavar="SPEC",
                   help="backend spec, repeatable: -b dense -b topk:k=8 (default: dense)")
    p.add_argument("--model", action="append", metavar="ID|DIR", help="'embedded' (default) or a checkpoint")
    p.add_argument("--instruction-repeats", type=positive, default=1, metavar="N",
                   help="callgrind samples per backend and part (default 1; counts repeat exactly)")
    p.add_argument("--instruction-parts", default="attention_core,forward", metavar="PARTS",
                   help="what to count: attention_core,forward (default both; a forward costs minutes under callgrind)")
    add_store(p)
    p.add_argument("--no-store", action="store_true", help="do not write results")
    p.set_defaults(func=run)
