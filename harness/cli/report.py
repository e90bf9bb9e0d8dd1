"""``attnbench report``: the self-contained HTML report and per-task figures."""

from __future__ import annotations

import argparse

from .options import add_store


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..analysis.report import write_report
    from ..analysis.slides import choose_run, write_figures
    from ..store.parquet import read_results

    rows = read_results(args.store)
    run_id, notes = choose_run(rows, args.run, args.plan) if (rows["source"] == "harness").any() else (None, [])
    for note in notes:
        print(note)
    path = write_report(rows, args.output, run_id=run_id)
    print(f"wrote {path}")
    formats = tuple(f.strip() for f in (args.format or "").split(",") if f.strip())
    if (formats or args.figures) and run_id is not None:
        directory = Path(args.figures) if args.figures else Path(args.output).parent / "figures"
        for written in write_figures(rows, directory, run_id, formats or ("png", "svg")):
            print(f"wrote {written}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``report`` command's options."""
    p = sub.add_parser("report", help="write a self-contained HTML report with plots, and figures as PNG/SVG")
    p.add_argument("--output", default="results/html/report.html", help="default results/html/report.html")
    p.add_argument("--run", metavar="RUN_ID", help="run for the per-run figures (default: the latest harness run; "
                   "a warning names a run of the same tasks with more examples)")
    p.add_argument("--plan", metavar="PLAN_ID", help="the latest run of this plan instead")
    p.add_argument("--format", metavar="png,svg", help="also write each per-task figure in these formats")
    p.add_argument("--figures", metavar="DIR",
                   help="directory for the figure files (default: figures/ beside --output; implies png,svg)")
    add_store(p)
    p.set_defaults(func=run)
