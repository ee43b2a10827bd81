"""Quota accounting: S-L-1 (rules with remotes or inconsecutive ports), S-L-2 (members),
S-L-3 (groups per pod)."""

from __future__ import annotations

from typing import Any

import pytest
from tests.corecases import facts, ipag, ns, pod, rule, sg

from secgroups import quotas
from secgroups.addresses import collapse_entries
from secgroups.models import Direction, IPFamily, SecurityGroupRule
from secgroups.quotas import MAX_ADDRESS_GROUP_CIDRS, address_group_cidrs


@pytest.mark.parametrize(
    ("the_rule", "reasons"),
    [
        pytest.param(
            rule("r", "web", remote_sg="db"), ("remote security group",), id="S-L-1-remote-group"
        ),
        pytest.param(
            rule("r", "web", remote_ipag="office"),
            ("remote IP address group",),
            id="S-L-1-remote-ip-address-group",
        ),
        pytest.param(
            rule("r", "web", protocol="TCP", ports="22,25,27"),
            ("inconsecutive ports",),
            id="S-L-1-inconsecutive-ports",
        ),
        pytest.param(
            rule("r", "web", protocol="TCP", ports="22,23"),
            ("inconsecutive ports",),
            id="S-L-1-adjacent-list-counts-as-written",
        ),
        pytest.param(
            rule("r", "web", protocol="UDP", ports="53,123", remote_ipag="office"),
            ("remote IP address group", "inconsecutive ports"),
            id="S-L-1-two-reasons-one-rule",
        ),
        pytest.param(
            rule("r", "web", protocol="TCP", ports="80-82", cidr="192.0.2.0/24"),
            (),
            id="S-L-1-range-and-cidr-do-not-count",
        ),
        pytest.param(rule("r", "web"), (), id="S-L-1-any-remote-does-not-count"),
    ],
)
def test_which_rules_count(the_rule: SecurityGroupRule, reasons: tuple[str, ...]) -> None:
    assert quotas.quota_reasons(the_rule) == reasons


def _many(n: int, direction: str = "Ingress", family: str = "IPv4", **spec: Any) -> list[Any]:
    return [
        rule(f"r{direction[0]}{family}-{i:03d}", "web", direction, ipFamily=family, **spec)
        for i in range(n)
    ]


def test_a_rule_with_several_reasons_counts_once() -> None:
    f = facts(
        ns(),
        sg("web"),
        rule("both", "web", protocol="UDP", ports="53,123", remote_ipag="office"),
    )
    usage = quotas.account(f).groups[("demo", "web")]
    assert usage.count("ingressIPv4") == 1
    assert usage.counted["ingressIPv4"] == (
        ("both", ("remote IP address group", "inconsecutive ports")),
    )


def test_usage_is_per_direction_and_family() -> None:
    f = facts(
        ns(),
        sg("web"),
        *_many(3, remote_sg="db"),
        *_many(2, "Egress", "IPv6", remote_sg="db"),
        *_many(4, "Egress", "IPv4", protocol="TCP", ports="22"),  # do not count
    )
    usage = quotas.account(f).groups[("demo", "web")]
    assert usage.usage() == {
        "ingressIPv4": 3,
        "ingressIPv6": 0,
        "egressIPv4": 0,
        "egressIPv6": 2,
    }
    assert quotas.quota_key(Direction.EGRESS, IPFamily.IPV6) == "egressIPv6"


@pytest.mark.parametrize(
    ("count", "findings"),
    [
        pytest.param(95, [], id="S-L-1-95-fine"),
        pytest.param(96, [("S-L-1", "warning")], id="S-L-1-96-near-limit-warning"),
        pytest.param(120, [("S-L-1", "warning")], id="S-L-1-120-allowed"),
        pytest.param(121, [("S-L-1", "error")], id="S-L-1-121-over-limit"),
    ],
)
def test_rule_quota_limit(count: int, findings: list[tuple[str, str]]) -> None:
    f = facts(ns(), sg("web"), *_many(count, remote_sg="db"))
    report = quotas.account(f)
    assert [(x.requirement, x.severity) for x in report.findings] == findings
    assert bool(report.errors) is (count > quotas.RULE_QUOTA)


def test_the_limit_is_per_direction_and_family_not_per_group() -> None:
    f = facts(
        ns(),
        sg("web"),
        *_many(90, "Ingress", "IPv4", remote_sg="db"),
        *_many(90, "Ingress", "IPv6", remote_sg="db"),
        *_many(90, "Egress", "IPv4", remote_sg="db"),
    )
    assert quotas.account(f).findings == ()


def test_over_quota_message_names_the_group_and_key() -> None:
    f = facts(ns(), sg("web"), *_many(121, "Egress", "IPv6", remote_ipag="office"))
    [finding] = quotas.account(f).findings
    assert finding.subject == "demo/web"
    assert "121 Egress IPv6 rules" in finding.message and "limit is 120" in finding.message


def _members(n: int) -> list[Any]:
    return [pod(f"p{i:05d}", f"10.{i >> 16}.{i >> 8 & 255}.{i & 255}") for i in range(n)]


@pytest.mark.parametrize(
    ("members", "findings"),
    [
        pytest.param(4799, [], id="S-L-2-4799-fine"),
        pytest.param(4800, [("S-L-2", "warning")], id="S-L-2-4800-near-limit-warning"),
        pytest.param(6000, [("S-L-2", "warning")], id="S-L-2-6000-allowed"),
        pytest.param(6001, [("S-L-2", "error")], id="S-L-2-6001-over-limit"),
    ],
)
def test_member_limit(members: int, findings: list[tuple[str, str]]) -> None:
    report = quotas.account(facts(ns(), *_members(members)))
    assert report.groups[("demo", "default")].members == members
    assert [(x.requirement, x.severity) for x in report.findings] == findings


@pytest.mark.parametrize(
    ("count", "warned"),
    [
        pytest.param(5, False, id="S-L-3-five-groups-fine"),
        pytest.param(6, True, id="S-L-3-six-groups-warned"),
    ],
)
def test_groups_per_pod_advice(count: int, warned: bool) -> None:
    names = [f"g{i}" for i in range(count)]
    f = facts(ns(), *(sg(n) for n in names), pod("p", "10.0.0.1", groups=",".join(names)))
    report = quotas.account(f)
    assert report.groups_per_pod[("demo", "p")] == count
    found = [(x.requirement, x.severity, x.subject) for x in report.findings]
    assert found == ([("S-L-3", "warning", "demo/p")] if warned else [])
    assert report.errors == (), "S-L-3 is advice, never an error"


def test_every_group_is_reported_even_unused_or_missing() -> None:
    f = facts(ns(), sg("idle"), ipag("office"), rule("r", "ghost", remote_sg="x"))
    groups = quotas.account(f).groups
    assert sorted(groups) == [("demo", "ghost"), ("demo", "idle")]
    assert groups[("demo", "idle")].members == 0


# ----------------------------------------------------------------------------- size limits


@pytest.mark.parametrize(
    "entries",
    [
        [],
        ["192.0.2.0/24"],
        ["192.0.2.1-192.0.2.9", "192.0.2.5-192.0.2.30", "10.0.0.0/8"],
        ["2001:db8::1-2001:db8::ffff:ffff:fffe"],
        ["fd00::1-fd00::ff", "fd00::100-fd00::1ff", "fd00::200/120"],
    ],
)
def test_address_group_cidrs_counts_what_the_compiler_writes(entries: list[str]) -> None:
    v4, v6 = collapse_entries(entries)
    assert address_group_cidrs(entries) == len(v4) + len(v6)


def test_a_hostile_address_group_is_counted_up_to_the_limit_only() -> None:
    ranges = [f"fd00:{i:x}::1-fd00:{i:x}::ffff:ffff:ffff:fffe" for i in range(5000)]
    assert address_group_cidrs(ranges, limit=MAX_ADDRESS_GROUP_CIDRS) == (
        MAX_ADDRESS_GROUP_CIDRS + 1
    )
