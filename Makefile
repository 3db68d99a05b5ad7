# Vigil — `make run` starts the whole stack locally, `make test` runs the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all install run test test-fast lint bench clean

all: lint test

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## run: the whole stack (embedded Redis if none answers at VIGIL_REDIS_URL); Ctrl-C stops it
run: install
	$(BIN)/python tools/run_local.py

## test: start private redis-server and mariadbd processes and run every test
test: install
	@tools/ensure-servers.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check shared services tests tools
	$(BIN)/mypy

bench: install
	@tools/ensure-servers.sh
	$(BIN)/python -m tests.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info .bench
