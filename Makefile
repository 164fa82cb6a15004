# fastqwen: `make help` lists the targets. Everything runs inside .venv/, made by `make setup`.

.DEFAULT_GOAL := help
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c

VENV := .venv
VENV_PY := $(VENV)/bin/python
# Touched after a successful install; it depends on pyproject.toml, so the package is
# reinstalled only when the dependencies change, not on every `make test`.
STAMP := $(VENV)/.installed
EXTRAS := notebooks,serve,test

# The interpreter that creates .venv: the first of these that is Python 3.10-3.12
# (torch 2.11 and qwen-tts 0.1.1 support these). Override: `make setup PYTHON=/path/python3.11`.
PYTHON_CANDIDATES := python3 python3.12 python3.11 python3.10
PYTHON ?= $(shell for p in $(PYTHON_CANDIDATES); do \
	$$p -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))' \
	>/dev/null 2>&1 && { echo $$p; break; }; done)

# Notebooks executed by `make test` through nbmake, with the cheap smoke settings that
# notebooks/conftest.py puts in the environment (one speaker, one prompt, 6 steps).
NOTEBOOKS := $(wildcard notebooks/*.ipynb)
PYTEST_ARGS ?=
REPORT_NOTEBOOK := notebooks/customvoice_parity.ipynb
# Extra arguments for `python -m fastqwen.tools.report`, e.g. REPORT_ARGS="-p max_new_tokens 64".
REPORT_ARGS ?=
# `make lab` opens working copies of the notebooks here (ignored by git), so JupyterLab's
# autosave of outputs and widget state never touches the tracked notebooks/*.ipynb.
LAB_DIR := lab
# Extra arguments for `jupyter lab`, e.g. LAB_ARGS="--no-browser --ip=0.0.0.0 --port=8888".
LAB_ARGS ?=
# Jupyter refuses to start as root (containers often are) unless told --allow-root.
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

export PIP_DISABLE_PIP_VERSION_CHECK := 1
# HF_HUB_OFFLINE is deliberately not set here: users with hub access may download real
# checkpoints. Set it in your shell to forbid downloads.

.PHONY: help setup test report lab lab-copies require-notebooks lint clean

help: ## Show this help
	@echo "Usage: make <target>"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-8s %s\n", $$1, $$2}' \
		$(MAKEFILE_LIST)
	@echo "Variables: PYTHON=... (default: first Python 3.10-3.12 of $(PYTHON_CANDIDATES))," \
		"PYTEST_ARGS=..., REPORT_ARGS=..., LAB_ARGS=..., NOTEBOOKS=$(if $(NOTEBOOKS),$(NOTEBOOKS),<none yet>)"

setup: $(STAMP) ## Create .venv and install fastqwen (editable) with notebook and test extras

$(VENV_PY):
	@if [ -z "$(PYTHON)" ]; then \
		echo "make setup: no Python 3.10-3.12 found (tried $(PYTHON_CANDIDATES));" \
			"pass PYTHON=/path/to/python3.11" >&2; \
		exit 1; \
	fi
	@echo "Creating $(VENV) with $(PYTHON) ($$($(PYTHON) --version))"
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV_PY)
	$(VENV_PY) -m pip install -e '.[$(EXTRAS)]'
	@touch $@

test: setup ## Run the test suite: tests/ and notebooks/*.ipynb (nbmake, smoke settings)
	$(VENV_PY) -m pytest tests $(if $(NOTEBOOKS),--nbmake $(NOTEBOOKS)) $(PYTEST_ARGS)

report: require-notebooks setup ## Run the parity notebooks; HTML reports in reports/, WAVs in samples/parity/
	$(VENV_PY) -m fastqwen.tools.report $(REPORT_ARGS)

# Jupyter starts each kernel in the notebook's folder; the tools resolve relative folders
# (samples/, bench/results) from FASTQWEN_PROJECT_DIR, so point it here.
lab: setup lab-copies ## JupyterLab on working copies of the notebooks in lab/ (live panel)
	FASTQWEN_PROJECT_DIR=$(CURDIR) $(VENV)/bin/jupyter lab $(LAB_ROOT) $(LAB_ARGS) $(LAB_DIR)/

# A copy is made once and never overwritten (it holds your outputs and edits); when the
# tracked notebook is newer, say so: delete the copy to get the new one.
lab-copies:
	@mkdir -p $(LAB_DIR)
	@for nb in $(NOTEBOOKS); do \
		copy="$(LAB_DIR)/$$(basename "$$nb")"; \
		if [ ! -e "$$copy" ]; then cp "$$nb" "$$copy"; \
		elif [ "$$nb" -nt "$$copy" ]; then \
			echo "make lab: $$nb changed after $$copy was made; delete the copy to get it"; \
		fi; \
	done

# Checked before `setup`, so a missing notebook fails in a second, not after a 3 GB install.
require-notebooks:
	@if [ ! -f $(REPORT_NOTEBOOK) ]; then \
		echo "make report: notebooks not built yet ($(REPORT_NOTEBOOK) is missing)" >&2; \
		exit 1; \
	fi

lint: ## Check formatting and lint with ruff (skipped if ruff is not installed)
	@ruff=$$(command -v $(VENV)/bin/ruff || command -v ruff || true); \
	if [ -z "$$ruff" ]; then \
		echo "ruff is not installed; lint skipped. Install: $(VENV_PY) -m pip install ruff"; \
	else \
		"$$ruff" format --check . && "$$ruff" check .; \
	fi

clean: ## Remove caches and build output (keeps .venv; `rm -rf .venv` to drop it)
	rm -rf build dist .pytest_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
