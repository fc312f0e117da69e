# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv with the python3 found on PATH (3.11+) and installs the project into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,fast]'
	touch $@

$(VENV)/.installed-bench: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,fast,bench]'
	touch $@

# The V3 demo (its OAuth2 device login, the approval scripted), then the legacy v1 one.
demo: $(VENV)/.installed
	$(BIN)/python -m engine demo
	$(BIN)/python -m engine demo --api v1

# Four workers, each test file in one of them (its module fixtures are built once): the suite
# mostly waits on loopback sockets and subprocesses, so four beat two on 2 cores.
test: $(VENV)/.installed-test
	$(BIN)/python -m ruff check engine tests benchmarks
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -n 4 --dist loadfile

lint: $(VENV)/.installed-test
	$(BIN)/python -m ruff check engine tests benchmarks
	$(BIN)/python -m ruff format --check engine tests benchmarks
	$(BIN)/python -m mypy

bench: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks

bench-quick: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
