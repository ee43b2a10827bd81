# kube-secgroups — the two commands:
#   make demo          (as root) the product end to end: a 3-node kind cluster, the Helm chart, examples/, live matrix; `make demo-down`
#   make test          every test tier this machine can run (netns/cluster/kind tiers need root)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help dev demo demo-down demo-lab demo-lab-down test lint typecheck contracts unit netns cluster binaries crds chart-lint bench clean

help:
	@sed -n '1,3p' Makefile

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

dev: $(STAMP)

binaries:
	@hack/build-binaries.sh

# The product as users deploy it (docs/kind.md): `make kind-up` (Docker, our images, the kind
# node image — built offline and cached on the first run —, the cluster; kept when healthy),
# then `helm upgrade --install` of the chart, examples/ as pods on three nodes, and the live
# matrix from inside them (secgroups_lab.kinddemo). The cluster keeps running.
demo: $(STAMP) kind-up
	@$(PY) -m secgroups_lab.kinddemo up

demo-down: kind-down

# The fast netns-lab demo (no Docker; docs/lab.md): builds the control-plane binaries it needs
# after its own checks; if the lab is already up it says so and changes nothing, unless
# REPLACE=1 (`make demo-lab REPLACE=1`).
demo-lab: $(STAMP)
	@$(VENV)/bin/secgroups-lab demo up$(if $(REPLACE), --replace)

demo-lab-down: $(STAMP)
	@$(VENV)/bin/secgroups-lab demo down

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy core kube/secgroups_kube operator/secgroups_operator node-agent/secgroups_agent cli/secgroups_cli lab/secgroups_lab

contracts: $(STAMP)
	$(VENV)/bin/lint-imports

# The chart carries a copy (Helm installs charts/*/crds/); tests/unit/test_chart_files.py
# fails when the two differ.
crds: $(STAMP)
	$(PY) -m secgroups.crdgen --write crds/
	$(PY) -m secgroups.crdgen --write charts/kube-secgroups/crds/

# helm lint --strict with the default values and each charts/kube-secgroups/ci/*.yaml (the
# rendered manifests' schema check and the install are in tests/cluster/test_chart.py).
HELM = $(shell hack/build-binaries.sh --print-paths helm)
chart-lint:
	@if ! test -x $(HELM) && ! hack/build-binaries.sh helm; then \
	  if [ -n "$$CI" ]; then echo "chart-lint: helm could not be built" >&2; exit 1; fi; \
	  echo "chart-lint skipped: helm could not be built (hack/build-binaries.sh helm)"; exit 0; fi; \
	for values in "" charts/kube-secgroups/ci/*.yaml; do \
	  echo "helm lint --strict charts/kube-secgroups$${values:+ -f $$values}"; \
	  $(HELM) lint --strict --quiet charts/kube-secgroups $${values:+-f $$values} || exit 1; done

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

netns: $(STAMP)
	$(PY) -m pytest tests/netns -q

cluster: $(STAMP)
	$(PY) -m pytest tests/cluster -q

# The README's test command; .ci/run calls exactly this. Every tier but kind, then the kind
# tier (tests/kind, marker kind; docs/testing.md) with its own time: it brings a kind cluster
# up when it can (root, the kind artefacts built once by `make kind-up`, or a cluster up) and
# is skipped with a one-line reason otherwise; in CI (CI set) nothing is skipped.
test: lint typecheck contracts chart-lint
	$(PY) -m pytest -q -m "not kind"
	@$(MAKE) --no-print-directory kind-test

kind-test: $(STAMP)
	@t0=$$(date +%s); $(PY) -m pytest -q -m kind tests/kind; rc=$$?; \
	  echo "kind tier: $$(( $$(date +%s) - t0 )) s"; exit $$rc

bench: $(STAMP)
	$(PY) bench/compile.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# Images and the kind cluster (docs/images.md, docs/kind.md). Root; Docker comes from Debian
# and is started by hack/docker.sh where none runs. `make kind-up` ends by loading the images.
.PHONY: images kind-up kind-down kind-test
images:
	@hack/images.sh build

kind-up: images
	@hack/kind.sh up

kind-down:
	@hack/kind.sh down
