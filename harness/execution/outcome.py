"""The closing lines of ``attnbench run``: what was stored, what was not, and why.

Counts come from what this process actually wrote (:attr:`RunResult.stored_cells` and
:attr:`RunResult.stored_rows`), never from the cells attempted, so a cell that failed — while measuring or
while being written — is counted as not stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the runner imports torch; this module does not
    from .runner import RunResult


def closing_lines(result: "RunResult", store: Path | str | None, *, traceback: bool = False) -> tuple[str, str]:
    """``(stdout text, stderr text)`` that close a run.

    stdout names the rows and cells written to ``store`` (and those already there when resuming); stderr,
    empty when every cell succeeded, lists the failed cells, each with its one-line reason and, with
    ``traceback``, its full traceback (the worker's, for a cell run by a Dask worker).
    """
    attempted = result.cells - result.cells_done_before
    failed = result.failures
    out = ""
    if store is not None:
        stored = len(result.stored_cells)
        out = (f"\nrun {result.run_id}: {result.stored_rows} rows from {stored} cell(s) written to {store}"
               + (f"; {attempted - stored} of the {attempted} cell(s) not stored (failed)" if stored < attempted
                  else "")
               + (f" ({result.cells_done_before} cell(s) were already there)" if result.cells_done_before else "")
               + f"; read them with harness.read_results({str(store)!r})")
    if not failed:
        return out, ""
    lines = [f"{len(failed)} cell(s) failed" + (", not stored" if store is not None else "") + ": "
             + "; ".join(f"{cell} ({reason})" for cell, reason in failed.items())
             + ("; once the cause is fixed, rerun with --resume to retry only those" if store is not None else "")]
    if traceback:
        for cell, text in result.tracebacks.items():
            lines.append(f"--- traceback of cell {cell} ---\n{text.rstrip()}")
    else:
        lines.append("(--traceback shows where each failure happened)")
    return out, "\n".join(lines)


#: Set to 1 to see the traceback of an internal error of any command (``run`` also takes ``--traceback``).
TRACEBACK_ENV = "ATTNBENCH_TRACEBACK"


def internal_error(exc: BaseException, *, traceback: bool = False) -> str:
    """The text the CLI prints for an unexpected exception: one line naming it, or, with ``traceback`` or
    ``$ATTNBENCH_TRACEBACK=1``, the full traceback followed by that line."""
    import os
    import traceback as tb

    line = f"attnbench: internal error: {type(exc).__name__}: {exc}".splitlines()[0]
    if traceback or os.environ.get(TRACEBACK_ENV) == "1":
        return "".join(tb.format_exception(type(exc), exc, exc.__traceback__)).rstrip() + "\n" + line
    return f"{line} (exit 3; set {TRACEBACK_ENV}=1, or give run --traceback, to see where)"
