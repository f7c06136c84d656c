# Regina for Python — one command set for humans, hooks and CI.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Test processes: the suite mostly waits on the servers it starts (load ≈ 1 on 2 cores), so two
# pytest processes (each its own Redis, fake LLM and cluster; a file's tests stay together) take
# about 0.6x of one's time. TEST_PROCS=0 runs it in this process.
TEST_PROCS ?= 2
PYTEST := $(BIN)/python -m pytest -q $(if $(filter-out 0,$(TEST_PROCS)),-n $(TEST_PROCS) --dist loadfile)

.DEFAULT_GOAL := help
.PHONY: help install run test test-unit test-integration lint format typecheck bench clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install Regina with its dev tools (idempotent)

run: install ## Run web + worker + embedded Redis on http://127.0.0.1:3000 (Ctrl-C stops)
	REGINA_CONFIG=$${REGINA_CONFIG:-regina.yaml} $(BIN)/regina up

test: install ## Run the whole test suite (starts its own Redis, workers, fake LLM, S3)
	$(PYTEST)

test-unit: install ## Only the unit tests (no servers)
	$(PYTEST) tests/unit

test-integration: install ## Only the integration tests
	$(PYTEST) tests/integration

lint: install ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check regina api workers storage

format: install ## ruff format + autofix
	$(BIN)/ruff format regina api workers storage
	$(BIN)/ruff check --fix .

typecheck: install ## mypy --strict on the packages
	$(BIN)/mypy

bench: install ## Run the benchmarks (prints figures for docs/benchmarks.md)
	$(BIN)/python -m benchmarks

clean: ## Remove the virtualenv, caches and local data
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache data *.egg-info
