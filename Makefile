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
CUDA_IMAGE  ?=

export DVC_NO_ANALYTICS := 1
# dvc.yaml runs `python -m ups ...`: that must be the venv's python.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help setup test stress demo plan train repro push pull lint bench report du \
        docker-build docker-train clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sort -u | \
	  awk 'BEGIN {FS = ":.*## "} {printf "  %-14s %s\n", $$1, $$2}'

# The venv is rebuilt when missing or older than requirements.txt / pyproject.toml.
$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Python 3.11+ is required ($(PYTHON) is $$($(PYTHON) -V))"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q setuptools==$(SETUPTOOLS_VERSION)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP) ## Create .venv from requirements.txt (exact pins) and install ups
	@echo "ready: source $(VENV)/bin/activate"

test: $(STAMP) ## Run the test suite (what CI runs)
	$(PY) -m pytest -q -m "not stress"

stress: $(STAMP) ## Run the full fault-injection suite (CI subset + stress), figures to bench/
	UPS_STRESS=1 $(PY) -m pytest -q tests/faults

demo: $(STAMP) ## Whole pipeline on the bundled sample corpus, CPU, minutes (runs/demo)
	$(VENV)/bin/ups demo

plan: $(STAMP) ## Before a real run: make plan HOURS=100 (download, disk, time; no audio fetched)
	$(VENV)/bin/ups plan --hours $(HOURS)

train: $(STAMP) ## Real run: make train HOURS=100 GPUS=1 (dvc exp run with those params)
	$(DVC) exp run -S select.hours=$(HOURS) -S train.gpus=$(GPUS)

repro: $(STAMP) ## dvc repro: rebuild only what changed
	$(DVC) repro

push: $(STAMP) ## dvc push: share artifacts through the DVC remote
	$(DVC) push

pull: $(STAMP) ## dvc pull: fetch artifacts from the DVC remote
	$(DVC) pull --allow-missing

lint: $(STAMP) ## ruff and mypy on ups/
	$(VENV)/bin/ruff check $(wildcard ups tests scripts bench)
	$(VENV)/bin/mypy ups

bench: $(STAMP) ## Benchmarks, JSON results under bench/
	$(PY) -m bench

report: $(STAMP) ## One-page HTML report of the last run
	$(VENV)/bin/ups report

du: $(STAMP) ## Disk used by each stage, the tar cache, the DVC cache and remote (JSON=1)
	$(VENV)/bin/ups du $(if $(JSON),--json)

docker-build: ## Build the CUDA image (DRY=1 prints the command; CUDA_IMAGE=tag@digest)
	$(if $(DRY),@echo) docker build -f docker/Dockerfile -t $(IMAGE) \
	  $(if $(CUDA_IMAGE),--build-arg CUDA_IMAGE=$(CUDA_IMAGE)) .

docker-train: ## Train in the image (HOURS, GPUS), repo/data/caches mounted (DRY=1 prints it)
	$(if $(DRY),@echo) mkdir -p "$(DATA)" "$(DVC_CACHE)" "$(HF_CACHE)"
	$(if $(DRY),@echo) docker run --rm --gpus $(DOCKER_GPUS) --ipc=host --user $(DOCKER_USER) \
	  -e HF_TOKEN -e DVC_NO_ANALYTICS=1 \
	  -v "$(CURDIR):$(CURDIR)" -w "$(CURDIR)" \
	  -v "$(DATA):$(CURDIR)/data" \
	  -v "$(DVC_CACHE):$(DVC_CACHE)" \
	  -v "$(HF_CACHE):/cache/huggingface" \
	  $(DOCKER_ARGS) $(IMAGE) \
	  dvc exp run -S select.hours=$(HOURS) -S train.gpus=$(GPUS)

clean: ## Remove caches of Python tools and the demo run (not data, not the DVC cache)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis runs/demo bench/tmp
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
