# Two commands on a fresh machine: `make dev` (mock mode) and `make test`; `make setup` only installs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_KIT := kits/node/node_modules/.installed

.PHONY: setup dev serve test lint format clean docs docs-build

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[mock,dev,guardrails]'
	touch $(STAMP)

## set up .venv (the broker, its tests' and the docs' tools) without starting anything
setup: $(STAMP)
	@echo "set up: .venv/bin/chatkit-broker init (a starter project), make dev (mock mode), make test"

## set up and start the broker in mock mode on http://127.0.0.1:8000 (no OpenAI key needed)
dev: $(STAMP)
	@echo "mock mode: canned replies, no key. For a real agent workflow: $(CURDIR)/$(BIN)/chatkit-broker init in an empty folder (docs/tutorial/agent.md)"
	$(BIN)/chatkit-broker serve --mock

# the Node verifier's dependencies (jose), from its lockfile
$(NODE_KIT): kits/node/package-lock.json
	cd kits/node && npm ci --no-audit --no-fund
	touch $@

## set up and run the whole test suite: ruff, the Node verifier's tests, pytest
test: $(STAMP) $(NODE_KIT)
	$(BIN)/ruff check broker tests benchmarks
	$(BIN)/ruff format --check broker tests benchmarks
	cd kits/node && npm test
	$(BIN)/python -m pytest -q

## serve the docs site on http://127.0.0.1:8001 (reloads on edits)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a 127.0.0.1:8001

## the docs site's strict build (a broken link or a page missing from the nav fails it), as CI runs it
docs-build: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(BIN)/ruff check broker tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format broker tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info kits/node/node_modules
