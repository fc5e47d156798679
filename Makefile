# OPAL: two commands do everything. `make demo` runs the whole story;
# `make test` runs the test suite. Both create the virtualenv they need.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench install lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml Makefile
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/opal demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# benchmarks/ is not installed (not in the wheel): run from the repository root.
bench: $(STAMP)
	$(BIN)/python -m benchmarks

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet ruff mypy
	$(BIN)/ruff check opal benchmarks
	$(BIN)/mypy opal
	$(BIN)/mypy benchmarks

clean:
	rm -rf $(VENV) .opal-demo .opal-demo-auditor.json .pytest_cache *.egg-info
