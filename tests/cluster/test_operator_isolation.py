"""No tenant can stall the operator: each hostile input of issue 15 against the real API
server, the real operator and the node agents.

For each input: the hostile object is reported on its own status (or, for a pod, as an
Event) with the reason, and a *new pod in another namespace* is still enforced — on its
node object and applied by that node's agent — within the usual deadline. The time that
took is printed beside the same measurement made before any hostile object existed
(``-s`` shows them); tests never assert wall-clock times.

The module runs its own lab (``<prefix>i``, two nodes) because one input — a pod IP such
as ``010.0.0.1`` — is only accepted by an API server with the legacy IP validation
(``--feature-gates=StrictIPCIDRValidation=false``, what older clusters and upgraded
objects still carry), and because its objects (thousands of rules, 5,000-range address
groups) should not slow the other cluster tests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.cluster.conftest import TEST_PREFIX
from tests.cluster.kube import wait_until

from secgroups.compiled import applied_nodes
from secgroups.quotas import MAX_COMPILED_OBJECT_BYTES, MAX_RULES_PER_GROUP
from secgroups_kube import Kube
from secgroups_lab import binaries, controlplane
from secgroups_lab.cluster import LabCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

API = "secgroups.dev/v1alpha1"
OK = "iso-ok"  # the well-behaved tenant
DEADLINE = 60.0  # the usual deadline of a cluster test for "published and applied"


@pytest.fixture(scope="module")
def lab(lab_binaries: binaries.Binaries) -> Iterator[LabCluster]:
    prefix = (TEST_PREFIX + "i")[:8]
    cp = controlplane.ControlPlane(
        prefix,
        bins=lab_binaries,
        apiserver_args=["--feature-gates=StrictIPCIDRValidation=false"],
    )
    cp.start()
    lab = LabCluster(prefix=prefix, nodes=2, cp=cp)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
        cp.stop()


@pytest.fixture(scope="module")
def kube(lab: LabCluster) -> Iterator[Kube]:
    k = Kube.connect(str(lab.kubeconfig), field_manager="isolation-test")
    try:
        yield k
    finally:
        k.close()


def apply(kube: Kube, *objs: dict[str, Any]) -> None:
    for obj in objs:
        kube.apply(obj, force=True)


def namespace(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"secgroups.dev/enforce": "true"}},
    }


def group(ns: str, name: str) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "SecurityGroup", "metadata": {"name": name, "namespace": ns}}


def rule(ns: str, name: str, grp: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "SecurityGroupRule",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"securityGroup": grp, "direction": "Ingress", "protocol": "TCP", **spec},
    }


def pod(ns: str, name: str, node: str, groups: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if groups:
        meta["annotations"] = {"secgroups.dev/security-groups": groups}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "localhost/x"}]},
    }


def get(lab: LabCluster, *args: str) -> Any:
    out = lab.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(out) if out.strip() else None


def ready(lab: LabCluster, kind: str, ns: str, name: str) -> dict[str, Any] | None:
    obj = get(lab, kind, "-n", ns, name) or {}
    for cond in (obj.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Ready":
            return dict(cond)
    return None


def events(lab: LabCluster, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    data = get(lab, "events", "-n", ns, "--field-selector", f"involvedObject.name={name}") or {}
    return [e for e in data.get("items", ()) if e.get("reason") == reason]


def enforced(lab: LabCluster, ns: str, name: str, node: str) -> bool:
    """On its node object, and that object's generation applied by the node's agent."""
    obj = get(lab, "compilednodepolicy", node)
    report = get(lab, "nodeagentreport", node)
    if not obj or not report:
        return False
    listed = any((p["namespace"], p["name"]) == (ns, name) for p in obj["spec"].get("pods", ()))
    return listed and node in applied_nodes([obj], [report])


_count = [0]


def new_pod_enforced(lab: LabCluster, kube: Kube) -> float:
    """Seconds from creating a pod in the well-behaved namespace to its node enforcing it."""
    _count[0] += 1
    name, node = f"ok-{_count[0]}", lab.node_names()[_count[0] % 2]
    t0 = time.monotonic()
    apply(kube, pod(OK, name, node, groups="app"))
    wait_until(f"{OK}/{name} enforced", lambda: enforced(lab, OK, name, node), DEADLINE)
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def baseline(lab: LabCluster, kube: Kube) -> float:
    apply(kube, namespace(OK), group(OK, "app"), rule(OK, "web", "app", ports="80"))
    new_pod_enforced(lab, kube)  # warm up: the first pod also creates the objects
    took = new_pod_enforced(lab, kube)
    print(f"\n[isolation] baseline: a new pod enforced in {took * 1000:.0f} ms")
    return took


def report(what: str, took: float, baseline: float) -> None:
    print(
        f"\n[isolation] {what}: another namespace's new pod enforced in {took * 1000:.0f} ms "
        f"(baseline {baseline * 1000:.0f} ms)"
    )


# ----------------------------------------------------------------------------- the inputs


def test_a_group_with_too_many_plain_cidr_rules(
    lab: LabCluster, kube: Kube, baseline: float
) -> None:
    """Plain CIDR rules count towards no quota; thousands of them made one compiled
    group too big for etcd, and every round failed."""
    ns = "iso-rules"
    apply(kube, namespace(ns), group(ns, "big"), pod(ns, "victim", lab.node_names()[0], "big"))
    n = MAX_RULES_PER_GROUP + 1
    apply(
        kube,
        *(
            rule(
                ns,
                f"cidr-{i}",
                "big",
                ports=str(1000 + i),
                remote={"cidr": f"198.51.100.{i % 250}/32"},
            )
            for i in range(n)
        ),
    )
    cond = wait_until(
        "TooManyRules on the group",
        lambda: (
            (c := ready(lab, "securitygroup", ns, "big")) and c["reason"] == "TooManyRules" and c
        ),
        DEADLINE * 2,
    )
    assert cond["status"] == "False" and str(MAX_RULES_PER_GROUP) in cond["message"]
    wait_until("an Event", lambda: events(lab, ns, "big", "TooManyRules"), DEADLINE)
    report(f"{n} rules in one group", new_pod_enforced(lab, kube), baseline)


def test_a_group_whose_compiled_form_is_over_the_size_bound(
    lab: LabCluster, kube: Kube, baseline: float
) -> None:
    """Fewer rules, each as large as the API allows (a 51-port list, a 255-character
    description): the compiled group passes 1 MB and would pass etcd's 1.5 MiB."""
    ns = "iso-bytes"
    apply(kube, namespace(ns), group(ns, "wide"), pod(ns, "victim", lab.node_names()[1], "wide"))
    ports = ",".join(str(1000 + 2 * k) for k in range(51))
    assert len(ports) <= 256
    apply(
        kube,
        *(
            rule(
                ns,
                f"wide-{i}",
                "wide",
                ports=ports,
                description="x" * 255,
                remote={"cidr": "203.0.113.0/24"},
            )
            for i in range(800)
        ),
    )
    cond = wait_until(
        "TooLarge on the group",
        lambda: (c := ready(lab, "securitygroup", ns, "wide")) and c["reason"] == "TooLarge" and c,
        DEADLINE * 2,
    )
    assert f"{MAX_COMPILED_OBJECT_BYTES:,}" in cond["message"]
    wait_until("an Event", lambda: events(lab, ns, "wide", "TooLarge"), DEADLINE)
    report("a group over the size bound", new_pod_enforced(lab, kube), baseline)


def test_an_address_group_of_5000_ipv6_ranges(lab: LabCluster, kube: Kube, baseline: float) -> None:
    """5,000 IPv6 ranges compile to about a million CIDRs (the compiled set was 27.7 MB)
    and took minutes to parse — on every round, used or not."""
    ns = "iso-ipag"
    ranges = [f"fd00:{i:x}::1-fd00:{i:x}::ffff:ffff:ffff:fffe" for i in range(5000)]
    ipags = [
        {
            "apiVersion": API,
            "kind": "IPAddressGroup",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"ipFamily": "IPv6", "addresses": ranges},
        }
        for name in ("used", "unused")
    ]
    apply(
        kube,
        namespace(ns),
        group(ns, "g"),
        rule(ns, "from-used", "g", ipFamily="IPv6", remote={"ipAddressGroup": {"name": "used"}}),
        pod(ns, "victim", lab.node_names()[0], "g"),
        *ipags,
    )
    for name in ("used", "unused"):

        def too_large(name: str = name) -> dict[str, Any] | None:
            c = ready(lab, "ipaddressgroup", ns, name)
            return c if c and c["reason"] == "TooLarge" else None

        def event(name: str = name) -> list[dict[str, Any]]:
            return events(lab, ns, name, "TooLarge")

        cond = wait_until(f"TooLarge on {name}", too_large, DEADLINE)
        assert "CIDRs" in cond["message"]
        wait_until("an Event", event, DEADLINE)
    report("two 5,000-range IPv6 address groups", new_pod_enforced(lab, kube), baseline)


def test_a_namespace_that_refuses_its_default_group(
    lab: LabCluster, kube: Kube, baseline: float
) -> None:
    """A quota of zero SecurityGroups: creating the namespace's default group is refused
    (the same as in a terminating namespace), which used to fail every round."""
    ns = "iso-quota"
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-groups", "namespace": ns},
        "spec": {"hard": {"count/securitygroups.secgroups.dev": "0"}},
    }
    node = lab.node_names()[1]
    apply(kube, namespace(ns))
    lab.kubectl("apply", "--server-side", "-f", "-", input_text=json.dumps(quota))
    wait_until(
        "the quota is counted",
        lambda: ((get(lab, "resourcequota", "-n", ns, "no-groups") or {}).get("status") or {}).get(
            "hard"
        ),
        DEADLINE,
    )
    apply(kube, pod(ns, "lonely", node))
    wait_until(
        "DefaultGroupNotCreated on the Namespace",
        lambda: events(lab, "default", ns, "DefaultGroupNotCreated"),
        DEADLINE,
    )
    # The pod is enforced all the same, with the synthesized S-D-1 rules.
    wait_until("the pod enforced", lambda: enforced(lab, ns, "lonely", node), DEADLINE)
    assert get(lab, "securitygroup", "-n", ns, "default") is None
    report("a namespace refusing its default group", new_pod_enforced(lab, kube), baseline)


def test_edited_default_rules_are_never_overwritten(lab: LabCluster, kube: Kube) -> None:
    ns = "iso-edit"
    edited = rule(ns, "default-egress-ipv4", "default", direction="Egress", ports="443")
    node = lab.node_names()[0]
    apply(kube, namespace(ns), edited, pod(ns, "p", node))
    wait_until(
        "the default group", lambda: get(lab, "securitygroup", "-n", ns, "default"), DEADLINE
    )
    wait_until("the pod enforced", lambda: enforced(lab, ns, "p", node), DEADLINE)
    kept = get(lab, "securitygrouprule", "-n", ns, "default-egress-ipv4")
    assert kept["spec"]["ports"] == "443" and kept["spec"]["protocol"] == "TCP"
    managers = {m["manager"] for m in kept["metadata"].get("managedFields", ())}
    assert "secgroups-operator" not in managers
    compiled = get(lab, "compiledsecuritygroup", f"sg.{ns}.default")
    egress = {r["id"]: r for r in compiled["spec"].get("egress", ())}
    assert egress[f"{ns}/default-egress-ipv4"]["ports"] == [{"lo": 443, "hi": 443}]


def test_a_pod_ip_with_leading_zeros(lab: LabCluster, kube: Kube, baseline: float) -> None:
    """``010.0.0.1``: accepted by the API server's legacy validation (and written by
    kubelets); it crashed every round."""
    ns = "iso-ip"
    ghost = "iso-ghost-node"  # a Node no kubelet serves: the test writes the pod status
    apply(kube, namespace(ns), {"apiVersion": "v1", "kind": "Node", "metadata": {"name": ghost}})
    apply(kube, pod(ns, "zeros", ghost))
    lab.kubectl(
        "patch",
        "pod",
        "-n",
        ns,
        "zeros",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(
            {"status": {"phase": "Running", "podIP": "010.0.0.1", "podIPs": [{"ip": "010.0.0.1"}]}}
        ),
    )
    found = wait_until("InvalidPodIP", lambda: events(lab, ns, "zeros", "InvalidPodIP"), DEADLINE)
    assert "010.0.0.1" in found[0]["message"]
    report("a pod IP with leading zeros", new_pod_enforced(lab, kube), baseline)
    node_obj = get(lab, "compilednodepolicy", ghost) or {"spec": {}}
    assert not node_obj["spec"].get("pods")
