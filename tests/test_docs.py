"""The documentation a user reads: README.md and docs/ say what the code does, and their examples run.

- README.md stays a short front door whose relative links resolve;
- ``attnbench --version`` and ``--help`` say what they must;
- every ```python block of README.md and docs/ runs, against a store written by the real tool (a fragment
  that cannot run on its own is fenced as ```py instead);
- the short CLI examples of the tutorials run on the bundled sample, exactly as the pages print them.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md"] + [p for p in PAGES if "_build" not in p.parts]


def test_readme_is_a_short_front_door_whose_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    relative = [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    assert relative, "the README links into the docs"
    missing = [t for t in relative if not (ROOT / t.split("#")[0]).exists()]
    assert missing == []
    for section in ("## Set-up", "## Built-in backends", "## A minimal backend plugin", "pandas", "## Documentation"):
        assert section in text


def test_every_docs_page_starts_with_one_title():
    for page in _markdown_files()[1:]:
        lines = page.read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("# "), page
        in_code, titles = False, 0
        for line in lines:
            in_code = not in_code if line.startswith("```") else in_code
            titles += (not in_code and line.startswith("# "))
        assert titles == 1, page


def test_version_names_attnbench_torch_transformers_and_the_kernels(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"attnbench {metadata.version('attnbench')}"
    assert f"torch {metadata.version('torch')}" in lines
    assert f"transformers {metadata.version('transformers')}" in lines
    kernels = next(line for line in lines if line.startswith("kernels: "))
    import cython_kernels

    if cython_kernels.AVAILABLE:
        assert f"GEMM ISA {cython_kernels.cpu_features()['isa']}" in kernels
    else:
        assert cython_kernels.UNAVAILABLE_REASON in kernels


def test_help_says_what_attnbench_is_and_where_the_docs_are(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    description = out.split("\n\n")[1].splitlines()
    assert description[0].startswith("attnbench: a benchmark harness for attention backends")
    assert "docs/" in description[1]
    for command in ("run", "compare", "ab", "regressions", "report", "import-asv", "backends", "tasks"):
        assert re.search(rf"^\s+{re.escape(command)}\b", out, re.M), command
    assert "User errors print one line" not in out


def test_a_bad_option_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--limit", "0"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.count("\n") == 1 and "--limit" in err and "usage:" not in err


def _commands(page: str) -> list[str]:
    """The ``attnbench …`` command lines of a page's code blocks, in order."""
    text = (DOCS / page).read_text(encoding="utf-8")
    return [line.removeprefix("$ ").split("  #")[0].strip()
            for line in text.splitlines() if line.removeprefix("$ ").startswith("attnbench ")]


def _run(command: str, replace: dict[str, str]) -> int:
    for old, new in replace.items():
        command = command.replace(old, new)
    argv = shlex.split(command)
    assert argv[0] == "attnbench"
    return main(argv[1:])


@pytest.fixture(scope="module")
def tutorial_store(tmp_path_factory) -> Path:
    """The store of the MRPC/RTE tutorial's quick run, made by the command the page prints."""
    home = tmp_path_factory.mktemp("tutorial")
    run, compare = _commands("tutorials/mrpc-rte.md")[:2]
    assert "--tasks mrpc,rte" in run and "--limit 40" in run and compare.startswith("attnbench compare --baseline dense")
    store = home / "results" / "store"
    assert _run(run, {"/tmp/attnbench-tutorial": str(store)}) == 0
    return store


def test_first_run_tutorial_command_prints_metrics_and_paired_verdicts(capsys):
    command = _commands("tutorials/first-run.md")[0]
    assert "--no-store" in command and "--tasks rte" in command
    assert _run(command, {}) == 0
    out = capsys.readouterr().out
    assert "task metrics (validation) with 95 % intervals" in out
    assert "change vs dense on the same examples" in out and "topk:k=8" in out
    assert re.search(r"^rte\s+accuracy\s+[01]\.\d{3} \[", out, re.M)


def test_mrpc_rte_tutorial_commands_answer_with_verdicts(tutorial_store, capsys):
    from harness import read_results

    compare = _commands("tutorials/mrpc-rte.md")[1]
    capsys.readouterr()
    assert _run(compare, {"/tmp/attnbench-tutorial": str(tutorial_store)}) in (0, 1)
    out = capsys.readouterr().out
    assert "vs **dense**" in out
    assert re.search(r"^\| mrpc \| accuracy \| topk:k=8 \|", out, re.M)
    assert re.search(r"^\| rte \| accuracy \| topk:k=8 \|", out, re.M)
    assert re.search(r"^\| 1x128 \| latency_forward \| topk:k=8 \|", out, re.M)
    rows = read_results(tutorial_store)
    assert set(rows.task.dropna()) == {"mrpc", "rte"}
    assert (rows[rows.category == "quality"].n_examples == 40).all()


def test_track_history_tutorial_walkthrough_prints_what_the_page_shows(tmp_path, capsys, monkeypatch):
    """The console block after ``<!-- fixture-walkthrough -->``: every command runs as printed (from the
    repository root, the store in a temporary directory) and prints the lines the page shows."""
    monkeypatch.chdir(ROOT)
    text = (DOCS / "tutorials/track-history.md").read_text(encoding="utf-8")
    block = text.split("<!-- fixture-walkthrough -->", 1)[1].split("```", 2)[1]
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines()[1:]:
        if line.startswith("$ "):
            steps.append((line[2:].strip(), []))
        elif line.strip():
            steps[-1][1].append(line.replace("/tmp/asv", str(tmp_path / "asv")))
    assert [c.split()[1] for c, _ in steps] == ["import-asv", "import-asv", "regressions", "report"]
    for command, expected in steps:
        assert _run(command, {"/tmp/asv": str(tmp_path / "asv")}) == 0, command
        printed = capsys.readouterr().out.splitlines()
        assert [line for line in expected if line not in printed] == [], command
    assert (tmp_path / "asv" / "report.html").stat().st_size > 0


def _python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path in _markdown_files():
        for i, code in enumerate(PYTHON_BLOCK.findall(path.read_text(encoding="utf-8"))):
            blocks.append((f"{path.relative_to(ROOT)}[{i}]", code))
    return blocks


BLOCKS = _python_blocks()


def test_the_docs_have_python_examples():
    names = {name.split("[")[0] for name, _ in BLOCKS}
    assert {"README.md", "docs/tutorials/pandas.md", "docs/how-to/add-a-task.md"} <= names


@pytest.mark.parametrize("name,code", BLOCKS, ids=[name for name, _ in BLOCKS])
def test_python_example_runs(name, code, tutorial_store, monkeypatch):
    monkeypatch.chdir(tutorial_store.parents[1])  # the examples read "results/store"
    namespace: dict = {"__name__": f"docs_example_{abs(hash(name))}"}
    exec(compile(code, name, "exec"), namespace)
    if "df" in namespace:
        assert len(namespace["df"]) > 0
    if "flips" in namespace:
        assert set(namespace["flips"].columns) >= {"prediction", "reference"}
