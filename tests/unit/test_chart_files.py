"""The Helm chart's files against the rest of the repository (no cluster, no helm).

* ``charts/kube-secgroups/crds/`` holds exactly the files of ``crds/`` (Helm installs that
  directory; ``make crds`` writes both; tests/unit/test_crds.py checks ``crds/`` against the
  models);
* every container command in the chart exists in the images: a console script of
  pyproject.toml (the images install the package), or the CNI plugin's binary;
* the chart's appVersion is the package's version (the image tags default to it).

The chart itself is linted, schema-checked, installed, upgraded and uninstalled by
tests/cluster/test_chart.py.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kube-secgroups"


def test_chart_crds_are_the_repositorys_crds() -> None:
    """Run `make crds` when this fails (it writes crds/ and the chart's crds/)."""
    ours = {p.name: p.read_text() for p in (REPO / "crds").glob("*.yaml")}
    chart = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}
    assert sorted(chart) == sorted(ours)
    stale = [name for name in ours if chart[name] != ours[name]]
    assert not stale, f"charts/kube-secgroups/crds/ differs from crds/ in {stale}: run make crds"


def test_every_container_command_is_in_the_images() -> None:
    """The Python commands are console scripts of pyproject.toml; the CNI plugin's
    installer is the Go binary the agent image copies in (images/Dockerfile)."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    commands = set()
    for template in (CHART / "templates").rglob("*.yaml"):
        commands |= set(re.findall(r'command: \["([^"]+)"\]', template.read_text()))
    python = {"secgroups-operator", "secgroups-agent", "secgroups-operator-uninstall"}
    assert commands == {*python, "secgroups-cni"}
    assert python <= set(scripts), python - set(scripts)
    dockerfile = (REPO / "images" / "Dockerfile").read_text()
    assert "/usr/local/bin/secgroups-cni" in dockerfile


def test_app_version_is_the_package_version() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version
