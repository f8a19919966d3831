# Contrastive-DP: `make demo` and `make test` do all the set-up themselves on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of PyTorch by default: on these machines torch==2.13.0 is a local CPU wheel, while a bare
# `torch` requirement would pull a multi-GB CUDA build. GPU hosts use Dockerfile.gpu or override TORCH_SPEC.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp
PIP := $(BIN)/python -m pip --disable-pip-version-check
# Every other package at the version CI passed with (pip freeze of a green run; `make lock` refreshes it).
CONSTRAINTS := constraints.txt

.PHONY: install test lint demo demo-gaussian demo-service up clean lock schemathesis

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) install --progress-bar off "$(TORCH_SPEC)"
	$(PIP) install --progress-bar off -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Re-pin after a dependency change: resolve the ranges of pyproject.toml afresh, then freeze what resolved.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --progress-bar off "$(TORCH_SPEC)"
	.venv-lock/bin/python -m pip install --progress-bar off -e ".[dev]"
	{ sed -n '1,2p' $(CONSTRAINTS); .venv-lock/bin/python -m pip freeze --exclude-editable | grep -iv '^torch=='; } \
		> $(CONSTRAINTS).new && mv $(CONSTRAINTS).new $(CONSTRAINTS) && rm -rf .venv-lock

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

# Schemathesis in full (every check and phase, 20 examples per operation) against a fresh embedded stack with
# API keys (tests/service/schemathesis_run.py); the suite runs a reduced form.
schemathesis: $(STAMP)
	$(BIN)/python -m tests.service.schemathesis_run --examples 20 --seed 7

# The service end to end on digits over HTTP (cdp demo: embedded Redis + worker + API), then the Gaussian study.
demo: demo-service demo-gaussian

demo-service: $(STAMP)
	$(BIN)/cdp demo

# The embedded stack: Redis, one worker, the API on 127.0.0.1:8000, files under ./var. Ctrl-C stops all.
up: $(STAMP)
	$(BIN)/cdp up

# The paper's Table 1 study, d = 2 (§3): prints the table, writes the figures under var/demo/ and names them.
demo-gaussian: $(STAMP)
	$(BIN)/cdp simulate gaussian --dim 2 --mu-norm-sq 2 --eps 0.5 --angle 0 --n-real 10 --real-sizes 10,100 \
		--n-syn 10,20,50,100 --c 0.5,1,1.5 --direction clean --trials 50 --seed 0 --plot var/demo/gaussian.png

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
