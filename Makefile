# Two commands on a fresh machine with only Python >= 3.11:
#   make demo   -- simulator + daemon for ~20 s, then what was captured
#   make test   -- lint, type-check and the whole test suite
# Each builds (or refreshes) .venv from pyproject.toml first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck bench bench-compact venv clean dist lake-demo

RUNTIME_STAMP := $(VENV)/.runtime-stamp

# The test tools (moto, polars, duckdb, mypy, ...) take longer to install than the demo runs:
# `make demo` on a fresh clone installs the daemon's own dependencies only.
$(RUNTIME_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUNTIME_STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP) $(RUNTIME_STAMP)

venv: $(STAMP)

demo: $(RUNTIME_STAMP)
	rm -rf demo-data  # each demo shows its own capture
	$(BIN)/mlink-capture demo --config config/demo.toml --root demo-data $(if $(SECONDS),--seconds $(SECONDS),)

# A wheel to install outside a clone (README, Install): dist/mlink_capture-VERSION-py3-none-any.whl
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir dist .

# The demo with the lake on: S3 (moto) and an Iceberg SQLite catalog, both on loopback.
lake-demo: $(STAMP)
	rm -rf demo-data
	$(BIN)/mlink-capture demo --lake --root demo-data $(if $(SECONDS),--seconds $(SECONDS),)

lint: $(STAMP)
	$(BIN)/ruff check capture tests tools bench

typecheck: $(STAMP)
	$(BIN)/mypy

# The suite on TEST_WORKERS pytest-xdist workers, a whole test module per worker (its
# module-scoped fixtures are made once; tests/conftest.py starts the longest modules first).
# One worker more than the cores: the suite waits on processes and sockets part of the time.
# Not more: the real-time tests (crash, e2e) assume the daemon keeps up with the simulator,
# which 4 workers on 2 busy cores broke. TEST_WORKERS=0: one process.
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(len(os.sched_getaffinity(0)) + 1 if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1) + 1)')
test: lint typecheck
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# End-to-end benchmark (bench/README.md): the daemon process against a replay server, 1 and 11
# stripes, baselines on the same bytes; a few minutes. BENCH_ARGS passes options, e.g.
#   make bench BENCH_ARGS="--minutes 10"   (soak)     make bench BENCH_ARGS="--profile gil"
bench: $(STAMP)
	$(BIN)/python bench/bench_e2e.py $(BENCH_ARGS)

# Compaction benchmark (bench/README.md, "Compaction"): bytes vs a DuckDB zstd rewrite, rows per
# row group, the README's three queries on a compacted day vs the live files.  A few minutes;
# on a shared machine: nice -n 19 make bench-compact
bench-compact: $(STAMP)
	$(BIN)/python bench/bench_compact.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) dist build demo-data .pytest_cache .mypy_cache .ruff_cache .hypothesis
