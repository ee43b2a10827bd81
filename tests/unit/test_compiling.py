"""The compiler: rule order, remotes as shared address sets, the default group, node objects,
problems and deterministic names (docs/architecture.md, S-X-1, S-M-4, S-D-1)."""

from __future__ import annotations

import pytest
from tests.corecases import compile_facts, facts, ipag, ns, pod, rule, sg

from secgroups import naming
from secgroups.compiled import CompiledPolicy, RemoteKind, SourceKind
from secgroups.compiling import compile_policy
from secgroups.facts import ClusterFacts
from secgroups.models import Direction, IPFamily, SecurityGroupRule

WEB = "sg.demo.web"


def _web_with(*rules: SecurityGroupRule) -> CompiledPolicy:
    f = facts(ns(), sg("web"), pod("w", "10.0.0.1", groups="web"), *rules)
    return compile_policy(f).policy


@pytest.mark.parametrize(
    ("rules", "ingress_order"),
    [
        pytest.param(
            [rule("b", "web", priority=2), rule("a", "web", priority=1)],
            ["a", "b"],
            id="S-X-1-smaller-priority-first",
        ),
        pytest.param(
            [rule("a-allow", "web", priority=5), rule("z-deny", "web", priority=5, action="Deny")],
            ["z-deny", "a-allow"],
            id="S-X-1-deny-before-allow-at-equal-priority",
        ),
        pytest.param(
            [rule("a-deny", "web", priority=9, action="Deny"), rule("z-allow", "web", priority=1)],
            ["z-allow", "a-deny"],
            id="S-X-1-priority-beats-deny-first",
        ),
        pytest.param(
            [rule("r2", "web", priority=3), rule("r1", "web", priority=3)],
            ["r1", "r2"],
            id="S-X-1-ties-by-rule-id-for-determinism",
        ),
        pytest.param(
            [rule("late", "web", priority=100), rule("default-prio", "web")],
            ["default-prio", "late"],
            id="S-M-2-priority-defaults-to-1",
        ),
    ],
)
def test_rules_are_sorted_in_match_order(
    rules: list[SecurityGroupRule], ingress_order: list[str]
) -> None:
    group = _web_with(*rules).groups[WEB]
    assert [r.id.split("/")[1] for r in group.ingress] == ingress_order


def test_rules_split_by_direction() -> None:
    group = _web_with(
        rule("in", "web", "Ingress"),
        rule("out", "web", "Egress"),
        rule("in6", "web", ipFamily="IPv6"),
    ).groups[WEB]
    assert [r.id for r in group.ingress] == ["demo/in", "demo/in6"]
    assert [r.id for r in group.egress] == ["demo/out"]
    assert group.rules(Direction.EGRESS) == group.egress
    assert {r.family for r in group.ingress} == {IPFamily.IPV4, IPFamily.IPV6}


@pytest.mark.parametrize(
    ("the_rule", "kind", "cidrs", "set_name"),
    [
        pytest.param(rule("r", "web"), RemoteKind.ANY, (), None, id="S-M-4-no-remote-is-any"),
        pytest.param(
            rule("r", "web", cidr="192.0.2.9/24"),
            RemoteKind.CIDR,
            ("192.0.2.0/24",),
            None,
            id="S-M-4-cidr-host-bits-cleared",
        ),
        pytest.param(
            rule("r", "web", cidr="192.0.2.9"),
            RemoteKind.CIDR,
            ("192.0.2.9/32",),
            None,
            id="S-M-4-ip-becomes-host-cidr",
        ),
        pytest.param(
            rule("r", "web", remote_sg="db"),
            RemoteKind.SET,
            (),
            "sg.demo.db",
            id="S-M-4-remote-group-is-a-set",
        ),
        pytest.param(
            rule("r", "web", remote_sg="db", remote_ns="shop"),
            RemoteKind.SET,
            (),
            "sg.shop.db",
            id="S-M-4-remote-group-of-another-namespace",
        ),
        pytest.param(
            rule("r", "web", remote_sg="web"),
            RemoteKind.SET,
            (),
            "sg.demo.web",
            id="S-M-5-group-is-its-own-remote",
        ),
        pytest.param(
            rule("r", "web", remote_ipag="office"),
            RemoteKind.SET,
            (),
            "ipag.demo.office",
            id="S-M-4-remote-ip-address-group-is-a-set",
        ),
    ],
)
def test_remotes_compile_to_cidrs_or_set_references(
    the_rule: SecurityGroupRule, kind: RemoteKind, cidrs: tuple[str, ...], set_name: str | None
) -> None:
    policy = _web_with(the_rule)
    remote = policy.groups[WEB].ingress[0].remote
    assert (remote.kind, remote.cidrs, remote.set) == (kind, cidrs, set_name)
    if set_name is not None:
        assert set_name in policy.sets
        assert set_name in policy.nodes["n1"].sets


def test_rules_using_the_same_remote_share_one_set() -> None:
    f = facts(
        ns(),
        sg("web"),
        sg("api"),
        sg("db"),
        pod("w", "10.0.0.1", groups="web"),
        pod("a", "10.0.0.2", groups="api"),
        pod("d1", "10.0.0.4", "fd00::4", groups="db"),
        pod("d2", "10.0.0.5", groups="db"),
        rule("w-db", "web", "Egress", remote_sg="db", protocol="TCP", ports="5432"),
        rule("a-db", "api", "Egress", remote_sg="db"),
        rule("a-db6", "api", "Egress", remote_sg="db", ipFamily="IPv6"),
    )
    policy = compile_policy(f).policy
    assert sorted(policy.sets) == ["sg.demo.db"]
    members = policy.sets["sg.demo.db"]
    assert (members.source_kind, str(members.source)) == (SourceKind.SECURITY_GROUP, "demo/db")
    assert (members.ipv4, members.ipv6) == (("10.0.0.4/31",), ("fd00::4/128",))


def test_ip_address_group_set_holds_collapsed_entries() -> None:
    f = facts(
        ns(),
        sg("web"),
        pod("w", "10.0.0.1", groups="web"),
        ipag("office", "192.0.2.0/25", "192.0.2.128-192.0.2.255", "198.51.100.7"),
        ipag("office6", "2001:db8::/64", family="IPv6"),
        rule("r", "web", remote_ipag="office"),
        rule("r6", "web", remote_ipag="office6", ipFamily="IPv6"),
    )
    sets = compile_policy(f).policy.sets
    assert sets["ipag.demo.office"].ipv4 == ("192.0.2.0/24", "198.51.100.7/32")
    assert sets["ipag.demo.office6"].ipv6 == ("2001:db8::/64",)
    assert sets["ipag.demo.office"].source_kind is SourceKind.IP_ADDRESS_GROUP


def test_missing_remotes_give_empty_sets_and_problems() -> None:
    f = facts(
        ns(),
        sg("web"),
        pod("w", "10.0.0.1", groups="web"),
        rule("to-ghost", "web", remote_sg="ghost"),
        rule("to-nowhere", "web", remote_ipag="nowhere"),
        rule("to-default", "web", remote_sg="default", remote_ns="empty"),
    )
    result = compile_policy(f)
    sets = result.policy.sets
    for name in ("sg.demo.ghost", "ipag.demo.nowhere", "sg.empty.default"):
        assert (sets[name].ipv4, sets[name].ipv6) == ((), ())
    found = {(p.kind, p.namespace, p.name, p.reason) for p in result.problems}
    assert found == {
        ("SecurityGroup", "demo", "ghost", "RemoteNotFound"),
        ("IPAddressGroup", "demo", "nowhere", "RemoteNotFound"),
    }, "a namespace's default group always exists, even with no members"


def test_rule_of_a_missing_group_is_a_problem_and_has_no_effect() -> None:
    f = facts(ns(), sg("web"), pod("w", "10.0.0.1", groups="web"), rule("lost", "wbe"))
    result = compile_policy(f)
    assert [(p.kind, p.name, p.reason) for p in result.problems] == [
        ("SecurityGroupRule", "lost", "GroupNotFound")
    ]
    assert list(result.policy.groups) == [WEB]


def test_annotation_naming_an_unknown_group_is_a_warning() -> None:
    result = compile_policy(facts(ns(), pod("p", "10.0.0.1", groups="ghost")))
    [problem] = result.problems
    assert (problem.kind, problem.name, problem.reason, problem.severity.value) == (
        "Pod",
        "p",
        "UnknownGroup",
        "Warning",
    )
    assert "ghost" in str(problem)


def test_default_group_is_synthesized_with_the_s_d_1_rules() -> None:
    f = facts(ns(), pod("a", "10.0.0.1", "fd00::1"), pod("b", "10.0.0.2", node="n2"))
    policy = compile_policy(f).policy
    group = policy.groups["sg.demo.default"]
    assert group.synthesized
    assert [(r.family, r.remote.kind, r.remote.set) for r in group.ingress] == [
        (IPFamily.IPV4, RemoteKind.SET, "sg.demo.default"),
        (IPFamily.IPV6, RemoteKind.SET, "sg.demo.default"),
    ]
    assert [(r.family, r.remote.kind) for r in group.egress] == [
        (IPFamily.IPV4, RemoteKind.ANY),
        (IPFamily.IPV6, RemoteKind.ANY),
    ]
    assert all(r.action.value == "Allow" and r.protocol.value == "All" for r in group.ingress)
    members = policy.sets["sg.demo.default"]
    assert (members.ipv4, members.ipv6) == (("10.0.0.1/32", "10.0.0.2/32"), ("fd00::1/128",))


def test_default_group_object_replaces_the_synthesized_rules() -> None:
    f = facts(
        ns(),
        sg("default"),
        pod("a", "10.0.0.1"),
        rule("only-ssh", "default", protocol="TCP", ports="ssh"),
    )
    result = compile_policy(f)
    group = result.policy.groups["sg.demo.default"]
    assert not group.synthesized
    assert [r.id for r in group.ingress] == ["demo/only-ssh"]
    assert group.egress == ()
    assert group.ingress[0].ports[0].lo == 22, "S-O-3: names are stored as numbers"
    assert result.problems == ()


def test_rule_for_a_default_group_without_object_is_a_problem() -> None:
    result = compile_policy(facts(ns(), pod("a", "10.0.0.1"), rule("early", "default")))
    assert result.policy.groups["sg.demo.default"].synthesized
    assert [(p.name, p.reason) for p in result.problems] == [("early", "GroupNotFound")]


def test_groups_without_members_are_not_compiled() -> None:
    f = facts(ns(), sg("idle"), sg("web"), pod("w", "10.0.0.1", groups="web"), rule("r", "idle"))
    assert list(compile_policy(f).policy.groups) == [WEB]


def _nodes_case() -> ClusterFacts:
    return facts(
        ns(),
        sg("web"),
        sg("db"),
        pod("w2", "fd00::2", "10.0.0.2", groups="web", node="n1"),
        pod("w1", "10.0.0.1", groups="web,db", node="n1"),
        pod("d1", "10.0.0.3", groups="db", node="n2"),
        pod("pending", groups="web", node=None),
        pod("unscheduled", "10.0.0.9", groups="db", node=None),
        rule("w-db", "web", "Egress", remote_sg="db"),
        rule("d-office", "db", remote_ipag="office"),
        nodes=("n1", "n2", "n3"),
    )


def test_node_objects_list_their_pods_groups_and_sets() -> None:
    policy = compile_policy(_nodes_case(), None).policy
    n1 = policy.nodes["n1"]
    assert [p.name for p in n1.pods] == ["w1", "w2"]
    assert n1.pods[0].groups == ("sg.demo.web", "sg.demo.db"), "S-M-1: sequence order"
    assert n1.pods[1].ips == ("10.0.0.2", "fd00::2"), "IPv4 first"
    assert n1.groups == ("sg.demo.db", "sg.demo.web")
    assert n1.sets == ("ipag.demo.office", "sg.demo.db")
    assert policy.nodes["n2"].sets == ("ipag.demo.office",)
    assert policy.nodes["n3"].pods == (), "a node with no managed pod still gets its object"
    everywhere = [p.name for n in policy.nodes.values() for p in n.pods]
    assert "pending" not in everywhere and "unscheduled" not in everywhere


def test_a_member_without_node_is_in_its_groups_sets() -> None:
    policy = compile_policy(_nodes_case()).policy
    assert policy.sets["sg.demo.db"].ipv4 == ("10.0.0.1/32", "10.0.0.3/32", "10.0.0.9/32")


def test_epochs_are_copied_into_node_objects() -> None:
    result = compile_facts(_nodes_case(), epochs={("demo", "w1"): 7})
    pods = {p.name: p.epoch for p in result.policy.nodes["n1"].pods}
    assert pods == {"w1": 7, "w2": 0}


def test_for_node_is_the_slice_an_agent_watches() -> None:
    policy = compile_policy(_nodes_case()).policy
    view = policy.for_node("n2")
    assert list(view.nodes) == ["n2"]
    assert list(view.groups) == ["sg.demo.db"]
    assert list(view.sets) == ["ipag.demo.office"]
    assert policy.for_node("elsewhere").nodes["elsewhere"].pods == ()


def test_compiled_names_are_readable_and_deterministic() -> None:
    assert naming.compiled_group_name("demo", "web") == "sg.demo.web"
    assert naming.sg_set_name("demo", "web") == "sg.demo.web"
    assert naming.ipag_set_name("demo", "office") == "ipag.demo.office"


def test_long_names_are_cut_with_a_hash_of_the_whole() -> None:
    a = naming.ipag_set_name("n" * 63, "x" * 253)
    b = naming.ipag_set_name("n" * 63, "x" * 252 + "y")
    assert len(a) == len(b) == naming.MAX_OBJECT_NAME
    assert a != b and a[:200] == b[:200]
    assert a == naming.ipag_set_name("n" * 63, "x" * 253)


def test_output_does_not_depend_on_input_order() -> None:
    f = _nodes_case()
    flipped = ClusterFacts(
        namespaces=f.namespaces[::-1],
        nodes=f.nodes[::-1],
        pods=f.pods[::-1],
        groups=f.groups[::-1],
        rules=f.rules[::-1],
        address_groups=f.address_groups[::-1],
    )
    assert (
        compile_policy(f).policy.model_dump_json()
        == compile_policy(flipped).policy.model_dump_json()
    )
    assert list(compile_policy(f).policy.groups) == sorted(compile_policy(f).policy.groups)


def test_icmp_and_port_fields_are_compiled() -> None:
    policy = _web_with(
        rule("ping", "web", protocol="ICMP", icmp={"type": 8, "code": 0}),
        rule("web", "web", protocol="TCP", ports="https,80-82"),
    )
    ping, web = policy.groups[WEB].ingress
    assert (ping.icmp_type, ping.icmp_code, ping.ports) == (8, 0, ())
    assert [str(p) for p in web.ports] == ["80-82", "443"]
