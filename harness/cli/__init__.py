"""The ``attnbench`` command line: one module per command (``harness/cli/<command>.py``, each with
``add_parser`` and ``run``), the options they share in :mod:`.options`.

A mistake in the command (an unknown backend or task, a bad parameter, missing data) prints one line and
exits with code 2 before anything is measured.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import UserError

EXIT_USAGE = 2
EXIT_INTERNAL = 3  # 1 is kept for "regression" and "a cell failed"


#: The commands, in the order ``--help`` lists them (a module of this package each).
COMMANDS = ("backends", "models", "tasks", "run", "instructions", "new_backend", "import_asv", "compare", "ab",
            "regressions", "report")


_EPILOG = ("First run: attnbench run -b dense -b topk:k=16 --tasks mrpc,rte (the bundled sample, offline).\n"
           "`attnbench COMMAND --help` describes a command; the documentation is in docs/ (make docs).")


class _Parser(argparse.ArgumentParser):
    """Refuses a bad command line in one line (exit 2) instead of the usage block first."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


class _VersionAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001 - argparse's signature
        from ..version import version_text

        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="attnbench", epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="attnbench: a benchmark harness for attention backends of BERT-family encoders on the "
                    "nine GLUE tasks.\nDocumentation: docs/ in the source tree (`make docs` builds "
                    "docs/_build/html/index.html).\nIt measures accuracy, agreement with dense attention, speed "
                    "and memory of every backend and stores tidy rows in a Parquet store.")
    parser.add_argument("--version", action=_VersionAction, nargs=0,
                        help="print attnbench's version, torch's, transformers' and the kernels' build, and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        importlib.import_module(f".{command}", __name__).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a terminal that cannot show "×" or "÷" must not fail the command
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"attnbench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("attnbench: interrupted; finished cells are in the store: rerun the same command with --resume",
              file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a mistake, a regression or a failed cell: its own exit code
        from ..execution.outcome import internal_error

        print(internal_error(exc, traceback=getattr(args, "traceback", False)), file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
