# Two commands on a fresh machine: `make dev` (mock mode) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev serve test lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[mock,dev,guardrails]'
	touch $(STAMP)

## set up and start the broker in mock mode on http://127.0.0.1:8000 (no OpenAI key needed)
dev: $(STAMP)
	$(BIN)/chatkit-broker serve --mock

## set up and run the whole test suite
test: $(STAMP)
	$(BIN)/ruff check broker tests benchmarks
	$(BIN)/ruff format --check broker tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check broker tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format broker tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
