# Two commands on a fresh machine with only Python >= 3.11:
#   make demo   -- simulator + daemon for ~20 s, then what was captured
#   make test   -- lint, type-check and the whole test suite
# Each builds (or refreshes) .venv from pyproject.toml first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck bench venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/mlink-capture demo --config config/demo.toml --root demo-data $(if $(SECONDS),--seconds $(SECONDS),)

lint: $(STAMP)
	$(BIN)/ruff check capture tests tools bench

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/bench_decode.py

clean:
	rm -rf $(VENV) demo-data .pytest_cache .mypy_cache .ruff_cache .hypothesis
