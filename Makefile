# Two commands on a fresh machine: `make run` (the whole system) and `make test` (the whole suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: run test install services migrate lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

services:
	@.ci/services.sh

migrate: install services
	@$(BIN)/imagingctl migrate

run: install services
	@$(BIN)/imagingctl migrate
	@$(BIN)/imagingctl seed-admin
	@exec $(BIN)/imagingctl run-all

test: install services
	@$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	@$(BIN)/ruff check .

# The round-trip benchmark; the others run by hand after the same set-up (README, Benchmark), e.g.
# `$(BIN)/python bench/dicomweb.py` (ours next to Orthanc, which bench-tools.sh installs).
bench: install services
	@.ci/bench-tools.sh
	@$(BIN)/python bench/roundtrip.py

clean:
	rm -rf $(VENV) .pytest_cache
