"""``attnbench regressions``: change points over the commit history of every series."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    import pandas as pd

from .options import add_alpha, add_store
from .options import check_thresholds as _check_thresholds


def run(args: argparse.Namespace) -> int:
    from ..analysis.regressions import (
        coverage_notes,
        find_regressions,
        format_points,
        history_order,
        to_frame,
    )
    from ..store.parquet import read_results

    _check_thresholds(args, "min_effect", "min_abs_effect")
    rows = read_results(args.store)
    if args.category:
        rows = _rows_of_categories(rows, args.category, args.store)
    order = history_order(rows, args.repo)
    points = to_frame(find_regressions(rows, alpha=args.alpha, min_effect=args.min_effect,
                                       min_abs_effect=args.min_abs_effect,
                                       categories=tuple(args.category) if args.category else None,
                                       relative_to=None if args.absolute_only else args.reference, order=order))
    print(format_points(points, include_improvements=args.all))
    for note in order.notes() + coverage_notes(order, alpha=args.alpha):
        print(note)
    return 1 if len(points) and (points["kind"] == "regression").any() else 0


def _rows_of_categories(rows: pd.DataFrame, categories: list[str], store: str) -> pd.DataFrame:
    """The rows of ``--category`` values; a category outside the vocabulary, or one without rows, is refused."""
    from ..store.schema import CATEGORIES

    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise UserError(f"--category {', '.join(unknown)}: not a category; use one of {', '.join(CATEGORIES)}")
    chosen = rows[rows["category"].isin(categories)]
    if chosen.empty:
        held = ", ".join(sorted(rows["category"].dropna().unique())) or "no rows at all"
        raise UserError(f"no rows of category {', '.join(categories)} in {store} (it holds: {held}); measure or "
                        "import them first (asv rows take the category their benchmark declares)")
    return chosen


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``regressions`` command's options."""
    p = sub.add_parser("regressions", help="change points over the commit history of every series")
    add_alpha(p, 0.01, "significance of the permutation test")
    p.add_argument("--min-effect", type=float, default=0.02,
                   help="smallest relative step reported, for times, sizes and rates (default 0.02)")
    p.add_argument("--min-abs-effect", type=float, default=0.01,
                   help="smallest absolute step reported, for scores and other metrics (default 0.01)")
    p.add_argument("--category", action="append", metavar="C", help="only these categories; repeatable")
    p.add_argument("--all", action="store_true", help="list improvements too")
    p.add_argument("--reference", default="dense",
                   help="also search speed series divided by this backend's value in the same run (default dense)")
    p.add_argument("--absolute-only", action="store_true", help="do not search the relative series")
    p.add_argument("--repo", metavar="DIR", help="git repository whose history orders the commits (default: the "
                   "current directory's); commits it does not have are left out and counted")
    add_store(p)
    p.set_defaults(func=run)
