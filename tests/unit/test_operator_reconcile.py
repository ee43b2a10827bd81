"""The operator's reconcile round against an in-memory cluster (compile → epochs → publish).

The real API server path is exercised by the cluster tier; here the fake assigns
generations like the API server does, so ordering and epoch rules can be checked
exactly.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from secgroups.compiled import CompiledNodeSpec
from secgroups_operator.kube import FakeCluster
from secgroups_operator.reconciling import Reconciler
from secgroups_operator.store import FactsStore

API = "secgroups.dev/v1alpha1"


def ns(name: str, enforce: bool = True) -> dict[str, Any]:
    labels = {"secgroups.dev/enforce": "true"} if enforce else {}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(name: str, node: str, ip: str, groups: str | None = None, rv: int = 1) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "demo",
        "uid": f"uid-{name}",
        "resourceVersion": str(rv),
    }
    if groups:
        meta["annotations"] = {"secgroups.dev/security-groups": groups}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": node},
        "status": {"podIPs": [{"ip": ip}], "phase": "Running"},
    }


def sg(name: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "SecurityGroup",
        "metadata": {"name": name, "namespace": "demo", "generation": 1},
    }


def rule(name: str, group: str, rv: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "SecurityGroupRule",
        "metadata": {"name": name, "namespace": "demo", "resourceVersion": str(rv)},
        "spec": {"securityGroup": group, **spec},
    }


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def world() -> tuple[FactsStore, FakeCluster, Reconciler]:
    store = FactsStore()
    cluster = FakeCluster()
    objects = [
        ("Namespace", ns("demo")),
        ("Node", {"metadata": {"name": "n1"}}),
        ("Node", {"metadata": {"name": "n2"}}),
        ("Pod", pod("web1", "n1", "100.64.1.2", "web")),
        ("Pod", pod("db1", "n2", "100.64.2.2", "db")),
        ("SecurityGroup", sg("web")),
        ("SecurityGroup", sg("db")),
        (
            "SecurityGroupRule",
            rule(
                "db-from-web",
                "db",
                direction="Ingress",
                protocol="TCP",
                ports="5432",
                remote={"securityGroup": {"name": "web"}},
            ),
        ),
        ("SecurityGroupRule", rule("web-out", "web", direction="Egress", protocol="All")),
    ]
    for kind, obj in objects:
        store.upsert(kind, obj)
        if obj.get("apiVersion") == API:
            run(cluster.apply(obj))
    cluster.writes.clear()
    return store, cluster, Reconciler(cluster, store)


def node_spec(cluster: FakeCluster, node: str) -> CompiledNodeSpec:
    obj = cluster.objects[("CompiledNodePolicy", "", node)]
    return CompiledNodeSpec.model_validate(obj["spec"])


def test_first_round_publishes_groups_sets_and_nodes(world: Any) -> None:
    _, cluster, rec = world
    run(rec.reconcile_once())
    kinds = sorted({k for k, _, _ in cluster.objects})
    assert kinds == [
        "CompiledAddressSet",
        "CompiledNodePolicy",
        "CompiledSecurityGroup",
        "SecurityGroup",
        "SecurityGroupRule",
    ]
    assert node_spec(cluster, "n2").pods[0].groups == ("sg.demo.db",)
    members = cluster.objects[("CompiledAddressSet", "", "sg.demo.web")]["spec"]["ipv4"]
    assert members == ["100.64.1.2/32"]
    # Groups and sets were written before the node objects that reference them.
    order = [k for op, k, _ in cluster.writes if op == "apply" and k.startswith("Compiled")]
    assert order.index("CompiledNodePolicy") > order.index("CompiledSecurityGroup")


def test_steady_state_writes_nothing(world: Any) -> None:
    _, cluster, rec = world
    run(rec.reconcile_once())
    before = len(cluster.writes)
    run(rec.reconcile_once())
    assert cluster.writes[before:] == []


def test_inbound_allow_deleted_bumps_epochs_and_records_requirements(world: Any) -> None:
    """S-CT-2 row 4: the db pods get a new epoch, and their node object requires the
    new generation of the db group, so an agent never applies the epoch first."""
    store, cluster, rec = world
    run(rec.reconcile_once())
    assert node_spec(cluster, "n2").pods[0].epoch == 0
    store.delete("SecurityGroupRule", rule("db-from-web", "db", rv=2))
    result = run(rec.reconcile_once())
    assert result.bumped == {("demo", "db1")}
    spec = node_spec(cluster, "n2")
    assert spec.pods[0].epoch == 1
    gen = cluster.objects[("CompiledSecurityGroup", "", "sg.demo.db")]["metadata"]["generation"]
    assert gen == 2
    assert spec.requires["group/sg.demo.db"] == gen
    # The web pod's node is untouched: outbound-only and unrelated changes clear nothing.
    assert node_spec(cluster, "n1").pods[0].epoch == 0


def test_egress_change_does_not_bump(world: Any) -> None:
    """S-CT-1: outbound rule changes affect new connections only."""
    store, cluster, rec = world
    run(rec.reconcile_once())
    store.upsert(
        "SecurityGroupRule",
        rule("web-out", "web", rv=5, direction="Egress", protocol="TCP", ports="443"),
    )
    result = run(rec.reconcile_once())
    assert result.bumped == frozenset()
    assert node_spec(cluster, "n1").pods[0].epoch == 0


def test_default_group_created_for_pod_without_groups(world: Any) -> None:
    """S-D-1: a managed pod with no group gets its namespace's default group, created."""
    store, cluster, rec = world
    store.upsert("Pod", pod("lonely", "n1", "100.64.1.3"))
    result = run(rec.reconcile_once())
    assert result.defaults_created == ("demo",)
    assert ("SecurityGroup", "demo", "default") in cluster.objects
    names = {n for k, _, n in cluster.objects if k == "SecurityGroupRule"}
    assert {"default-ingress-ipv4", "default-egress-ipv6"} <= names


def test_removed_pod_is_unpublished_and_unreferenced_objects_deleted(world: Any) -> None:
    store, cluster, rec = world
    run(rec.reconcile_once())
    store.delete("Pod", pod("db1", "n2", "100.64.2.2", "db", rv=9))
    run(rec.reconcile_once())
    assert node_spec(cluster, "n2").pods == ()
    assert ("CompiledSecurityGroup", "", "sg.demo.db") not in cluster.objects


def test_restart_recovers_epochs_and_rechecks_changes_made_while_down(world: Any) -> None:
    store, cluster, rec = world
    run(rec.reconcile_once())
    store.delete("SecurityGroupRule", rule("db-from-web", "db", rv=2))
    run(rec.reconcile_once())  # epoch 1
    # A new operator process: same cluster, fresh memory; a rule changed while it was down.
    store.upsert(
        "SecurityGroupRule",
        rule("db-deny", "db", rv=3, direction="Ingress", action="Deny", protocol="All"),
    )
    fresh = Reconciler(cluster, store)
    run(fresh.recover())
    assert fresh.epochs[("demo", "db1")] == 1
    result = run(fresh.reconcile_once())
    assert ("demo", "db1") in result.bumped
    assert node_spec(cluster, "n2").pods[0].epoch == 2


def test_failed_write_is_retried_with_the_same_result(world: Any) -> None:
    store, cluster, rec = world
    run(rec.reconcile_once())
    store.delete("SecurityGroupRule", rule("db-from-web", "db", rv=2))
    cluster.fail_on.add(("CompiledNodePolicy", "n2"))
    with pytest.raises(RuntimeError):
        run(rec.reconcile_once())
    cluster.fail_on.clear()
    run(rec.reconcile_once())
    assert node_spec(cluster, "n2").pods[0].epoch == 1


def test_status_reports_members_rules_and_quota(world: Any) -> None:
    store, cluster, rec = world
    # A second ingress rule that S-L-1 does not count: a CIDR remote, one port.
    office = rule(
        "db-from-office",
        "db",
        direction="Ingress",
        protocol="TCP",
        ports="5432",
        remote={"cidr": "100.64.250.0/24"},
    )
    store.upsert("SecurityGroupRule", office)
    run(cluster.apply(office))
    run(rec.reconcile_once())
    status = cluster.objects[("SecurityGroup", "demo", "db")]["status"]
    assert status["memberCount"] == 1
    assert status["ruleCount"] == 2
    # Only the rule with a remote group counts; the field's name says so (issue 11).
    assert status["rulesCountedTowardsQuota"] == {
        "ingressIPv4": 1,
        "ingressIPv6": 0,
        "egressIPv4": 0,
        "egressIPv6": 0,
    }
    assert "quota" not in status
    assert status["conditions"][0]["type"] == "Ready"
    assert status["conditions"][0]["status"] == "True"
