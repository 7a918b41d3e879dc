# ups: thin wrappers over the venv, dvc, ups and docker. `make` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DVC    := $(VENV)/bin/dvc
STAMP  := $(VENV)/.installed
# The build backend for `pip install --no-build-isolation -e .`: Python 3.12+ venvs come without it,
# and pip freeze leaves it out of requirements.txt. docker/Dockerfile uses the same version.
SETUPTOOLS_VERSION := 84.2.1

HOURS  ?= 100
GPUS   ?= 1
ARGS   ?=
MSG    ?= ups: save the last run (dvc.lock, params, metrics)
# make train NODES=N (> 1) prints the per-node commands; RDZV is the first node's host:port.
NODES  ?= 1
RDZV   ?= $(shell hostname):29500
IMAGE  ?= ups:latest
DRY    ?=
# docker-train mounts (see README, Docker): the repo at its own path, so paths in .dvc/config and
# params.yaml mean the same inside; data/ and the DVC cache may live on another disk.
DATA        ?= $(CURDIR)/data
DVC_CACHE   ?= $(CURDIR)/.dvc/cache
HF_CACHE    ?= $(HOME)/.cache/huggingface
DOCKER_GPUS ?= $(GPUS)
DOCKER_USER ?= $(shell id -u):$(shell id -g)
DOCKER_ARGS ?=
BASE_IMAGE  ?=
# Passed into the container by name only (docker copies each value when it is set): the hub token
# and mirror, offline mode, and what a multi-node run needs on each node.
DOCKER_ENV  := HF_TOKEN HF_ENDPOINT HF_HUB_OFFLINE UPS_RDZV_ENDPOINT UPS_RDZV_ID \
               SLURM_STEP_NUM_NODES SLURM_STEP_NUM_TASKS NCCL_SOCKET_IFNAME NCCL_IB_HCA NCCL_DEBUG \
               GLOO_SOCKET_IFNAME

export DVC_NO_ANALYTICS := 1
# dvc.yaml runs `python -m ups ...`: that must be the venv's python (VENV relative or absolute).
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# `dvc exp run` (train, iterate) and `make save` make git commits. Where git config lacks user.name or user.email
# they would stop ("Git user name and email must be configured"), so then each of the author and
# committer name and email comes from the environment (GIT_AUTHOR_NAME, ...), else git config, else
# this fallback. With both set in git config nothing is added. Evaluated per use.
FALLBACK_GIT_NAME  := ups
FALLBACK_GIT_EMAIL := ups@localhost.invalid
GIT_CFG_NAME  = $(shell git config user.name 2>/dev/null)
GIT_CFG_EMAIL = $(shell git config user.email 2>/dev/null)
GIT_ID_ENV = $(if $(and $(GIT_CFG_NAME),$(GIT_CFG_EMAIL)),,\
  GIT_AUTHOR_NAME='$(or $(GIT_AUTHOR_NAME),$(GIT_CFG_NAME),$(FALLBACK_GIT_NAME))' \
  GIT_AUTHOR_EMAIL='$(or $(GIT_AUTHOR_EMAIL),$(GIT_CFG_EMAIL),$(FALLBACK_GIT_EMAIL))' \
  GIT_COMMITTER_NAME='$(or $(GIT_COMMITTER_NAME),$(GIT_CFG_NAME),$(FALLBACK_GIT_NAME))' \
  GIT_COMMITTER_EMAIL='$(or $(GIT_COMMITTER_EMAIL),$(GIT_CFG_EMAIL),$(FALLBACK_GIT_EMAIL))')
# What `make save` commits: the lock, the params, the metrics and plots DVC keeps in git, and
# the .gitignore files DVC writes beside its outputs (the outputs themselves are in the cache).
SAVE_PATHS := dvc.yaml dvc.lock params.yaml dvclive reports/evaluate/metrics.json \
              reports/evaluate/probe_layers.csv
# `make exps`: the parameters that tell runs apart and the metrics that say which one helped, as
# a Markdown table (complete at any terminal width; DVC's own table elides columns past 80).
EXPS_KEEP := ^(Experiment|Created|select\.hours|kmeans\.n_clusters|features\.(kind|layer)|valid\.(loss|acc_masked)|probe\.(init|continued)\.best_accuracy)$$

.PHONY: help setup test test-e2e test-kernels test-cluster stress demo plan train exps save iterate repro push pull lint bench \
        gpu-check report du docker-build docker-train clean

help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sort -u | \
	  awk 'BEGIN {FS = ":.*## "} {printf "  %-14s %s\n", $$1, $$2}'

# The venv is rebuilt when missing or older than the requirements files / pyproject.toml.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Python 3.11+ is required ($(PYTHON) is $$($(PYTHON) -V))"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q setuptools==$(SETUPTOOLS_VERSION)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP) ## Create .venv from requirements.txt + requirements-dev.txt (exact pins) and install ups
	@echo "ready: source $(VENV)/bin/activate"

test: $(STAMP) ## Run the test suite (what CI runs first)
	$(PY) -m pytest -q -m "not stress and not cluster and not cuda and not e2e"

test-e2e: $(STAMP) ## Whole-pipeline runs of a minute or more each: demo from a wheel, rerun from scratch, iterate
	$(PY) -m pytest -q -m "e2e and not stress and not cluster and not cuda"

# Some x86 machines run OpenBLAS's AVX2 (Haswell) kernels, where float results can depend on the
# thread count: the byte-identity tests again under them (tests/test_blas.py varies the threads).
test-kernels: $(STAMP) ## The byte-identity tests again on OpenBLAS's AVX2 (Haswell) kernels
	OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=512 $(PY) -m pytest -q -m "identity and not stress and not cuda"

test-cluster: $(STAMP) ## Both sbatch scripts on a real local Slurm (installs slurm-wlm + munge: root)
	@[ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ] || { \
	  SUDO=; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends slurm-wlm munge >/dev/null; }
	$(PY) -m pytest -q -m cluster tests/cluster

stress: $(STAMP) ## Run the full fault-injection suite (CI subset + stress), figures to bench/
	UPS_STRESS=1 $(PY) -m pytest -q tests/faults

demo: $(STAMP) ## Whole pipeline on the bundled sample corpus, CPU, minutes (runs/demo)
	$(VENV)/bin/ups demo

plan: $(STAMP) ## Before a real run: make plan HOURS=100 (download, disk, time; no audio fetched)
	$(VENV)/bin/ups plan --hours $(HOURS)

train: $(STAMP) ## Real run: make train HOURS=100 GPUS=1 [ARGS="-S key=value ..."] (dvc exp run); NODES=N prints per-node commands
ifeq ($(NODES),1)
	$(GIT_ID_ENV) $(DVC) exp run -S select.hours=$(HOURS) -S train.gpus=$(GPUS) -S train.nodes=1 $(ARGS)
else
	@$(PY) -m ups.slurm plan --nodes $(NODES) --gpus $(GPUS) --rdzv $(RDZV) select.hours=$(HOURS)
endif

exps: $(STAMP) ## Compare runs: dvc exp show, hours/clusters/features and key metrics only
	@$(DVC) exp show --no-pager --md --precision 3 --drop '.*' --keep '$(EXPS_KEEP)'

save: ## Commit the last run to git (dvc.lock, params, metrics) so a clone can pull it: MSG="..."
	git add -- $(wildcard $(SAVE_PATHS)) '*.gitignore'
	@if git diff --cached --quiet; then echo "nothing to save: dvc.lock and params.yaml are committed"; \
	  else $(GIT_ID_ENV) git commit -q -m "$(MSG)" && git log -1 --format='saved as %h: %s'; fi

# iterate: RUN_DIR (default: this repo), LAYER (default: features.layer), SET='key=value ...'
iterate: $(STAMP) ## Next iteration: labels from the continued model's layer, train again (LAYER, SET)
	$(GIT_ID_ENV) $(VENV)/bin/ups iterate $(if $(RUN_DIR),--run-dir $(RUN_DIR)) $(if $(LAYER),--layer $(LAYER)) \
	  $(foreach s,$(SET),--set '$(s)')

repro: $(STAMP) ## dvc repro: rebuild only what changed
	$(DVC) repro

push: $(STAMP) ## dvc push: share artifacts through the DVC remote
	$(DVC) push

pull: $(STAMP) ## dvc pull: fetch artifacts from the DVC remote (an error if it lacks any)
	$(VENV)/bin/ups remote-check
	$(DVC) pull

lint: $(STAMP) ## ruff and mypy on ups/
	$(VENV)/bin/ruff check $(wildcard ups tests scripts bench)
	$(VENV)/bin/mypy ups

bench: $(STAMP) ## Benchmarks, JSON results under bench/
	$(PY) -m bench

gpu-check: $(STAMP) ## On a GPU machine: CUDA tests, torchrun+NCCL, HuBERT-base MFU -> bench/results/gpu.json
	$(PY) -m bench.gpu

report: $(STAMP) ## One-page HTML report of the last run
	$(VENV)/bin/ups report

du: $(STAMP) ## Disk used by each stage, the tar cache, the DVC cache and remote (JSON=1)
	$(VENV)/bin/ups du $(if $(JSON),--json)

docker-build: ## Build the image (DRY=1 prints the command; BASE_IMAGE=python:tag@digest)
	$(if $(DRY),@echo) DOCKER_BUILDKIT=1 docker build -f docker/Dockerfile -t $(IMAGE) \
	  $(if $(BASE_IMAGE),--build-arg PYTHON_IMAGE=$(BASE_IMAGE)) .

docker-train: ## Train in the image (HOURS, GPUS; NODES=N: this node's share), mounts (DRY=1 prints it)
	$(if $(DRY),@echo) mkdir -p "$(DATA)" "$(DVC_CACHE)" "$(HF_CACHE)"
	$(if $(DRY),@echo) docker run --rm --init --ipc=host --gpus $(DOCKER_GPUS) --user $(DOCKER_USER) \
	  $(if $(filter-out 1,$(NODES)),--network=host) \
	  $(foreach v,$(DOCKER_ENV),-e $(v)) -e DVC_NO_ANALYTICS=1 \
	  -v "$(CURDIR):$(CURDIR)" -w "$(CURDIR)" \
	  -v "$(DATA):$(CURDIR)/data" \
	  -v "$(DVC_CACHE):$(DVC_CACHE)" \
	  -v "$(HF_CACHE):/cache/huggingface" \
	  $(DOCKER_ARGS) $(IMAGE) \
	  $(if $(filter-out 1,$(NODES)),python -m ups.slurm run-stage train,dvc exp run -S select.hours=$(HOURS) -S train.gpus=$(GPUS) -S train.nodes=1 $(ARGS))

clean: ## Remove caches of Python tools and the demo run (not data, not the DVC cache)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis runs/demo bench/tmp
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
