# Every target installs what it needs on first use (a virtual environment in .venv).
# `make help` lists them.

ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
PYTHON ?= python3
VENV ?= $(ROOT)/.venv
PY := $(VENV)/bin/python
SPEC ?= experiments/quickstart.yaml
SET ?=
HOST ?= 127.0.0.1
PORT ?= 5000
NOTEBOOK_PORT ?= 8888
PYTEST_ARGS ?=
WORKERS ?= 1
STORAGE ?=
STUDY_SPEC ?= experiments/studies/unet_vs_resnet34.yaml
export NO_ALBUMENTATIONS_UPDATE = 1
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlruns/mlflow.db

.PHONY: help install lint experiment validate audit study dashboard campaign campaign-status report overview plan bench test test-all ui predict evaluate register notebook install-notebooks clean-venv

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  variables: SPEC=<yaml> SET=\"key=value ...\" RUN=<run id> INPUT=<path> OUTPUT=<dir> HOST PORT"

$(VENV)/.installed: $(ROOT)/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '$(ROOT)[dev]'
	@touch $@

install: $(VENV)/.installed  ## create .venv and install the project with its dev extra

# JupyterLab and jupytext (the notebooks extra). The settings (.venv's own) open a .py notebook
# (py:percent) as a notebook on a double click, not as text, and fetch no Jupyter news.
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.json
$(VENV)/.notebooks: $(VENV)/.installed $(ROOT)/pyproject.toml
	$(PY) -m pip install --quiet --disable-pip-version-check -e '$(ROOT)[dev,notebooks]'
	@mkdir -p $(dir $(LAB_SETTINGS))
	@echo '{"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}},' \
		'"@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}}' > $(LAB_SETTINGS)
	@touch $@

install-notebooks: $(VENV)/.notebooks  ## JupyterLab and jupytext in .venv (make notebook does it on first use)

experiment: $(VENV)/.installed  ## train and test SPEC (default: quickstart) with overrides SET; resumes a crashed run (RESTART=1: start over)
	$(PY) -m harness experiment $(SPEC) $(SET) $(if $(RESTART),--restart)

validate: $(VENV)/.installed  ## check SPEC with SET and print the resolved YAML
	$(PY) -m harness validate $(SPEC) $(SET)

audit: $(VENV)/.installed  ## audit a dataset: DATA=<root> (unusable files, empty masks, near-duplicates); JSON=<file>
	@test -n "$(DATA)" || { echo "usage: make audit DATA=<dataset root> [JSON=audit.json]"; exit 2; }
	$(PY) -m harness audit $(DATA) $(if $(JSON),--json $(JSON))

study: $(VENV)/.installed  ## run/resume an Optuna study: SPEC=<study yaml> [WORKERS=N] [STORAGE=url]
	$(PY) -m harness study $(if $(filter command line,$(origin SPEC)),$(SPEC),$(STUDY_SPEC)) $(SET) \
		--workers $(WORKERS) $(if $(STORAGE),--storage $(STORAGE))

dashboard: $(VENV)/.installed  ## optuna-dashboard on http://HOST:8080 (default 127.0.0.1; STUDY=<name> or STORAGE=url)
	$(VENV)/bin/optuna-dashboard --host $(HOST) --port 8080 \
		$(or $(STORAGE),mlruns/optuna/$(or $(STUDY),$(basename $(notdir $(STUDY_SPEC)))).journal)

campaign: $(VENV)/.installed  ## run a campaign matrix: SPEC=<campaign yaml> [WORKERS=N] [STORAGE=url] [LAUNCHER=slurm SLURM="partition=gpu,..."] (finished cells skipped; DRY_RUN=1 lists)
	$(PY) -m harness campaign $(if $(filter command line,$(origin SPEC)),$(SPEC),experiments/campaigns/unet_vs_resnet34.yaml) $(SET) $(if $(DRY_RUN),--dry-run) \
		--workers $(or $(WORKERS),1) $(if $(STORAGE),--storage $(STORAGE)) $(if $(LAUNCHER),--launcher $(LAUNCHER)) $(if $(SLURM),--slurm "$(SLURM)")

campaign-status: $(VENV)/.installed  ## each cell of a campaign: finished, running (worker, heartbeat), waiting, failed: SPEC=<campaign yaml> [STORAGE=url]
	$(PY) -m harness campaign $(SPEC) $(SET) --status $(if $(STORAGE),--storage $(STORAGE))

report: $(VENV)/.installed  ## HTML comparison report, logged to MLflow: CAMPAIGN=<name> (or "a b": pooled), EXPERIMENT=<name> or EVALUATION=<dataset> [AXIS=<field> to compare]
	@test -n "$(CAMPAIGN)$(EXPERIMENT)$(EVALUATION)" || { echo "usage: make report CAMPAIGN=<name> | EXPERIMENT=<mlflow experiment> | EVALUATION=<dataset name or fingerprint>"; exit 2; }
	$(PY) -m analysis.report $(if $(CAMPAIGN),--campaign $(CAMPAIGN),$(if $(EVALUATION),--evaluation $(EVALUATION),--experiment $(EXPERIMENT))) $(if $(AXIS),--axis $(AXIS))

overview: $(VENV)/.installed  ## one table over every campaign in the store: each comparison, pooled and per setting, with its verdict
	$(PY) -m analysis.overview $(if $(CAMPAIGN),--campaign $(CAMPAIGN)) $(if $(OUT),--out $(OUT))

plan: $(VENV)/.installed  ## how many runs a comparison needs, from a campaign's runs: CAMPAIGN=<name> [DELTA=its declared margin, else 0.01] [POWER=0.8] [MAX_FOLDS=10]
	@test -n "$(CAMPAIGN)" || { echo "usage: make plan CAMPAIGN=<name> [DELTA=<declared margin, else 0.01>] [POWER=0.8]"; exit 2; }
	$(PY) -m analysis.plan --campaign $(CAMPAIGN) $(if $(DELTA),--delta $(DELTA)) $(if $(POWER),--power $(POWER)) $(if $(MAX_FOLDS),--max-folds $(MAX_FOLDS))

bench: $(VENV)/.installed  ## harness vs minimal loop per model and precision at SPEC's data (table + bench/bench.json)
	$(PY) -m harness.tools.bench --spec $(if $(filter command line,$(origin SPEC)),$(SPEC),experiments/base.yaml) $(SET) $(BENCH_ARGS)

lint: $(VENV)/.installed  ## ruff (pyflakes, pycodestyle, isort, bugbear; settings in pyproject.toml)
	$(VENV)/bin/ruff check $(ROOT)

test: $(VENV)/.installed  ## the default test suite (what CI runs, less the slow tests)
	$(PY) -m pytest -m "not slow" --durations=15 $(PYTEST_ARGS)

test-all: $(VENV)/.installed  ## every test, slow ones included
	$(PY) -m pytest $(PYTEST_ARGS)

ui: $(VENV)/.installed  ## MLflow UI on http://HOST:PORT (default 127.0.0.1:5000)
	@mkdir -p mlruns
	@echo "runs tables (model training view):"; $(PY) -m harness links --url http://$(HOST):$(PORT)
	$(PY) -m mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host $(HOST) --port $(PORT)

notebook: $(VENV)/.notebooks  ## JupyterLab on http://HOST:NOTEBOOK_PORT (default 127.0.0.1:8888): the analysis notebooks, kernel from .venv
	@token=$${NOTEBOOK_TOKEN:-$$($(PY) -c 'import secrets; print(secrets.token_hex(16))')}; \
	echo "JupyterLab (MLFLOW_TRACKING_URI=$(MLFLOW_TRACKING_URI)); open:"; \
	echo "  http://$(HOST):$(NOTEBOOK_PORT)/lab/tree/analysis/notebooks/compare_architectures.py?token=$$token"; \
	exec $(VENV)/bin/jupyter lab --no-browser --ServerApp.ip=$(HOST) --ServerApp.port=$(NOTEBOOK_PORT) \
		--ServerApp.port_retries=0 --ServerApp.root_dir=$(ROOT) --IdentityProvider.token=$$token \
		--ServerApp.contents_manager_class=jupytext.TextFileContentsManager --ServerApp.allow_root=True

evaluate: $(VENV)/.installed  ## score a run on other labelled data: RUN=<run id> DATA=<root> [DATASET=..] [SPLIT=test]
	@test -n "$(RUN)" -a -n "$(DATA)" || { echo "usage: make evaluate RUN=<run id> DATA=<root> [DATASET=oxford_pet|folder] [SPLIT=test]"; exit 2; }
	$(PY) -m harness evaluate --run $(RUN) --data $(DATA) $(if $(DATASET),--dataset $(DATASET)) --split $(or $(SPLIT),test)

register: $(VENV)/.installed  ## registry version + alias for a run's model: RUN=<run id> NAME=<name> [ALIAS=champion]
	@test -n "$(RUN)" -a -n "$(NAME)" || { echo "usage: make register RUN=<run id> NAME=<registered model> [ALIAS=champion]"; exit 2; }
	$(PY) -m harness register --run $(RUN) --name $(NAME) $(if $(ALIAS),--alias $(ALIAS))

predict: $(VENV)/.installed  ## masks + overlays: RUN=<run id> INPUT=<file|dir> OUTPUT=<dir>
	@test -n "$(RUN)" -a -n "$(INPUT)" -a -n "$(OUTPUT)" || { echo "usage: make predict RUN=<run id> INPUT=<file or folder> OUTPUT=<folder>"; exit 2; }
	$(PY) -m harness predict --run $(RUN) --input $(INPUT) --output $(OUTPUT)

clean-venv:  ## remove .venv (the next target reinstalls)
	rm -rf $(VENV)
