"""Anti-spoofing for every pod interface of the node, managed or not (docs/nftables.md,
"Anti-spoofing"), traced through the rendered table.

The node runs the ``web_and_db`` scenario (managed pods web-1, web-2, db-1) plus an
unmanaged pod ``u1`` (a namespace that is not enforced: in no compiled object) whose
routed veth the agent found in the routes, and ``bridged``: a managed pod with no host
route (a bridge CNI), whose interface is unknown.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from tests import nftcases as nc

from secgroups.nft.rendering import render
from secgroups.nft.tracing import Trace, TracePacket, Tracer

UDP, ICMPV6 = 17, 58
S = nc.web_and_db()
WEB1, WEB1_6, WEB2 = nc.WEB1[0], nc.WEB1[1], nc.WEB2[0]
U1, U1_6, U1_IF = "100.64.1.9", "fd64:5ec:0:1::9", "veth-u1"
OUTSIDE, OUTSIDE_6 = "192.0.2.99", "2001:db8::99"
ROUTES = {**S.pod_interfaces, U1: U1_IF, U1_6: U1_IF}
TRACER = Tracer(render(S.policy, nc.NODE, ROUTES, S.options))
SPOOFED = "spoofed source address"
FOREIGN = "a local pod's address from another interface"


def packet(src: str, dst: str, iif: str, *, oif: str | None = "eth0", **kw: Any) -> TracePacket:
    kw.setdefault("dport", 53)
    return TracePacket(
        ipaddress.ip_address(src), ipaddress.ip_address(dst), kw.pop("proto", UDP), iif=iif,
        oif=oif, **kw,
    )  # fmt: skip


def _check(result: Trace, verdict: str, decider: str | None) -> None:
    assert result.verdict == verdict, result.explain()
    if decider is not None:
        assert result.decided_by("pre_antispoof") == decider, result.explain()


CASES = [
    pytest.param(packet(U1, OUTSIDE, U1_IF), "accept", None, id="unmanaged-pod-own-address"),
    pytest.param(packet(U1_6, OUTSIDE_6, U1_IF), "accept", None, id="unmanaged-pod-own-ipv6"),
    pytest.param(
        packet(WEB1, OUTSIDE, U1_IF), "drop", SPOOFED, id="unmanaged-pod-forges-a-managed-pod"
    ),
    pytest.param(packet(WEB1_6, OUTSIDE_6, U1_IF), "drop", SPOOFED, id="unmanaged-pod-forges-ipv6"),
    pytest.param(
        packet(WEB1, WEB2, U1_IF, oif="veth-web-2"),
        "drop",
        SPOOFED,
        id="unmanaged-pod-forges-a-managed-pod-to-its-neighbour",
    ),
    pytest.param(
        packet("203.0.113.9", WEB1, U1_IF, oif="veth-web-1"),
        "drop",
        SPOOFED,
        id="unmanaged-pod-forges-a-trusted-remote",
    ),
    pytest.param(
        packet(U1, OUTSIDE, "veth-web-1"), "drop", SPOOFED, id="managed-pod-forges-unmanaged"
    ),
    pytest.param(
        packet(WEB1, "100.64.9.9", "eth0", oif="eth1"),
        "drop",
        FOREIGN,
        id="a-managed-pods-address-from-the-uplink",
    ),
    pytest.param(
        packet(U1, "100.64.9.9", "eth0", oif="eth1"),
        "drop",
        FOREIGN,
        id="an-unmanaged-pods-address-from-the-uplink",
    ),
    pytest.param(
        packet(WEB1, "100.64.9.9", "veth-new", oif="eth1"),
        "drop",
        FOREIGN,
        id="a-pods-address-from-an-interface-not-seen-yet",
    ),
    pytest.param(
        packet(OUTSIDE, U1, "eth0", oif=U1_IF), "accept", None, id="outside-to-unmanaged-pod"
    ),
    pytest.param(
        packet("0.0.0.0", "255.255.255.255", U1_IF, oif=None, dport=67),
        "accept",
        None,
        id="dhcp-discover-from-a-pod",
    ),
    pytest.param(
        packet("0.0.0.0", "255.255.255.255", U1_IF, oif=None, dport=53),
        "drop",
        SPOOFED,
        id="other-traffic-from-0.0.0.0",
    ),
    pytest.param(
        packet("fe80::9", "ff02::1:2", U1_IF, oif=None, dport=547, ct_state="new"),
        "accept",
        None,
        id="dhcpv6-from-a-pods-link-local-address",
    ),
    pytest.param(
        packet(
            "fe80::9",
            "ff02::1:ff00:1",
            U1_IF,
            oif=None,
            proto=ICMPV6,
            dport=None,
            icmp_type=135,
            hoplimit=255,
            ct_state="untracked",
        ),
        "accept",
        None,
        id="neighbour-solicitation-from-an-unmanaged-pod",
    ),
    pytest.param(
        packet(
            "fe80::9",
            "ff02::1",
            U1_IF,
            oif=None,
            proto=ICMPV6,
            dport=None,
            icmp_type=134,
            hoplimit=255,
            ct_state="untracked",
        ),
        "drop",
        None,
        id="router-advert-from-an-unmanaged-pod",
    ),
    pytest.param(
        TracePacket(
            ipaddress.ip_address("100.64.0.1"),
            ipaddress.ip_address(U1),
            UDP,
            53,
            iif=None,
            oif=U1_IF,
        ),
        "accept",
        None,
        id="node-to-unmanaged-pod",
    ),
]


@pytest.mark.parametrize(("pkt", "verdict", "decider"), CASES)
def test_every_pod_interface_sends_only_its_own_addresses(
    pkt: TracePacket, verdict: str, decider: str | None
) -> None:
    _check(TRACER.trace(pkt), verdict, decider)


def test_a_managed_pod_without_a_host_route_is_enforced_but_not_anti_spoofed() -> None:
    """A bridge CNI: no /32 route, so no known interface; the pod's IP still gates its
    policy, but a packet with its address is judged by the policy alone."""
    routes = {ip: name for ip, name in ROUTES.items() if ip != WEB2}
    tracer = Tracer(render(S.policy, nc.NODE, routes, S.options))
    result = tracer.trace(packet(WEB2, OUTSIDE, "br0"))
    assert result.decided_by("pre_antispoof") is None, result.explain()


def test_pod_interfaces_are_those_with_host_routes_only() -> None:
    """``interfaces.pod_routes``: an interface with a default or subnet route (an uplink,
    a tunnel, a bridge) is never a pod interface, even with a host route through it (a
    metadata server, a VIP): anti-spoofing it would drop the node's own traffic."""
    from secgroups_agent.interfaces import HostRoute, pod_routes

    routes = [
        HostRoute("100.64.1.2", "veth-a"),
        HostRoute("fd64:5ec:0:1::2", "veth-a"),
        HostRoute("100.64.1.3", "veth-b", priority=10),
        HostRoute("100.64.1.3", "veth-c", priority=5),  # the best route wins
        HostRoute("169.254.169.254", "eth0"),
    ]
    assert pod_routes(routes, {"eth0"}) == {
        "100.64.1.2": "veth-a",
        "100.64.1.3": "veth-c",
        "fd64:5ec:0:1::2": "veth-a",
    }
