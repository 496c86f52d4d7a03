# tm-export developer tasks. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help

.PHONY: help install demo test lint format bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install tm-export with its development tools

demo: $(STAMP) ## Export recipes/demo.yaml from the bundled mock server and compare the counts
	$(BIN)/python scripts/demo.py

test: $(STAMP) ## Run the test suite
	$(BIN)/python -m pytest -q

lint: $(STAMP) ## Check style (ruff) and types (mypy)
	$(BIN)/ruff check tm_export tests scripts bench
	$(BIN)/ruff format --check tm_export tests scripts bench
	$(BIN)/mypy tm_export

format: $(STAMP) ## Reformat the code with ruff
	$(BIN)/ruff check --fix tm_export tests scripts bench
	$(BIN)/ruff format tm_export tests scripts bench

bench: $(STAMP) ## Run the benchmarks in bench/ (not part of the tests)
	$(BIN)/python bench/run.py

clean: ## Remove the virtualenv, caches, exports/ and bench/.work/ (bench/.peers/, the other tools the benchmark installs, stays)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache exports bench/.work
	find tm_export tests scripts bench -name __pycache__ -type d -prune -exec rm -rf {} +
