"""The S-CT-2 clearing planner: every row of the table, with cases that must and must not
re-check, plus the readings docs/semantics.md records where the table is silent.

Base cluster (namespace demo): group web = A with pods a1, a2; group db = B with b1;
group misc with c1. Each case is (old facts, new facts) → the pods re-checked.
"""

from __future__ import annotations

from typing import Any

import pytest
from tests.corecases import facts, ipag, ns, pod, replace, rule, sg

from secgroups.clearing import ClearingPlan, bump_epochs, plan_clearing
from secgroups.facts import ClusterFacts
from secgroups.models import SecurityGroupRule

A1 = pod("a1", "10.0.0.1", groups="web")
A2 = pod("a2", "10.0.0.2", groups="web")
B1 = pod("b1", "10.0.1.1", groups="db")
C1 = pod("c1", "10.0.2.1", groups="misc")
BASE: tuple[Any, ...] = (ns(), sg("web"), sg("db"), sg("misc"), A1, A2, B1, C1)

A3 = pod("a3", "10.0.0.3", groups="web")
A2_MOVED = pod("a2", "10.0.0.2", groups="misc")

B_ALLOWS_A = rule("b-allow-a", "db", remote_sg="web")
B_DENIES_A = rule("b-deny-a", "db", remote_sg="web", action="Deny")
B_EGRESS_DENY_A = rule("b-out-deny-a", "db", "Egress", remote_sg="web", action="Deny")
A_DENIES_A = rule("a-deny-a", "web", remote_sg="web", action="Deny", priority=50)

IN_ALLOW = rule("r", "web", protocol="TCP", ports="22,23", cidr="192.0.2.1/24", priority=10)
IN_DENY = rule("r", "web", protocol="TCP", ports="22", action="Deny")
OUT_ALLOW = rule("r", "web", "Egress", protocol="TCP", ports="22", priority=10)
OUT_DENY = rule("r", "web", "Egress", protocol="TCP", ports="22", action="Deny")
OFFICE = ipag("office", "192.0.2.0/28")
IN_OFFICE = rule("from-office", "web", remote_ipag="office")
OUT_OFFICE = rule("to-office", "web", "Egress", remote_ipag="office")


def base(*extra: Any) -> ClusterFacts:
    return facts(*BASE, *extra)


def _case(old: ClusterFacts, *objs: Any, drop: tuple[str, ...] = ()) -> tuple[Any, ...]:
    return (old, replace(old, *objs, drop=drop))


def _modified(**spec: Any) -> SecurityGroupRule:
    body = IN_ALLOW.spec.model_dump(by_alias=True, exclude_none=True)
    body.update(spec)
    return SecurityGroupRule.model_validate(
        {"metadata": {"name": "r", "namespace": "demo"}, "spec": body}
    )


def _out_modified(**spec: Any) -> SecurityGroupRule:
    body = OUT_ALLOW.spec.model_dump(by_alias=True, exclude_none=True)
    body.update(spec)
    return SecurityGroupRule.model_validate(
        {"metadata": {"name": "r", "namespace": "demo"}, "spec": body}
    )


def _renamed(r: SecurityGroupRule, name: str) -> SecurityGroupRule:
    return r.model_copy(update={"metadata": r.metadata.model_copy(update={"name": name})})


# What the operator creates for a namespace's default group (S-D-1), as rule objects.
S_D_1_OBJECTS = [
    rule(f"default-{d}-{f.lower()}", "default", d, ipFamily=f, **remote)
    for f in ("IPv4", "IPv6")
    for d, remote in (("Ingress", {"remote_sg": "default"}), ("Egress", {}))
]

ALL_A = {"a1", "a2"}

CASES = [
    # --- row 1: pods added to SG A
    pytest.param(*_case(base(B_ALLOWS_A), A3), {"a3"}, id="S-CT-2-row-1-added-pods-rechecked"),
    pytest.param(
        *_case(base(B_DENIES_A), A3),
        {"a3", "b1"},
        id="S-CT-2-row-1-inbound-deny-of-B-from-A-rechecks-all-of-B",
    ),
    pytest.param(
        *_case(base(B_EGRESS_DENY_A), A3),
        {"a3"},
        id="S-CT-2-row-1-outbound-deny-of-B-does-not-count",
    ),
    pytest.param(
        *_case(base(A_DENIES_A), A3),
        {"a1", "a2", "a3"},
        id="S-CT-2-row-1-B-may-be-A-itself",
    ),
    pytest.param(
        *_case(base(B_DENIES_A, pod("a3", groups="web", node=None)), A3),
        {"a3", "b1"},
        id="S-CT-2-row-1-member-getting-its-ip-counts-as-added",
    ),
    pytest.param(
        *_case(base(pod("a3", "10.0.0.3", groups="web", node=None)), A3),
        {"a3"},
        id="S-CT-2-row-1-member-landing-on-a-node-counts-as-added",
    ),
    pytest.param(
        *_case(base(B_DENIES_A), sg("web2", selector={"app": "x"})),
        set(),
        id="S-CT-2-row-1-new-group-selecting-nobody",
    ),
    # --- row 2: pods removed from SG A
    pytest.param(*_case(base(), A2_MOVED), ALL_A, id="S-CT-2-row-2-removed-rechecks-all-of-A"),
    pytest.param(
        *_case(base(B_ALLOWS_A), A2_MOVED),
        {"a1", "a2", "b1"},
        id="S-CT-2-row-2-inbound-allow-of-B-from-A-rechecks-all-of-B",
    ),
    pytest.param(
        *_case(base(B_DENIES_A), A2_MOVED),
        ALL_A,
        id="S-CT-2-row-2-inbound-deny-of-B-does-not-count",
    ),
    pytest.param(
        *_case(base(B_ALLOWS_A), drop=("Pod/a2",)),
        {"a1", "a2", "b1"},
        id="S-CT-2-row-2-deleted-pod-leaves-its-groups",
    ),
    pytest.param(
        *_case(base(), ns(enforced=False)),
        {"a1", "a2", "b1", "c1"},
        id="S-CT-2-row-2-namespace-no-longer-enforced",
    ),
    # --- row 3: rule added to A
    pytest.param(*_case(base(), IN_DENY), ALL_A, id="S-CT-2-row-3-inbound-deny-added"),
    pytest.param(*_case(base(), OUT_DENY), ALL_A, id="S-CT-2-row-3-outbound-deny-added"),
    pytest.param(*_case(base(), IN_ALLOW), set(), id="S-CT-2-row-3-inbound-allow-added-nothing"),
    pytest.param(*_case(base(), OUT_ALLOW), set(), id="S-CT-2-row-3-outbound-allow-added-nothing"),
    pytest.param(
        *_case(base(sg("idle")), rule("r", "idle", action="Deny")),
        set(),
        id="S-CT-2-row-3-deny-added-to-group-without-members",
    ),
    # --- row 4: rule deleted from A
    pytest.param(
        *_case(base(IN_ALLOW), drop=("SecurityGroupRule/r",)),
        ALL_A,
        id="S-CT-2-row-4-inbound-allow-deleted",
    ),
    pytest.param(
        *_case(base(IN_DENY), drop=("SecurityGroupRule/r",)),
        set(),
        id="S-CT-2-row-4-inbound-deny-deleted-nothing",
    ),
    pytest.param(
        *_case(base(OUT_ALLOW), drop=("SecurityGroupRule/r",)),
        set(),
        id="S-CT-2-row-4-outbound-allow-deleted-nothing",
    ),
    pytest.param(
        *_case(base(OUT_DENY), drop=("SecurityGroupRule/r",)),
        set(),
        id="S-CT-2-row-4-outbound-deny-deleted-nothing",
    ),
    # --- row 5: rule of A modified
    pytest.param(*_case(base(IN_ALLOW), _modified(priority=11)), ALL_A, id="S-CT-2-row-5-priority"),
    pytest.param(*_case(base(IN_ALLOW), _modified(action="Deny")), ALL_A, id="S-CT-2-row-5-action"),
    pytest.param(
        *_case(base(IN_ALLOW), _modified(protocol="UDP")), ALL_A, id="S-CT-2-row-5-protocol"
    ),
    pytest.param(*_case(base(IN_ALLOW), _modified(ports="22")), ALL_A, id="S-CT-2-row-5-ports"),
    pytest.param(
        *_case(base(IN_ALLOW), _modified(remote={"cidr": "198.51.100.0/24"})),
        ALL_A,
        id="S-CT-2-row-5-remote",
    ),
    pytest.param(
        *_case(base(IN_ALLOW), _modified(remote={"securityGroup": {"name": "db"}})),
        ALL_A,
        id="S-CT-2-row-5-remote-kind",
    ),
    pytest.param(
        *_case(
            base(rule("r", "web", protocol="ICMP", icmp={"type": 8})),
            rule("r", "web", protocol="ICMP", icmp={"type": 8, "code": 0}),
        ),
        ALL_A,
        id="S-CT-2-row-5-icmp-type-code",
    ),
    pytest.param(
        *_case(base(IN_ALLOW), _modified(description="now documented")),
        set(),
        id="S-CT-2-row-5-description-only-nothing",
    ),
    pytest.param(
        *_case(base(IN_ALLOW), _modified(ports="22-23")),
        set(),
        id="S-CT-2-row-5-same-ports-rewritten-nothing",
    ),
    pytest.param(
        *_case(base(IN_ALLOW), _modified(ports="ssh,23")),
        set(),
        id="S-CT-2-row-5-port-name-for-number-nothing",
    ),
    pytest.param(
        *_case(base(IN_ALLOW), _modified(remote={"cidr": "192.0.2.0/24"})),
        set(),
        id="S-CT-2-row-5-same-cidr-without-host-bits-nothing",
    ),
    pytest.param(
        *_case(
            base(rule("r", "web", remote_sg="db")),
            rule("r", "web", remote_sg="db", remote_ns="demo"),
        ),
        set(),
        id="S-CT-2-row-5-same-reference-with-namespace-nothing",
    ),
    pytest.param(
        *_case(base(OUT_ALLOW), _out_modified(priority=90)),
        set(),
        id="S-CT-1-outbound-priority-change-nothing",
    ),
    pytest.param(
        *_case(base(OUT_ALLOW), _out_modified(action="Deny")),
        set(),
        id="S-CT-1-outbound-allow-to-deny-nothing",
    ),
    pytest.param(
        *_case(base(OUT_ALLOW), _out_modified(ports="23", remote={"cidr": "192.0.2.0/24"})),
        set(),
        id="S-CT-1-outbound-ports-and-remote-nothing",
    ),
    pytest.param(
        *_case(base(IN_ALLOW), _modified(direction="Egress")),
        ALL_A,
        id="S-CT-2-row-5-inbound-allow-turned-outbound-is-a-deletion",
    ),
    pytest.param(
        *_case(base(IN_ALLOW), _modified(ipFamily="IPv6", remote={"cidr": "2001:db8::/32"})),
        ALL_A,
        id="S-CT-2-row-5-family-change-is-a-deletion",
    ),
    pytest.param(
        *_case(base(IN_ALLOW), _modified(securityGroup="db")),
        ALL_A,
        id="S-CT-2-row-5-moved-to-another-group-deleted-from-A",
    ),
    pytest.param(
        *_case(base(IN_DENY), rule("r", "db", protocol="TCP", ports="22", action="Deny")),
        {"b1"},
        id="S-CT-2-row-5-deny-moved-to-B-added-to-B",
    ),
    # --- row 6: entries of an IP address group
    pytest.param(
        *_case(base(OFFICE, IN_OFFICE), ipag("office", "192.0.2.0/29")),
        ALL_A,
        id="S-CT-2-row-6-entries-changed-inbound-user",
    ),
    pytest.param(
        *_case(base(OFFICE, OUT_OFFICE), ipag("office", "192.0.2.0/29")),
        set(),
        id="S-CT-2-row-6-ipag-used-only-by-egress-nothing",
    ),
    pytest.param(
        *_case(base(OFFICE), ipag("office", "192.0.2.0/29")),
        set(),
        id="S-CT-2-row-6-unused-ipag-nothing",
    ),
    pytest.param(
        *_case(base(OFFICE, IN_OFFICE), ipag("office", "192.0.2.0-192.0.2.15")),
        set(),
        id="S-CT-2-row-6-same-addresses-rewritten-nothing",
    ),
    pytest.param(
        *_case(base(OFFICE, IN_OFFICE), drop=("IPAddressGroup/office",)),
        ALL_A,
        id="S-CT-2-row-6-ipag-deleted",
    ),
    pytest.param(*_case(base(IN_OFFICE), OFFICE), ALL_A, id="S-CT-2-row-6-missing-ipag-created"),
    pytest.param(
        *_case(
            base(OFFICE, rule("from-office", "web", remote_ipag="office", action="Deny")),
            ipag("office", "192.0.2.0/29"),
        ),
        ALL_A,
        id="S-CT-2-row-6-inbound-deny-user-too",
    ),
    # --- readings where the table is silent (docs/semantics.md)
    pytest.param(
        *_case(
            facts(ns(), sg("x", selector={}, sequence=2), sg("y", selector={}, sequence=3), A1),
            sg("y", selector={}, sequence=1),
        ),
        {"a1"},
        id="decision-group-sequence-change-rechecks",
    ),
    pytest.param(
        *_case(facts(ns(), pod("p", "10.0.0.1")), sg("default")),
        {"p"},
        id="decision-default-object-replaces-synthesized-allow",
    ),
    pytest.param(
        *_case(
            facts(ns(), sg("default"), pod("p", "10.0.0.1"), rule("all-in", "default")),
            drop=("SecurityGroup/default",),
        ),
        {"p"},
        id="decision-default-object-deleted-its-allow-goes",
    ),
    pytest.param(
        *_case(facts(ns(), pod("p", "10.0.0.1")), sg("default"), *S_D_1_OBJECTS),
        set(),
        id="decision-default-object-with-the-s-d-1-rules-nothing",
    ),
    pytest.param(
        *_case(base(IN_ALLOW), _renamed(IN_ALLOW, "r2"), drop=("SecurityGroupRule/r",)),
        set(),
        id="decision-inbound-allow-renamed-nothing",
    ),
    pytest.param(
        *_case(base(IN_ALLOW, _renamed(IN_ALLOW, "r2")), drop=("SecurityGroupRule/r2",)),
        set(),
        id="decision-duplicate-inbound-allow-deleted-nothing",
    ),
    pytest.param(
        *_case(base(IN_DENY), _renamed(IN_DENY, "r2")),
        set(),
        id="decision-duplicate-deny-added-nothing",
    ),
    pytest.param(
        *_case(base(), pod("t1", "10.0.3.1", groups="tpyo")),
        {"t1"},
        id="decision-pod-naming-only-missing-groups-arrives-rechecked",
    ),
    pytest.param(
        *_case(
            base(pod("t1", "10.0.3.1", groups="tpyo", node=None)),
            pod("t1", "10.0.3.1", groups="tpyo"),
        ),
        {"t1"},
        id="decision-groupless-pod-lands-on-a-node-rechecked",
    ),
    pytest.param(
        *_case(
            base(pod("t1", "10.0.3.1", groups="tpyo")),
            pod("t1", "10.0.3.1", groups="tpyo", labels={"x": "y"}),
        ),
        set(),
        id="decision-groupless-pod-unchanged-place-nothing",
    ),
    pytest.param(
        *_case(base(A1), drop=("SecurityGroup/web",)),
        {"a1", "a2"},
        id="decision-annotated-group-deleted-members-rechecked-no-default",
    ),
    pytest.param(*_case(base(B_DENIES_A)), set(), id="no-change-nothing"),
    pytest.param(
        *_case(base(), pod("c1", "10.0.2.1", groups="misc", labels={"new": "label"})),
        set(),
        id="unrelated-pod-label-nothing",
    ),
]


@pytest.mark.parametrize(("old", "new", "expected"), CASES)
def test_clearing_plan(old: ClusterFacts, new: ClusterFacts, expected: set[str]) -> None:
    plan = plan_clearing(old, new)
    assert {name for _, name in plan.pods} == expected
    assert bool(plan) is bool(expected)


def test_reasons_cite_the_row_and_the_object() -> None:
    plan = plan_clearing(base(), replace(base(), IN_DENY))
    assert plan.reasons[("demo", "a1")] == ("S-CT-2 row 3: Deny rule demo/r added",)


def test_reasons_are_kept_once_per_pod_in_order() -> None:
    old = base(B_ALLOWS_A)
    new = replace(old, A2_MOVED, rule("b-allow-a", "db", remote_sg="web", priority=3))
    reasons = plan_clearing(old, new).reasons[("demo", "b1")]
    assert reasons == (
        "S-CT-2 row 2: demo/web lost members and inbound Allow rule demo/b-allow-a names it",
        "S-CT-2 row 5: inbound rule demo/b-allow-a modified",
    )


def test_bump_epochs_raises_each_planned_pod_once() -> None:
    plan = ClearingPlan({("demo", "a1"): ("x",), ("demo", "a2"): ("y", "z")})
    assert bump_epochs({("demo", "a1"): 4, ("demo", "b1"): 2}, plan) == {
        ("demo", "a1"): 5,
        ("demo", "a2"): 1,
        ("demo", "b1"): 2,
    }
