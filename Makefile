# MSAT reproduction suite. `make help` lists the targets.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2
export WANDB_MODE ?= offline
export HF_DATASETS_OFFLINE ?= 1

.DEFAULT_GOAL := help
.PHONY: help install test test-full demo clean

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sort | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}'

$(STAMP): requirements-lock.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-lock.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP) ## Create .venv with the pinned package set and the package (editable)

test: $(STAMP) ## Run the fast test suite (installs first if needed)
	$(BIN)/python -m pytest -q

test-full: $(STAMP) ## Run every test, the slow ones included
	$(BIN)/python -m pytest -q -m "slow or not slow"

demo: $(STAMP) ## Train the digits ANN (if absent) and run the demo on the bundled default
	$(BIN)/python train_ann.py

clean: ## Remove run directories (keeps .venv and checkpoints)
	rm -rf outputs multirun wandb
