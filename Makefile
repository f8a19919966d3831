# Contrastive-DP: `make demo` and `make test` do all the set-up themselves on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of PyTorch by default: on these machines torch==2.13.0 is a local CPU wheel, while a bare
# `torch` requirement would pull a multi-GB CUDA build. GPU hosts use Dockerfile.gpu or override TORCH_SPEC.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: install test lint demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) install --progress-bar off "$(TORCH_SPEC)"
	$(PIP) install --progress-bar off -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/cdp simulate gaussian --help >/dev/null

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
