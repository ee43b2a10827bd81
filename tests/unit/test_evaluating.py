"""The reference evaluator: one cluster, one packet per row, and who decided (S-X-1, S-X-2).

Cluster (namespace demo is enforced, namespace open is not):

* web-1 (n1: 10.0.1.1, fd00:1::1) and web-2 (n2: 10.0.1.2) — group web, by selector;
* db-1 (n1: 10.0.2.1, fd00:2::1) — group db, by annotation;
* admin-1 (n2: 10.0.3.1) — annotation ``deny-first,web``: two groups in sequence;
* plain-1 (n1: 10.0.4.1), plain-2 (n2: 10.0.4.2) — no group: the default group (S-D-1);
* outsider (namespace open: 10.9.0.1) and hostnet (hostNetwork: 10.0.0.10) — unmanaged;
* outside hosts: 192.0.2.10 (in IP address group office), 203.0.113.5, 198.51.100.7.
"""

from __future__ import annotations

from typing import Any

import pytest
from tests.corecases import facts, ipag, ns, pod, rule, sg

from secgroups.compiled import CompiledPolicy
from secgroups.compiling import compile_policy
from secgroups.evaluating import GRE, ICMP, ICMPV6, TCP, Evaluator, Packet, evaluate
from secgroups.models import Direction

TCP_, UDP_ = "TCP", "UDP"

CLUSTER = facts(
    ns(),
    ns("open", enforced=False),
    pod("web-1", "10.0.1.1", "fd00:1::1", labels={"app": "web"}, node="n1"),
    pod("web-2", "10.0.1.2", labels={"app": "web"}, node="n2"),
    pod("db-1", "10.0.2.1", "fd00:2::1", groups="db", node="n1"),
    pod("admin-1", "10.0.3.1", groups="deny-first,web", node="n2"),
    pod("plain-1", "10.0.4.1", node="n1"),
    pod("plain-2", "10.0.4.2", node="n2"),
    pod("outsider", "10.9.0.1", ns="open", node="n1"),
    pod("hostnet", "10.0.0.10", host_network=True, node="n1"),
    sg("web", selector={"app": "web"}),
    sg("db"),
    sg("deny-first"),
    ipag("office", "192.0.2.0/28"),
    # web
    rule("web-http", "web", protocol=TCP_, ports="80,443"),
    rule("web-ssh-office", "web", protocol=TCP_, ports="ssh", remote_ipag="office"),
    rule("web-ping", "web", protocol="ICMP", icmp={"type": 8}),
    rule("web-ping6", "web", protocol="ICMP", icmp={"type": 128}, ipFamily="IPv6"),
    rule("web-alt6", "web", protocol=TCP_, ports="8080-8082", ipFamily="IPv6"),
    rule("web-self", "web", remote_sg="web"),
    rule("web-out-self", "web", "Egress", remote_sg="web"),
    rule("web-out-db", "web", "Egress", protocol=TCP_, ports="22,5432", remote_sg="db"),
    rule("web-out-dns", "web", "Egress", protocol=UDP_, ports="dns"),
    # db
    rule("db-from-web", "db", protocol=TCP_, ports="postgresql", remote_sg="web"),
    rule("db-deny-web-ssh", "db", protocol=TCP_, ports="22", remote_sg="web", action="Deny"),
    rule("db-ssh", "db", protocol=TCP_, ports="22"),
    rule("db-gre", "db", protocol="GRE", cidr="198.51.100.0/24"),
    rule("db-unreachable", "db", protocol="ICMP", icmp={"type": 3, "code": 4}),
    rule("db-6000s", "db", protocol=TCP_, ports="6000-6010", priority=50),
    rule("db-deny-6005", "db", protocol=TCP_, ports="6005", priority=60, action="Deny"),
    rule("db-udp", "db", protocol=UDP_, ports="7000-7002,7005"),
    rule("db-out", "db", "Egress"),
    # deny-first
    rule("deny-first-http", "deny-first", protocol=TCP_, ports="80", action="Deny"),
    nodes=("n1", "n2"),
)

POLICY: CompiledPolicy = compile_policy(CLUSTER).policy

OUT, OFFICE, GRE_PEER = "203.0.113.5", "192.0.2.10", "198.51.100.7"
WEB1, WEB2, DB1, ADMIN, PLAIN1, PLAIN2 = (
    "10.0.1.1",
    "10.0.1.2",
    "10.0.2.1",
    "10.0.3.1",
    "10.0.4.1",
    "10.0.4.2",
)
OUTSIDER, HOSTNET = "10.9.0.1", "10.0.0.10"
DENY = "default-deny"  # no rule matched (S-X-2)


def _who(side: Any) -> str | None:
    if side is None:
        return None
    if side.rule is None:
        return DENY if not side.allowed else "note"
    return str(side.rule.id).removeprefix("demo/")


@pytest.mark.parametrize(
    ("packet", "allowed", "egress", "ingress"),
    [
        # --- ports (S-M-3) and protocols (S-M-2)
        pytest.param((OUT, WEB1, "tcp", 80), True, None, "web-http", id="S-M-3-list-first-port"),
        pytest.param((OUT, WEB1, "tcp", 443), True, None, "web-http", id="S-M-3-list-last-port"),
        pytest.param((OUT, WEB1, "tcp", 81), False, None, DENY, id="S-M-3-port-not-in-list"),
        pytest.param((OUT, WEB1, "udp", 80), False, None, DENY, id="S-M-2-udp-not-tcp-rule"),
        pytest.param((OUT, DB1, "udp", 7001), True, None, "db-udp", id="S-M-3-mixed-range"),
        pytest.param((OUT, DB1, "udp", 7005), True, None, "db-udp", id="S-M-3-mixed-single"),
        pytest.param((OUT, DB1, "udp", 7003), False, None, DENY, id="S-M-3-mixed-gap"),
        pytest.param((OUT, DB1, "tcp", 7001), False, None, DENY, id="S-M-2-tcp-not-udp-rule"),
        pytest.param((OUT, WEB1, "icmp"), True, None, "web-ping", id="S-M-2-icmp-echo-type"),
        pytest.param((OUT, WEB1, "icmp", None, 0), False, None, DENY, id="S-M-2-icmp-other-type"),
        pytest.param(
            (OUT, DB1, "icmp", None, 3, 4), True, None, "db-unreachable", id="S-M-2-icmp-code"
        ),
        pytest.param((OUT, DB1, "icmp", None, 3, 1), False, None, DENY, id="S-M-2-icmp-other-code"),
        pytest.param((GRE_PEER, DB1, "gre"), True, None, "db-gre", id="S-M-2-gre-from-cidr"),
        pytest.param((OUT, DB1, "gre"), False, None, DENY, id="S-M-4-gre-outside-cidr"),
        pytest.param((WEB1, WEB2, "132"), True, "web-out-self", "web-self", id="S-M-2-all"),
        # --- families
        pytest.param(
            ("2001:db8::5", "fd00:1::1", "icmp"),
            True,
            None,
            "web-ping6",
            id="S-M-2-icmp-means-icmpv6-in-ipv6-rules",
        ),
        pytest.param(
            ("2001:db8::5", "fd00:1::1", "tcp", 80),
            False,
            None,
            DENY,
            id="family-ipv4-rule-never-matches-ipv6",
        ),
        pytest.param(
            ("2001:db8::5", "fd00:1::1", "tcp", 8081),
            True,
            None,
            "web-alt6",
            id="family-ipv6-rule-range",
        ),
        pytest.param(
            ("2001:db8::5", "fd00:2::1", "tcp", 22),
            False,
            None,
            DENY,
            id="family-ipv4-any-remote-is-not-ipv6-any",
        ),
        # --- remotes (S-M-4)
        pytest.param(
            (OFFICE, WEB1, "tcp", 22), True, None, "web-ssh-office", id="S-M-4-ipag-member"
        ),
        pytest.param((OUT, WEB1, "tcp", 22), False, None, DENY, id="S-M-4-ipag-non-member"),
        pytest.param(
            (WEB1, DB1, "tcp", 5432),
            True,
            "web-out-db",
            "db-from-web",
            id="S-M-4-remote-group-both-ways",
        ),
        pytest.param(
            (ADMIN, DB1, "tcp", 5432),
            True,
            "web-out-db",
            "db-from-web",
            id="S-M-4-remote-group-includes-annotated-member",
        ),
        pytest.param(
            (PLAIN1, DB1, "tcp", 5432),
            False,
            "default:egress-ipv4",
            DENY,
            id="S-M-4-remote-group-excludes-others",
        ),
        pytest.param(
            (WEB2, WEB1, "tcp", 9), True, "web-out-self", "web-self", id="S-M-5-own-group-remote"
        ),
        # --- order (S-X-1)
        pytest.param(
            (WEB1, DB1, "tcp", 22),
            False,
            "web-out-db",
            "db-deny-web-ssh",
            id="S-X-1-deny-before-allow-at-equal-priority",
        ),
        pytest.param(
            (OFFICE, DB1, "tcp", 22), True, None, "db-ssh", id="S-X-1-deny-not-matching-skipped"
        ),
        pytest.param(
            (OUT, DB1, "tcp", 6005),
            True,
            None,
            "db-6000s",
            id="S-X-1-smaller-priority-decides-first",
        ),
        pytest.param(
            (OUT, ADMIN, "tcp", 80),
            False,
            None,
            "deny-first-http",
            id="S-X-1-first-group-in-sequence-decides",
        ),
        pytest.param(
            (OUT, ADMIN, "tcp", 443),
            True,
            None,
            "web-http",
            id="S-X-1-no-match-in-first-group-falls-to-second",
        ),
        # --- both ends (S-X-2)
        pytest.param(
            (WEB1, DB1, "tcp", 6005),
            False,
            DENY,
            "db-6000s",
            id="S-X-2-egress-denies-though-ingress-allows",
        ),
        pytest.param(
            (DB1, WEB1, "tcp", 81),
            False,
            "db-out",
            DENY,
            id="S-X-2-ingress-denies-though-egress-allows",
        ),
        pytest.param((DB1, WEB1, "tcp", 80), True, "db-out", "web-http", id="S-X-2-both-allow"),
        pytest.param((WEB1, OUT, "tcp", 80), False, DENY, None, id="S-X-2-egress-default-deny"),
        pytest.param((WEB1, OUT, "udp", 53), True, "web-out-dns", None, id="S-X-2-egress-allowed"),
        # --- default group (S-D-1, S-D-2)
        pytest.param(
            (PLAIN1, PLAIN2, "tcp", 9999),
            True,
            "default:egress-ipv4",
            "default:ingress-ipv4",
            id="S-D-1-default-members-talk",
        ),
        pytest.param((OUT, PLAIN1, "tcp", 80), False, None, DENY, id="S-D-1-outside-in-denied"),
        pytest.param(
            (PLAIN1, OUT, "udp", 53), True, "default:egress-ipv4", None, id="S-D-1-egress-anywhere"
        ),
        pytest.param(
            (DB1, PLAIN1, "tcp", 80), False, "db-out", DENY, id="S-D-2-other-groups-isolated"
        ),
        # --- unmanaged ends
        pytest.param((OUTSIDER, OUT, "tcp", 1), True, None, None, id="unmanaged-both-ends"),
        pytest.param(
            (OUTSIDER, WEB1, "tcp", 81), False, None, DENY, id="unmanaged-namespace-is-outside"
        ),
        pytest.param(
            (HOSTNET, WEB1, "tcp", 80), True, None, "web-http", id="hostnetwork-pod-unrestricted"
        ),
        pytest.param((WEB1, HOSTNET, "tcp", 80), False, DENY, None, id="to-hostnetwork-egress"),
    ],
)
def test_verdicts(
    packet: tuple[Any, ...], allowed: bool, egress: str | None, ingress: str | None
) -> None:
    verdict = evaluate(POLICY, Packet.make(*packet))
    assert (verdict.allowed, _who(verdict.egress), _who(verdict.ingress)) == (
        allowed,
        egress,
        ingress,
    )


def _from_node(src: str, dst: str, node: str) -> Packet:
    p = Packet.make(src, dst, "tcp", 10250)
    return Packet(p.src, p.dst, p.proto, p.dport, from_node=node)


def test_node_reaches_its_own_pods_by_default() -> None:
    verdict = evaluate(POLICY, _from_node("172.18.0.2", DB1, "n1"))
    assert verdict.allowed
    assert verdict.ingress is not None and "own node" in verdict.ingress.explain()


def test_another_node_is_judged_by_the_rules() -> None:
    assert not evaluate(POLICY, _from_node("172.18.0.3", DB1, "n2")).allowed


def test_node_to_pod_can_be_switched_off() -> None:
    assert not evaluate(
        POLICY, _from_node("172.18.0.2", DB1, "n1"), allow_node_to_pod=False
    ).allowed


def test_a_missing_set_matches_nothing() -> None:
    broken = POLICY.model_copy(
        update={"sets": {k: v for k, v in POLICY.sets.items() if k != "ipag.demo.office"}}
    )
    assert not evaluate(broken, Packet.make(OFFICE, WEB1, "tcp", 22)).allowed


def test_tcp_rule_with_ports_never_matches_a_packet_without_port() -> None:
    assert not evaluate(POLICY, Packet.make(OUT, WEB1, "tcp")).allowed


def test_first_match_returns_the_rule_and_explanations_name_it() -> None:
    ev = Evaluator(POLICY)
    group = POLICY.groups["sg.demo.db"]
    hit = ev.first_match(group, Direction.INGRESS, Packet.make(WEB1, DB1, "tcp", 22))
    assert hit is not None and hit.id == "demo/db-deny-web-ssh"
    text = ev.evaluate(Packet.make(WEB1, DB1, "tcp", 22)).explain()
    assert "denied by rule demo/db-deny-web-ssh of group demo/db" in text
    assert "allowed by rule demo/web-out-db" in text
    assert "default deny (S-X-2)" in ev.evaluate(Packet.make(OUT, WEB1, "tcp", 1)).explain()
    assert "not filtered" in ev.evaluate(Packet.make(OUTSIDER, OUT, "tcp", 1)).explain()


@pytest.mark.parametrize(
    ("args", "proto", "icmp"),
    [
        pytest.param(("10.0.0.1", "10.0.0.2", "ping"), ICMP, (8, 0), id="ping-is-echo"),
        pytest.param(("fd00::1", "fd00::2", "icmp"), ICMPV6, (128, 0), id="icmpv6-echo"),
        pytest.param(("10.0.0.1", "10.0.0.2", "tcp"), TCP, (None, None), id="tcp"),
        pytest.param(("10.0.0.1", "10.0.0.2", "gre"), GRE, (None, None), id="gre"),
        pytest.param(("10.0.0.1", "10.0.0.2", "132"), 132, (None, None), id="by-number"),
    ],
)
def test_packet_make(args: tuple[str, str, str], proto: int, icmp: tuple[int | None, ...]) -> None:
    p = Packet.make(*args)
    assert (p.proto, p.icmp_type, p.icmp_code) == (proto, *icmp)


def test_packet_families_must_agree() -> None:
    with pytest.raises(ValueError, match="different families"):
        Packet.make("10.0.0.1", "fd00::1", "tcp", 80)
