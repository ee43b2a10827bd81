"""The operator against the real API server: pods from the simulated kubelet, groups and
rules as custom objects, compiled objects and statuses read back (docs/architecture.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.cluster.kube import apply, get, pods_yaml, wait_until

from secgroups.compiled import CompiledNodeSpec
from secgroups_lab.cluster import LabCluster

pytestmark = pytest.mark.cluster

NS = "op-e2e"

GROUPS = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}, labels: {{secgroups.dev/enforce: "true"}}}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroup
metadata: {{name: web, namespace: {NS}}}
spec: {{podSelector: {{matchLabels: {{app: web}}}}}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroup
metadata: {{name: db, namespace: {NS}}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroupRule
metadata: {{name: db-from-web, namespace: {NS}}}
spec: {{securityGroup: db, direction: Ingress, protocol: TCP, ports: postgresql,
        remote: {{securityGroup: {{name: web}}}}}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroupRule
metadata: {{name: web-out, namespace: {NS}}}
spec: {{securityGroup: web, direction: Egress, protocol: All}}
"""


def node_spec(lab: LabCluster, node: str) -> CompiledNodeSpec | None:
    out = lab.kubectl("get", "compilednodepolicy", node, "-o", "json", check=False)
    if not out.strip():
        return None  # not published yet
    return CompiledNodeSpec.model_validate(json.loads(out)["spec"])


def pod_entry(lab: LabCluster, node: str, name: str) -> Any:
    spec = node_spec(lab, node)
    return (
        next((p for p in spec.pods if (p.namespace, p.name) == (NS, name)), None) if spec else None
    )


@pytest.fixture(scope="module")
def scenario(lab_cluster: LabCluster) -> LabCluster:
    n1, n2, n3 = lab_cluster.node_names()
    apply(lab_cluster, GROUPS)
    apply(
        lab_cluster,
        pods_yaml(
            NS,
            [
                ("w1", n1, {"app": "web"}, None),
                ("d1", n2, {}, "db"),
                ("x1", n3, {}, None),
            ],
        ),
    )
    wait_until("d1 published on its node", lambda: pod_entry(lab_cluster, n2, "d1"), 60)
    return lab_cluster


def test_pods_are_published_on_their_nodes_with_their_groups(scenario: LabCluster) -> None:
    n1, n2, _ = scenario.node_names()
    d1 = pod_entry(scenario, n2, "d1")
    assert d1.groups == (f"sg.{NS}.db",)
    pod = get(scenario, "pod", "-n", NS, "d1")
    assert set(d1.ips) == {p["ip"] for p in pod["status"]["podIPs"]}
    w1 = wait_until("w1 published", lambda: pod_entry(scenario, n1, "w1"))
    assert w1.groups == (f"sg.{NS}.web",)


def test_remote_group_members_are_an_address_set(scenario: LabCluster) -> None:
    """S-M-4: a group used as a remote is the set of its members' IPs, both families."""
    w1 = get(scenario, "pod", "-n", NS, "w1")
    want = sorted(f"{p['ip']}/{32 if '.' in p['ip'] else 128}" for p in w1["status"]["podIPs"])
    spec = get(scenario, "compiledaddressset", f"sg.{NS}.web")["spec"]
    assert sorted([*spec.get("ipv4", []), *spec.get("ipv6", [])]) == want


def test_default_group_is_created_for_a_pod_without_groups(scenario: LabCluster) -> None:
    """S-D-1: x1 names no group and no selector picks it: the namespace default group."""
    sg = wait_until(
        "default group created", lambda: get(scenario, "securitygroups", "-n", NS)["items"]
    )
    assert "default" in {g["metadata"]["name"] for g in sg}
    rules = {r["metadata"]["name"] for r in get(scenario, "sgr", "-n", NS)["items"]}
    assert {
        "default-ingress-ipv4",
        "default-ingress-ipv6",
        "default-egress-ipv4",
        "default-egress-ipv6",
    } <= rules
    _, _, n3 = scenario.node_names()
    x1 = wait_until("x1 published", lambda: pod_entry(scenario, n3, "x1"))
    assert x1.groups == (f"sg.{NS}.default",)


def test_group_status_reports_members_and_quota(scenario: LabCluster) -> None:
    def status() -> Any:
        st = get(scenario, "sg", "-n", NS, "db").get("status") or {}
        return st if st.get("memberCount") == 1 else None

    st = wait_until("db status", status)
    assert st["ruleCount"] == 1
    assert st["rulesCountedTowardsQuota"]["ingressIPv4"] == 1  # a remote group: S-L-1 counts it
    assert st["conditions"][0]["type"] == "Ready"
    assert st["conditions"][0]["status"] == "True"


def test_missing_remote_is_reported_on_the_rule(scenario: LabCluster) -> None:
    apply(
        scenario,
        f"""
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroupRule
metadata: {{name: db-from-office, namespace: {NS}}}
spec: {{securityGroup: db, direction: Ingress, protocol: TCP, ports: "22",
        remote: {{ipAddressGroup: {{name: office}}}}}}
""",
    )

    def condition() -> Any:
        conds = (get(scenario, "sgr", "-n", NS, "db-from-office").get("status") or {}).get(
            "conditions"
        ) or []
        return conds[0] if conds and conds[0]["status"] == "False" else None

    cond = wait_until("RemoteNotFound", condition)
    assert cond["reason"] == "RemoteNotFound"
    assert "office" in cond["message"]
    scenario.kubectl("delete", "sgr", "-n", NS, "db-from-office")


def test_inbound_allow_deleted_raises_the_groups_counter_with_the_rule_change(
    scenario: LabCluster,
) -> None:
    """S-CT-2 row 4 through the operator: db's re-check counter goes up in the same write
    as the rule's removal (every member re-checked, no node object written for it: d1's
    epoch stays), and d1's agent applies that generation
    (docs/architecture.md#existing-connections-epochs)."""
    _, n2, _ = scenario.node_names()
    epoch = pod_entry(scenario, n2, "d1").epoch
    recheck = get(scenario, "compiledsecuritygroup", f"sg.{NS}.db")["spec"].get("recheck", 0)
    scenario.kubectl("delete", "sgr", "-n", NS, "db-from-web")
    group = wait_until(
        "db's counter raised",
        lambda: (
            (g := get(scenario, "compiledsecuritygroup", f"sg.{NS}.db"))
            and g["spec"].get("recheck", 0) > recheck
            and g
        ),
    )
    assert group["spec"].get("ingress", []) == []
    assert group["spec"]["recheck"] == recheck + 1
    assert pod_entry(scenario, n2, "d1").epoch == epoch
    wait_until(
        "d1's agent applied it",
        lambda: (
            int(
                (get(scenario, "nodeagentreport", n2).get("status") or {}).get(
                    "appliedGroupRevision"
                )
                or 0
            )
            >= int(group["metadata"]["resourceVersion"])
        ),
    )


def test_relabelled_pod_moves_between_groups_live(scenario: LabCluster) -> None:
    """docs/architecture.md#membership-and-scope: membership changes apply to running pods."""
    n1, _, _ = scenario.node_names()
    scenario.kubectl("label", "pod", "-n", NS, "w1", "app=other", "--overwrite")
    moved = wait_until(
        "w1 in the default group",
        lambda: (e := pod_entry(scenario, n1, "w1")) and e.groups == (f"sg.{NS}.default",) and e,
    )
    assert moved.epoch >= 1  # S-CT-2 row 1 (added to default) re-checks it


def test_group_status_shows_where_its_rules_are_enforced(scenario: LabCluster) -> None:
    """Realization: the nodes whose agent enforces the group's current compiled rules,
    out of the nodes whose pods use it, from the agents' reports (`kubectl get sg`)."""
    _, n2, _ = scenario.node_names()

    def realization() -> Any:
        # Status is written at most once a second: an earlier test's edit of db may still
        # show as "1/1" at the generation before; wait for the current one.
        r = (get(scenario, "sg", "-n", NS, "db").get("status") or {}).get("realization") or {}
        compiled = get(scenario, "compiledsecuritygroup", f"sg.{NS}.db")
        current = r.get("generation") == compiled["metadata"]["generation"]
        return compiled if r.get("nodes") == "1/1" and current else None

    compiled = wait_until("db realized on its one node at its current generation", realization, 60)
    agent = get(scenario, "nodeagentreport", n2)["status"]
    assert agent["appliedGroupRevision"] >= int(compiled["metadata"]["resourceVersion"])
    table = scenario.kubectl("get", "sg", "-n", NS, "db")
    assert "REALIZED" in table and "1/1" in table
