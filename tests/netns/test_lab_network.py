"""The lab network without any policy: real packets between pods, nodes and the outside.

Checks the topology the dataplane tests rely on: every protocol and family gets through,
pod traffic is routed through the node netns (``forward`` hook; node→pod through
``output``), IPv6 works without DAD waits, pods come and go while the lab runs, and lab
addresses cannot be reached from the root netns (blackhole routes).
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
import time

import pytest
from tests.labchecks import assert_root_cannot_reach

from secgroups_lab import underlay
from secgroups_lab._cmd import in_netns, run
from secgroups_lab.matrix import Address, Case, Target, cases, run_matrix
from secgroups_lab.network import Lab, PodNet, netns_unavailable, run_in
from secgroups_lab.probes import Endpoint, ProbeClient

_why = netns_unavailable()
if _why:
    pytest.skip(_why, allow_module_level=True)

pytestmark = pytest.mark.netns

PROBE_TIMEOUT = 2.0


def test_topology_addresses(lab: Lab, pods: dict[str, PodNet]) -> None:
    assert [p.node for p in (pods["a1"], pods["a2"], pods["b1"], pods["b2"])] == [1, 1, 2, 2]
    assert (pods["a1"].ipv4, pods["a1"].ipv6) == ("100.64.1.2", "fd64:5ec:0:1::2")
    assert (pods["b2"].ipv4, pods["b2"].ipv6) == ("100.64.2.3", "fd64:5ec:0:2::3")
    for p in pods.values():
        assert len(p.host_ifname) <= 15
        assert p.host_ifname == Lab.host_ifname(p.namespace, p.name)
        for a in p.ips:
            underlay.check_lab_address(a)
            net = ipaddress.ip_network(
                underlay.LAB_V6_SUPERNET if ":" in a else underlay.LAB_V4_SUPERNET
            )
            assert ipaddress.ip_address(a) in net
    # No default route in node netns, the outside host or the underlay.
    assert lab.outside is not None
    for ns in [lab.node_netns(1), lab.node_netns(2), lab.outside.netns]:
        for fam in ("-4", "-6"):
            routes = run_in(ns, ["ip", fam, "route", "show", "default"]).stdout
            assert routes.strip() == "", f"{ns} has a default route: {routes}"


def test_baseline_matrix_all_allowed(lab: Lab) -> None:
    """No policy: TCP, UDP, ICMP and GRE over IPv4 and IPv6 between all pods (same node and
    across nodes) and to and from the outside host all get through."""
    eps = lab.endpoints()
    result = run_matrix(eps, cases(ports=(22, 5432)), timeout=PROBE_TIMEOUT)
    print(result.render())
    assert result.probes == len(eps) * (len(eps) - 1) * 12
    result.assert_matches()


def test_outside_answers_on_its_whole_prefix(lab: Lab, pods: dict[str, PodNet]) -> None:
    """The outside owns 100.64.250.0/24 and fd64:5ec:0:fa::/64: any address answers, from that
    address, and the outside's own probes come from its canonical address."""
    assert lab.outside is not None
    other = Address("outside/.77", "100.64.250.77", "fd64:5ec:0:fa::77")
    result = run_matrix(
        [pods["a1"], pods["b1"]],
        cases(ports=(443,)),
        destinations=[other],
        timeout=PROBE_TIMEOUT,
    )
    result.assert_matches()
    for res in result.observed.values():
        assert res.peer in other.ipv4 + " " + other.ipv6
    out = ProbeClient(lab.outside)
    b1 = ProbeClient(pods["b1"])
    for dst, src in ((pods["b1"].ipv4, lab.outside.ipv4), (pods["b1"].ipv6, lab.outside.ipv6)):
        res = out.probe("udp", dst, 80, timeout=PROBE_TIMEOUT)
        assert res.ok, res
        seen = [s for s in b1.seen() if s.proto == "udp" and s.dst == dst]
        assert seen and seen[-1].src == src
    # An explicit source inside the outside prefix works too (for CIDR rules).
    res = out.probe("tcp", pods["a1"].ipv4, 80, src="100.64.250.99", timeout=PROBE_TIMEOUT)
    assert res.ok, res


_COUNTER = re.compile(r'counter packets (\d+) bytes \d+ comment "([a-z0-9-]+)"')


def _counters(netns: str) -> dict[str, int]:
    out = run_in(netns, ["nft", "list", "table", "inet", "labcheck"]).stdout
    return {name: int(n) for n, name in _COUNTER.findall(out)}


def test_pod_traffic_crosses_the_node_forward_hook(lab: Lab, pods: dict[str, PodNet]) -> None:
    """Pod→pod (same node, across nodes) and pod→outside go through ``forward`` in the node
    netns, node→local pod through ``output``: where the agent's table will filter."""
    a1, a2, b1 = pods["a1"], pods["a2"], pods["b1"]
    n1, n2 = lab.node_netns(1), lab.node_netns(2)
    assert lab.outside is not None
    rules = {
        "same4": f"ip saddr {a1.ipv4} ip daddr {a2.ipv4}",
        "same6": f"ip6 saddr {a1.ipv6} ip6 daddr {a2.ipv6}",
        "cross4": f"ip saddr {a1.ipv4} ip daddr {b1.ipv4}",
        "cross6": f"ip6 saddr {a1.ipv6} ip6 daddr {b1.ipv6}",
        "out4": f"ip saddr {a1.ipv4} ip daddr {lab.outside.ipv4}",
        "out6": f"ip6 saddr {a1.ipv6} ip6 daddr {lab.outside.ipv6}",
    }
    fwd = "\n".join(f'    {m} counter comment "fwd-{k}"' for k, m in rules.items())
    table = (
        "table inet labcheck {\n"
        "  chain labfwd {\n    type filter hook forward priority 0; policy accept;\n"
        f"{fwd}\n  }}\n"
        "  chain labout {\n    type filter hook output priority 0; policy accept;\n"
        f'    ip daddr {a1.ipv4} counter comment "out-node4"\n'
        f'    ip6 daddr {a1.ipv6} counter comment "out-node6"\n  }}\n'
        "}\n"
    )
    for ns in (n1, n2):
        run(in_netns(ns, ["nft", "-f", "-"]), input_text=table)
    try:
        c = ProbeClient(a1)
        for dst in (a2, b1):
            for addr in dst.ips:
                assert c.probe("udp", addr, 80, timeout=PROBE_TIMEOUT).ok
        for addr in lab.outside.ips:
            assert c.probe("icmp", addr, timeout=PROBE_TIMEOUT).ok
        node = ProbeClient(lab.node_host(1))
        for addr in a1.ips:
            assert node.probe("tcp", addr, 22, timeout=PROBE_TIMEOUT).ok
        on1, on2 = _counters(n1), _counters(n2)
        for k in rules:
            assert on1[f"fwd-{k}"] > 0, f"{k}: not seen in forward of node 1: {on1}"
        assert on2["fwd-cross4"] > 0 and on2["fwd-cross6"] > 0, on2
        assert on2["fwd-same4"] == 0, on2
        assert on1["out-node4"] > 0 and on1["out-node6"] > 0, on1
    finally:
        for ns in (n1, n2):
            run_in(ns, ["nft", "delete", "table", "inet", "labcheck"], check=False)


def test_ipv6_addresses_are_never_tentative(lab: Lab, pods: dict[str, PodNet]) -> None:
    """DAD is off on lab interfaces, so IPv6 works from the first packet."""
    pod = lab.add_pod(1, "dad", "fresh")
    try:
        for ns in (pod.netns, lab.node_netns(1)):
            addrs = run_in(ns, ["ip", "-6", "-j", "addr", "show"]).stdout
            for link in json.loads(addrs):
                for a in link.get("addr_info", []):
                    assert not a.get("tentative"), f"{ns} {link['ifname']} {a}"
        res = ProbeClient(pod).probe("tcp", pods["b1"].ipv6, 80, timeout=PROBE_TIMEOUT)
        assert res.ok, res
    finally:
        lab.delete_pod(pod)


def test_pods_come_and_go_while_the_lab_runs(lab: Lab, pods: dict[str, PodNet]) -> None:
    a1 = ProbeClient(pods["a1"])
    flow = a1.open_flow("tcp", pods["b1"].ipv4, 80, timeout=PROBE_TIMEOUT)
    added = lab.add_pods([(2, "churn", "c1"), (1, "churn", "c2")])
    c1, c2 = added
    try:
        assert c1.node == 2 and c2.node == 1
        result = run_matrix([pods["a1"], c1, c2], cases(ports=(80,)), timeout=PROBE_TIMEOUT)
        result.assert_matches()
        dead = c1
        lab.delete_pod(dead)
        assert not underlay.netns_exists(dead.netns)
        assert not underlay.link_exists(dead.host_ifname, lab.node_netns(2))
        res = a1.probe("tcp", dead.ipv4, 80, timeout=0.5)
        assert not res.ok, res
        # The pods that stayed, and the established flow, are untouched.
        assert a1.check(flow, timeout=PROBE_TIMEOUT).ok
        result = run_matrix([pods["a1"], pods["b2"], c2], cases(ports=(80,)), timeout=PROBE_TIMEOUT)
        result.assert_matches()
        # The same pod again: same deterministic names, fresh netns.
        again = lab.add_pod(2, "churn", "c1")
        assert again.netns == dead.netns and again.host_ifname == dead.host_ifname
        assert a1.probe("udp", again.ipv6, 80, timeout=PROBE_TIMEOUT).ok
        lab.delete_pod(again)
    finally:
        a1.close(flow)
        lab.delete_pods([p for p in added if p.key in lab.pods])
    assert set(lab.pods) == {"default/a1", "default/a2", "default/b1", "default/b2"}


def test_root_netns_cannot_reach_lab_addresses(lab: Lab, pods: dict[str, PodNet]) -> None:
    """While a lab is up, the root netns blackholes the lab's blocks, and no lab address of
    this network is reachable from it (only a control plane's API /30, which is not ours)."""
    assert_root_cannot_reach(lab, [pods[k] for k in sorted(pods)])


def test_probe_latency_is_reported(lab: Lab, pods: dict[str, PodNet]) -> None:
    t0 = time.monotonic()
    res = ProbeClient(pods["a1"]).probe("icmp", pods["b2"].ipv6, timeout=PROBE_TIMEOUT)
    assert res.ok and 0 < res.latency_ms <= (time.monotonic() - t0) * 1000 + 1
    assert res.peer == pods["b2"].ipv6


_TCP_ECHO_CHECK = (
    "import socket,sys\n"
    "s=socket.create_connection((sys.argv[1],80),timeout=2)\n"
    "s.sendall(b'Q abc\\n'); assert s.recv(100)==b'R abc\\n'\n"
)


def _tcp_ok(netns: str, addr: str) -> bool:
    proc = run_in(netns, [sys.executable, "-c", _TCP_ECHO_CHECK, addr], check=False, timeout=10)
    return proc.returncode == 0


def test_nodes_come_and_go_and_route_peers_follow(lab: Lab, pods: dict[str, PodNet]) -> None:
    """A netns on the underlay (like a control plane) gets routes to every node's pods, also
    to nodes added later; a deleted node takes its pods and everyone's routes to it along."""
    peer = f"{lab.prefix}-peer"
    underlay.create_netns(peer)
    try:
        underlay.attach(lab.prefix, peer, "eth0", ["100.64.254.250/24", "fd64:5ec:0:fe::fa/64"])
        lab.route_pods_from(peer)
        for addr in pods["b1"].ips:
            assert _tcp_ok(peer, addr), addr
        node = lab.add_node(pod_cidr_v4="100.64.33.0/24", pod_cidr_v6="fd64:5ec:0:33::/64")
        assert node.index == 3 and node.gateway_v4 == "100.64.33.1"
        pod = lab.add_pod(3, "late", "p")
        assert pod.ips == ("100.64.33.2", "fd64:5ec:0:33::2")
        for addr in pod.ips:
            assert _tcp_ok(peer, addr), addr
        result = run_matrix(
            [pods["a1"], pods["b2"], pod], cases(ports=(80,)), timeout=PROBE_TIMEOUT
        )
        result.assert_matches()
        lab.delete_node(3)
        assert pod.key not in lab.pods and not underlay.netns_exists(node.netns)
        for ns in (peer, lab.node_netns(1), lab.node_netns(2)):
            routes = run_in(ns, ["ip", "route", "show", "100.64.33.0/24"]).stdout
            assert routes.strip() == "", (ns, routes)
        assert ProbeClient(pods["a1"]).probe("tcp", pods["b1"].ipv4, 80, timeout=PROBE_TIMEOUT).ok
    finally:
        underlay.detach(peer, "eth0")
        underlay.delete_netns(peer)


def test_matrix_observes_drops_and_rejects(lab: Lab, pods: dict[str, PodNet]) -> None:
    """With a (test-only, stateless) nft table in node 2 that drops packets to b1 and rejects
    packets to b2, the matrix sees exactly those cells denied; the rest stays allowed."""
    b1, b2 = pods["b1"], pods["b2"]
    table = (
        "table inet labdeny {\n  chain labfwd {\n"
        "    type filter hook forward priority 0; policy accept;\n"
        f"    ip daddr {b1.ipv4} drop\n    ip6 daddr {b1.ipv6} drop\n"
        # A TCP reset, not an ICMP error: ICMP errors are rate-limited per destination.
        f"    ip daddr {b2.ipv4} meta l4proto tcp reject with tcp reset\n"
        f"    ip6 daddr {b2.ipv6} meta l4proto tcp reject with tcp reset\n"
        f"    ip daddr {b2.ipv4} reject\n    ip6 daddr {b2.ipv6} reject\n  }}\n}}\n"
    )
    n2 = lab.node_netns(2)
    run(in_netns(n2, ["nft", "-f", "-"]), input_text=table)
    try:
        eps = [pods["a1"], pods["a2"], b1, b2]

        def expected(src: Endpoint, dst: Target, _case: Case) -> bool:
            # Stateless: the answers to b1's and b2's own probes are stopped too.
            return not {src.label, dst.label} & {b1.label, b2.label}

        result = run_matrix(eps, cases(ports=(80,)), expected, timeout=1.0)
        print(result.render())
        result.assert_matches()
        tcp4 = result.cases.index(Case("tcp", 80, 4))
        a1, col_b1, col_b2 = 0, eps.index(b1), eps.index(b2)
        assert result.observed[(a1, col_b1, tcp4)].reason.startswith("timeout")
        # The TCP reset: refused at once.
        assert result.observed[(a1, col_b2, tcp4)].reason == "refused"
    finally:
        run_in(n2, ["nft", "delete", "table", "inet", "labdeny"], check=False)
