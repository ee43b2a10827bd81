"""Services on kind: traffic to a protected pod through its Service's ClusterIP, and
through the NodePort of the pod's own node, is allowed or denied exactly as traffic to
the pod's IP (kube-proxy DNATs at ``dstnat`` in prerouting, before our ``forward``
chains, which therefore judge the pod's address and target port and the client's own
address; docs/nftables.md, "Beside kube-proxy"). Through the NodePort of ANOTHER node,
kube-proxy masquerades: the pod sees that node as the client, and the verdict is the
evaluator's for the node's address.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from tests.kind.conftest import NS, Examples, wait_until

from secgroups_lab import demo
from secgroups_lab.matrix import Address, Case
from secgroups_lab.probes import ProbeClient

pytestmark = pytest.mark.kind


@pytest.fixture(scope="module")
def examples(kind_examples: Examples) -> Examples:
    """Only on kind (this module needs kube-proxy, the DaemonSet or the chart)."""
    return kind_examples


DENIED, ALLOWED = 1.0, 5.0
SERVICE = "b1-svc"
PORTS = (22, 80)
CLIENTS = ("a1", "a2", "b2", "d1")  # Sg-A on two nodes, Sg-B, the default group


@dataclass(frozen=True)
class Svc:
    cluster_ip: str
    node_ports: dict[int, int]  # port → nodePort
    own_node_ip: str  # the node b1 runs on
    other_node: str
    other_node_ip: str


@pytest.fixture(scope="module")
def svc(examples: Examples) -> Iterator[Svc]:
    c = examples.cluster
    c.kubectl("label", "pod", "-n", NS, "b1", "svc=b1", "--overwrite")
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": NS},
        "spec": {
            "type": "NodePort",
            "selector": {"svc": "b1"},
            "ports": [{"name": f"tcp-{p}", "port": p, "protocol": "TCP"} for p in PORTS],
        },
    }
    c.kubectl("apply", "-f", "-", input_text=json.dumps(service))
    try:
        got = json.loads(c.kubectl("get", "service", "-n", NS, SERVICE, "-o", "json"))
        ips = json.loads(c.kubectl("get", "nodes", "-o", "json"))["items"]
        node_ip = {
            n["metadata"]["name"]: next(
                a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP"
            )
            for n in ips
        }
        cluster_ip = got["spec"]["clusterIP"]
        node_ports = {p["port"]: p["nodePort"] for p in got["spec"]["ports"]}
        # Every node's kube-proxy has programmed the Service to its endpoint (each syncs on
        # its own time; before the endpoint is known, the elements go to a reject chain).
        wanted = [
            *(
                rf"{re.escape(cluster_ip)} \. tcp \. {p} (comment \S+ )?: goto service-"
                for p in PORTS
            ),
            *(rf"tcp \. {n} (comment \S+ )?: goto external-" for n in node_ports.values()),
        ]

        def programmed(node: str) -> bool:
            table = c.node_run(node, ["nft", "list", "table", "ip", "kube-proxy"]).stdout
            return all(re.search(w, table) for w in wanted)

        wait_until(
            "kube-proxy programmed the Service on every node",
            lambda: all(programmed(n) for n in node_ip),
            90,
        )
        own = c.node_of(NS, "b1")
        other = next(n for n in sorted(node_ip) if n != own and n != c.node_of(NS, "a1"))
        yield Svc(
            cluster_ip=cluster_ip,
            node_ports=node_ports,
            own_node_ip=node_ip[own],
            other_node=other,
            other_node_ip=node_ip[other],
        )
    finally:
        c.kubectl("delete", "service", "-n", NS, SERVICE, "--ignore-not-found")
        c.kubectl("label", "pod", "-n", NS, "b1", "svc-")


def test_cluster_ip_and_node_port_are_judged_as_the_pods_ip(examples: Examples, svc: Svc) -> None:
    """From pods of Sg-A (one on b1's node, one elsewhere), Sg-B and the default group:
    b1's IP, the ClusterIP and the NodePort on b1's node give the same verdict for TCP 22
    and 80 — the evaluator's for b1's IP."""
    expected = demo.expectation(examples.cluster.facts())
    b1 = examples.pods["b1"]
    rows = []
    bad = []
    for client in CLIENTS:
        src = examples.pods[client]
        probe = ProbeClient(src)
        for port in PORTS:
            want = expected(src, b1, Case("tcp", port, 4))
            wait = ALLOWED if want else DENIED
            seen = {
                "pod IP": probe.probe("tcp", b1.ipv4, port, timeout=wait).ok,
                "ClusterIP": probe.probe("tcp", svc.cluster_ip, port, timeout=wait).ok,
                "NodePort": probe.probe(
                    "tcp", svc.own_node_ip, svc.node_ports[port], timeout=wait
                ).ok,
            }
            rows.append(
                f"{client:>3} -> b1 tcp/{port}: evaluator {'.' if want else 'X'}  "
                + "  ".join(f"{k} {'.' if v else 'X'}" for k, v in seen.items())
            )
            bad += [f"{client} -> {k} tcp/{port}" for k, v in seen.items() if v != want]
    print("\n".join(rows))
    assert bad == [], "differs from the pod's IP / the evaluator:\n" + "\n".join(rows)
    assert any("evaluator ." in r for r in rows) and any("evaluator X" in r for r in rows)


def test_node_port_through_another_node_is_that_nodes_traffic(examples: Examples, svc: Svc) -> None:
    """Through the NodePort of a node b1 does not run on, kube-proxy DNATs there and
    masquerades: b1's ingress sees that node's address, so a1 (allowed SSH to b1 by its
    own IP) is judged as the node — the evaluator's verdict for the node's address."""
    expected = demo.expectation(examples.cluster.facts())
    b1 = examples.pods["b1"]
    node = Address(svc.other_node, svc.other_node_ip, "")
    a1 = ProbeClient(examples.pods["a1"])
    for port in PORTS:
        want = expected(node, b1, Case("tcp", port, 4))
        got = a1.probe(
            "tcp", svc.other_node_ip, svc.node_ports[port], timeout=ALLOWED if want else DENIED
        )
        assert got.ok == want, f"a1 -> {svc.other_node}:{svc.node_ports[port]} (b1 tcp/{port})"
    assert expected(examples.pods["a1"], b1, Case("tcp", 22, 4)), "a1 may reach b1:22 directly"
