"""The node agent restarted as users see it happen: its pod deleted, the DaemonSet makes a
new one. Enforcement never lapses meanwhile: the agent leaves its table in the kernel when
it stops and replaces it in one transaction when it starts (docs/agent.md), so a stream of
UDP datagrams that the policy denies, sent all along, never reaches the pod — while a
stream it allows arrives before, during and after.
"""

from __future__ import annotations

import threading
import time

import pytest
from tests.kind.conftest import NS, Examples, wait_until
from tests.kind.providers import get

from secgroups_lab import kind as kindlib
from secgroups_lab.probed import SEEN_LIMIT
from secgroups_lab.probes import ProbeClient, ProbeSpec

pytestmark = pytest.mark.kind


@pytest.fixture(scope="module")
def examples(kind_examples: Examples) -> Examples:
    """Only on kind (this module needs kube-proxy, the DaemonSet or the chart)."""
    return kind_examples


PORT = 80
BATCH = 16  # datagrams a sender sends at once
WAIT = 0.3  # seconds each waits for its echo
PACE = 0.02  # seconds between a sender's batches: the receiver keeps the last SEEN_LIMIT only


def agent_pods(examples: Examples, node: str) -> list[dict]:
    items = get(
        examples.cluster, "pods", "-n", kindlib.NAMESPACE,
        "-l", "app.kubernetes.io/component=agent", "--field-selector", f"spec.nodeName={node}",
    )["items"]  # fmt: skip
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def test_agent_pod_deleted_and_recreated_enforcement_never_lapses(examples: Examples) -> None:
    c = examples.cluster
    target = examples.pods["b1"]
    node = c.node_of(NS, "b1")
    # a2: Sg-A, on b1's node (its egress is the restarted agent's too); d1: the default
    # group, on another node; b2: Sg-B (B02 allows it everything).
    senders = {name: examples.pods[name] for name in ("a2", "d1", "b2")}
    assert c.node_of(NS, "a2") == node and c.node_of(NS, "d1") != node
    (old,) = agent_pods(examples, node)
    receiver = ProbeClient(target)
    receiver.call({"op": "clear_seen"}, 5.0)

    stop = threading.Event()
    sent = dict.fromkeys(senders, 0)

    def stream(name: str) -> None:
        client = ProbeClient(senders[name])
        while not stop.is_set():
            client.probe_many([ProbeSpec("udp", target.ipv4, PORT, WAIT)] * BATCH)
            sent[name] += BATCH
            stop.wait(PACE)

    threads = [threading.Thread(target=stream, args=(n,), daemon=True) for n in senders]
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        t_delete = time.time()
        c.kubectl("delete", "pod", "-n", kindlib.NAMESPACE, old["metadata"]["name"], "--wait=false")
        new = wait_until(
            f"a new agent pod on {node} Ready",
            lambda: [
                p
                for p in agent_pods(examples, node)
                if p["metadata"]["uid"] != old["metadata"]["uid"] and ready(p)
            ],
            180,
        )
        t_ready = time.time()
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    everything = receiver.seen()
    assert len(everything) < SEEN_LIMIT, "the receiver's record overflowed: pace the streams"
    seen = [s for s in everything if s.proto == "udp" and s.port == PORT]
    by_src = {name: [s for s in seen if s.src == ep.ipv4] for name, ep in senders.items()}
    print(
        f"agent {old['metadata']['name']} -> {new[0]['metadata']['name']} on {node}: "
        f"Ready {t_ready - t_delete:.1f} s after the delete; sent {sent}; "
        f"received { ({n: len(v) for n, v in by_src.items()}) }"
    )
    assert by_src["a2"] == [] and by_src["d1"] == [], "a denied datagram was delivered"
    allowed = [s.time for s in by_src["b2"]]
    assert allowed, "the allowed stream never arrived"
    assert min(allowed) < t_delete and max(allowed) > t_ready, "the streams did not span it"
    assert all(sent[n] > 10 * BATCH for n in senders), f"the streams ran too little: {sent}"
