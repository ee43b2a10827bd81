"""The probe daemons: long-lived flows checked from either end, failure reasons, forged
source addresses and what a receiver records."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from secgroups_lab.network import Lab, OutsideHost, PodNet, netns_unavailable
from secgroups_lab.probes import Flow, FlowOpenError, ProbeClient, ProbeError, Proto

_why = netns_unavailable()
if _why:
    pytest.skip(_why, allow_module_level=True)

pytestmark = pytest.mark.netns

T = 2.0  # probe timeout, seconds


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("proto", ["tcp", "udp", "icmp", "gre"])
@pytest.mark.parametrize("where", ["same-node", "cross-node", "outside"])
def test_long_lived_flow_checked_from_both_ends(
    lab: Lab, pods: dict[str, PodNet], proto: Proto, family: int, where: str
) -> None:
    assert lab.outside is not None
    hosts: dict[str, PodNet | OutsideHost] = {
        "same-node": pods["a2"],
        "cross-node": pods["b1"],
        "outside": lab.outside,
    }
    server_host = hosts[where]
    dst = server_host.ipv4 if family == 4 else server_host.ipv6
    client, server = ProbeClient(pods["a1"]), ProbeClient(server_host)
    flow = Flow.open(client, server, proto, dst, 8080, timeout=T)
    h = flow.handle
    assert h.src == (pods["a1"].ipv4 if family == 4 else pods["a1"].ipv6)
    assert h.dst == dst
    assert (h.sport > 0) == (proto != "gre")
    try:
        for _ in range(3):
            assert flow.check(timeout=T).ok
            if proto != "icmp":
                # The server end speaks first, on the very same flow.
                res = flow.check(from_server=True, timeout=T)
                assert res.ok, res
                assert res.peer == h.src
        if proto == "tcp":
            accepted = server.info()["accepted"]
            assert [h.src, h.sport, h.dport] in accepted
        if proto == "icmp":
            assert not flow.check(from_server=True, timeout=T).ok
    finally:
        flow.close()
    with pytest.raises(ProbeError):
        client.check(h, timeout=T)
    if proto == "tcp":
        res = server.check_peer(h, timeout=T)
        assert not res.ok


def test_many_flows_at_once(pods: dict[str, PodNet]) -> None:
    client, server = ProbeClient(pods["a1"]), ProbeClient(pods["b2"])
    dst = pods["b2"].ipv4
    with ThreadPoolExecutor(16) as pool:
        handles = list(pool.map(lambda _: client.open_flow("tcp", dst, 80, timeout=T), range(40)))
        assert len({h.sport for h in handles}) == 40
        assert all(pool.map(lambda h: client.check(h, timeout=T).ok, handles))
        assert all(pool.map(lambda h: server.check_peer(h, timeout=T).ok, handles))
        list(pool.map(client.close, handles))


def test_flow_handle_belongs_to_its_opener(pods: dict[str, PodNet]) -> None:
    a1, a2 = ProbeClient(pods["a1"]), ProbeClient(pods["a2"])
    h = a1.open_flow("udp", pods["b1"].ipv6, 80, timeout=T)
    try:
        with pytest.raises(ProbeError, match="belongs to"):
            a2.check(h)
    finally:
        a1.close(h)


def test_flow_to_a_deleted_pod_fails(lab: Lab, pods: dict[str, PodNet]) -> None:
    gone = lab.add_pod(2, "flows", "gone")
    client = ProbeClient(pods["a1"])
    tcp = client.open_flow("tcp", gone.ipv4, 443, timeout=T)
    udp = client.open_flow("udp", gone.ipv6, 443, timeout=T)
    lab.delete_pod(gone)
    try:
        assert not client.check(tcp, timeout=0.5).ok
        assert not client.check(udp, timeout=0.5).ok
    finally:
        client.close(tcp)
        client.close(udp)


def test_failure_reasons(lab: Lab, pods: dict[str, PodNet]) -> None:
    c = ProbeClient(pods["a1"])
    b1 = pods["b1"]
    for addr in b1.ips:
        # Port 9 is not served: TCP gets a RST, UDP an ICMP port unreachable.
        assert c.probe("tcp", addr, 9, timeout=T).reason == "refused"
        assert c.probe("udp", addr, 9, timeout=T).reason == "refused"
    with pytest.raises(FlowOpenError) as err:
        c.open_flow("tcp", b1.ipv4, 9, timeout=T)
    assert err.value.reason == "refused"
    # An unassigned address of node 2's pod CIDR: node 2 has no route for it.
    for addr in ("100.64.2.200", "fd64:5ec:0:2::c8"):
        res = c.probe("icmp", addr, timeout=1.0)
        assert not res.ok and res.reason, res


def test_receiver_records_the_source_it_saw(pods: dict[str, PodNet]) -> None:
    a1, b2 = ProbeClient(pods["a1"]), ProbeClient(pods["b2"])
    for proto in ("tcp", "udp", "icmp", "gre"):
        for addr, src in zip(pods["b2"].ips, pods["a1"].ips, strict=True):
            assert a1.probe(proto, addr, 3306, timeout=T).ok
            last = [s for s in b2.seen() if s.proto == proto and s.dst == addr][-1]
            assert (last.kind, last.src) == ("Q", src)


@pytest.mark.parametrize("proto", ["udp", "icmp"])
@pytest.mark.parametrize(
    ("forged", "target"),
    [
        ("100.64.1.99", "outside4"),  # an unassigned address of the pod's own node CIDR
        ("100.64.2.3", "b1-4"),  # another pod's address
        ("fd64:5ec:0:1::63", "outside6"),
        ("fd64:5ec:0:2::3", "b1-6"),
    ],
)
def test_forged_source_is_sent_and_seen(
    lab: Lab, pods: dict[str, PodNet], proto: str, forged: str, target: str
) -> None:
    """Without policy the lab delivers forged packets (rp_filter is off in lab netns), and the
    receiver records the forged source, not the sender's own address."""
    assert lab.outside is not None
    host = lab.outside if target.startswith("outside") else pods["b1"]
    dst = host.ipv4 if target.endswith("4") else host.ipv6
    sender = ProbeClient(pods["a1"])
    token = sender.forge("udp" if proto == "udp" else "icmp", forged, dst, 5432)
    seen = ProbeClient(host).wait_seen(token, timeout=T)
    assert [(s.kind, s.proto, s.src, s.dst) for s in seen] == [("F", proto, forged, dst)]
    assert forged not in pods["a1"].ips
