# attnbench: `make run` (main job on the embedded default) and `make test` (the whole test suite).
# Both create .venv/ on first use. pip, not uv: only pip picks up the local torch==2.13.0 CPU wheel.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.attnbench-installed
BACKENDS ?= -b dense -b dense:impl=eager
RUN_ARGS ?=

.PHONY: run test venv clean-venv

run: $(STAMP)
	$(VENV)/bin/attnbench run $(BACKENDS) $(RUN_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(TEST_ARGS)

venv: $(STAMP)

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
