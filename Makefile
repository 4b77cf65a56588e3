# The two commands of the README. Each creates .venv when missing and installs the project.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test test-fast lint bench bench-report mutate clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)            ## the main job on the embedded default (digits, local Ray, files in ./runs)
	$(VENV)/bin/prunesearch demo

test: lint               ## lint, then the whole test suite
	$(PY) -m pytest -q --durations=10

lint: $(STAMP)            ## ruff lint and format check, mypy on pipeline/ and search/ (settings in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test-fast: $(STAMP)       ## unit tests only (no Ray cluster, no subprocesses)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)           ## benchmark scripts (need ../shared); write benchmarks/results/
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/methods.py --threads 1   # about 35 min on 2 cores; the published tables are 1-thread runs
	$(PY) benchmarks/search_bench.py       # about 45 min; reads methods.json for its comparison
	$(PY) benchmarks/load.py
	$(PY) benchmarks/peers.py        # about 1 hour

bench-report: $(STAMP)    ## the benchmarks' Markdown again from their recorded JSON (no torch, no runs)
	$(PY) benchmarks/methods_report.py
	$(PY) benchmarks/search_report.py
	$(PY) benchmarks/load.py --render-only
	$(PY) benchmarks/peers_report.py

mutate: $(STAMP)          ## one-line breaks of core logic in a temporary copy; writes benchmarks/results/mutate.*
	$(PY) benchmarks/mutate.py

clean:
	rm -rf runs .pytest_cache .mypy_cache
