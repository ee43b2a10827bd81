"""From the first packet (docs/cni.md): the chained plugin, the placeholder, IP reuse, the
readiness gate — with the real ``secgroups-cni`` binary run by the lab's simulated kubelet
the way a runtime runs it, real agents, a real operator and API server, real packets.

Namespace ``fc`` is enforced. Groups:

* ``client``: egress TCP 80 to members of ``server`` (IPv4), nothing else;
* ``server``: ingress TCP 80 from members of ``client``; egress nothing;
* ``sender``: egress TCP 80 anywhere (IPv4) — but no ``server`` lets it in;
* ``locked``: nothing at all.

A pod's "first action" is the first probe its daemon runs; the daemon (the pod's
container) starts only after the plugin's ADD returned, as containers do. Every pod
carries the readiness gate ``secgroups.dev/policy-applied`` (what the operator's mutating
webhook adds), so "its policy is in force" is the condition the agent sets. Every wait
has a deadline; no assertion is about elapsed time except the ordering the placeholder
guarantees.

The same bodies run on kind (marker ``kind``) where noted, with pods instead of the lab's
probe daemons; see docs/cni.md, "Tests".
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.cluster.conftest import TEST_PREFIX
from tests.cluster.kube import apply, get, wait_until

from secgroups_lab import binaries, controlplane
from secgroups_lab.cluster import LabCluster
from secgroups_lab.cnibin import PluginBuildError, build_plugin
from secgroups_lab.probes import ProbeClient

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NS = "fc"
GATE = "secgroups.dev/policy-applied"

POLICY = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}, labels: {{secgroups.dev/enforce: "true"}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: open}}
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
metadata: {{name: locked, namespace: {NS}}}
spec: {{}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroup
metadata: {{name: sender, namespace: {NS}}}
spec: {{}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroupRule
metadata: {{name: sender-out, namespace: {NS}}}
spec:
  securityGroup: sender
  direction: Egress
  ipFamily: IPv4
  protocol: TCP
  ports: "80"
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroupRule
metadata: {{name: client-to-server, namespace: {NS}}}
spec:
  securityGroup: client
  direction: Egress
  ipFamily: IPv4
  protocol: TCP
  ports: "80"
  remote: {{securityGroup: {{name: server}}}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroupRule
metadata: {{name: server-from-client, namespace: {NS}}}
spec:
  securityGroup: server
  direction: Ingress
  ipFamily: IPv4
  protocol: TCP
  ports: "80"
  remote: {{securityGroup: {{name: client}}}}
"""


@pytest.fixture(scope="module")
def lab(lab_binaries: binaries.Binaries) -> Iterator[LabCluster]:
    """Its own control plane and a 2-node lab with the plugin (other modules share the
    session lab without it)."""
    try:
        build_plugin()
    except PluginBuildError as exc:
        pytest.skip(f"the secgroups-cni plugin cannot be built: {exc}")
    prefix = (TEST_PREFIX + "c")[:8]
    cp = controlplane.ControlPlane(prefix, bins=lab_binaries)
    cp.start()
    lab = LabCluster(prefix=prefix, nodes=2, cp=cp, cni=True)
    try:
        lab.up()
        apply(lab, POLICY)
        yield lab
    finally:
        try:
            lab.down()
        finally:
            cp.stop()


def node(lab: LabCluster, i: int) -> str:
    return f"{lab.prefix}-n{i}"


def pod_yaml(name: str, node_name: str, groups: str, namespace: str = NS, gate: bool = True) -> str:
    spec: dict[str, Any] = {
        "nodeName": node_name,
        "containers": [{"name": "app", "image": "localhost/probe"}],
    }
    if gate:
        spec["readinessGates"] = [{"conditionType": GATE}]
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if groups:
        meta["annotations"] = {"secgroups.dev/security-groups": groups}
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})


def pod(lab: LabCluster, name: str, namespace: str = NS) -> dict[str, Any]:
    out: dict[str, Any] = get(lab, "pod", "-n", namespace, name)
    return out


def condition(p: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in (p.get("status") or {}).get("conditions") or ():
        if c.get("type") == kind:
            return dict(c)
    return None


def policy_applied(lab: LabCluster, name: str, namespace: str = NS) -> bool:
    c = condition(pod(lab, name, namespace), GATE)
    return c is not None and c.get("status") == "True"


def endpoint(lab: LabCluster, name: str, namespace: str = NS) -> Any:
    pods, _ = lab.endpoints()
    return pods.get(f"{namespace}/{name}")


def client(lab: LabCluster, name: str, namespace: str = NS) -> ProbeClient:
    e = wait_until(f"{namespace}/{name} has a probe daemon", lambda: endpoint(lab, name, namespace))
    return ProbeClient(e)


def delete(lab: LabCluster, name: str, namespace: str = NS) -> None:
    lab.kubectl("delete", "pod", "-n", namespace, name, "--wait=true", "--timeout=60s")


@pytest.fixture(scope="module")
def server(lab: LabCluster) -> Iterator[str]:
    apply(lab, pod_yaml("server", node(lab, 1), "server"))
    wait_until("the server's policy in force", lambda: policy_applied(lab, "server"), 180)
    yield endpoint(lab, "server").ipv4
    delete(lab, "server")


def test_a_pods_first_connection_to_a_denied_destination_fails(
    lab: LabCluster, server: str
) -> None:
    """Ten new client pods in a row: each one's very first probe goes to the outside host
    on TCP 80 (its groups deny it) and fails; once its policy is in force the allowed
    destination answers, so the new pods' network works at all."""
    _, outside = lab.endpoints()
    assert outside is not None
    for i in range(10):
        name = f"first-{i}"
        apply(lab, pod_yaml(name, node(lab, 2), "client"))
        c = client(lab, name)  # the daemon runs: the plugin's ADD has returned
        first = c.probe("tcp", outside.ipv4, 80, timeout=1.0)
        assert not first.ok, f"{name}'s first connection to a denied destination got through"
        wait_until(f"{name}'s policy in force", lambda n=name: policy_applied(lab, n), 120)
        assert not c.probe("tcp", outside.ipv4, 80, timeout=1.0).ok
        assert c.probe("tcp", server, 80, timeout=3.0).ok, "the allowed destination must answer"
        delete(lab, name)


def test_a_denied_client_cannot_reach_a_new_pod_from_its_start(
    lab: LabCluster, server: str
) -> None:
    """An intruder whose own egress allows TCP 80 anywhere, but whom no server rule lets
    in, probes the address the next pod on node 1 will get — from before the pod exists
    until after its policy is in force: not one answer. A client the new pod's rules
    allow reaches it once its policy is in force (the address is reachable at all)."""
    apply(lab, pod_yaml("intruder", node(lab, 2), "sender"))
    apply(lab, pod_yaml("friend", node(lab, 2), "client"))
    intruder, friend = client(lab, "intruder"), client(lab, "friend")
    wait_until("intruder's policy", lambda: policy_applied(lab, "intruder"), 120)
    wait_until("friend's policy", lambda: policy_applied(lab, "friend"), 120)
    apply(lab, pod_yaml("probe-target", node(lab, 1), "locked"))
    target = endpoint_eventually(lab, "probe-target")
    delete(lab, "probe-target")  # its address is free now: the next pod on node 1 gets it
    answers: list[float] = []
    probes = 0
    stop = threading.Event()

    def hammer() -> None:
        nonlocal probes
        while not stop.is_set():
            probes += 1
            if intruder.probe("tcp", target, 80, timeout=0.3).ok:
                answers.append(time.monotonic())

    t = threading.Thread(target=hammer, daemon=True)
    t.start()
    try:
        time.sleep(0.5)
        apply(lab, pod_yaml("newcomer", node(lab, 1), "server"))
        assert endpoint_eventually(lab, "newcomer") == target, "the lab reused the address"
        wait_until("newcomer's policy in force", lambda: policy_applied(lab, "newcomer"), 120)
        time.sleep(1.0)
    finally:
        stop.set()
        t.join(5)
    assert probes > 5
    assert answers == [], f"the intruder reached the new pod {len(answers)} of {probes} times"
    wait_until(
        "the allowed client reaches the new pod",
        lambda: friend.probe("tcp", target, 80, timeout=1.0).ok,
        30,
    )
    for name in ("intruder", "friend", "newcomer"):
        delete(lab, name)


def endpoint_eventually(lab: LabCluster, name: str) -> str:
    e = wait_until(f"{name} has an address", lambda: endpoint(lab, name), 60)
    return str(e.ipv4)


def sandbox_events(lab: LabCluster, name: str) -> list[str]:
    events = get(lab, "events", "-n", NS, "--field-selector", f"involvedObject.name={name}")
    return [e["message"] for e in events["items"] if e.get("reason") == "FailedCreatePodSandBox"]


def test_without_the_agent_a_new_pod_gets_no_network_until_it_is_back(
    lab: LabCluster, server: str
) -> None:
    """The agent of node 2 stopped: a new pod of an enforced namespace gets no network
    namespace, no address, and a Warning event that says why (kubectl describe pod shows
    it); once the agent is back, the kubelet's retry starts it, behind its policy."""
    agent = f"agent-{node(lab, 2)}"
    lab.stop_daemon(agent)
    try:
        apply(lab, pod_yaml("orphan", node(lab, 2), "client"))
        messages = wait_until(
            "a FailedCreatePodSandBox event", lambda: sandbox_events(lab, "orphan"), 60
        )
        assert "fail closed" in messages[0] and "agent" in messages[0], messages[0]
        described = lab.kubectl("describe", "pod", "-n", NS, "orphan")
        assert "FailedCreatePodSandBox" in described and "fail closed" in described
        p = pod(lab, "orphan")
        assert p["status"].get("phase") == "Pending" and not p["status"].get("podIPs")
        assert endpoint(lab, "orphan") is None, "the pod got a network without the agent"
    finally:
        lab.start_daemon(agent)
    wait_until(
        "the retried sandbox runs",
        lambda: pod(lab, "orphan")["status"].get("phase") == "Running",
        90,
    )
    wait_until("orphan's policy in force", lambda: policy_applied(lab, "orphan"), 120)
    assert client(lab, "orphan").probe("tcp", server, 80, timeout=3.0).ok
    delete(lab, "orphan")


def test_a_reused_address_stays_behind_the_placeholder_until_its_own_policy(
    lab: LabCluster, server: str
) -> None:
    """With the operator stopped, pod ``old`` (client and server) is deleted and a new pod
    ``reuser`` (group locked) gets its address. The compiled objects still say ``old`` for
    it: the caller's egress and old's ingress would let the caller in, old's egress and
    the server's ingress would let the address reach the server. The placeholder stops
    both until the operator, started again, compiles ``reuser``, whose own policy the
    agent then puts in force."""
    apply(lab, pod_yaml("old", node(lab, 1), "client,server"))
    apply(lab, pod_yaml("caller", node(lab, 2), "client"))
    wait_until("old's policy", lambda: policy_applied(lab, "old"), 120)
    wait_until("caller's policy", lambda: policy_applied(lab, "caller"), 120)
    caller, old = client(lab, "caller"), client(lab, "old")
    address = endpoint_eventually(lab, "old")
    assert caller.probe("tcp", address, 80, timeout=3.0).ok  # the allowances to be reused
    assert old.probe("tcp", server, 80, timeout=3.0).ok
    lab.stop_daemon("operator")
    try:
        delete(lab, "old")
        apply(lab, pod_yaml("reuser", node(lab, 1), "locked"))
        assert endpoint_eventually(lab, "reuser") == address, "the lab reused the address"
        reuser = client(lab, "reuser")
        held = get(lab, "compilednodepolicy", node(lab, 1))
        stale = [p["name"] for p in held["spec"]["pods"] if address in p.get("ips", [])]
        assert stale == ["old"], "the node object must still give the address to old"
        for _ in range(5):
            assert not caller.probe("tcp", address, 80, timeout=1.0).ok
            assert not reuser.probe("tcp", server, 80, timeout=1.0).ok
        assert not policy_applied(lab, "reuser")
    finally:
        lab.start_daemon("operator")
    wait_until("reuser's own policy in force", lambda: policy_applied(lab, "reuser"), 120)
    assert not caller.probe("tcp", address, 80, timeout=1.0).ok  # locked, for good
    assert not reuser.probe("tcp", server, 80, timeout=1.0).ok
    for name in ("caller", "reuser"):
        delete(lab, name)


def test_pods_outside_enforced_namespaces_are_passed_and_marked(lab: LabCluster) -> None:
    """A pod of a namespace that is not enforced starts at once, with no placeholder, and
    its readiness condition is set (NotEnforced): nobody stays unready for our sake."""
    apply(lab, pod_yaml("plain", node(lab, 2), "", namespace="open"))
    wait_until("plain runs", lambda: endpoint(lab, "plain", "open"), 60)
    wait_until("plain's condition", lambda: policy_applied(lab, "plain", "open"), 120)
    c = condition(pod(lab, "plain", "open"), GATE)
    assert c is not None and c["reason"] == "NotEnforced"
    ready = condition(pod(lab, "plain", "open"), "Ready")
    assert ready is not None and ready["status"] == "True"
    delete(lab, "plain", "open")


# ----------------------------------------------------------------------------- the webhook


@pytest.fixture(scope="module")
def gate_webhook(lab: LabCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``secgroups-operator --webhook-only`` serving /mutate, reachable by the lab's API
    server, with the MutatingWebhookConfiguration it writes itself (``--webhook-url``)."""
    assert lab.cp is not None
    address = lab.cp.addresses.root_side
    with socket.socket() as s:
        s.bind((address, 0))
        port = int(s.getsockname()[1])
    log = tmp_path_factory.mktemp("gate") / "operator.log"
    argv = [
        sys.executable, "-m", "secgroups_operator.main",
        "--kubeconfig", str(lab.kubeconfig),
        "--webhook-only",
        "--webhook-address", address,
        "--webhook-port", str(port),
        "--webhook-url", f"https://{address}:{port}",
        "--webhook-mutating-configuration", "ksg-gate",
        "--webhook-gate-failure-policy", "Fail",  # a test pod must never slip through
    ]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
    try:

        def gated() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"the operator exited:\n{log.read_text()[-3000:]}")
            name = f"canary-{time.monotonic_ns()}"
            out = lab.kubectl(
                "create", "--dry-run=server", "-o", "json", "-f", "-",
                input_text=pod_yaml(name, node(lab, 1), "", gate=False), check=False,
            )  # fmt: skip
            return GATE in out

        wait_until("the API server calls /mutate", gated, 90)
        yield
    finally:
        lab.kubectl("delete", "mutatingwebhookconfiguration", "ksg-gate", "--ignore-not-found")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_new_pods_of_enforced_namespaces_get_the_gate_and_are_ready_once_enforced(
    lab: LabCluster, gate_webhook: None, server: str
) -> None:
    """The mutating webhook gives a pod written without a gate the gate; it is Ready only
    with its policy in force; hostNetwork pods and pods of other namespaces get none."""
    apply(lab, pod_yaml("gated", node(lab, 2), "client", gate=False))
    p = pod(lab, "gated")
    assert p["spec"].get("readinessGates") == [{"conditionType": GATE}]
    wait_until("gated's policy in force", lambda: policy_applied(lab, "gated"), 120)
    wait_until(
        "gated Ready",
        lambda: (condition(pod(lab, "gated"), "Ready") or {}).get("status") == "True",
        60,
    )
    assert condition(pod(lab, "gated"), GATE)["reason"] == "PolicyApplied"  # type: ignore[index]
    apply(lab, pod_yaml("ungated", node(lab, 2), "", namespace="open", gate=False))
    assert not pod(lab, "ungated", "open")["spec"].get("readinessGates")
    host = json.loads(pod_yaml("host", node(lab, 2), "", gate=False))
    host["spec"]["hostNetwork"] = True
    out = lab.kubectl(
        "create", "--dry-run=server", "-o", "json", "-f", "-", input_text=json.dumps(host)
    )
    assert not json.loads(out)["spec"].get("readinessGates")
    delete(lab, "gated")
    delete(lab, "ungated", "open")
