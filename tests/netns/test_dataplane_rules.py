"""Every S-X rule form with real packets: expected (the core evaluator) vs observed (probes).

A 2-node lab (``ksgrul``) runs a real ``secgroups-agent`` per node; the shop scenario of
``tests/dataplanecases.py`` (Namespaces, Pods with the lab's IPs, SecurityGroups, rules and
IP address groups, compiled by the real compiler) is given to both agents as the operator
would. Then every pod, the outside host from five of its addresses and both nodes probe
every pod, and every pod probes the outside addresses and the nodes — TCP on eight ports,
UDP on two, ICMP/ICMPv6 echo, and GRE, over IPv4 and IPv6 — and each observed cell must be
the evaluator's verdict (``test_every_cell_agrees_with_the_evaluator``).

``test_spec_cell`` then pins, cell by cell, what docs/spec.md says for the cases that
prove a requirement (ids cite S- numbers): the spec's verdict must be the evaluator's and
the packets'. The last tests check what the matrix cannot show: related ICMP errors reach
a pod that has no ingress rule (S-X-3), and live membership and address-group changes
decide new connections (S-M-4).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from tests.dataplane_harness import (
    ALLOWED_TIMEOUT,
    DENIED_TIMEOUT,
    GRE,
    DataplaneLab,
    Oracle,
    assert_all_match,
    dataplane_unavailable,
    run_gre_matrix,
)
from tests.dataplanecases import (
    SHOP_PODS,
    SHOP_PROBE_PORTS,
    shop_changed,
    shop_manifests,
)

from secgroups_lab.matrix import Case, Family, MatrixResult, Target, run_matrix
from secgroups_lab.probes import Endpoint, ProbeResult, ProbeSpec, Proto

_why = dataplane_unavailable()
if _why:
    pytest.skip(_why, allow_module_level=True)

pytestmark = pytest.mark.netns

PREFIX = "ksgrul"
FAMILIES: tuple[Family, ...] = (4, 6)
PROTO_PORTS: list[tuple[Proto, int]] = [
    *(("tcp", p) for p in SHOP_PROBE_PORTS),
    ("udp", 5432),
    ("udp", 8080),
    ("icmp", 0),
]
CASES = [Case(proto, port, family) for family in FAMILIES for proto, port in PROTO_PORTS]


@pytest.fixture(scope="module")
def dp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataplaneLab]:
    workdir = tmp_path_factory.mktemp("rules-agents")
    with DataplaneLab(PREFIX, SHOP_PODS, workdir, probe_ports=SHOP_PROBE_PORTS) as dp:
        step = dp.operator.apply(shop_manifests(dp.pods))
        assert step.problems == ()
        yield dp


def senders(dp: DataplaneLab) -> list[Endpoint]:
    """Every pod, the outside host from its canonical and four other addresses, both nodes."""
    return [*dp.pods.values(), dp.outside, *dp.aliases(), dp.node_host(1), dp.node_host(2)]


def others(dp: DataplaneLab) -> list[Target]:
    """What pods reach out to besides pods: the outside addresses and the nodes."""
    return [dp.outside, *dp.aliases(), dp.node_host(1), dp.node_host(2)]


def probe_everything(dp: DataplaneLab, oracle: Oracle) -> list[MatrixResult]:
    """Everyone → every pod, every pod → the outside and the nodes; GRE in phases."""
    pods: list[Target] = list(dp.pods.values())
    pod_senders: list[Endpoint] = list(dp.pods.values())
    kw: dict[str, Any] = {
        "timeout": DENIED_TIMEOUT,
        "allowed_timeout": ALLOWED_TIMEOUT,
        "bind_source": True,
    }
    results = [
        run_matrix(senders(dp), CASES, oracle, destinations=pods, **kw),
        run_matrix(pod_senders, CASES, oracle, destinations=others(dp), **kw),
    ]
    gre_senders: list[Endpoint] = [*pod_senders, dp.outside, *dp.aliases()]
    results += run_gre_matrix(dp, gre_senders, [*pods, dp.outside], oracle)
    return results


@dataclass
class Observed:
    """The shop scenario's matrices: expected and observed per (from, to, case)."""

    oracle: Oracle
    results: list[MatrixResult]

    def cell(self, src: str, dst: str, case: Case) -> tuple[bool, ProbeResult]:
        for r in self.results:
            if src in r.sources and dst in r.destinations and case in r.cases:
                key = (r.sources.index(src), r.destinations.index(dst), r.cases.index(case))
                if key in r.observed:
                    return r.expected[key], r.observed[key]
        raise KeyError(f"{src} -> {dst} {case.label} was not probed")


@pytest.fixture(scope="module")
def shop(dp: DataplaneLab) -> Observed:
    step = dp.operator.apply(shop_manifests(dp.pods))  # the base scenario, whatever ran before
    oracle = Oracle(step.policy)
    return Observed(oracle, probe_everything(dp, oracle))


def test_every_cell_agrees_with_the_evaluator(shop: Observed) -> None:
    """S-X-1, S-X-2, S-X-3, S-M-3, S-M-4, S-M-5, S-D-1, S-O-3: ~3,900 probes, all as the
    evaluator says (TCP/UDP/ICMP/GRE, IPv4/IPv6, same node, across nodes, outside, nodes)."""
    assert_all_match(shop.results)
    probes = sum(r.probes for r in shop.results)
    denied = sum(1 for r in shop.results for ok in r.expected.values() if not ok)
    assert probes > 3500 and 0 < denied < probes  # neither everything open nor closed


def tcp(port: int, family: Family = 4) -> Case:
    return Case("tcp", port, family)


def udp(port: int, family: Family = 4) -> Case:
    return Case("udp", port, family)


ICMP4, ICMP6 = Case("icmp", 0, 4), Case("icmp", 0, 6)
GRE4, GRE6 = GRE
OUT = "outside"
P_IP, P_CIDR, P_RANGE, STRANGER = (
    "outside/partner-ip",
    "outside/partner-cidr",
    "outside/partner-range",
    "outside/stranger",
)
WEB1, WEB2, DB1, SEQ1 = "shop/web-1", "shop/web-2", "shop/db-1", "shop/seq-1"
DFLT1, DFLT2, CLIENT2, FREE = "shop/dflt-1", "shop/dflt-2", "shop/client-2", "legacy/free"
N1, N2 = "node/n1", "node/n2"

# (from, to, case, the spec's verdict) — the cells that prove each requirement.
SPEC_CELLS = [
    # S-M-3 port forms (and S-O-3 names)
    pytest.param(OUT, WEB1, tcp(22), True, id="S-M-3-single-port-22"),
    pytest.param(OUT, WEB2, tcp(80), True, id="S-M-3-range-80-82-low-end"),
    pytest.param(OUT, WEB2, tcp(82), True, id="S-M-3-range-80-82-high-end"),
    pytest.param(OUT, WEB2, tcp(83), False, id="S-M-3-range-80-82-excludes-83"),
    pytest.param(P_IP, WEB1, udp(5432), True, id="S-M-3-list-5432,8080-first"),
    pytest.param(P_IP, WEB1, udp(8080), True, id="S-M-3-list-5432,8080-second"),
    pytest.param(CLIENT2, WEB1, tcp(3306), True, id="S-M-3-mixed-3306-3307,8080-range-part"),
    pytest.param(CLIENT2, WEB1, tcp(8080), True, id="S-M-3-mixed-3306-3307,8080-single-part"),
    pytest.param(CLIENT2, WEB1, tcp(5432), False, id="S-M-3-mixed-excludes-5432"),
    pytest.param(P_CIDR, WEB1, tcp(443), True, id="S-O-3-named-https"),
    pytest.param(WEB1, DB1, tcp(3306), True, id="S-O-3-named-mysql"),
    pytest.param(WEB1, DB1, tcp(5432, 6), True, id="S-O-3-named-postgresql-IPv6"),
    # S-M-4 remotes: CIDR (several outside addresses), security group, IP address group
    pytest.param(OUT, WEB1, tcp(22, 6), True, id="S-M-4-cidr-IPv6-inside"),
    pytest.param(P_IP, WEB1, tcp(22), False, id="S-M-4-cidr-another-outside-address-outside"),
    pytest.param(P_IP, WEB1, tcp(22, 6), False, id="S-M-4-cidr-IPv6-outside"),
    pytest.param(P_IP, WEB1, tcp(443), True, id="S-M-4-ipag-ip-entry"),
    pytest.param(P_CIDR, WEB2, tcp(443, 6), True, id="S-M-4-ipag-cidr-entry-IPv6"),
    pytest.param(P_RANGE, WEB1, tcp(443), True, id="S-M-4-ipag-range-entry"),
    pytest.param(P_RANGE, WEB1, tcp(443, 6), True, id="S-M-4-ipag-range-entry-IPv6"),
    pytest.param(STRANGER, WEB1, tcp(443), False, id="S-M-4-ipag-not-an-entry"),
    pytest.param(OUT, WEB1, tcp(443), False, id="S-M-4-ipag-canonical-outside-not-an-entry"),
    pytest.param(CLIENT2, WEB2, tcp(3306), True, id="S-M-4-sg-member-same-node"),
    pytest.param(CLIENT2, WEB1, tcp(3306, 6), True, id="S-M-4-sg-member-IPv6-across-nodes"),
    pytest.param(DFLT2, WEB2, tcp(3306), False, id="S-M-4-sg-non-member"),
    pytest.param(CLIENT2, WEB2, udp(5432), False, id="S-M-4-ipag-rule-does-not-admit-pods"),
    pytest.param(CLIENT2, P_IP, tcp(80), False, id="S-M-4-ipag-as-egress-remote"),
    pytest.param(CLIENT2, STRANGER, tcp(80), True, id="S-M-4-egress-outside-the-ipag"),
    # S-M-5 the group as its own remote
    pytest.param(WEB1, WEB2, tcp(5432), True, id="S-M-5-own-group-across-nodes"),
    pytest.param(WEB2, WEB1, GRE6, True, id="S-M-5-own-group-GRE-IPv6"),
    pytest.param(SEQ1, WEB1, tcp(5432), False, id="S-M-5-not-a-member"),
    # ICMP type and code
    pytest.param(OUT, WEB1, ICMP4, True, id="S-M-2-icmp-type-8-code-0"),
    pytest.param(OUT, WEB2, ICMP6, True, id="S-M-2-icmpv6-type-128"),
    pytest.param(OUT, SEQ1, ICMP4, False, id="S-M-2-icmp-type-13-is-not-echo"),
    pytest.param(OUT, SEQ1, ICMP6, False, id="S-M-2-icmpv6-code-1-is-not-echo-code-0"),
    # S-X-1 order: Deny before Allow at equal priority, priority, groups in sequence
    pytest.param(OUT, WEB1, GRE4, False, id="S-X-1-deny-before-allow-equal-priority-gre"),
    pytest.param(OUT, WEB2, GRE6, False, id="S-X-1-deny-before-allow-equal-priority-gre6"),
    pytest.param(DFLT1, WEB1, GRE4, True, id="S-X-1-the-allow-for-the-others-gre"),
    pytest.param(OUT, SEQ1, udp(8080), False, id="S-X-1-deny-before-allow-equal-priority-udp"),
    pytest.param(OUT, DB1, tcp(5432), True, id="S-X-1-priority-5-allow-beats-10-deny"),
    pytest.param(OUT, DB1, udp(5432), False, id="S-X-1-priority-5-deny-beats-10-allow"),
    pytest.param(WEB1, DB1, udp(5432), True, id="S-X-1-priority-10-allow-when-5-misses"),
    pytest.param(OUT, SEQ1, tcp(80), False, id="S-X-1-first-group-deny-wins-over-second"),
    pytest.param(OUT, SEQ1, tcp(443), True, id="S-X-1-first-group-allow-wins-over-second"),
    pytest.param(OUT, SEQ1, tcp(22), True, id="S-X-1-second-group-when-first-misses"),
    pytest.param(OUT, SEQ1, tcp(80, 6), False, id="S-X-1-first-group-deny-IPv6"),
    # S-X-2 default deny; both the sender's egress and the receiver's ingress
    pytest.param(OUT, CLIENT2, tcp(80), False, id="S-X-2-default-deny-no-ingress-rule"),
    pytest.param(OUT, SEQ1, tcp(8080), False, id="S-X-2-default-deny-after-all-groups"),
    pytest.param(OUT, DB1, tcp(22, 6), False, id="S-X-2-default-deny-IPv6"),
    pytest.param(DB1, OUT, tcp(80), False, id="S-X-2-default-deny-egress"),
    pytest.param(CLIENT2, WEB2, tcp(80), False, id="S-X-2-sender-egress-denies-same-node"),
    pytest.param(CLIENT2, WEB1, tcp(80), False, id="S-X-2-sender-egress-denies-across-nodes"),
    pytest.param(CLIENT2, WEB1, tcp(82), True, id="S-X-2-sender-egress-allows-across-nodes"),
    pytest.param(CLIENT2, WEB2, tcp(80, 6), True, id="S-X-2-sender-egress-IPv6-not-denied"),
    pytest.param(CLIENT2, DB1, tcp(3306), False, id="S-X-2-receiver-ingress-denies-across"),
    pytest.param(DFLT1, DB1, tcp(3306), False, id="S-X-2-receiver-ingress-denies-same-node"),
    pytest.param(WEB1, DB1, tcp(3306, 6), True, id="S-X-2-both-allow-same-node"),
    pytest.param(WEB2, DB1, tcp(3306), True, id="S-X-2-both-allow-across-nodes"),
    # S-X-3 stateful: the reply passes although its direction has no rule
    pytest.param(WEB2, DB1, tcp(3306, 6), True, id="S-X-3-reply-from-pod-without-egress"),
    pytest.param(CLIENT2, OUT, tcp(80), True, id="S-X-3-reply-to-pod-without-ingress"),
    pytest.param(CLIENT2, OUT, ICMP6, True, id="S-X-3-echo-reply-to-pod-without-ingress"),
    # S-D-1 the default group
    pytest.param(DFLT1, DFLT2, tcp(22), True, id="S-D-1-members-talk-across-nodes"),
    pytest.param(DFLT2, DFLT1, udp(5432, 6), True, id="S-D-1-members-talk-IPv6"),
    pytest.param(DFLT1, OUT, tcp(443), True, id="S-D-1-egress-anywhere"),
    pytest.param(DFLT2, OUT, ICMP6, True, id="S-D-1-egress-anywhere-IPv6"),
    pytest.param(OUT, DFLT1, tcp(80), False, id="S-D-1-nothing-else-inbound"),
    pytest.param(WEB1, DFLT2, tcp(80), False, id="S-D-2-other-groups-isolated"),
    # the node reaches its own pods (kubelet probes); another node is judged by the rules
    pytest.param(N1, DB1, tcp(22), True, id="node-to-local-pod-allowed"),
    pytest.param(N2, CLIENT2, tcp(80, 6), True, id="node-to-local-pod-allowed-IPv6"),
    pytest.param(N2, DB1, tcp(22), False, id="other-node-judged-by-rules-denied"),
    pytest.param(N2, DB1, tcp(5432), True, id="other-node-judged-by-rules-allowed"),
    pytest.param(WEB1, N1, tcp(22), True, id="pod-to-its-node-by-egress-allowed"),
    pytest.param(DB1, N1, tcp(22), False, id="pod-to-its-node-by-egress-denied"),
    # pods of a namespace that is not enforced are not filtered
    pytest.param(OUT, FREE, tcp(83), True, id="unmanaged-pod-not-filtered"),
    pytest.param(FREE, WEB1, tcp(83), False, id="unmanaged-pod-judged-by-the-receiver"),
]


@pytest.mark.parametrize(("src", "dst", "case", "spec"), SPEC_CELLS)
def test_spec_cell(shop: Observed, src: str, dst: str, case: Case, spec: bool) -> None:
    """The spec's verdict for this cell = the evaluator's = what the packets did."""
    expected, observed = shop.cell(src, dst, case)
    assert expected == spec, f"the evaluator disagrees with the spec for {src} -> {dst}"
    assert observed.ok == spec, f"{src} -> {dst} {case.label}: observed {observed}"


@pytest.mark.parametrize("family", [4, 6])
def test_related_icmp_errors_reach_a_pod_without_ingress_rules(
    dp: DataplaneLab, shop: Observed, family: int
) -> None:
    """S-X-3 "including related ICMP errors": client-2 has no ingress rule, yet the
    outside's port-unreachable for its UDP probe comes back (reason ``refused``, at once)
    — and so does the RST of a closed TCP port, which is a reply."""
    client = dp.client(dp.pods["client-2"])
    dst = dp.outside.ipv4 if family == 4 else dp.outside.ipv6
    udp_res, tcp_res = client.probe_many(
        [ProbeSpec("udp", dst, 9, timeout=2.0), ProbeSpec("tcp", dst, 9, timeout=2.0)]
    )
    assert udp_res.reason == "refused", udp_res
    assert tcp_res.reason == "refused", tcp_res
    # The same error is not let in for a flow the pod's egress never allowed.
    db = dp.client(dp.pods["db-1"])
    (blocked,) = db.probe_many([ProbeSpec("udp", dst, 9, timeout=DENIED_TIMEOUT)])
    assert blocked.reason == "timeout", blocked


def test_live_membership_and_address_group_changes_decide_new_connections(
    dp: DataplaneLab, shop: Observed
) -> None:
    """S-M-4 (members of a remote group and entries of an IP address group are live) and
    S-M-1 (membership changes apply to running pods): dflt-2 joins client, seq-1 joins web,
    the partners address groups swap an entry; the agents apply it, and new connections
    follow the new policy everywhere."""
    base = shop_manifests(dp.pods)
    step = dp.operator.apply(shop_changed(dp.pods, base))
    try:
        new = Oracle(step.policy)
        old = shop.oracle
        ep = {e.label: e for e in [*senders(dp), *others(dp)]}
        # The cells the change is about: each flips.
        flips = [
            (DFLT2, WEB2, tcp(3306)),  # dflt-2 is now a member of client (web-mixed's remote)
            (DFLT1, DFLT2, tcp(22)),  # ...and no longer of the default group
            (SEQ1, WEB1, tcp(5432)),  # seq-1 now in web: web-self admits it
            (WEB1, SEQ1, tcp(8080, 6)),  # ...and its third group admits web
            (P_IP, WEB1, udp(5432)),  # partners lost 100.64.250.20
            (STRANGER, WEB1, udp(5432, 6)),  # ...and gained the stranger
            (CLIENT2, P_IP, tcp(80)),  # client's egress Deny to partners follows
            (CLIENT2, STRANGER, tcp(80)),
        ]
        for src, dst, case in flips:
            assert old(ep[src], ep[dst], case) != new(ep[src], ep[dst], case), (src, dst)
        assert_all_match(probe_everything(dp, new))
    finally:
        dp.operator.apply(base)
