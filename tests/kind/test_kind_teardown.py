"""The end of the chart's and the cluster's life on kind; these run after every other test
of the session (tests/kind/conftest.py, LAST), in this order:

* ``helm upgrade`` with a changed value (the enforced-namespace label): the operator is
  replaced and the new label decides — the demo namespace, labelled only with the old
  one, is no longer managed (a denied connection opens), until it carries the new label;
* ``helm uninstall``: no ``table inet secgroups`` on any node (``docker exec <node> nft
  list tables``), kube-proxy's table untouched;
* ``make kind-down`` (only for a cluster this session brought up, or in CI): no node
  container, no docker network ``kind``, no route into the kind ranges and no dockerd
  process of ours is left.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from tests.kind.conftest import NS, Examples, KindSession, in_ci, wait_until
from tests.kind.providers import KindProvider, get

from secgroups_lab import kind as kindlib

pytestmark = pytest.mark.kind


@pytest.fixture(scope="module")
def examples(kind_examples: Examples) -> Examples:
    """Only on kind (this module needs kube-proxy, the DaemonSet or the chart)."""
    return kind_examples


REPO = Path(__file__).resolve().parents[2]
NEW_LABEL = "example.com/secgroups=on"
KIND_RANGE = "100.88.0.0/13"  # docker0, docker pools, nodes, pods, Services (docs/kind.md)


def reaches(examples: Examples, src: str, dst: str, port: int) -> bool:
    from secgroups_lab.probes import ProbeClient

    return ProbeClient(examples.pods[src]).probe("tcp", examples.ip(dst), port, timeout=1.0).ok


def operators(provider: KindProvider) -> set[str]:
    pods = get(
        provider, "pods", "-n", kindlib.NAMESPACE, "-l", "app.kubernetes.io/component=operator"
    )["items"]
    return {
        p["metadata"]["name"]
        for p in pods
        if (p.get("status") or {}).get("phase") == "Running"
        and not p["metadata"].get("deletionTimestamp")
    }


def test_helm_upgrade_with_a_changed_value(kind_provider: KindProvider, examples: Examples) -> None:
    kind = kind_provider.kind
    assert not reaches(examples, "d1", "b1", 80), "the default group must not reach b1"
    old = operators(kind_provider)
    try:
        out = kindlib.install_chart(kind, [f"enforcedNamespaceLabel={NEW_LABEL}"])
        assert "has been upgraded" in out, out
        wait_until("the operator replaced", lambda: operators(kind_provider) - old, 120)
        deployment = get(kind_provider, "deployment", "-n", kindlib.NAMESPACE,
                         f"{kindlib.RELEASE}-operator")  # fmt: skip
        args = " ".join(deployment["spec"]["template"]["spec"]["containers"][0].get("args", []))
        assert NEW_LABEL in args, args
        wait_until(
            "demo unmanaged: d1 reaches b1:80", lambda: reaches(examples, "d1", "b1", 80), 90
        )
        kind.kubectl("label", "namespace", NS, NEW_LABEL)
        wait_until(
            "demo managed again: b1:80 closed to d1",
            lambda: not reaches(examples, "d1", "b1", 80),
            90,
        )
        # Re-enrolled, the namespace's groups and sets come back one object at a time, fail
        # closed meanwhile: Sg-B's own traffic passes again once all of them are applied.
        wait_until("Sg-B's own traffic passes", lambda: reaches(examples, "b2", "b1", 80), 60)
        history = kind.helm("history", kindlib.RELEASE, "-n", kindlib.NAMESPACE)
        assert "superseded" in history and "deployed" in history, history
    finally:
        kind.kubectl("label", "namespace", NS, NEW_LABEL.split("=", maxsplit=1)[0] + "-")


def test_helm_uninstall_leaves_no_table_on_any_node(kind_provider: KindProvider) -> None:
    kind = kind_provider.kind
    nodes = kind.nodes()
    assert all("inet secgroups" in kind.tables(n) for n in nodes)
    out = kind.helm("uninstall", kindlib.RELEASE, "-n", kindlib.NAMESPACE, "--wait",
                    "--timeout", "5m")  # fmt: skip
    assert "uninstalled" in out, out
    left = {n: kind.tables(n) for n in nodes}
    assert all("inet secgroups" not in t for t in left.values()), left
    assert all("ip kube-proxy" in t for t in left.values()), f"kube-proxy's table: {left}"
    assert get(kind_provider, "compilednodepolicies")["items"] == []


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=60, check=False
    )


def dockerd_pids() -> list[str]:
    proc = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True, check=False)
    return proc.stdout.split()


def test_make_kind_down_leaves_nothing(kind_session: KindSession) -> None:
    if not (kind_session.created or in_ci()):
        pytest.skip("the cluster was up before this session: kept (`make kind-down` removes it)")
    if os.environ.get("KSG_KIND_KEEP") == "1":
        pytest.skip("KSG_KIND_KEEP=1: the cluster is kept")
    ours_before = (
        subprocess.run(
            [str(REPO / "hack" / "docker.sh"), "is-ours"], capture_output=True, check=False
        ).returncode
        == 0
    )
    proc = subprocess.run(["make", "kind-down"], cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    routes = subprocess.run(["ip", "-4", "route", "show", "root", KIND_RANGE],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert routes.strip() == "", f"routes left: {routes}"
    links = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                           check=True).stdout  # fmt: skip
    assert " 100.88." not in links and " 100.90." not in links, links
    if ours_before:  # our dockerd is stopped: no daemon, so no container or network either
        assert dockerd_pids() == [], "dockerd is still running"
        shims = subprocess.run(["pgrep", "-f", "containerd-shim"], capture_output=True,
                               text=True, check=False).stdout.split()  # fmt: skip
        assert shims == [], f"container processes left: {shims}"
        assert not Path(kindlib.KindEnv.read().kubeconfig).exists()
    else:  # a dockerd of the machine's own: it stays, without our containers and network
        names = docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
        assert not [n for n in names if n.startswith(kindlib.KindEnv.read().cluster + "-")]
        assert docker("network", "inspect", "kind").returncode != 0
