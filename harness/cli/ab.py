"""``attnbench ab``: two git revisions timed alternately, process by process, with a paired test."""

from __future__ import annotations

import argparse

from .options import add_alpha, add_store
from .options import positive as _positive
from .options import split as _split


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..analysis import ab
    from ..execution.ab_runner import run_ab
    from ..store.parquet import parse_store

    store = None if args.no_store else parse_store(args.store)
    backends = args.backend or ["dense"]
    if "dense" not in backends:
        backends = ["dense", *backends]  # the reference of the ÷ dense series, timed in the same processes
    session, rows = run_ab(args.a, args.b, backends=backends, parts=tuple(_split(args.parts)), pairs=args.pairs,
                           repeats=args.repeats, threads=args.threads, batch_size=args.batch_size,
                           seq_len=args.seq_len, store=store)
    frame = ab.ab_rows(pd.DataFrame(rows))
    results = ab.analyse_session(frame, threshold=args.threshold, alpha=args.alpha)
    print(ab.to_markdown(results, a=args.a, b=args.b, threshold=args.threshold, alpha=args.alpha))
    if store is not None:
        print(f"\nsession {session}: {len(rows)} paired rows written to {store}; analyse again with "
              f"`attnbench compare {session}-A {session}-B`")
    return 1 if any(r.verdict == "regression" for r in results) else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``ab`` command's options."""
    p = sub.add_parser("ab", help="wall time of two git revisions measured alternately; paired rows; exit 1 "
                                  "on a significant regression")
    p.add_argument("a", metavar="REV_A", help="baseline revision (e.g. main)")
    p.add_argument("b", metavar="REV_B", help="candidate revision (e.g. HEAD)")
    p.add_argument("-b", "--backend", action="append", metavar="SPEC", help="backend spec, repeatable (dense is "
                   "always measured as the reference)")
    p.add_argument("--parts", default="attention_core,forward", help="attention_core,forward (default both)")
    p.add_argument("--pairs", type=_positive, default=20, help="A/B process pairs (default 20)")
    p.add_argument("--repeats", type=_positive, default=15, help="timed rounds per process (default 15)")
    p.add_argument("--threads", type=_positive, default=1, help="torch threads (default 1)")
    p.add_argument("--batch-size", type=_positive, default=8, help="default 8")
    p.add_argument("--seq-len", type=_positive, default=128, help="default 128")
    p.add_argument("--threshold", type=float, default=0.03, help="relative change that counts (default 0.03)")
    add_alpha(p, 0.05)
    add_store(p)
    p.add_argument("--no-store", action="store_true", help="do not write the rows")
    p.set_defaults(func=run)
