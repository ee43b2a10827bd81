"""From the first packet, on kind (issue 14's Must-show; docs/cni.md): real kubelets,
containerd running ``secgroups-cni`` chained after ``ptp`` from our own conflist.

* 200 pods in a row whose container's very first action is a TCP connect to a destination
  their groups deny (a probe pod in a namespace that is not enforced, which answers
  anyone its own rules let through) — not one connects; a pod whose groups allow it
  reaches the same destination, so it answers.
* A client whose groups the new pod denies probes the address host-local will give the
  next pod, from before the pod exists until well after its container started: no
  answer, in particular none in the first 100 ms; an allowed client gets answers.
* The agent kept off one node: a new pod there gets no network, the reason is in
  ``kubectl describe pod``, and it starts once the agent is back.

The lab versions of these (and the IP-reuse case, which kind's sequential host-local
rarely produces) are ``tests/cluster/test_cni.py``.
"""

from __future__ import annotations

import calendar
import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.kind.conftest import in_ci, wait_until
from tests.kind.providers import KindProvider, get

from secgroups_lab import kind as kindlib
from secgroups_lab.probes import ProbeClient, ProbeSpec

# 200 pods started one batch of 20 after another take minutes on 2 cores: every wait below
# has its own deadline; the module's is the default's 300 s several times over.
pytestmark = [pytest.mark.kind, pytest.mark.slow, pytest.mark.timeout(1800)]

NS, OPEN = "first-packet", "first-packet-open"
OURS = "/etc/cni/net.d/00-secgroups.conflist"
HOST_LOCAL_LAST = "/run/cni-ipam-state/ksg-podnet/last_reserved_ip.0"  # hack/kind/ksg-podnet

POLICY = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}, labels: {{secgroups.dev/enforce: "true"}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: {OPEN}}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroup
metadata: {{name: client, namespace: {NS}}}
spec: {{}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroup
metadata: {{name: server, namespace: {NS}}}
spec: {{}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroup
metadata: {{name: sender, namespace: {NS}}}
spec: {{}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroupRule
metadata: {{name: client-to-server, namespace: {NS}}}
spec: {{securityGroup: client, direction: Egress, ipFamily: IPv4, protocol: TCP, ports: "80",
        remote: {{securityGroup: {{name: server}}}}}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroupRule
metadata: {{name: server-from-client, namespace: {NS}}}
spec: {{securityGroup: server, direction: Ingress, ipFamily: IPv4, protocol: TCP, ports: "80",
        remote: {{securityGroup: {{name: client}}}}}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroupRule
metadata: {{name: sender-out, namespace: {NS}}}
spec: {{securityGroup: sender, direction: Egress, ipFamily: IPv4, protocol: TCP, ports: "80"}}
"""

FIRST_CONNECT = (
    "import socket, sys\n"
    "s = socket.socket(); s.settimeout(3)\n"
    "try:\n"
    "    s.connect((sys.argv[1], 80)); print('FIRST CONNECTED', flush=True)\n"
    "except Exception as e:\n"
    "    print('FIRST FAILED', type(e).__name__, flush=True)\n"
)


@pytest.fixture(scope="module")
def cluster(kind_provider: KindProvider) -> Iterator[KindProvider]:
    c = kind_provider
    for node in c.nodes():
        if c.node_run(node, ["test", "-s", OURS]).returncode != 0:
            # The chart installs it (cni.enabled, the default); CI skips nothing.
            why = f"secgroups-cni is not installed on {node} ({OURS} missing)"
            if in_ci():
                pytest.fail(why)
            pytest.skip(why)
    c.kubectl("apply", "-f", "-", input_text=POLICY)
    yield c
    c.kubectl("delete", "namespace", NS, OPEN, "--wait=false", check=False)


def probe(name: str, namespace: str, node: str, image: str, groups: str = "") -> dict[str, Any]:
    annotations = {"secgroups.dev/security-groups": groups} if groups else None
    return kindlib.probe_pod(name, namespace, node, image, annotations=annotations)


def one_shot(name: str, node: str, image: str, target: str, groups: str) -> dict[str, Any]:
    """A pod whose container's first action is ``connect(target:80)``; it prints the result."""
    pod = probe(name, NS, node, image, groups)
    pod["spec"]["restartPolicy"] = "Never"
    pod["spec"]["containers"][0].update(
        {"command": ["python3", "-c", FIRST_CONNECT, target], "args": []}
    )
    return pod


def apply(c: KindProvider, *docs: dict[str, Any]) -> None:
    c.kubectl("apply", "-f", "-", input_text="\n---\n".join(json.dumps(d) for d in docs))


def endpoint(c: KindProvider, namespace: str, name: str) -> kindlib.PodEndpoint:
    return kindlib.wait_probes(c.kind, namespace, [name])[name]


def test_200_pods_whose_first_action_is_a_denied_connect_all_fail(cluster: KindProvider) -> None:
    c = cluster
    nodes = c.nodes()
    image = c.probe_image
    apply(c, probe("witness", OPEN, nodes[0], image))
    witness = endpoint(c, OPEN, "witness")
    apply(c, probe("allowed", NS, nodes[1], image, "sender"))
    allowed = ProbeClient(endpoint(c, NS, "allowed"))
    wait_until(
        "the destination answers a pod its groups allow",
        lambda: allowed.probe("tcp", witness.ipv4, 80, timeout=1.0).ok,
        120,
    )
    results: list[str] = []
    for batch in range(10):
        names = [f"first-{batch:02d}-{i:02d}" for i in range(20)]
        apply(c, *(one_shot(n, nodes[i % len(nodes)], image, witness.ipv4, "client")
                   for i, n in enumerate(names)))  # fmt: skip

        def done(names: list[str] = names) -> bool:
            phases = {
                p["metadata"]["name"]: (p.get("status") or {}).get("phase")
                for p in get(c, "pods", "-n", NS)["items"]
            }
            return all(phases.get(n) in ("Succeeded", "Failed") for n in names)

        wait_until(f"batch {batch} finished", done, 300)
        for n in names:
            results.append(c.kubectl("logs", "-n", NS, n).strip())
        c.kubectl("delete", "pod", "-n", NS, *names, "--wait=false")
    assert len(results) == 200
    connected = [r for r in results if "FIRST CONNECTED" in r]
    assert connected == [], f"{len(connected)} of 200 first connections got through"
    assert all(r.startswith("FIRST FAILED") for r in results), results


def next_address(c: KindProvider, node: str) -> str:
    last = c.node_run(node, ["cat", HOST_LOCAL_LAST]).stdout.strip()
    return str(ipaddress.ip_address(last) + 1)


def started_at(pod: dict[str, Any]) -> float | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or ():
        running = (cs.get("state") or {}).get("running")
        if running:
            return float(calendar.timegm(time.strptime(running["startedAt"], "%Y-%m-%dT%H:%M:%SZ")))
    return None


def test_a_denied_client_gets_no_answer_from_a_new_pod_from_its_start(
    cluster: KindProvider,
) -> None:
    c = cluster
    nodes = c.nodes()
    image = c.probe_image
    apply(c, probe("intruder", NS, nodes[1], image, "sender"))
    apply(c, probe("friend", NS, nodes[1], image, "client"))
    intruder = ProbeClient(endpoint(c, NS, "intruder"))
    friend = ProbeClient(endpoint(c, NS, "friend"))
    target = next_address(c, nodes[0])
    answers: list[float] = []
    sent = [0]
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            results = intruder.probe_many([ProbeSpec("tcp", target, 80, 0.1)] * 8)
            sent[0] += len(results)
            answers.extend(time.time() for r in results if r.ok)

    t = threading.Thread(target=hammer, daemon=True)
    began = time.time()
    t.start()
    try:
        time.sleep(1.0)
        apply(c, probe("newcomer", NS, nodes[0], image, "server"))
        newcomer = endpoint(c, NS, "newcomer")
        assert newcomer.ipv4 == target, "host-local gave another address than predicted"
        start = wait_until(
            "the newcomer's container started",
            lambda: started_at(get(c, "pod", "-n", NS, "newcomer")),
            60,
        )
        wait_until(
            "the friend reaches the newcomer",
            lambda: friend.probe("tcp", target, 80, timeout=1.0).ok,
            60,
        )
        time.sleep(2.0)
    finally:
        stop.set()
        t.join(10)
    # It began a second before the pod was created and ran seconds after its start
    # (startedAt has one-second resolution): the first 100 ms are covered.
    assert began < start + 1.0
    assert sent[0] > 50
    assert answers == [], (
        f"the denied client got {len(answers)} answers, the first "
        f"{(answers[0] - start) * 1000:.0f} ms after the container started"
    )
    c.kubectl("delete", "pod", "-n", NS, "intruder", "friend", "newcomer", "--wait=false")


def agent_daemonset(c: KindProvider) -> str:
    items = get(
        c, "daemonsets", "-n", kindlib.NAMESPACE, "-l", "app.kubernetes.io/component=agent"
    )["items"]
    return str(items[0]["metadata"]["name"])


def agents_on(c: KindProvider, node: str) -> list[dict[str, Any]]:
    items = get(
        c, "pods", "-n", kindlib.NAMESPACE, "-l", "app.kubernetes.io/component=agent",
        "--field-selector", f"spec.nodeName={node}",
    )["items"]  # fmt: skip
    return list(items)


def test_without_its_agent_a_node_starts_no_pod_network_and_says_why(
    cluster: KindProvider,
) -> None:
    c = cluster
    node = c.nodes()[-1]
    ds = agent_daemonset(c)
    away = {
        "spec": {"template": {"spec": {"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{
                "matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": [node]}
                ]
            }]}
        }}}}}
    }  # fmt: skip
    c.kubectl("patch", "daemonset", "-n", kindlib.NAMESPACE, ds, "--type=strategic",
              "-p", json.dumps(away))  # fmt: skip
    try:
        wait_until(f"no agent on {node}", lambda: not agents_on(c, node), 180)
        apply(c, probe("orphan", NS, node, c.probe_image, "client"))

        def event() -> str:
            out = c.kubectl("describe", "pod", "-n", NS, "orphan")
            return out if "FailedCreatePodSandBox" in out and "fail closed" in out else ""

        described = wait_until("the reason in kubectl describe pod", event, 180)
        assert "secgroups" in described
        status = get(c, "pod", "-n", NS, "orphan")["status"]
        assert status.get("phase") == "Pending" and not status.get("podIPs")
    finally:
        c.kubectl("patch", "daemonset", "-n", kindlib.NAMESPACE, ds, "--type=json",
                  "-p", '[{"op":"remove","path":"/spec/template/spec/affinity"}]')  # fmt: skip
    wait_until(f"the agent back on {node}", lambda: agents_on(c, node), 180)
    orphan = endpoint(c, NS, "orphan")  # the kubelet's retry started it
    assert orphan.ipv4
    c.kubectl("delete", "pod", "-n", NS, "orphan", "--wait=false")
