# Every target depends on .venv, so a fresh clone needs nothing but `make test` or `make sweep`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The store (mlruns/mlflow.db and mlruns/optuna.journal in this checkout, unless MLFLOW_TRACKING_URI,
# OPTUNA_STORAGE or CYCLELIKE_STORE say otherwise) is resolved by analysis/store.py for every target.
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR ?= false

.DEFAULT_GOAL := help
CONFIG ?= study/configs/default.toml
PORT ?= 5000
DASHBOARD_PORT ?= 8080
STUDY ?=
TEST_WORKERS ?= auto  # pytest-xdist workers for make test: one per core
.PHONY: help test lint train sweep run ui dashboard report scaling bench browser postgres db db-stop server \
	server-stop worker clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

.venv: $(VENV)/.installed  ## create the virtual environment and install the project

test: .venv browser postgres  ## ruff, the import layers (no circles) and the test suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadgroup

lint: .venv  ## ruff and the import layers
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

train: .venv  ## one training on the embedded data, outputs under runs/, then its pairing metrics (ARGS="--set k=v")
	@out=runs/train-$$(date +%Y%m%d-%H%M%S); $(PY) -m cyclelike train --out $$out $(ARGS) && \
		$(PY) -m analysis pairing $$out

# the command lines that may hold a database URL are echoed with its password masked (a terminal's scrollback
# and a CI log keep what is printed): the shell splits the words for printf as it does for the command
MASK := sed -E 's%(://[^:/@ ]*):[^@ ]*@%\1:***@%g'
SWEEP := $(PY) -m study sweep --config $(CONFIG)

sweep: .venv  ## run or resume an Optuna study (CONFIG=study/configs/x.toml ARGS="--workers 2 --set k=v")
	@printf '%s ' $(SWEEP) $(if $(findstring --workers,$(ARGS)),,--workers auto) $(ARGS) | $(MASK); echo
	@$(SWEEP) $(if $(findstring --workers,$(ARGS)),,--workers auto) $(ARGS)

run: .venv  ## one tracked training in MLflow (ARGS="--set pairing=fixed ...")
	$(PY) -m study run $(ARGS)

ui: .venv  ## the MLflow UI on 127.0.0.1 for this store
	@uri=$$($(PY) -m analysis.store); echo "MLflow UI: http://127.0.0.1:$(PORT)/#/experiments?workflowType=machine_learning  (store $$uri; Ctrl-C stops it)" | $(MASK); \
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false exec $(VENV)/bin/mlflow server --host 127.0.0.1 --port $(PORT) \
		--workers 1 --backend-store-uri "$$uri"

dashboard: .venv  ## optuna-dashboard on 127.0.0.1 for the study storage
	@storage=$$($(PY) -m analysis.store optuna); echo "Optuna dashboard: http://127.0.0.1:$(DASHBOARD_PORT)  ($$storage)" | $(MASK); \
	exec $(VENV)/bin/optuna-dashboard --host 127.0.0.1 --port $(DASHBOARD_PORT) "$$storage"

report: .venv  ## report on the most recent study, or STUDY=name: reports/<study>/index.html
	$(PY) -m analysis report $(if $(STUDY),--experiment $(STUDY)) --ui http://127.0.0.1:$(PORT)

scaling: .venv  ## the seconds-per-epoch scaling study (study/configs/scaling.toml), then its report
	$(PY) -m study sweep --config study/configs/scaling.toml $(ARGS)
	$(PY) -m analysis report --experiment scaling

bench: .venv  ## fast vs plain path, FLOP utilisation, overhead, sweep throughput: a table and bench.json (ARGS="--only throughput")
	$(PY) -m bench cpu $(ARGS)

# headless Chromium for the report's browser test; where it cannot be installed that test skips and says why
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
		echo "chromium not installed: the report's browser test will skip"; }

db: .venv postgres  ## a PostgreSQL for studies on several machines (mlruns/postgres; HOST=0.0.0.0 opens it)
	$(PY) -m study.stores.servers postgres start $(if $(DB_PORT),--port $(DB_PORT))

db-stop: .venv  ## stop the PostgreSQL that make db started
	$(PY) -m study.stores.servers postgres stop

server: .venv  ## an MLflow tracking server for workers elsewhere (backend: make db's PostgreSQL, else sqlite)
	$(PY) -m study.stores.servers mlflow start

server-stop: .venv  ## stop the tracking server that make server started
	$(PY) -m study.stores.servers mlflow stop

worker: .venv  ## one more worker on a study: make worker STORAGE=postgresql+psycopg://... TRACKING=http://head:port
	@test -n "$(STORAGE)" -a -n "$(TRACKING)" || { echo "make worker needs STORAGE=<Optuna URL> and TRACKING=<MLflow server URL> (see README)"; exit 2; }
	@printf '%s ' "MLFLOW_TRACKING_URI=$(TRACKING)" $(SWEEP) --storage "$(STORAGE)" $(ARGS) | $(MASK); echo
	@MLFLOW_TRACKING_URI="$(TRACKING)" $(SWEEP) --storage "$(STORAGE)" $(ARGS)

# PostgreSQL's binaries for the multi-machine tests and make db; where they cannot be installed those tests skip
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || \
		echo "postgresql not installed: the PostgreSQL tests will skip"; }

clean:  ## remove generated runs, reports and the MLflow/Optuna stores (keeps .venv)
	rm -rf runs reports bench.json
	find mlruns -mindepth 1 ! -name README.md -delete 2>/dev/null || true
