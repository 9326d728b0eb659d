# nodesysctl — every target sets up what it needs; a fresh machine needs only Python 3.11 and Go.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

.PHONY: venv
venv: $(STAMP) ## Create .venv with the package and its dev tools

.PHONY: lint
lint: $(STAMP) ## ruff, mypy --strict, import contracts
	$(BIN)/ruff check operator tests
	$(BIN)/ruff format --check operator tests
	$(BIN)/mypy operator/nodesysctl
	$(BIN)/lint-imports

.PHONY: controlplane
controlplane: ## Build (or reuse) etcd, kube-apiserver, controller-manager, scheduler and kubectl
	bash hack/build-controlplane.sh

.PHONY: unit
unit: $(STAMP) ## Fast tests: pure logic and the agent on real network namespaces
	$(BIN)/pytest -m 'not integration and not e2e'

.PHONY: test
test: lint controlplane ## Everything: lint, unit, netns, integration and end-to-end tests
	NODESYSCTL_REQUIRE_CONTROLPLANE=1 NODESYSCTL_REQUIRE_NETNS=1 $(BIN)/pytest

.PHONY: fmt
fmt: $(STAMP) ## Format and autofix
	$(BIN)/ruff format operator tests
	$(BIN)/ruff check --fix operator tests

.PHONY: clean
clean: ## Remove the virtualenv and caches (not the control-plane binaries)
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
