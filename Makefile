# attnbench: `make run` (main job on the embedded default), `make test` (the whole test suite) and
# `make docs` (the documentation site in docs/_build/html, warnings are errors).
# Both create .venv/ on first use. pip, not uv: only pip picks up the local torch==2.13.0 CPU wheel.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.attnbench-installed
DOCS_STAMP := $(VENV)/.attnbench-docs-installed
BACKENDS ?= -b dense -b dense:impl=eager
RUN_ARGS ?=

.PHONY: run test docs venv clean-venv

run: $(STAMP)
	$(VENV)/bin/attnbench run $(BACKENDS) $(RUN_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(TEST_ARGS)

# -W --keep-going: every warning (a broken cross-reference, a renamed function or option) fails the build,
# after reporting all of them. -E: read every page again, so a stale environment never hides a warning.
docs: $(DOCS_STAMP)
	$(PY) -m sphinx -b html -W --keep-going -E -q docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

venv: $(STAMP)

# The `docs` extra of pyproject.toml, installed on its own (reinstalling the project would rebuild the kernels).
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt $$($(PY) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['docs']))")
	touch $(DOCS_STAMP)

# Build requirements first, then the project without build isolation so that cython_kernels compiles
# against the installed CPU torch (an isolated build would install torch again: asv.conf.json does the same).
$(STAMP): pyproject.toml setup.py constraints.txt $(wildcard cython_kernels/*.pyx cython_kernels/*.pxd)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch Cython setuptools wheel numpy
	$(PY) -m pip install --quiet -c constraints.txt --no-build-isolation -e ".[test]"
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
