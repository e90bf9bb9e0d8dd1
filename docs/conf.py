"""Sphinx configuration of attnbench's documentation (MyST Markdown; `make docs` builds it with -W)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent / "_ext"))

from harness.version import attnbench_version  # noqa: E402

project = "attnbench"
author = "attnbench contributors"
copyright = "attnbench contributors"
release = attnbench_version()
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinxarg.ext",
    "attnbench_docs",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3

# Formulas are rendered to MathML at build time (attnbench_docs): the site loads nothing from a network.
html_math_renderer = "mathml"
html_theme = "alabaster"
html_theme_options = {"description": "benchmark harness for attention backends on GLUE", "fixed_sidebar": True,
                      "page_width": "1280px", "body_max_width": "none"}
html_static_path = ["_static"]
html_css_files = ["attnbench.css"]
html_title = f"attnbench {release}"
html_show_sourcelink = False

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = False

# Reference pages import the package; keep imports free of side effects.
os.environ.setdefault("ATTNBENCH_PLUGINS", "")
smartquotes = False
