"""Failover: two operator processes on one Lease; the active one is killed (SIGKILL, so
its lease is not released) and the standby publishes the next change.

Printed: the time from the kill to the standby publishing a pod created right after the
kill (it includes the lease duration, 4 s here, that a dead leader keeps everyone
waiting), and the time to the takeover. Asserted: the standby takes over and publishes
within the deadline; the only objects rewritten are those the change touches, plus the
conservative re-check of the pods that use what the old leader had not published (an
epoch one higher, nothing else); and afterwards nothing moves — no object flaps.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.cluster.conftest import TEST_PREFIX
from tests.cluster.kube import wait_until

from secgroups_lab import binaries, controlplane
from secgroups_lab.cluster import LabCluster
from secgroups_lab.controlplane import Daemon

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

LEASE = "kube-system/ksg-operator"
LEASE_S = 4
NS = "failover"


@pytest.fixture(scope="module")
def lab(lab_binaries: binaries.Binaries) -> Iterator[LabCluster]:
    prefix = (TEST_PREFIX + "f")[:8]
    cp = controlplane.ControlPlane(prefix, bins=lab_binaries)
    cp.start()
    lab = LabCluster(prefix=prefix, nodes=2, cp=cp, operator=False)
    try:
        lab.up()
        yield lab
    finally:
        try:
            lab.down()
        finally:
            cp.stop()


def start_operator(lab: LabCluster, identity: str) -> Daemon:
    return lab._spawn(
        f"operator-{identity}",
        [
            sys.executable,
            "-m",
            "secgroups_operator.main",
            "--kubeconfig",
            str(lab.kubeconfig),
            "--liveness",
            "",
            "--leader-election-lease",
            LEASE,
            "--lease-duration",
            str(LEASE_S),
            "--identity",
            identity,
        ],
    )


def get(lab: LabCluster, *args: str) -> Any:
    out = lab.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(out) if out.strip() else None


def holder(lab: LabCluster) -> str | None:
    ns, name = LEASE.split("/")
    lease = get(lab, "lease", "-n", ns, name) or {}
    return (lease.get("spec") or {}).get("holderIdentity")


def compiled(lab: LabCluster) -> dict[tuple[str, str], int]:
    out = {}
    for kind in ("compiledsecuritygroups", "compiledaddresssets", "compilednodepolicies"):
        for obj in (get(lab, kind) or {}).get("items", ()):
            out[(obj["kind"], obj["metadata"]["name"])] = obj["metadata"]["generation"]
    return out


def on_node(lab: LabCluster, name: str) -> str | None:
    for node in lab.node_names():
        obj = get(lab, "compilednodepolicy", node) or {"spec": {}}
        if any(p["name"] == name for p in obj["spec"].get("pods", ())):
            return node
    return None


def manifests(pods: list[tuple[str, str]]) -> str:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": NS, "labels": {"secgroups.dev/enforce": "true"}},
        },
        {
            "apiVersion": "secgroups.dev/v1alpha1",
            "kind": "SecurityGroup",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}},
        },
        {
            "apiVersion": "secgroups.dev/v1alpha1",
            "kind": "SecurityGroupRule",
            "metadata": {"name": "web-in", "namespace": NS},
            "spec": {
                "securityGroup": "web",
                "direction": "Ingress",
                "protocol": "TCP",
                "ports": "80",
                "remote": {"securityGroup": {"name": "web"}},
            },
        },
    ]
    for name, node in pods:
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": NS, "labels": {"app": "web"}},
                "spec": {"nodeName": node, "containers": [{"name": "a", "image": "x"}]},
            }
        )
    return "\n---\n".join(json.dumps(d) for d in docs)


def test_the_standby_publishes_the_next_change_after_the_leader_is_killed(
    lab: LabCluster,
) -> None:
    n1, n2 = lab.node_names()
    one = start_operator(lab, "one")
    wait_until("one leads", lambda: holder(lab) == "one", 60)
    two = start_operator(lab, "two")
    lab.kubectl("apply", "--server-side", "-f", "-", input_text=manifests([("w1", n1), ("w2", n2)]))
    wait_until("w1 and w2 published", lambda: on_node(lab, "w1") and on_node(lab, "w2"), 60)
    time.sleep(3)  # let two's watches and compile catch up (it is warm, not asserted)
    assert holder(lab) == "one"
    before = compiled(lab)
    n2_before = get(lab, "compilednodepolicy", n2)["spec"]

    os.kill(one.pid, signal.SIGKILL)
    killed = time.monotonic()
    lab.kubectl("apply", "--server-side", "-f", "-", input_text=manifests([("w3", n1)]))
    wait_until("two leads", lambda: holder(lab) == "two", 60)
    took_over = time.monotonic() - killed
    wait_until("w3 published by two", lambda: on_node(lab, "w3"), 60)
    published = time.monotonic() - killed
    print(
        f"\n[failover] lease {LEASE_S} s: standby leading {took_over:.2f} s after the kill, "
        f"the next change published {published:.2f} s after it"
    )
    time.sleep(2)
    after = compiled(lab)
    touched = {("CompiledNodePolicy", n1), ("CompiledAddressSet", f"sg.{NS}.web")}
    rewritten = {k for k in before if k not in touched and after.get(k) != before[k]}
    # The takeover re-checks, conservatively, the pods that use a set the old leader had
    # not published (here w2, a member of web, whose set gained w3): n2 may change by
    # that epoch and nothing else.
    assert rewritten <= {("CompiledNodePolicy", n2)}, f"rewritten by the takeover: {rewritten}"
    if rewritten:
        pods = {p["name"]: p for p in get(lab, "compilednodepolicy", n2)["spec"]["pods"]}
        old = {p["name"]: p for p in n2_before["pods"]}
        assert set(pods) == set(old) == {"w2"}
        assert pods["w2"].get("epoch", 0) == old["w2"].get("epoch", 0) + 1
        assert {**pods["w2"], "epoch": 0} == {**old["w2"], "epoch": 0}
    # And then nothing moves any more: no object flaps.
    time.sleep(3)
    assert compiled(lab) == after
    assert two.alive()
