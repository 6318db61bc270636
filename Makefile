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
.PHONY: help install test test-full demo clean sweep-grid sweep-optuna reproduce-all \
	reproduce-table3 reproduce-table4 reproduce-table5 reproduce-table6 reproduce-table7 reproduce-table8 \
	reproduce-fig2 reproduce-fig5 reproduce-fig6 reproduce-fig7 compare-methods reproduce-claims

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

# Reproduce targets: SMOKE=1 runs the same pipeline on synthetic data (T=8, minutes on a CPU) and
# writes outputs/smoke/results/ instead of results/; CKPT_DIR=dir uses (or trains into) dir.
REPRO = $(BIN)/python -m experiments.reproduce $(if $(filter 1,$(SMOKE)),--smoke) $(if $(CKPT_DIR),--ckpt-dir $(CKPT_DIR))

demo: $(STAMP) ## Train digits_cnn (if absent), fixed threshold vs MSAT: results/demo.md + demo.png (< 3 min)
	$(REPRO) demo

reproduce-table3: $(STAMP) ## Table 3: VGG16/ResNet20 x CIFAR-10/100, MSAT (SMOKE=1, CKPT_DIR=)
	$(REPRO) table3
reproduce-table4: $(STAMP) ## Table 4: VGG16 CIFAR-10, fixed vs MSAT at T=16..256
	$(REPRO) table4
reproduce-table5: $(STAMP) ## Table 5: ResNet34 ImageNet, MSAT
	$(REPRO) table5
reproduce-table6: $(STAMP) ## Table 6: IMDB BiLSTM and Speech Commands M5, fixed vs MSAT
	$(REPRO) table6
reproduce-table7: $(STAMP) ## Table 7: spike confidence ablation (ANS, accuracy at T=32)
	$(REPRO) table7
reproduce-table8: $(STAMP) ## Table 8: energy, VGG16 CIFAR-100, T=64
	$(REPRO) table8
reproduce-fig2: $(STAMP) ## Fig. 2: SIN ratio per layer over t
	$(REPRO) fig2
reproduce-fig5: $(STAMP) ## Fig. 5: fixed, 0.2 Vth, DTT, DET, MSAT accuracy curves
	$(REPRO) fig5
reproduce-fig6: $(STAMP) ## Fig. 6: accuracy with and without spike confidence
	$(REPRO) fig6
reproduce-fig7: $(STAMP) ## Fig. 7: firing rate per layer
	$(REPRO) fig7
reproduce-all: $(STAMP) ## Every reproduce target in turn
	$(REPRO) all

compare-methods: $(STAMP) ## Every conversion method on one ANN: results/methods.md + .png (DATASET=, MODEL=, SMOKE=1, JOBS=2)
	$(BIN)/python -m experiments.compare_methods --dataset $(DATASET) --model $(MODEL) \
	  $(if $(filter 1,$(SMOKE)),--smoke) $(if $(CKPT_DIR),--ckpt-dir $(CKPT_DIR)) $(if $(JOBS),--jobs $(JOBS))

reproduce-claims: $(STAMP) ## The paper's claims tested on real data: results/claims_<dataset>.md (DATASET=fashion_mnist MODEL=resnet20, SMOKE=1, JOBS=2)
	$(BIN)/python -m experiments.claims --dataset $(DATASET) --model $(MODEL) \
	  $(if $(filter 1,$(SMOKE)),--smoke) $(if $(CKPT_DIR),--ckpt-dir $(CKPT_DIR)) $(if $(JOBS),--jobs $(JOBS))

# Sweeps (values in conf/sweep/*.yaml): DATASET=, MODEL=, LAUNCHER=local|slurm, ARGS= extra overrides.
DATASET ?= digits
MODEL ?= digits_cnn
SWEEP = $(BIN)/python convert_eval.py dataset=$(DATASET) model=$(MODEL) $(if $(LAUNCHER),hydra/launcher=$(LAUNCHER)) $(ARGS)

sweep-grid: $(STAMP) ## Grid over the six MSAT hyper-parameters (DATASET=, MODEL=, LAUNCHER=local|slurm)
	$(SWEEP) sweep=grid
sweep-optuna: $(STAMP) ## Optuna search maximizing accuracy at T=32 (DATASET=, MODEL=, LAUNCHER=)
	$(SWEEP) sweep=optuna

clean: ## Remove run directories (keeps .venv and checkpoints)
	rm -rf outputs multirun wandb
