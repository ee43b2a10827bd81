"""Packet tables through the tracer over rendered rulesets, and the tracer's own strictness.

Each row is one packet as it reaches node ``n1`` of a scenario of ``tests/nftcases.py``
(forwarded, to the node, or from the node), the verdict the ruleset gives it, and which
compiled rule decided each policy base chain (the rule id is the nft rule's comment).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from tests import nftcases as nc

from secgroups.nft import names
from secgroups.nft.epochs import MARK_TOMBSTONE, epoch_mark
from secgroups.nft.reading import UnsupportedTextError, parse_rule
from secgroups.nft.rendering import TCP_TIMEOUTS, UDP_TIMEOUTS, render
from secgroups.nft.tracing import Trace, TracePacket, Tracer, UnsupportedShapeError, trace

TCP, UDP, ICMP, ICMPV6, GRE, SCTP = 6, 17, 1, 58, 47, 132
NODE_IP = "100.64.0.1"
OUTSIDE = "192.0.2.99"
WEB1, WEB2, DB1 = nc.WEB1[0], nc.WEB2[0], nc.DB1[0]
WEB1_6 = nc.WEB1[1]
S = nc.web_and_db()
RULESET = render(S.policy, nc.NODE, S.pod_interfaces, S.options)
TRACER = Tracer(RULESET)
MARK_WEB1 = epoch_mark("uid-shop-web-1", 2)  # web-1 is at epoch 2 in the scenario
STALE_WEB1 = epoch_mark("uid-shop-web-1", 1)
TOMB = MARK_TOMBSTONE


def fwd(src: str, dst: str, proto: int, dport: int | None = None, **kw: Any) -> TracePacket:
    """A forwarded packet: it enters on the source's interface and leaves on the destination's."""
    return TracePacket(
        ipaddress.ip_address(src),
        ipaddress.ip_address(dst),
        proto,
        dport,
        iif=kw.pop("iif", S.iface(src)),
        oif=kw.pop("oif", S.iface(dst)),
        **kw,
    )


def to_node(src: str, dst: str, proto: int, dport: int | None = None, **kw: Any) -> TracePacket:
    iif = kw.pop("iif", S.iface(src))
    return TracePacket(
        ipaddress.ip_address(src), ipaddress.ip_address(dst), proto, dport, iif=iif, oif=None, **kw
    )


def from_node(src: str, dst: str, proto: int, dport: int | None = None, **kw: Any) -> TracePacket:
    return TracePacket(
        ipaddress.ip_address(src),
        ipaddress.ip_address(dst),
        proto,
        dport,
        iif=None,
        oif=S.iface(dst),
        **kw,
    )


def _check(result: Trace, verdict: str, deciders: dict[str, str | None]) -> None:
    assert result.verdict == verdict, result.explain()
    for chain, rule_id in deciders.items():
        assert result.decided_by(chain) == rule_id, result.explain()


NEW_CONNECTIONS = [
    # --- ingress of web-1 (S-X-1 order, S-M-3 ports, S-M-4 remotes)
    pytest.param(
        fwd("203.0.113.9", WEB1, TCP, 22),
        "accept",
        {"ingress_fwd": "shop/ssh-office"},
        id="ssh-from-office-allowed",
    ),
    pytest.param(
        fwd(OUTSIDE, WEB1, TCP, 22),
        "drop",
        {"ingress_fwd": "no rule matched (S-X-2)"},
        id="ssh-from-elsewhere-denied-by-default",
    ),
    pytest.param(
        fwd("198.51.100.20", WEB1, TCP, 80),
        "drop",
        {"ingress_fwd": "shop/deny-blocked"},
        id="blocked-cidr-denied-before-http-allow",
    ),
    pytest.param(
        fwd("192.0.2.7", WEB1, TCP, 443),
        "drop",
        {"ingress_fwd": "shop/deny-blocked"},
        id="blocked-host-denied",
    ),
    pytest.param(
        fwd(OUTSIDE, WEB1, TCP, 8080),
        "accept",
        {"ingress_fwd": "shop/http"},
        id="port-list-range-allowed",
    ),
    pytest.param(
        fwd(OUTSIDE, WEB1, TCP, 443),
        "accept",
        {"ingress_fwd": "shop/http"},
        id="port-list-single-allowed",
    ),
    pytest.param(fwd(OUTSIDE, WEB1, TCP, 8081), "drop", {}, id="port-list-outside-denied"),
    pytest.param(fwd(OUTSIDE, WEB1, UDP, 80), "drop", {}, id="udp-on-a-tcp-port-denied"),
    pytest.param(
        fwd("2001:db8::1", WEB1_6, TCP, 443),
        "accept",
        {"ingress_fwd": "shop/http6"},
        id="http-over-ipv6-allowed",
    ),
    pytest.param(fwd("2001:db8::1", WEB1_6, TCP, 22), "drop", {}, id="ssh-over-ipv6-has-no-rule"),
    pytest.param(
        fwd(OUTSIDE, WEB1, ICMP, icmp_type=8, icmp_code=0),
        "accept",
        {"ingress_fwd": "shop/ping"},
        id="ping-allowed",
    ),
    pytest.param(
        fwd(OUTSIDE, WEB1, ICMP, icmp_type=13, icmp_code=0), "drop", {}, id="icmp-timestamp-denied"
    ),
    pytest.param(
        fwd("2001:db8::1", WEB1_6, ICMPV6, icmp_type=128, icmp_code=0),
        "accept",
        {"ingress_fwd": "shop/ping6"},
        id="ping6-allowed",
    ),
    pytest.param(fwd(OUTSIDE, WEB1, SCTP, 80), "drop", {}, id="sctp-denied"),
    # --- egress of web-1
    pytest.param(
        fwd(WEB1, OUTSIDE, TCP, 25),
        "drop",
        {"egress_fwd": "shop/no-smtp"},
        id="smtp-out-denied-first",
    ),
    pytest.param(
        fwd(WEB1, "192.0.2.53", UDP, 53),
        "accept",
        {"egress_fwd": "shop/dns"},
        id="dns-to-first-resolver",
    ),
    pytest.param(
        fwd(WEB1, "198.51.100.53", UDP, 53),
        "accept",
        {"egress_fwd": "shop/dns"},
        id="dns-to-second-resolver",
    ),
    pytest.param(
        fwd(WEB1, OUTSIDE, SCTP, 9),
        "accept",
        {"egress_fwd": "shop/all4"},
        id="anything-out-over-ipv4",
    ),
    # --- same node: the sender's egress AND the receiver's ingress (S-X-2; an accept ends
    # only its base chain, docs/nftables.md#an-accept-ends-only-its-base-chain)
    pytest.param(
        fwd(WEB1, DB1, TCP, 5432),
        "accept",
        {"egress_fwd": "shop/db", "ingress_fwd": "shop/pg-from-web"},
        id="web-to-db-both-sides-allow",
    ),
    pytest.param(
        fwd(WEB1, DB1, TCP, 5433),
        "drop",
        {"egress_fwd": "shop/all4", "ingress_fwd": "no rule matched (S-X-2)"},
        id="web-to-db-egress-allows-ingress-denies",
    ),
    pytest.param(
        fwd(DB1, WEB1, TCP, 80),
        "accept",
        {"egress_fwd": "shop/all4", "ingress_fwd": "shop/http"},
        id="db-pod-second-group-egress",
    ),
    pytest.param(
        fwd(DB1, OUTSIDE, TCP, 25),
        "drop",
        {"egress_fwd": "shop/no-smtp"},
        id="second-group-deny-applies-after-first-group-misses",
    ),
    pytest.param(
        fwd(DB1, "192.0.2.10", UDP, 123),
        "accept",
        {"egress_fwd": "shop/db-out"},
        id="first-group-port-list-egress",
    ),
    pytest.param(
        fwd("203.0.113.5", DB1, GRE),
        "accept",
        {"ingress_fwd": "shop/gre-office"},
        id="gre-from-office",
    ),
    pytest.param(
        fwd(WEB1, WEB1, TCP, 80),
        "accept",
        {"egress_fwd": "shop/all4", "ingress_fwd": "shop/http"},
        id="hairpin-checks-both-ways",
    ),
    # --- node and pods
    pytest.param(
        from_node(NODE_IP, WEB1, TCP, 10250),
        "accept",
        {"ingress_output": "node to local pod allowed"},
        id="kubelet-probe-allowed",
    ),
    pytest.param(
        to_node(WEB1, NODE_IP, TCP, 53),
        "accept",
        {"egress_input": "shop/all4"},
        id="pod-to-node-is-egress",
    ),
    pytest.param(
        to_node(WEB1, NODE_IP, TCP, 25),
        "drop",
        {"egress_input": "shop/no-smtp"},
        id="pod-to-node-deny",
    ),
    # --- anti-spoofing (prerouting raw, before conntrack)
    pytest.param(
        fwd(WEB2, OUTSIDE, TCP, 80, iif="veth-web-1"),
        "drop",
        {"pre_antispoof": "spoofed source address"},
        id="spoofed-neighbour-ip-dropped",
    ),
    pytest.param(
        fwd("192.0.2.1", OUTSIDE, TCP, 80, iif="veth-web-1"),
        "drop",
        {"pre_antispoof": "spoofed source address"},
        id="spoofed-outside-ip-dropped",
    ),
    pytest.param(
        to_node(
            "fe80::1",
            "ff02::1:ff00:1",
            ICMPV6,
            icmp_type=135,
            hoplimit=255,
            iif="veth-web-1",
            ct_state="untracked",
        ),
        "accept",
        {},
        id="neighbour-solicitation-from-pod",
    ),
    pytest.param(
        to_node(
            "fe80::1",
            "ff02::1",
            ICMPV6,
            icmp_type=134,
            hoplimit=255,
            iif="veth-web-1",
            ct_state="untracked",
        ),
        "drop",
        {},
        id="router-advert-from-pod-dropped",
    ),
    pytest.param(
        to_node(
            "fe80::1",
            "ff02::1:ff00:1",
            ICMPV6,
            icmp_type=135,
            hoplimit=64,
            iif="veth-web-1",
            ct_state="untracked",
        ),
        "drop",
        {},
        id="routed-nd-dropped",
    ),
    pytest.param(
        to_node(
            WEB1_6, "ff02::1:ff00:1", ICMPV6, icmp_type=135, hoplimit=255, ct_state="untracked"
        ),
        "accept",
        {},
        id="nd-from-pod-global-address",
    ),
]


@pytest.mark.parametrize(("packet", "verdict", "deciders"), NEW_CONNECTIONS)
def test_new_connections(
    packet: TracePacket, verdict: str, deciders: dict[str, str | None]
) -> None:
    """S-X-1, S-X-2, S-M-3, S-M-4 on the first packet of a connection."""
    _check(TRACER.trace(packet), verdict, deciders)


def test_ingress_allow_stamps_the_pods_current_epoch() -> None:
    """S-CT-2 (docs/nftables.md, "Epochs"): the accepted flow carries web-1's epoch in ct mark."""
    result = TRACER.trace(fwd("203.0.113.9", WEB1, TCP, 22))
    assert result.ct_mark == MARK_WEB1


def test_egress_allow_does_not_stamp() -> None:
    assert TRACER.trace(fwd(WEB1, OUTSIDE, TCP, 80)).ct_mark == 0


CONNTRACK = [
    pytest.param(
        fwd(OUTSIDE, WEB1, TCP, 22, ct_state="established", ct_mark=MARK_WEB1),
        "accept",
        MARK_WEB1,
        id="inbound-flow-at-current-epoch-fast-path",
    ),
    pytest.param(
        fwd("203.0.113.9", WEB1, TCP, 22, ct_state="established", ct_mark=STALE_WEB1),
        "accept",
        MARK_WEB1,
        id="stale-epoch-still-allowed-is-restamped",
    ),
    pytest.param(
        fwd(OUTSIDE, WEB1, TCP, 22, ct_state="established", ct_mark=STALE_WEB1),
        "drop",
        STALE_WEB1,
        id="stale-epoch-now-denied-is-cut",
    ),
    pytest.param(
        fwd(OUTSIDE, WEB1, TCP, 22, ct_state="established", ct_mark=0),
        "drop",
        0,
        id="unstamped-inbound-flow-is-rechecked",
    ),
    pytest.param(
        fwd(OUTSIDE, WEB1, TCP, 9999, ct_state="established", ct_direction="reply"),
        "accept",
        0,
        id="reply-to-pod-initiated-flow",
    ),
    pytest.param(
        fwd(WEB1, OUTSIDE, TCP, ct_state="established", ct_direction="reply", ct_mark=STALE_WEB1),
        "accept",
        STALE_WEB1,
        id="pod-reply-on-a-stale-flow-passes-until-the-sweep",
    ),
    pytest.param(
        fwd(WEB1, OUTSIDE, TCP, ct_state="established", ct_direction="reply", ct_mark=TOMB),
        "drop",
        TOMB,
        id="pod-reply-on-a-tombstoned-flow-is-dropped",
    ),
    pytest.param(
        fwd(WEB1, OUTSIDE, UDP, ct_state="established", ct_direction="reply", ct_mark=TOMB),
        "drop",
        TOMB,
        id="pod-one-way-udp-on-a-tombstoned-flow-is-dropped",
    ),
    pytest.param(
        fwd(WEB1, DB1, TCP, ct_state="established", ct_direction="reply", ct_mark=TOMB),
        "drop",
        TOMB,
        id="pod-reply-to-a-same-node-client-on-a-tombstoned-flow-is-dropped",
    ),
    pytest.param(
        fwd(OUTSIDE, WEB1, TCP, 22, ct_state="established", ct_mark=TOMB),
        "drop",
        TOMB,
        id="remote-packet-on-a-tombstoned-flow-still-denied",
    ),
    pytest.param(
        fwd("203.0.113.9", WEB1, TCP, 22, ct_state="established", ct_mark=TOMB),
        "accept",
        MARK_WEB1,
        id="tombstoned-flow-allowed-again-resumes-restamped",
    ),
    pytest.param(
        fwd(WEB1, OUTSIDE, TCP, 25, ct_state="established", ct_mark=TOMB),
        "accept",
        TOMB,
        id="only-replies-are-tombstone-checked",
    ),
    pytest.param(
        fwd(WEB1, OUTSIDE, TCP, 25, ct_state="established"),
        "accept",
        0,
        id="established-outbound-survives-a-deny",
    ),
    pytest.param(
        fwd(OUTSIDE, WEB1, ICMP, icmp_type=3, icmp_code=4, ct_state="related"),
        "accept",
        0,
        id="related-icmp-error-passes",
    ),
    pytest.param(
        fwd(OUTSIDE, WEB1, TCP, 80, ct_state="invalid"), "drop", 0, id="invalid-inbound-dropped"
    ),
    pytest.param(
        fwd(OUTSIDE, WEB1, TCP, 80, tcp_flags=frozenset({"ack"})),
        "drop",
        0,
        id="inbound-mid-stream-pickup-dropped",
    ),
    pytest.param(
        fwd(WEB1, OUTSIDE, TCP, 80, tcp_flags=frozenset({"ack", "psh"})),
        "drop",
        0,
        id="outbound-mid-stream-pickup-dropped",
    ),
    pytest.param(
        fwd(WEB1, OUTSIDE, TCP, 80, tcp_flags=frozenset({"syn", "ack"})),
        "drop",
        0,
        id="new-syn-ack-dropped",
    ),
]


@pytest.mark.parametrize(("packet", "verdict", "mark"), CONNTRACK)
def test_conntrack_states_and_epochs(packet: TracePacket, verdict: str, mark: int) -> None:
    """S-X-3 (replies, related), S-CT-1 (outbound unaffected), S-CT-2 (epochs, non-SYN guard)."""
    result = TRACER.trace(packet)
    assert (result.verdict, result.ct_mark) == (verdict, mark), result.explain()


def test_the_tombstone_rule_decides_the_pods_reply() -> None:
    """S-CT-2: the reply of a flow the agent's sweep found denied is cut in pod_egress, by
    the tombstone rule, before the established accept; nothing else stamps it."""
    result = TRACER.trace(
        fwd(WEB1, OUTSIDE, UDP, ct_state="established", ct_direction="reply", ct_mark=TOMB)
    )
    assert result.decided_by(names.EGRESS_FWD) == (
        "revoked inbound flow: replies from the pod (S-CT-2)"
    ), result.explain()
    (step,) = [s for s in result.steps if s.chain == names.POD_EGRESS]
    assert (step.index, step.effect) == (0, "drop"), result.explain()


def test_fast_path_skips_the_group_rules() -> None:
    result = TRACER.trace(fwd(OUTSIDE, WEB1, TCP, 22, ct_state="established", ct_mark=MARK_WEB1))
    assert not any(c.startswith("g_") for c in result.chains)
    assert "@in_valid4" in result.steps[-1].rule


@pytest.mark.parametrize(
    ("packet", "timeout"),
    [
        pytest.param(fwd(OUTSIDE, WEB1, TCP, 80), "tcp4", id="tcp4"),
        pytest.param(fwd("2001:db8::1", WEB1_6, TCP, 80), "tcp6", id="tcp6"),
        pytest.param(fwd(WEB1, "192.0.2.53", UDP, 53), "udp4", id="udp4"),
        pytest.param(
            fwd(OUTSIDE, WEB1, ICMP, icmp_type=8, icmp_code=0), None, id="icmp-kernel-default"
        ),
        pytest.param(fwd("203.0.113.5", DB1, GRE), None, id="gre-kernel-default"),
        pytest.param(
            fwd(OUTSIDE, WEB1, TCP, 22, ct_state="established", ct_mark=STALE_WEB1),
            None,
            id="not-on-established",
        ),
    ],
)
def test_new_pod_flows_get_the_spec_timeouts(packet: TracePacket, timeout: str | None) -> None:
    """S-CT-3: TCP established 600 s / closing 30 s, UDP 30 s / 180 s; ICMP and GRE keep the
    kernel defaults, which already match
    (docs/nftables.md#conntrack-timeouts-and-ct-timeout-objects)."""
    got = TRACER.trace(packet).ct_timeout
    assert (got or "")[:4] == (timeout or "")
    if got is not None:
        obj = next(o for o in RULESET.ct_timeouts if o.name == got)
        assert obj.policy == (TCP_TIMEOUTS if got.startswith("tcp") else UDP_TIMEOUTS)


def test_spec_timeouts() -> None:
    assert dict(TCP_TIMEOUTS) == {
        "established": 600,
        "fin_wait": 30,
        "close_wait": 30,
        "last_ack": 30,
        "time_wait": 30,
    }
    assert dict(UDP_TIMEOUTS) == {"unreplied": 30, "replied": 180}


DEFAULT = nc.default_group()
DEFAULT_TRACER = Tracer(render(DEFAULT.policy, nc.NODE, DEFAULT.pod_interfaces))


@pytest.mark.parametrize(
    ("src", "dst", "verdict"),
    [
        pytest.param(nc.WEB1[0], nc.WEB2[0], "accept", id="members-talk-v4"),
        pytest.param(nc.WEB1[1], nc.WEB2[1], "accept", id="members-talk-v6"),
        pytest.param(OUTSIDE, nc.WEB1[0], "drop", id="outside-in-denied"),
        pytest.param("2001:db8::1", nc.WEB1[1], "drop", id="outside-in-denied-v6"),
        pytest.param(nc.WEB1[0], OUTSIDE, "accept", id="anything-out-v4"),
        pytest.param(nc.WEB1[1], "2001:db8::1", "accept", id="anything-out-v6"),
    ],
)
def test_default_group(src: str, dst: str, verdict: str) -> None:
    """S-D-1: members of the default group reach each other; everything else inbound is denied."""
    packet = TracePacket(
        ipaddress.ip_address(src), ipaddress.ip_address(dst), TCP, 80,
        iif=DEFAULT.iface(src), oif=DEFAULT.iface(dst),
    )  # fmt: skip
    assert DEFAULT_TRACER.trace(packet).verdict == verdict


STRICT = nc.strict_node()
STRICT_TRACER = Tracer(render(STRICT.policy, nc.NODE, STRICT.pod_interfaces, STRICT.options))


@pytest.mark.parametrize(
    ("src", "dport", "icmp", "verdict"),
    [
        pytest.param(NODE_IP, 8080, None, "accept", id="allowed-probe"),
        pytest.param("100.64.0.9", 8080, None, "drop", id="other-node-address-denied"),
        pytest.param(NODE_IP, 22, None, "drop", id="other-port-denied"),
        pytest.param("fe80::1", None, 136, "accept", id="nd-from-node-still-passes"),
    ],
)
def test_node_to_pod_when_not_allowed(
    src: str, dport: int | None, icmp: int | None, verdict: str
) -> None:
    """RenderOptions.allow_node_to_pod=False: node traffic goes through the pod's ingress rules."""
    v6 = icmp is not None
    dst = "fd64:5ec:0:2::2" if v6 else "100.64.2.2"
    pods = [nc.pod("ops", "p", (dst,), list(STRICT.policy.groups))]
    v6_policy = nc.policy(STRICT.policy.groups.items(), [], pods)
    rs = Tracer(render(v6_policy, nc.NODE, {}, STRICT.options)) if v6 else STRICT_TRACER
    packet = TracePacket(
        ipaddress.ip_address(src), ipaddress.ip_address(dst), ICMPV6 if v6 else TCP, dport,
        icmp_type=icmp, iif=None, oif="veth-p", ct_state="untracked" if v6 else "new",
    )  # fmt: skip
    assert rs.trace(packet).verdict == verdict


# ----------------------------------------------------------------------------- strictness


@pytest.mark.parametrize(
    "rule",
    [
        pytest.param("ip saddr 1.2.3.4 log accept", id="unknown-statement"),
        pytest.param("tcp sport 22 accept", id="unknown-field"),
        pytest.param("ip saddr 1.2.3.4/8 accept", id="host-bits-set"),
        pytest.param("accept drop", id="two-verdicts"),
        pytest.param('drop comment "x" accept', id="tokens-after-comment"),
        pytest.param("ip saddr { 1.2.3.4, 5.6.7.8 } accept", id="anonymous-set"),
        pytest.param("meta mark 1 accept", id="meta-mark"),
        pytest.param("ct mark 0xffff drop", id="ct-mark-not-8-hex-digits"),
        pytest.param("ct mark 0xFFFFFFFF drop", id="ct-mark-upper-case"),
        pytest.param("ct mark 4294967295 drop", id="ct-mark-decimal"),
    ],
)
def test_parser_rejects_shapes_the_renderer_does_not_emit(rule: str) -> None:
    with pytest.raises(ValueError):
        parse_rule(rule)


def test_tracer_rejects_a_ruleset_with_an_unmodelled_rule() -> None:
    text = RULESET.text().replace(
        "\t\tct state invalid drop\n", "\t\tct state invalid log drop\n", 1
    )
    with pytest.raises(UnsupportedTextError, match="unknown token 'log'"):
        Tracer(text)


def test_tracer_rejects_an_unmodelled_hook() -> None:
    text = RULESET.text().replace("hook output priority", "hook postrouting priority")
    with pytest.raises(UnsupportedShapeError, match="postrouting"):
        Tracer(text)


def test_tracer_rejects_a_set_of_the_wrong_type() -> None:
    text = RULESET.text().replace("ip saddr @pods4 goto", "ip saddr @pod_ifaces goto")
    with pytest.raises(UnsupportedShapeError, match="pod_ifaces"):
        trace(text, fwd(WEB1, OUTSIDE, TCP, 80))


def test_tracer_rejects_conntrack_before_conntrack() -> None:
    text = RULESET.text().replace(
        "\t\tiifname @pod_ifaces goto pod_antispoof\n",
        "\t\tct state invalid drop\n\t\tiifname @pod_ifaces goto pod_antispoof\n",
    )
    with pytest.raises(UnsupportedShapeError, match="before conntrack"):
        trace(text, fwd(WEB1, OUTSIDE, TCP, 80))


def test_trace_explains_the_path() -> None:
    result = TRACER.trace(fwd(WEB1, DB1, TCP, 5432))
    text = result.explain()
    assert text.startswith("accept")
    assert names.EGRESS_FWD in text and names.INGRESS_FWD in text and "shop/pg-from-web" in text
