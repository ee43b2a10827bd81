"""The chart as installed on kind, seen from outside: its pods on every node, the admission
webhook called by the real API server through the webhook Service, and the README's debug
walkthrough (``kubectl secgroups trace``/``explain``/``matrix`` against the cluster) giving
the packets' answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.kind.conftest import NS, PODS, Examples
from tests.kind.providers import KindProvider, get

from secgroups_lab import kind as kindlib
from secgroups_lab.matrix import Case, run_matrix
from secgroups_lab.probes import ProbeClient

pytestmark = pytest.mark.kind


@pytest.fixture(scope="module")
def examples(kind_examples: Examples) -> Examples:
    """Only on kind (this module needs kube-proxy, the DaemonSet or the chart)."""
    return kind_examples


CLI = Path(sys.executable).with_name("kubectl-secgroups")


def test_the_charts_pods_run_on_every_node(kind_provider: KindProvider) -> None:
    kind = kind_provider.kind
    pods = get(kind_provider, "pods", "-n", kindlib.NAMESPACE)["items"]
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    agents = {
        p["spec"]["nodeName"]
        for p in running
        if p["metadata"]["labels"].get("app.kubernetes.io/component") == "agent"
    }
    assert agents == set(kind.nodes())
    assert any(
        p["metadata"]["labels"].get("app.kubernetes.io/component") == "operator" for p in running
    )
    for node in kind.nodes():
        tables = kind.tables(node)
        assert "inet secgroups" in tables and "ip kube-proxy" in tables, (node, tables)


def test_admission_webhook_through_its_service(examples: Examples) -> None:
    """The API server calls the operator through the webhook Service: deleting a group
    that pods use is refused, naming them (docs/admission.md)."""
    c = examples.cluster
    env = kindlib.KindEnv.read()
    proc = subprocess.run(
        [str(env.kubectl), "--kubeconfig", str(env.kubeconfig),
         "delete", "securitygroup", "-n", NS, "sg-a", "--dry-run=server"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stdout
    assert "denied the request" in proc.stderr and "in use" in proc.stderr, proc.stderr
    assert get(c, "securitygroup", "-n", NS, "sg-a")["metadata"]["name"] == "sg-a"


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = kindlib.KindEnv.read()
    return subprocess.run(
        [str(CLI), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"KUBECONFIG": str(env.kubeconfig), "PATH": f"{env.kubectl.parent}:/usr/bin:/bin"},
    )


def test_cli_online_is_what_the_pods_packets_do(examples: Examples) -> None:
    """README's walkthrough on the kind demo: ``kubectl secgroups matrix -n demo -o json``
    from the live cluster is the observed matrix; ``trace`` says "allowed"/"denied" as a
    probe does; ``explain`` names the pod's groups."""
    if not CLI.exists():
        pytest.skip(f"the console script {CLI} is not installed (pip install -e '.[cli]')")
    proc = cli("matrix", "-n", NS, "--ports", "tcp/22,tcp/80", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    ip_of = {p["name"]: p["ip"] for p in doc["peers"]}
    name_of = {ip: name for name, ip in ip_of.items()}
    cells = {
        (cell["from"], cell["to"], grid["port"]): bool(cell["allowed"])
        for grid in doc["grids"]
        for cell in grid["cells"]
    }

    def expected(src: Any, dst: Any, case: Case) -> bool:
        return cells[(name_of[src.ipv4], name_of[dst.ipv4], f"tcp/{case.port}")]

    result = run_matrix(
        [examples.pods[p] for p in PODS],
        [Case("tcp", 22, 4), Case("tcp", 80, 4)],
        expected,
        timeout=1.0,
        allowed_timeout=5.0,
    )
    print(result.render())
    result.assert_matches()
    for src, dst, port in (("b1", "a1", 22), ("a1", "b1", 22), ("a1", "b1", 80)):
        traced = cli("trace", "--from", f"pod/{src}", "--to", f"pod/{dst}",
                     "--proto", "tcp", "--port", str(port), "-n", NS)  # fmt: skip
        assert traced.returncode in (0, 1), traced.stderr  # 0 allowed, 1 denied (docs/cli.md)
        ok = (
            ProbeClient(examples.pods[src])
            .probe("tcp", examples.ip(dst), port, timeout=5.0 if traced.returncode == 0 else 1.0)
            .ok
        )
        assert (traced.returncode == 0) == ok, f"trace says {traced.stdout}; the probe: {ok}"
    explained = cli("explain", "pod/a1", "-n", NS)
    assert explained.returncode == 0 and "sg-a" in explained.stdout, explained.stdout
