# kube-secgroups — the two commands:
#   make demo          (as root) the product end to end in the local lab (3 nodes); `make demo-down`
#   make test          every test tier this machine can run (netns/cluster tiers need root)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help dev demo demo-down test lint typecheck contracts unit netns cluster binaries crds bench clean

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

# Builds the control-plane binaries it needs (not helm) after its own checks; if the lab is
# already up it says so and changes nothing, unless REPLACE=1 (`make demo REPLACE=1`).
demo: $(STAMP)
	@$(VENV)/bin/secgroups-lab demo up$(if $(REPLACE), --replace)

demo-down: $(STAMP)
	@$(VENV)/bin/secgroups-lab demo down

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy core kube/secgroups_kube operator/secgroups_operator node-agent/secgroups_agent cli/secgroups_cli lab/secgroups_lab

contracts: $(STAMP)
	$(VENV)/bin/lint-imports

crds: $(STAMP)
	$(PY) -m secgroups.crdgen --write crds/

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

netns: $(STAMP)
	$(PY) -m pytest tests/netns -q

cluster: $(STAMP)
	$(PY) -m pytest tests/cluster -q

# The README's test command; .ci/run calls exactly this.
test: lint typecheck contracts
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/compile.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# Images and the kind cluster (docs/images.md, docs/kind.md). Root; Docker comes from Debian
# and is started by hack/docker.sh where none runs. `make kind-up` ends by loading the images.
.PHONY: images kind-up kind-down
images:
	@hack/images.sh build

kind-up: images
	@hack/kind.sh up

kind-down:
	@hack/kind.sh down
