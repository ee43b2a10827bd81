"""The whole product in the lab: kubectl apply → operator → compiled objects → node agents
→ nftables in every node netns → real packets between pods.

The scenario is the README demo (examples/: the spec's Sg-A/Sg-B with A01, A02, B01, B02,
and a pod in the default group); expected verdicts come from the core's evaluator over
what the API server holds, observed ones from probes in the pods' network namespaces.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from tests.cluster.kube import apply, get, wait_until

from secgroups_lab import demo
from secgroups_lab.cluster import LabCluster
from secgroups_lab.probes import Flow, ProbeClient

pytestmark = pytest.mark.cluster


def examples_text(lab: LabCluster) -> str:
    return "\n---\n".join(
        f.read_text().replace("nodeName: ksg-n", f"nodeName: {lab.prefix}-n")
        for f in demo.examples()
    )


def settle(lab: LabCluster, what: str) -> None:
    """Every node agent has applied the current generation of its node object. (A change
    to a group or set alone does not change node generations: tests of such changes wait
    for the traffic effect itself, with a deadline.)"""
    wait_until(what, lambda: demo.agents_applied(lab), 60)


@pytest.fixture(scope="module")
def stack(lab_cluster: LabCluster) -> Iterator[LabCluster]:
    apply(lab_cluster, examples_text(lab_cluster))
    wait_until("demo pods running", lambda: demo.pods_running(lab_cluster, "demo"), 60)
    wait_until(
        "every demo pod published",
        lambda: (
            sum(
                len([p for p in (o["spec"].get("pods") or []) if p["namespace"] == "demo"])
                for o in get(lab_cluster, "compilednodepolicies")["items"]
            )
            == 5
        ),
        60,
    )
    settle(lab_cluster, "agents applied the demo policy")
    yield lab_cluster
    lab_cluster.kubectl("delete", "namespace", "demo", "--wait=false")


def client(lab: LabCluster, pod: str) -> ProbeClient:
    pods, _ = lab.endpoints()
    return ProbeClient(pods[f"demo/{pod}"])


def ip(lab: LabCluster, pod: str, family: int = 4) -> str:
    pods, _ = lab.endpoints()
    e = pods[f"demo/{pod}"]
    return e.ipv4 if family == 4 else e.ipv6


def test_the_demo_matrix_matches_the_evaluator(stack: LabCluster) -> None:
    """S-X-1..3, S-D-1/2 and S-M-4/5 end to end: every cell of the README demo's matrix
    (TCP 22 and 80, ICMP; IPv4 and IPv6; pods on 3 nodes and the outside host)."""
    result = demo.matrix(stack)
    assert result.probes > 100
    result.assert_matches()


def test_inbound_revocation_cuts_a_live_flow_and_restoring_resumes_it(stack: LabCluster) -> None:
    """S-CT-1/S-CT-2 row 4 through the whole stack: deleting A02 (Sg-A members talk to each
    other) stops the live a2→a1 TCP connection at its next packet; re-creating it lets the
    SAME connection continue."""
    a1, a2 = client(stack, "a1"), client(stack, "a2")
    flow = Flow.open(a2, a1, "tcp", ip(stack, "a1"), 80)
    try:
        assert flow.check().ok
        a02 = json.dumps(get(stack, "sgr", "-n", "demo", "a02"))
        stack.kubectl("delete", "sgr", "-n", "demo", "a02")
        wait_until("the live inbound flow is cut", lambda: not flow.check(timeout=1.0).ok, 30)
        assert not a2.probe("tcp", ip(stack, "a1"), 80, timeout=1.0).ok
        restored = json.loads(a02)
        restored["metadata"] = {"name": "a02", "namespace": "demo"}
        restored.pop("status", None)
        apply(stack, json.dumps(restored))
        wait_until("the same connection resumes", lambda: flow.check(timeout=1.0).ok, 30)
        assert a2.probe("tcp", ip(stack, "a1"), 80, timeout=2.0).ok
    finally:
        flow.close()


def test_outbound_change_spares_existing_connections(stack: LabCluster) -> None:
    """S-CT-1: after Sg-B loses its IPv4 egress rule, b1's existing connection to b2 keeps
    working while new connections from b1 are refused."""
    b1, b2 = client(stack, "b1"), client(stack, "b2")
    flow = Flow.open(b1, b2, "tcp", ip(stack, "b2"), 22)
    egress = json.dumps(get(stack, "sgr", "-n", "demo", "b-egress"))
    try:
        stack.kubectl("delete", "sgr", "-n", "demo", "b-egress")
        wait_until(
            "new connections from b1 refused",
            lambda: not b1.probe("tcp", ip(stack, "b2"), 22, timeout=1.0).ok,
            30,
        )
        assert flow.check().ok, "an outbound change cut an existing connection"
    finally:
        flow.close()
        restored = json.loads(egress)
        restored["metadata"] = {"name": "b-egress", "namespace": "demo"}
        restored.pop("status", None)
        apply(stack, json.dumps(restored))
        wait_until(
            "egress restored", lambda: b1.probe("tcp", ip(stack, "b2"), 22, timeout=1.0).ok, 30
        )


def test_relabelled_pod_changes_groups_live(stack: LabCluster) -> None:
    """docs/architecture.md#membership-and-scope: moving d1 into Sg-B (label tier=b) lets
    b1 reach it and cuts it off from nothing it had (the default group allowed only itself)."""
    b1 = client(stack, "b1")
    assert not b1.probe("tcp", ip(stack, "d1"), 80, timeout=1.0).ok
    stack.kubectl("label", "pod", "-n", "demo", "d1", "tier=b", "--overwrite")
    wait_until("b1 reaches d1", lambda: b1.probe("tcp", ip(stack, "d1"), 80, timeout=1.0).ok, 30)
    stack.kubectl("label", "pod", "-n", "demo", "d1", "tier-")
    wait_until(
        "b1 cut off from d1 again",
        lambda: not b1.probe("tcp", ip(stack, "d1"), 80, timeout=1.0).ok,
        30,
    )
