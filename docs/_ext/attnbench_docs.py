"""Sphinx extension for attnbench's reference pages: tables generated from the code, so they cannot drift.

Directives:

* ``attnbench-schema``: every column of :data:`harness.store.schema.COLUMN_DEFS` with its Arrow type, role,
  where it lives (stored, hive partition, derived on reading) and its meaning;
* ``attnbench-asv-suite``: every asv benchmark of ``benchmarks/`` with its parameters, unit, version and whether
  it is in the default (per-commit) or the extended selection;
* ``attnbench-layers``: the layers of ``harness/`` as the import-linter contract in ``pyproject.toml`` states
  them (the same list the test suite enforces);
* ``attnbench-modules``: every module of the source tree with the first line of its docstring (read with
  :mod:`ast`, nothing imported).

It also registers the ``mathml`` HTML math renderer: formulas are converted to MathML at build time with
``latex2mathml``, so the built site needs neither MathJax nor a network.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from docutils import nodes
from docutils.parsers.rst import Directive

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------- tables
def _cell(content: Any) -> nodes.entry:
    entry = nodes.entry()
    para = nodes.paragraph()
    parts = content if isinstance(content, list) else [content]
    for i, part in enumerate(parts):
        if i:
            para += nodes.Text(", ")
        if isinstance(part, tuple) and part[0] == "code":
            para += nodes.literal(text=part[1])
        else:
            para += nodes.Text("" if part is None else str(part))
    entry += para
    return entry


def make_table(headers: list[str], rows: Iterable[list[Any]], widths: list[int] | None = None) -> nodes.table:
    """A docutils table; a cell is text, ``("code", text)`` or a list of those (joined with commas)."""
    rows = list(rows)
    table = nodes.table(classes=["attnbench-generated", "colwidths-given"])
    group = nodes.tgroup(cols=len(headers))
    table += group
    for width in widths or [1] * len(headers):
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    row = nodes.row()
    for header in headers:
        row += _cell(header)
    head += row
    group += head
    body = nodes.tbody()
    for values in rows:
        row = nodes.row()
        for value in values:
            row += _cell(value)
        body += row
    group += body
    return table


# ---------------------------------------------------------------------------------------------- schema
def schema_rows() -> list[list[Any]]:
    """One row per column of the store's schema: name, Arrow type, role, where it lives, meaning."""
    from harness.store import schema

    rows = []
    for col in schema.COLUMN_DEFS:
        if col.stored:
            where = "stored"
        elif col.name in schema.PARTITIONS:
            where = "hive partition"
        else:
            where = "derived on reading"
        rows.append([("code", col.name), ("code", str(col.type)), col.role, where, col.doc or "—"])
    return rows


class SchemaDirective(Directive):
    """``attnbench-schema``: the row schema, generated from ``harness/store/schema.py``."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from harness.store import schema

        intro = nodes.paragraph(text=f"Schema version {schema.SCHEMA_VERSION}; {len(schema.COLUMN_DEFS)} columns. "
                                     f"The pairing key of compare, regressions and report is: ")
        intro += nodes.literal(text=", ".join(schema.KEY))
        table = make_table(["column", "Arrow type", "role", "where", "meaning"], schema_rows(), [14, 14, 9, 10, 53])
        return [intro, table]


# ---------------------------------------------------------------------------------------------- asv suite
DEFAULT_UNITS = {"time": "seconds", "peakmem": "bytes", "mem": "bytes", "timeraw": "seconds"}


SELECTION_FLAGS = ("ATTNBENCH_ASV_EXTENDED", "ATTNBENCH_ASV_TASKS")


def _benchmark_modules(flag: str | None) -> dict[str, Any]:
    """The benchmark modules as asv sees them with one selection flag set (``None``: the default suite)."""
    saved = {name: os.environ.get(name) for name in SELECTION_FLAGS}
    for name in SELECTION_FLAGS:
        os.environ[name] = "1" if name == flag else "0"
    try:
        for name in [m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks.")]:
            del sys.modules[name]
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        modules = {}
        for path in sorted((ROOT / "benchmarks").glob("bench_*.py")):
            modules[path.stem] = importlib.import_module(f"benchmarks.{path.stem}")
        return modules
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for name in [m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks.")]:
            del sys.modules[name]


def _classes(module: Any) -> dict[str, type]:
    return {name: obj for name, obj in vars(module).items()
            if inspect.isclass(obj) and obj.__module__ == module.__name__}


def asv_rows() -> list[list[Any]]:
    """One row per asv benchmark method: name, parameters, unit, category and direction, version, selection,
    what it measures."""
    default = {(m, c) for m, mod in _benchmark_modules(None).items() for c in _classes(mod)}
    tasks = {(m, c) for m, mod in _benchmark_modules("ATTNBENCH_ASV_TASKS").items() for c in _classes(mod)}
    rows = []
    for mod_name, module in _benchmark_modules("ATTNBENCH_ASV_EXTENDED").items():
        for cls_name, cls in _classes(module).items():
            names = list(getattr(cls, "param_names", []))
            params = list(getattr(cls, "params", []))
            if params and names and not isinstance(params[0], (list, tuple)):
                params = [params]
            param_text = "; ".join(f"{n} = {', '.join(map(str, v))}" for n, v in zip(names, params)) or "none"
            doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ").replace("``", "")
            doc = doc.split(". ")[0].rstrip(".") + "."
            for attr in dir(cls):
                prefix = attr.split("_", 1)[0]
                if prefix not in ("time", "timeraw", "track", "peakmem", "mem") or "_" not in attr:
                    continue
                method = getattr(cls, attr)
                if not callable(method):
                    continue
                unit = getattr(method, "unit", None) or DEFAULT_UNITS.get(prefix, "unit")
                version = getattr(method, "version", None) or getattr(cls, "version", None) or "source hash"
                selection = ("default" if (mod_name, cls_name) in default
                             else "ATTNBENCH_ASV_TASKS=1" if (mod_name, cls_name) in tasks else "extended")
                judged = {"time": ("speed", "lower"), "timeraw": ("speed", "lower"), "peakmem": ("memory", "lower"),
                          "mem": ("memory", "lower")}.get(prefix) or (getattr(method, "category", None),
                                                                        getattr(method, "direction", None))
                rows.append([("code", f"{mod_name}.{cls_name}.{attr}"), param_text, unit,
                             f"{judged[0]}, {judged[1]} is better", ("code", str(version)), selection, doc])
    return rows


class AsvSuiteDirective(Directive):
    """``attnbench-asv-suite``: the asv benchmarks, generated from ``benchmarks/``."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        return [make_table(["benchmark", "parameters", "unit", "category", "version", "selection",
                            "what it measures"], asv_rows(), [22, 20, 8, 12, 9, 9, 20])]


# ---------------------------------------------------------------------------------------------- layers
def layer_rows() -> list[list[Any]]:
    """The layers of ``harness/`` as import-linter holds them (``pyproject.toml``), highest first, each with
    the first line of its modules' docstrings."""
    import tomllib

    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = next(c for c in settings["contracts"] if c["type"] == "layers")
    rows = []
    for layer in contract["layers"]:
        names = [n.strip() for n in layer.replace(":", "|").split("|")]
        described = []
        for name in names:
            path = ROOT / "harness" / name
            source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
            doc = ast.get_docstring(ast.parse(source.read_text())) or ""
            described.append(f"{name}: {doc.strip().splitlines()[0] if doc else '—'}")
        rows.append([[("code", f"harness.{n}") for n in names], " / ".join(described)])
    return rows


class LayersDirective(Directive):
    """``attnbench-layers``: the layers of ``harness/``, read from the import-linter contract."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        return [make_table(["layer (highest first)", "what it holds"], layer_rows(), [30, 70])]


# ---------------------------------------------------------------------------------------------- layout
LAYOUT_ROOTS = ("harness", "plugins", "cython_kernels", "benchmarks", "tools")


def module_rows() -> list[list[Any]]:
    """Every ``.py``/``.pyx``/``.sh`` file of the source tree with the first line of its docstring."""
    rows = []
    for top in LAYOUT_ROOTS:
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix not in (".py", ".pyx", ".sh") or "__pycache__" in path.parts:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            first = ""
            if path.suffix == ".py":
                try:
                    first = (ast.get_docstring(ast.parse(text)) or "").strip().split("\n")[0]
                except SyntaxError:
                    first = ""
            elif path.suffix == ".pyx":
                stripped = text.lstrip()
                if stripped.startswith(('"""', "'''")):
                    first = stripped[3:].strip().split("\n")[0].rstrip('"\' ')
            else:
                comments = [ln[1:].strip() for ln in text.splitlines()[1:6] if ln.startswith("#")]
                first = comments[0] if comments else ""
            rows.append([("code", str(path.relative_to(ROOT))), first or "—"])
    return rows


class ModulesDirective(Directive):
    """``attnbench-modules``: the source tree's modules and what each holds."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        return [make_table(["file", "holds"], module_rows(), [30, 70])]


# ---------------------------------------------------------------------------------------------- math
def _mathml(latex: str, display: bool) -> str:
    from latex2mathml.converter import convert

    return convert(latex, display="block" if display else "inline")


def _visit_inline(self: Any, node: nodes.Element) -> None:
    self.body.append(_mathml(node.astext(), display=False))
    raise nodes.SkipNode


def _visit_block(self: Any, node: nodes.Element) -> None:
    if node.get("label"):
        self.body.append(f'<span class="eqno">({node["number"]})</span>')
    self.body.append(f'<div class="math">{_mathml(node.astext(), display=True)}</div>')
    raise nodes.SkipNode


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("attnbench-schema", SchemaDirective)
    app.add_directive("attnbench-asv-suite", AsvSuiteDirective)
    app.add_directive("attnbench-modules", ModulesDirective)
    app.add_directive("attnbench-layers", LayersDirective)
    app.add_html_math_renderer("mathml", (_visit_inline, None), (_visit_block, None))
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
