"""secgroups.analysis: pod provenance, traces group by group, and the shadowing rule
(S-X-1: within a group the first matching rule decides, so a covered rule never does)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sgdocs import ipag, ns, pod, rule, sg

from secgroups.analysis import (
    UNSCHEDULED_NODE,
    PolicyView,
    RemoteType,
    Why,
    covers,
    group_rules,
    shadowed,
)
from secgroups.compiled import CompiledRemote, CompiledRule, PortSpan, RemoteKind
from secgroups.evaluating import Packet
from secgroups.facts import ClusterFacts
from secgroups.models import Action, Direction, IPFamily, Protocol, SecurityGroupRule


@pytest.fixture
def view() -> PolicyView:
    """Sg-A / Sg-B of the spec's examples, plus a pod in both and one in neither."""
    return PolicyView(
        ClusterFacts.from_manifests(
            [
                ns("demo"),
                ns("legacy", enforced=False),
                sg("web", selector={"tier": "web"}, sequence=5),
                sg("sg-a", selector={"tier": "a"}, sequence=10),
                sg("sg-b"),
                rule("a01", "sg-a", direction="Ingress", protocol="TCP", ports="22",
                     remote={"cidr": "172.16.0.0/24"}),
                rule("a02", "sg-a", direction="Ingress", protocol="All",
                     remote={"securityGroup": {"name": "sg-a"}}),
                rule("a-out", "sg-a", direction="Egress", protocol="All"),
                rule("b01", "sg-b", direction="Ingress", protocol="TCP", ports="ssh",
                     remote={"securityGroup": {"name": "sg-a"}}),
                rule("b03", "sg-b", direction="Ingress", protocol="TCP", ports="443",
                     priority=10, remote={"ipAddressGroup": {"name": "office"}}),
                rule("b-out", "sg-b", direction="Egress", protocol="All"),
                ipag("office", "198.51.100.0/24", "203.0.113.1-203.0.113.2"),
                pod("a1", "10.0.0.1", labels={"tier": "a"}),
                pod("b1", "10.0.0.2", groups="sg-b"),
                pod("both", "10.0.0.3", labels={"tier": "a"}, groups="sg-b"),
                pod("lonely", "10.0.0.4"),
                pod("web1", "10.0.0.5", labels={"tier": "web", "role": "x"}, groups="sg-b"),
                pod("old", "10.0.9.9", namespace="legacy"),
            ]
        )
    )  # fmt: skip


def test_groups_come_with_the_reason_in_sequence_order(view: PolicyView) -> None:
    p = view.pod_policy(("demo", "web1"))
    assert [(m.group[1], m.position, m.why) for m in p.groups] == [
        ("sg-b", 1, Why.ANNOTATION),  # the annotation first, as written
        ("web", 2, Why.SELECTOR),  # then selectors by sequence
    ]
    assert "sequence 5" in p.groups[1].detail
    assert "tier=web" in p.groups[1].detail


def test_a_pod_with_no_group_is_in_the_synthesized_default_group(view: PolicyView) -> None:
    p = view.pod_policy(("demo", "lonely"))
    assert [(m.group, m.why, m.exists) for m in p.groups] == [
        (("demo", "default"), Why.DEFAULT, False)
    ]
    assert "synthesized" in p.groups[0].detail
    assert [r.name for r in p.ingress] == ["default:ingress-ipv4", "default:ingress-ipv6"]
    remote = p.ingress[0].remote
    assert (remote.type, remote.ref, remote.members) == (
        RemoteType.SECURITY_GROUP,
        ("demo", "default"),
        (("demo", "lonely"),),
    )


def test_effective_rules_follow_group_then_priority_order(view: PolicyView) -> None:
    p = view.pod_policy(("demo", "both"))
    assert [(r.index, r.group[1], r.name) for r in p.ingress] == [
        (1, "sg-b", "b01"),
        (2, "sg-b", "b03"),  # priority 10 after priority 1
        (3, "sg-a", "a01"),
        (4, "sg-a", "a02"),
    ]
    assert [r.name for r in p.egress] == ["b-out", "a-out"]


def test_remotes_are_resolved_to_what_they_match_now(view: PolicyView) -> None:
    by_name = {r.name: r.remote for r in view.pod_policy(("demo", "both")).ingress}
    assert by_name["a01"].networks == ("172.16.0.0/24",)
    assert by_name["b01"].members == (("demo", "a1"), ("demo", "both"))
    assert by_name["b01"].networks == ("10.0.0.1/32", "10.0.0.3/32")
    office = by_name["b03"]
    assert office.type is RemoteType.IP_ADDRESS_GROUP
    assert office.entries == ("198.51.100.0/24", "203.0.113.1-203.0.113.2")
    assert office.networks == ("198.51.100.0/24", "203.0.113.1/32", "203.0.113.2/32")
    assert str(office).startswith("address group demo/office (198.51.100.0/24")


def test_unmanaged_pods_say_why(view: PolicyView) -> None:
    p = view.pod_policy(("legacy", "old"))
    assert not p.managed
    assert "namespace legacy is not enforced" in p.unmanaged_reason


def test_trace_lists_the_groups_looked_at_until_one_decides(view: PolicyView) -> None:
    t = view.trace(Packet.make("10.0.0.1", "10.0.0.3", "tcp", 80))
    assert t.allowed
    assert [(c.group[1], c.rule.id if c.rule else None) for c in t.ingress.checks] == [
        ("sg-b", None),  # b01 is SSH only, b03 HTTPS from the office: no match
        ("sg-a", "demo/a02"),  # members of sg-a talk to each other
    ]
    assert t.deciding is not None and t.deciding.rule is not None
    assert t.deciding.rule.id == "demo/a02"


def test_trace_default_deny_is_the_deciding_side(view: PolicyView) -> None:
    t = view.trace(Packet.make("10.0.0.2", "10.0.0.1", "tcp", 22))
    assert not t.allowed
    assert t.egress.verdict is not None and t.egress.verdict.allowed
    d = t.deciding
    assert d is not None and d.direction is Direction.INGRESS and d.rule is None


def test_trace_outside_and_unmanaged_ends_are_not_filtered(view: PolicyView) -> None:
    t = view.trace(Packet.make("10.0.9.9", "10.0.0.1", "tcp", 22))
    assert t.egress.verdict is None
    assert "legacy is not enforced" in t.egress.note
    t = view.trace(Packet.make("198.51.100.9", "10.0.0.2", "tcp", 443))
    assert t.egress.note == "not a pod address: not filtered here"
    assert t.allowed and t.ingress.verdict is not None and t.ingress.verdict.rule is not None
    assert t.ingress.verdict.rule.id == "demo/b03"


def test_traffic_to_the_own_address_is_never_filtered(view: PolicyView) -> None:
    # b1's groups do not allow sg-b to itself; the packet never leaves the pod anyway.
    t = view.trace(Packet.make("10.0.0.2", "10.0.0.2", "tcp", 9))
    assert t.allowed and t.deciding is None
    assert t.ingress.pod == ("demo", "b1")
    assert t.ingress.note == "same address: loopback inside the pod, never filtered"


def test_pods_without_a_node_are_evaluated_on_a_pseudo_node() -> None:
    facts = ClusterFacts.from_manifests(
        [ns("demo"), pod("x", "10.0.0.1", node=None), pod("y", "10.0.0.2", node=None)]
    )
    view = PolicyView(facts)
    assert UNSCHEDULED_NODE in view.policy.nodes
    # Default group: members talk to each other; without the pseudo-node the evaluator
    # would not know these addresses and call the traffic unfiltered.
    t = view.trace(Packet.make("10.0.0.1", "10.0.0.2", "udp", 53))
    assert t.ingress.verdict is not None and t.ingress.verdict.rule is not None


# ----------------------------------------------------------------------------- covers


def crule(
    rid: str,
    *,
    proto: Protocol = Protocol.TCP,
    ports: tuple[tuple[int, int], ...] = (),
    cidrs: tuple[str, ...] | None = None,
    set_name: str | None = None,
    action: Action = Action.ALLOW,
    priority: int = 1,
    family: IPFamily = IPFamily.IPV4,
    direction: Direction = Direction.INGRESS,
    icmp: tuple[int | None, int | None] = (None, None),
) -> CompiledRule:
    if set_name is not None:
        remote = CompiledRemote(kind=RemoteKind.SET, set=set_name)
    elif cidrs is not None:
        remote = CompiledRemote(kind=RemoteKind.CIDR, cidrs=cidrs)
    else:
        remote = CompiledRemote(kind=RemoteKind.ANY)
    return CompiledRule(
        id=f"demo/{rid}",
        direction=direction,
        action=action,
        priority=priority,
        family=family,
        protocol=proto,
        ports=tuple(PortSpan(lo=lo, hi=hi) for lo, hi in ports),
        icmp_type=icmp[0],
        icmp_code=icmp[1],
        remote=remote,
    )


@pytest.mark.parametrize(
    ("earlier", "later", "expected"),
    [
        pytest.param(crule("a", proto=Protocol.ALL), crule("b", ports=((22, 22),)), True,
                     id="all-protocols-cover-tcp-22"),
        pytest.param(crule("a", ports=((20, 30),)), crule("b", ports=((22, 22), (25, 26))), True,
                     id="range-covers-list"),
        pytest.param(crule("a", ports=((22, 22),)), crule("b", ports=((22, 23),)), False,
                     id="port-not-covering-range"),
        pytest.param(crule("a", ports=((22, 22),)), crule("b"), False,
                     id="one-port-not-all-ports"),
        pytest.param(crule("a"), crule("b", proto=Protocol.UDP), False, id="tcp-not-udp"),
        pytest.param(crule("a", cidrs=("10.0.0.0/8",)), crule("b", cidrs=("10.1.0.0/16",)), True,
                     id="cidr-contains-cidr"),
        pytest.param(crule("a", cidrs=("10.1.0.0/16",)), crule("b", cidrs=("10.0.0.0/8",)), False,
                     id="smaller-cidr-does-not-cover"),
        pytest.param(crule("a"), crule("b", set_name="sg.demo.x"), True, id="any-covers-set"),
        pytest.param(crule("a", cidrs=("0.0.0.0/1", "128.0.0.0/1")),
                     crule("b", set_name="sg.demo.x"), False, id="cidr-never-covers-a-live-set"),
        pytest.param(crule("a", set_name="sg.demo.x"), crule("b", set_name="sg.demo.x"), True,
                     id="same-set"),
        pytest.param(crule("a", set_name="sg.demo.x"), crule("b", set_name="sg.demo.y"), False,
                     id="other-set"),
        pytest.param(crule("a", family=IPFamily.IPV6), crule("b"), False, id="other-family"),
        pytest.param(crule("a", direction=Direction.EGRESS), crule("b"), False,
                     id="other-direction"),
        pytest.param(crule("a", proto=Protocol.ICMP),
                     crule("b", proto=Protocol.ICMP, icmp=(8, 0)), True, id="icmp-any-type"),
        pytest.param(crule("a", proto=Protocol.ICMP, icmp=(8, None)),
                     crule("b", proto=Protocol.ICMP, icmp=(8, 0)), True, id="icmp-type-any-code"),
        pytest.param(crule("a", proto=Protocol.ICMP, icmp=(8, 0)),
                     crule("b", proto=Protocol.ICMP, icmp=(8, None)), False,
                     id="icmp-code-not-any-code"),
        pytest.param(crule("a", proto=Protocol.GRE), crule("b", proto=Protocol.GRE), True,
                     id="gre-covers-gre"),
        pytest.param(crule("a", cidrs=("0.0.0.0/0",)), crule("b"), True,
                     id="world-cidr-covers-any"),
        pytest.param(crule("a", cidrs=("::/0",), family=IPFamily.IPV6),
                     crule("b", family=IPFamily.IPV6, set_name="sg.demo.x"), True,
                     id="world-cidr-covers-a-set"),
        pytest.param(crule("a", cidrs=("0.0.0.0/1",)), crule("b", set_name="sg.demo.x"), False,
                     id="half-the-world-does-not-cover-a-set"),
        pytest.param(crule("a", cidrs=("10.0.0.0/8",)), crule("b", cidrs=("0.0.0.0/0",)), False,
                     id="cidr-does-not-cover-the-world"),
    ],
)  # fmt: skip
def test_covers(earlier: CompiledRule, later: CompiledRule, expected: bool) -> None:
    assert covers(earlier, later) is expected


def test_shadowed_reports_each_rule_once_against_the_first_cover() -> None:
    rules = (
        crule("deny-lab-ssh", ports=((22, 22),), cidrs=("10.0.0.0/8",), action=Action.DENY),
        crule("ssh-anywhere", ports=((22, 22),)),
        crule("ssh-lab", ports=((22, 22),), cidrs=("10.1.0.0/16",), priority=5),
        crule("https", ports=((443, 443),)),
    )
    out = shadowed(("demo", "g"), rules)
    assert [(s.rule.id, s.by.id, s.same_action) for s in out] == [
        ("demo/ssh-lab", "demo/deny-lab-ssh", False)  # the Deny decides first: the Allow is dead
    ]


def test_group_rules_are_in_match_order() -> None:
    objs = [
        SecurityGroupRule.model_validate(rule(n, "g", direction="Ingress", protocol="All", **kw))
        for n, kw in (
            ("z-late", {"priority": 50}),
            ("b-allow", {}),
            ("c-deny", {"action": "Deny"}),
        )
    ]
    assert [r.id for r in group_rules(objs)] == ["demo/c-deny", "demo/b-allow", "demo/z-late"]


# ----------------------------------------------------------------------------- the index


def pairwise(rules: tuple[CompiledRule, ...]) -> list[tuple[str, str]]:
    """The definition: each rule against every earlier one, the first cover wins."""
    out = []
    for j, later in enumerate(rules):
        for earlier in rules[:j]:
            if covers(earlier, later):
                out.append((later.id, earlier.id))
                break
    return out


_V4 = ("0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "10.2.0.0/16")
_V6 = ("::/0", "fd00::/8", "fd00:1::/32", "fd00:1::1/128", "fd01::/16")


@st.composite
def compiled_rules(draw: st.DrawFn, rid: str) -> CompiledRule:
    """Rules over a small space, so that covers (and near misses) are common."""
    family = draw(st.sampled_from(IPFamily))
    proto = draw(st.sampled_from(Protocol))
    ports: tuple[tuple[int, int], ...] = ()
    if proto in (Protocol.TCP, Protocol.UDP) and draw(st.booleans()):
        starts = draw(st.lists(st.integers(1, 40), min_size=1, max_size=3, unique=True))
        spans = sorted((lo, lo + draw(st.integers(0, 6))) for lo in starts)
        merged: list[tuple[int, int]] = []
        for lo, hi in spans:  # compiled spans are merged: disjoint and not adjacent
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
            else:
                merged.append((lo, hi))
        ports = tuple(merged)
    icmp: tuple[int | None, int | None] = (None, None)
    if proto is Protocol.ICMP and draw(st.booleans()):
        icmp = (draw(st.sampled_from((0, 8))), draw(st.sampled_from((None, 0, 1))))
    remote = draw(st.sampled_from(("any", "cidr", "cidr2", "set")))
    nets = _V4 if family is IPFamily.IPV4 else _V6
    return crule(
        rid,
        proto=proto,
        ports=ports,
        cidrs=(draw(st.sampled_from(nets)),) if remote == "cidr"
        else tuple(draw(st.lists(st.sampled_from(nets), min_size=2, max_size=2, unique=True)))
        if remote == "cidr2" else None,
        set_name=draw(st.sampled_from(("sg.demo.x", "sg.demo.y"))) if remote == "set" else None,
        action=draw(st.sampled_from(Action)),
        family=family,
        direction=draw(st.sampled_from(Direction)),
        icmp=icmp,
    )  # fmt: skip


@st.composite
def rule_lists(draw: st.DrawFn) -> tuple[CompiledRule, ...]:
    n = draw(st.integers(0, 40))
    return tuple(draw(compiled_rules(f"r{i:02d}")) for i in range(n))


@settings(max_examples=300, deadline=None)
@given(rule_lists())
def test_the_index_finds_what_comparing_every_pair_finds(rules: tuple[CompiledRule, ...]) -> None:
    """The indexed search (issue 11: the pairwise one was quadratic) reports the same
    rules against the same first cover."""
    got = [(s.rule.id, s.by.id) for s in shadowed(("demo", "g"), rules)]
    assert got == pairwise(rules)
