# Every target depends on .venv, so a fresh clone needs nothing but `make test` or `make sweep`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# MLflow 3 refuses a plain ./mlruns file store: sqlite beside the artifacts, unless the user points elsewhere
export MLFLOW_TRACKING_URI ?= sqlite:///mlruns/mlflow.db

.DEFAULT_GOAL := help
.PHONY: help test lint train clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

.venv: $(VENV)/.installed  ## create the virtual environment and install the project

test: .venv  ## ruff and the test suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

lint: .venv  ## ruff only
	$(VENV)/bin/ruff check .

train: .venv  ## one training on the embedded data, outputs under runs/ (ARGS="--set key=value ...")
	$(PY) -m cyclelike train $(ARGS)

clean:  ## remove generated runs, reports and the MLflow/Optuna stores (keeps .venv)
	rm -rf runs reports bench.json
	find mlruns -mindepth 1 ! -name README.md -delete 2>/dev/null || true
