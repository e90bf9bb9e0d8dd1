"""``attnbench import-asv``: asv's results JSON into the store, each measurement once."""

from __future__ import annotations

import argparse

from .options import add_store


def run(args: argparse.Namespace) -> int:
    from ..store.asv_import import import_asv

    summary = import_asv(args.results, args.store)
    print(f"{summary.files} asv result file(s): {summary.rows} measurement(s) imported, "
          f"{summary.skipped_measurements} already in {args.store}")
    if summary.skipped_version or summary.skipped_unknown:
        print(f"skipped {summary.skipped_version} benchmark result(s) recorded with another version of the "
              f"benchmark than {args.results}/benchmarks.json (their parameters may be named or ordered "
              f"differently now) and {summary.skipped_unknown} of benchmark(s) no longer in it")
    for why in (summary.undeclared or {}).values():
        print(f"not imported: {why}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``import-asv`` command's options."""
    p = sub.add_parser("import-asv", help="import asv's results JSON into the Parquet store (idempotent)")
    p.add_argument("results", nargs="?", default="results/asv", help="asv results directory (default results/asv)")
    add_store(p)
    p.set_defaults(func=run)
