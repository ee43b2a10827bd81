"""The fail-closed placeholder (docs/cni.md) as packets: what a pending pod IP sends and receives.

Node ``n1`` of the ``web-and-db`` scenario, rendered with some IPs pending:

* ``NEW`` — a pod the CNI plugin announced and the node object does not list yet;
* ``WEB1`` — an IP the node object still gives to ``shop/web-1`` while a new pod (another
  UID) got it: the IP-reuse case. Its stale policy would allow a lot; pending, nothing.

Every packet is traced through the rendered text (``secgroups.nft.tracing``), as in
``test_nft_tracing.py``; the same packets without the placeholder show that the policy,
not the placeholder, decides once the IP leaves ``pending``.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from tests import nftcases as nc

from secgroups.nft.rendering import RenderError, RenderOptions, pending_sets, render
from secgroups.nft.tracing import TracePacket, Tracer

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
S = nc.web_and_db()
WEB1, WEB1_6, WEB2, DB1 = nc.WEB1[0], nc.WEB1[1], nc.WEB2[0], nc.DB1[0]
NEW, NEW_6 = "100.64.1.9", "fd64:5ec:0:1::9"
NODE_IP, NODE_6 = "100.64.0.1", "fd64:5ec:0:1::1"
IFACES = {**S.pod_interfaces, NEW: "veth-new", NEW_6: "veth-new"}
PENDING = (NEW, NEW_6, WEB1, WEB1_6)
PLACEHOLDER = Tracer(render(S.policy, nc.NODE, IFACES, S.options, pending=PENDING))
POLICY_ONLY = Tracer(render(S.policy, nc.NODE, IFACES, S.options))
STRICT_OPTIONS = RenderOptions(allow_node_to_pod=False)
STRICT = Tracer(render(S.policy, nc.NODE, IFACES, STRICT_OPTIONS, pending=PENDING))


def _iface(ip: str) -> str:
    return IFACES.get(ip, nc.UPLINK)


def fwd(src: str, dst: str, proto: int, dport: int | None = None, **kw: Any) -> TracePacket:
    return TracePacket(
        ipaddress.ip_address(src), ipaddress.ip_address(dst), proto, dport,
        iif=_iface(src), oif=_iface(dst), **kw,
    )  # fmt: skip


def to_node(src: str, dst: str, proto: int, dport: int | None = None, **kw: Any) -> TracePacket:
    return TracePacket(
        ipaddress.ip_address(src), ipaddress.ip_address(dst), proto, dport,
        iif=_iface(src), oif=None, **kw,
    )  # fmt: skip


def from_node(src: str, dst: str, proto: int, dport: int | None = None, **kw: Any) -> TracePacket:
    return TracePacket(
        ipaddress.ip_address(src), ipaddress.ip_address(dst), proto, dport,
        iif=None, oif=_iface(dst), **kw,
    )  # fmt: skip


CLOSED = [
    # A new pod's first packets, to destinations any policy could allow.
    pytest.param(fwd(NEW, "192.0.2.53", UDP, 53), id="new-pod-dns-out"),
    pytest.param(fwd(NEW, DB1, TCP, 5432), id="new-pod-to-db"),
    pytest.param(fwd(NEW_6, "2001:db8::1", TCP, 443), id="new-pod-v6-out"),
    pytest.param(fwd(NEW, "203.0.113.5", ICMP, icmp_type=8), id="new-pod-ping-out"),
    # Towards it: nothing, from pods or from outside.
    pytest.param(fwd("203.0.113.9", NEW, TCP, 22), id="office-ssh-to-new-pod"),
    pytest.param(fwd(WEB2, NEW, TCP, 80), id="web2-to-new-pod"),
    # IP reuse: web-1's policy (still in the node object) would allow each of these.
    pytest.param(fwd(WEB1, DB1, TCP, 5432), id="reused-ip-stale-allowance-to-db"),
    pytest.param(fwd(WEB1, "198.51.100.77", TCP, 443), id="reused-ip-stale-all4"),
    pytest.param(fwd("203.0.113.9", WEB1, TCP, 22), id="reused-ip-stale-ssh-in"),
    pytest.param(fwd("2001:db8::7", WEB1_6, TCP, 80), id="reused-ip-stale-http6-in"),
    # Established flows of the IP's previous pod do not carry the new pod's packets.
    pytest.param(
        fwd(WEB1, DB1, TCP, 5432, ct_state="established"), id="reused-ip-old-flow-original"
    ),
    pytest.param(
        fwd(WEB1, "203.0.113.9", TCP, 40000, ct_state="established", ct_direction="reply"),
        id="reused-ip-old-flow-reply",
    ),
    pytest.param(fwd(NEW, WEB2, UDP, 53, ct_state="established"), id="new-pod-established-udp"),
    # To the node: no service of the node, no DNS on the node.
    pytest.param(to_node(NEW, NODE_IP, TCP, 10250), id="new-pod-to-kubelet"),
    pytest.param(to_node(NEW, NODE_IP, UDP, 53), id="new-pod-to-node-dns"),
    pytest.param(to_node(WEB1, NODE_IP, TCP, 22), id="reused-ip-to-node"),
    pytest.param(to_node(NEW_6, NODE_6, ICMPV6, icmp_type=128), id="new-pod-ping6-node"),
]


@pytest.mark.parametrize("packet", CLOSED)
def test_nothing_passes_to_or_from_a_pending_ip(packet: TracePacket) -> None:
    assert PLACEHOLDER.trace(packet).verdict == "drop", PLACEHOLDER.trace(packet).explain()
    assert STRICT.trace(packet).verdict == "drop", STRICT.trace(packet).explain()


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(fwd(WEB1, DB1, TCP, 5432), id="web1-to-db"),
        pytest.param(fwd("203.0.113.9", WEB1, TCP, 22), id="office-ssh-to-web1"),
        pytest.param(fwd(WEB1, "198.51.100.77", TCP, 443), id="web1-out"),
        pytest.param(fwd(WEB1, DB1, TCP, 5432, ct_state="established"), id="web1-established"),
    ],
)
def test_the_policy_decides_once_the_ip_leaves_pending(packet: TracePacket) -> None:
    """The packets the placeholder drops for the reused IP are the stale policy's to allow:
    the test above is not vacuous, and leaving ``pending`` hands the IP to its policy."""
    assert POLICY_ONLY.trace(packet).verdict == "accept", POLICY_ONLY.trace(packet).explain()


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(
            to_node(NEW_6, "ff02::1:ff00:1", ICMPV6, icmp_type=135, ct_state="untracked"),
            id="nd-neighbor-solicit",
        ),
        pytest.param(
            to_node(NEW_6, NODE_6, ICMPV6, icmp_type=136, ct_state="untracked"),
            id="nd-neighbor-advert",
        ),
        pytest.param(
            to_node(NEW_6, "ff02::16", ICMPV6, icmp_type=143, ct_state="untracked"),
            id="mld2-report",
        ),
        pytest.param(to_node(NEW, "100.64.1.1", UDP, 67), id="dhcp-request"),
        pytest.param(to_node(NEW_6, "ff02::1:2", UDP, 547), id="dhcpv6-solicit"),
    ],
)
def test_neighbour_discovery_and_dhcp_pass(packet: TracePacket) -> None:
    assert PLACEHOLDER.trace(packet).verdict == "accept", PLACEHOLDER.trace(packet).explain()
    assert STRICT.trace(packet).verdict == "accept", STRICT.trace(packet).explain()


NODE_FLOWS = [
    pytest.param(from_node(NODE_IP, NEW, TCP, 8080), id="kubelet-probe"),
    pytest.param(
        to_node(NEW, NODE_IP, TCP, 40000, ct_state="established", ct_direction="reply"),
        id="probe-answer",
    ),
    pytest.param(from_node(NODE_6, NEW_6, TCP, 8080), id="kubelet-probe-v6"),
]


@pytest.mark.parametrize("packet", NODE_FLOWS)
def test_the_node_reaches_a_pending_pod_when_it_may_reach_its_pods(packet: TracePacket) -> None:
    """allow_node_to_pod (the default): kubelet probes and their answers pass."""
    assert PLACEHOLDER.trace(packet).verdict == "accept", PLACEHOLDER.trace(packet).explain()


@pytest.mark.parametrize("packet", NODE_FLOWS)
def test_the_node_does_not_reach_a_pending_pod_when_it_may_not(packet: TracePacket) -> None:
    assert STRICT.trace(packet).verdict == "drop", STRICT.trace(packet).explain()


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(
            from_node(NODE_6, NEW_6, ICMPV6, icmp_type=135, ct_state="untracked"),
            id="nd-from-node",
        ),
        pytest.param(from_node(NODE_IP, NEW, UDP, 68), id="dhcp-offer"),
        pytest.param(from_node(NODE_6, NEW_6, UDP, 546), id="dhcpv6-advertise"),
    ],
)
def test_nd_and_dhcp_from_the_node_pass_when_the_node_may_not_reach_pods(
    packet: TracePacket,
) -> None:
    assert STRICT.trace(packet).verdict == "accept", STRICT.trace(packet).explain()


def test_other_pods_keep_their_policy() -> None:
    """The placeholder touches only pending IPs: web-2 → db keeps its allowance, and the
    office still may not reach db on a port no rule names."""
    assert PLACEHOLDER.trace(fwd(WEB2, DB1, TCP, 5432)).verdict == "accept"
    assert PLACEHOLDER.trace(fwd("203.0.113.9", DB1, TCP, 9999)).verdict == "drop"


def test_pending_sets_are_split_by_family_and_refuse_bad_input() -> None:
    four, six = pending_sets(["100.64.1.9", "fd64:5ec::9", "100.64.1.10"])
    assert (four.name, six.name) == ("pending4", "pending6")
    assert [e.text() for e in four.elements] == ["100.64.1.9", "100.64.1.10"]
    assert [e.text() for e in six.elements] == ["fd64:5ec::9"]
    with pytest.raises(RenderError, match="not an IP address"):
        pending_sets(["100.64.1.9/32"])
