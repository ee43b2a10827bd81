"""secgroups.linting: S-O-2 warnings, S-L-1..3 limits and broken references."""

from __future__ import annotations

from typing import Any

import pytest
from sgdocs import ipag, ns, pod, rule, sg

from secgroups.facts import ClusterFacts
from secgroups.linting import Code, Finding, Severity, lint
from secgroups.quotas import RULE_QUOTA


def findings(*docs: dict[str, Any]) -> list[Finding]:
    return list(lint(ClusterFacts.from_manifests([ns("demo"), *docs])))


def codes(*docs: dict[str, Any]) -> list[tuple[str, Code, Severity]]:
    return [(f.name, f.code, f.severity) for f in findings(*docs)]


def used(group: str = "g") -> dict[str, Any]:
    """A member pod, so the group is not also reported unused."""
    return pod("member", "10.0.0.1", groups=group)


@pytest.mark.parametrize(
    ("spec", "code", "needle"),
    [
        pytest.param({"protocol": "TCP", "ports": "22", "remote": {"cidr": "0.0.0.0/0"}},
                     Code.ADMIN_OPEN, "SSH 22", id="ssh-from-0/0"),
        pytest.param({"protocol": "TCP", "ports": "20-30"}, Code.ADMIN_OPEN, "SSH 22",
                     id="ssh-in-range-no-remote"),
        pytest.param({"protocol": "UDP", "ports": "rdp", "ipFamily": "IPv6",
                      "remote": {"cidr": "::/0"}}, Code.ADMIN_OPEN, "RDP 3389", id="rdp-udp-v6"),
        pytest.param({"protocol": "TCP", "ports": "5432,27017"}, Code.DATABASE_OPEN,
                     "postgresql 5432, mongodb 27017", id="databases"),
        pytest.param({"protocol": "UDP", "ports": "11211"}, Code.DATABASE_OPEN, "memcached",
                     id="memcached-udp"),
        pytest.param({"protocol": "All"}, Code.ALL_PORTS_OPEN, "all protocols and ports",
                     id="all-no-remote"),
        pytest.param({"protocol": "TCP", "remote": {"cidr": "0.0.0.0/0"}}, Code.ALL_PORTS_OPEN,
                     "all ports TCP", id="all-tcp-ports"),
        pytest.param({"protocol": "TCP", "ports": "22",
                      "remote": {"ipAddressGroup": {"name": "everyone"}}},
                     Code.ADMIN_OPEN, "address group demo/everyone", id="ipag-with-0/0"),
    ],
)  # fmt: skip
def test_world_open_ingress_allow_is_warned(spec: dict[str, Any], code: Code, needle: str) -> None:
    out = findings(
        sg("g"),
        used(),
        ipag("everyone", "0.0.0.0/0"),
        rule("r", "g", direction="Ingress", **spec),
    )
    hits = [f for f in out if f.name == "r"]
    assert [(f.code, f.severity, f.requirement) for f in hits] == [
        (code, Severity.WARNING, "S-O-2")
    ]
    assert needle in hits[0].message


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({"direction": "Ingress", "protocol": "TCP", "ports": "22",
                      "remote": {"cidr": "172.16.0.0/24"}}, id="ssh-from-a-subnet"),
        pytest.param({"direction": "Ingress", "protocol": "TCP", "ports": "22",
                      "action": "Deny"}, id="deny-ssh-from-anywhere"),
        pytest.param({"direction": "Egress", "protocol": "All"}, id="egress-anywhere"),
        pytest.param({"direction": "Ingress", "protocol": "TCP", "ports": "443"},
                     id="https-from-anywhere"),
        pytest.param({"direction": "Ingress", "protocol": "UDP", "ports": "22"},
                     id="udp-22-is-not-ssh"),
    ],
)  # fmt: skip
def test_reasonable_rules_are_not_warned(spec: dict[str, Any]) -> None:
    assert codes(sg("g"), used(), rule("r", "g", **spec)) == []


def test_shadowed_rules_are_warned_with_the_covering_rule() -> None:
    out = findings(
        sg("g"),
        used(),
        rule("allow-lab", "g", direction="Ingress", protocol="TCP", ports="22",
             remote={"cidr": "10.0.0.0/8"}),
        rule("deny-one", "g", direction="Ingress", protocol="TCP", ports="22", priority=9,
             action="Deny", remote={"cidr": "10.1.2.3"}),
    )  # fmt: skip
    assert [(f.name, f.code) for f in out] == [("deny-one", Code.SHADOWED)]
    assert "allow-lab" in out[0].message and "its Deny never applies" in out[0].message


def test_an_allow_after_a_deny_on_the_whole_family_is_dead() -> None:
    """Issue 11: a Deny on 0.0.0.0/0 covers an Allow with no remote (both: every address)."""
    out = findings(
        sg("g"),
        used(),
        rule("deny-world", "g", direction="Ingress", protocol="TCP", ports="8080",
             action="Deny", remote={"cidr": "0.0.0.0/0"}),
        rule("allow-any", "g", direction="Ingress", protocol="TCP", ports="8080", priority=5),
        rule("allow-peers", "g", direction="Ingress", protocol="TCP", ports="8080", priority=6,
             remote={"securityGroup": {"name": "g"}}),
        rule("allow-v6", "g", direction="Ingress", protocol="TCP", ports="8080", priority=7,
             ipFamily="IPv6"),
    )  # fmt: skip
    dead = {f.name: f.message for f in out if f.code is Code.SHADOWED}
    assert sorted(dead) == ["allow-any", "allow-peers"]  # not the IPv6 rule
    assert "deny-world" in dead["allow-any"] and "its Allow never applies" in dead["allow-any"]


@pytest.mark.parametrize(
    ("family", "icmp", "hint"),
    [
        pytest.param("IPv6", {"type": 8},
                     "8 is IPv4's echo request; ICMPv6 echo request is type 128",
                     id="v6-echo-request-as-8"),
        pytest.param("IPv6", {"type": 0, "code": 0}, "ICMPv6 echo reply is type 129",
                     id="v6-echo-reply-as-0"),
        pytest.param("IPv4", {"type": 128},
                     "128 is IPv6's echo request; ICMP echo request is type 8",
                     id="v4-echo-request-as-128"),
        pytest.param("IPv4", {"type": 77}, "which ICMP does not have", id="v4-unassigned"),
    ],
)  # fmt: skip
def test_an_icmp_type_of_the_other_family_is_warned(
    family: str, icmp: dict[str, int], hint: str
) -> None:
    out = findings(
        sg("g"), used(), rule("ping", "g", direction="Ingress", protocol="ICMP", ipFamily=family,
                              icmp=icmp, remote={"securityGroup": {"name": "g"}}),
    )  # fmt: skip
    assert [(f.name, f.code, f.severity) for f in out] == [
        ("ping", Code.ICMP_TYPE_FAMILY, Severity.WARNING)
    ]
    assert hint in out[0].message


@pytest.mark.parametrize(
    ("family", "icmp_type"),
    [("IPv4", 8), ("IPv4", 0), ("IPv4", 3), ("IPv6", 128), ("IPv6", 3), ("IPv6", 135)],
)
def test_icmp_types_of_the_rules_family_are_not_warned(family: str, icmp_type: int) -> None:
    rule_doc = rule("ping", "g", direction="Ingress", protocol="ICMP", ipFamily=family,
                    icmp={"type": icmp_type}, remote={"securityGroup": {"name": "g"}})  # fmt: skip
    assert codes(sg("g"), used(), rule_doc) == []


def test_unused_groups_and_address_groups() -> None:
    out = codes(
        sg("lonely"),
        rule("lonely-self", "lonely", direction="Ingress", protocol="All",
             remote={"securityGroup": {"name": "lonely"}}),
        sg("remote-only"),
        sg("g"),
        used(),
        ipag("spare", "192.0.2.1"),
        rule("r", "g", direction="Ingress", protocol="All",
             remote={"securityGroup": {"name": "remote-only"}}),
    )  # fmt: skip
    assert out == [
        ("spare", Code.UNUSED_ADDRESS_GROUP, Severity.WARNING),
        ("lonely", Code.UNUSED_GROUP, Severity.WARNING),
    ]


def test_broken_references_are_errors() -> None:
    out = codes(
        sg("g"),
        used(),
        pod("typo", "10.0.0.2", groups="g,gg"),
        rule("orphan", "nope", direction="Egress", protocol="All"),
        rule("to-default", "default", direction="Egress", protocol="All"),
        rule("ghost-sg", "g", direction="Ingress", protocol="All",
             remote={"securityGroup": {"name": "ghost"}}),
        rule("ghost-ipag", "g", direction="Ingress", protocol="All",
             remote={"ipAddressGroup": {"name": "ghost", "namespace": "elsewhere"}}),
        rule("self-default", "g", direction="Ingress", protocol="All",
             remote={"securityGroup": {"name": "default"}}),
    )  # fmt: skip
    assert sorted(out) == [
        ("ghost-ipag", Code.REMOTE_MISSING, Severity.ERROR),
        ("ghost-sg", Code.REMOTE_MISSING, Severity.ERROR),
        ("orphan", Code.GROUP_MISSING, Severity.ERROR),
        ("to-default", Code.GROUP_MISSING, Severity.ERROR),
        ("typo", Code.ANNOTATION_GROUP_MISSING, Severity.ERROR),
    ]


def test_quota_findings_come_from_the_quota_accounting() -> None:
    many = [
        rule(f"r{i:03}", "g", direction="Ingress", protocol="TCP", ports=str(1000 + i),
             remote={"securityGroup": {"name": "g"}})
        for i in range(RULE_QUOTA + 1)
    ]  # fmt: skip
    groups = [sg(f"g{i}", selector={"all": "yes"}) for i in range(6)]
    out = [
        f
        for f in findings(sg("g"), *groups, *many, pod("p", "10.0.0.9", labels={"all": "yes"}))
        if f.code is Code.QUOTA
    ]
    assert [(f.kind, f.name, f.requirement, f.severity) for f in out] == [
        ("Pod", "p", "S-L-3", Severity.WARNING),
        ("SecurityGroup", "g", "S-L-1", Severity.ERROR),
    ]
    assert "121 Ingress IPv4 rules" in out[1].message
