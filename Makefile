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
lint: $(STAMP) scan ## ruff, mypy --strict (tests too), import contracts, and `make scan`
	$(BIN)/ruff check operator devcluster tests bench
	$(BIN)/ruff format --check operator devcluster tests bench
	$(BIN)/mypy operator/nodesysctl devcluster bench tests
	$(BIN)/lint-imports

.PHONY: controlplane
controlplane: ## Build (or reuse) etcd, kube-apiserver, controller-manager, scheduler and kubectl
	bash hack/build-controlplane.sh

SCAN_VENV := build/venv-scan
SCAN_STAMP := $(SCAN_VENV)/.installed-stamp
SCAN_OUT := build/scan

# checkov and hadolint get their own virtualenv: checkov's pins (packaging==23.2, ...) would
# fight the project's dev tools in .venv.
$(SCAN_STAMP): manifests/scan/requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/pip install --quiet --upgrade pip==25.3
	$(SCAN_VENV)/bin/pip install --quiet -r manifests/scan/requirements.txt
	touch $@

.PHONY: prometheus
prometheus: ## promtool and the Prometheus server (Debian's package, 2.42) for the alert tests
	bash hack/install-prometheus.sh

.PHONY: scan
scan: $(STAMP) $(SCAN_STAMP) controlplane ## checkov on the rendered overlays, the agent Job and the Dockerfile; hadolint
	$(BIN)/python manifests/scan/render.py $(SCAN_OUT)
	$(SCAN_VENV)/bin/checkov --config-file .checkov.yaml --framework kubernetes -d $(SCAN_OUT)/overlays
	$(SCAN_VENV)/bin/checkov --config-file manifests/scan/agent-job.checkov.yaml --framework kubernetes -d $(SCAN_OUT)/agent-job
	$(SCAN_VENV)/bin/checkov --config-file .checkov.yaml --framework dockerfile -f Dockerfile
	$(SCAN_VENV)/bin/hadolint Dockerfile

.PHONY: demo
# devcluster is not installed (it must not ship); `-m` from the repo root finds it, like bench.
demo: $(STAMP) controlplane ## The seed's incident fixed live on a local control plane (needs root)
	$(BIN)/python -m devcluster.demo $(DEMO_ARGS)

.PHONY: unit
unit: $(STAMP) ## Fast tests: pure logic and the agent on real network namespaces
	$(BIN)/pytest -m 'not integration and not e2e and not realnode'

.PHONY: node-runtime
node-runtime: ## Install the real nodes' runtime (containerd, runc, CNI, tini, socat, image tools; apt, root)
	bash hack/install-node-runtime.sh

.PHONY: image
image: $(STAMP) node-runtime ## The operator/agent image and the pause image, without Docker (cached; root)
	$(BIN)/python -m devcluster.images

.PHONY: realnode
realnode: $(STAMP) controlplane image ## Only the real-node lane (tests/realnode, a few minutes; also part of make test)
	NODESYSCTL_REQUIRE_CONTROLPLANE=1 $(BIN)/pytest tests/realnode -m realnode -v

.PHONY: test
test: lint controlplane image prometheus ## Everything: lint, unit, netns, integration, end-to-end, real nodes, fault matrix
	NODESYSCTL_REQUIRE_CONTROLPLANE=1 NODESYSCTL_REQUIRE_NETNS=1 NODESYSCTL_FAULTS=1 $(BIN)/pytest

.PHONY: faults
faults: $(STAMP) controlplane ## Only the fault matrix (tests/faults, ~3 min; also part of make test)
	NODESYSCTL_FAULTS=1 NODESYSCTL_REQUIRE_CONTROLPLANE=1 $(BIN)/pytest tests/faults -m faults -v

.PHONY: bench
bench: $(STAMP) controlplane ## Benchmark (~15 min): convergence vs floor, API cost, idle memory/CPU -> bench/results
	$(BIN)/python -m bench

.PHONY: fmt
fmt: $(STAMP) ## Format and autofix
	$(BIN)/ruff format operator devcluster tests bench
	$(BIN)/ruff check --fix operator devcluster tests bench

.PHONY: clean
clean: ## Remove the virtualenv and caches (not the control-plane binaries)
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
