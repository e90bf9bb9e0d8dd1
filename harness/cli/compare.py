"""``attnbench compare``: two commits or runs side by side, or backends within a run against a baseline."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    import pandas as pd

from .options import add_alpha, add_store
from .options import check_thresholds as _check_thresholds
from .options import registry as _registry


def run(args: argparse.Namespace) -> int:
    from ..analysis.compare import compare, to_markdown
    from ..analysis.within import compare_within_run, pair_across_runs
    from ..store.parquet import read_results

    _check_thresholds(args, "threshold", "abs_threshold")
    rows = read_results(args.store)
    if args.baseline:
        if args.b is not None:  # two runs: their verdicts; exit 1 when "not worse" became "worse"
            from ..analysis.within import compare_verdicts

            text, code = compare_verdicts(rows, args.a, args.b, args.baseline)
            print(text)
            return code
        text, _ = compare_within_run(rows, args.store, args.a, args.baseline, args.candidate, alpha=args.alpha,
                                     metrics=_task_metrics)
        print(text)
        return 0
    if args.a is None or args.b is None:
        raise UserError("give two commits or runs A and B, or --baseline BACKEND [RUN] to compare backends "
                        "within a run")
    paired = _compare_paired(rows, args)
    if paired is not None:
        return paired
    stored = rows  # the verdict gate reads every category
    if args.category:
        rows = rows[rows["category"].isin(args.category)]
    comparison = compare(rows, args.a, args.b, threshold=args.threshold, alpha=args.alpha,
                         abs_threshold=args.abs_threshold)
    runs = set(rows["run_id"])
    comparison = type(comparison)(pair_across_runs(comparison.table, rows, args.store,
                                                   args.a if args.a in runs else None,
                                                   args.b if args.b in runs else None, alpha=args.alpha,
                                                   metrics=_task_metrics,
                                                   abs_threshold=args.abs_threshold),
                                  comparison.label_a, comparison.label_b)
    print(to_markdown(comparison, threshold=args.threshold, only_changes=args.only_changed,
                      abs_threshold=args.abs_threshold))
    from ..analysis.within import verdict_gate

    gate, worsened = verdict_gate(stored, args.a, args.b)  # two runs with verdicts: "not worse" → "worse" fails
    if gate:
        print("\n" + gate)
    return 1 if len(comparison.regressions) or worsened else 0


def _compare_paired(rows: pd.DataFrame, args: argparse.Namespace) -> int | None:
    """A and B of one ``attnbench ab`` session: paired analysis (harness.analysis.ab); else ``None``."""
    from ..analysis import ab

    session = ab.select_session(rows, args.a, args.b)
    if session is None:
        return None
    if args.category:
        session = session[session["category"].isin(args.category)]
    results = ab.analyse_session(session, threshold=args.threshold, alpha=args.alpha)
    print(ab.to_markdown(results, a=args.a, b=args.b, threshold=args.threshold, alpha=args.alpha))
    return 1 if any(r.verdict == "regression" for r in results) else 0


def _task_metrics(name: str) -> list:
    """The metrics of a registered task (its plugin's :class:`~harness.tasks.contract.Metric` list)."""
    return list(_registry().task(name).metrics)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``compare`` command's options."""
    p = sub.add_parser("compare", help="B/A (times, sizes, rates) or B - A (scores) per benchmark with "
                       "confidence intervals; exit 1 on a regression")
    p.add_argument("a", metavar="A", nargs="?",
                   help="baseline: commit (prefix) or run id; with --baseline: the run (default: the latest)")
    p.add_argument("b", metavar="B", nargs="?", help="candidate: commit (prefix) or run id")
    p.add_argument("--baseline", metavar="BACKEND",
                   help="compare backends within one run against this one (e.g. dense): the verdicts, paired "
                        "tests on the same examples (Holm-adjusted) and speed-ups from the interleaved timings; "
                        "with two runs A B: their verdicts, exit 1 when a backend not worse in A is worse in B")
    p.add_argument("--candidate", action="append", metavar="BACKEND",
                   help="with --baseline: only these backends (repeatable; default: every other backend of the run)")
    p.add_argument("--threshold", type=float, default=0.05,
                   help="relative change B/A that counts, for times, sizes and rates (default 0.05)")
    p.add_argument("--abs-threshold", type=float, default=0.01,
                   help="absolute change B - A that counts, for scores and other metrics (default 0.01)")
    add_alpha(p, 0.05)
    p.add_argument("--category", action="append", metavar="C",
                   help="only these categories (quality, agreement, fidelity, speed, memory); repeatable")
    p.add_argument("--only-changed", action="store_true", help="list only regressions, improvements and rows whose settings differ")
    add_store(p)
    p.set_defaults(func=run)
