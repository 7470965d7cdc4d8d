# Two commands on a fresh clone with only python3:
#   make run    set up .venv and start every sockproto service on its loopback default
#   make test   set up .venv and run every check: lint, types, pytest, trial, docs
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.deps-stamp

.PHONY: run test install lint typecheck pytest trial docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q ".[test,lint,docs]"
	touch $(STAMP)

# A regular (not editable) install, so twistd finds the plugin as users will.
install: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps --force-reinstall .

run: install
	$(BIN)/twistd --pidfile= -n sockproto

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: install
	$(BIN)/python -m pytest

trial: install
	$(BIN)/python -m twisted.trial tests.unit

docs: $(STAMP)
	$(BIN)/sphinx-build -q -W --keep-going -b html docs docs/_build/html

test: install lint typecheck pytest trial docs

bench: install
	$(BIN)/python -m pip install -q ".[bench]"
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info docs/_build _trial_temp .pytest_cache .mypy_cache .ruff_cache
