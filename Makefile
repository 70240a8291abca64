# Two commands on a fresh machine with only Python >= 3.11:
#   make demo   -- simulator + daemon for ~20 s, then what was captured
#   make test   -- lint, type-check and the whole test suite
# Each builds (or refreshes) .venv from pyproject.toml first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo lake-demo test lint typecheck bench venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	rm -rf demo-data  # each demo shows its own capture
	$(BIN)/mlink-capture demo --config config/demo.toml --root demo-data $(if $(SECONDS),--seconds $(SECONDS),)

# The demo with the lake on: S3 (moto) and an Iceberg SQLite catalog, both on loopback.
lake-demo: $(STAMP)
	rm -rf demo-data
	$(BIN)/mlink-capture demo --lake --root demo-data $(if $(SECONDS),--seconds $(SECONDS),)

lint: $(STAMP)
	$(BIN)/ruff check capture tests tools bench

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

# End-to-end benchmark (bench/README.md): the daemon process against a replay server, 1 and 11
# stripes, baselines on the same bytes; a few minutes. BENCH_ARGS passes options, e.g.
#   make bench BENCH_ARGS="--minutes 10"   (soak)     make bench BENCH_ARGS="--profile gil"
bench: $(STAMP)
	$(BIN)/python bench/bench_e2e.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo-data .pytest_cache .mypy_cache .ruff_cache .hypothesis
