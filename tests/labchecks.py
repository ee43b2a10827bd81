"""Checks of the lab network shared by netns test modules (``tests/netns``).

:func:`assert_root_cannot_reach` is the promise of docs/lab.md ("Address plan"): while a
lab is up, the root netns blackholes the lab's blocks, so no lab address is reachable from
it and nothing sent to one can leave the machine, whatever other routes the host has
outside those blocks.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

import pytest

from secgroups_lab import underlay
from secgroups_lab._cmd import run
from secgroups_lab.network import Lab, PodNet


def root_route_kind(addr: str) -> str:
    """What the root netns' ``ip route get`` says about ``addr`` (``error: …`` if it fails)."""
    fam = "-6" if ":" in addr else "-4"
    proc = run(["ip", fam, "route", "get", addr], check=False)
    if proc.returncode != 0:
        return "error: " + proc.stderr.strip()
    return proc.stdout.strip()


def assert_root_cannot_reach(lab: Lab, pods: Sequence[PodNet]) -> None:
    """The root netns blackholes the lab blocks, and no address of ``lab`` (its ``pods``,
    the outside host, the nodes) is reachable from it; the only other routes into the
    blocks are control planes' API /30s. Routes outside the blocks are not looked at."""
    assert sorted(underlay.blackholes_present()) == sorted(
        [underlay.LAB_V4_SUPERNET, underlay.LAB_V6_SUPERNET]
    )
    assert lab.outside is not None
    addrs = [a for p in pods for a in p.ips]
    addrs += [lab.outside.ipv4, lab.outside.ipv6, lab.outside.underlay_v4, lab.outside.underlay_v6]
    for n in lab.nodes.values():
        addrs += [n.underlay_v4, n.underlay_v6, n.gateway_v4]
    api = ipaddress.IPv4Network(underlay.ROOT_LINK_BLOCK)  # the control planes' root /30s
    for addr in addrs:
        assert ipaddress.ip_address(addr) not in api
        kind = root_route_kind(addr)
        # IPv4 `route get` fails on a blackhole; IPv6 answers with the blackhole route.
        assert kind.startswith(("error", "blackhole", "unreachable", "prohibit")), (addr, kind)
    # Every root route into the lab blocks is the blackhole or an API /30.
    for fam, block in (("-4", underlay.LAB_V4_SUPERNET), ("-6", underlay.LAB_V6_SUPERNET)):
        out = run(["ip", fam, "route", "show", "root", block]).stdout
        for line in out.splitlines():
            if line.startswith(("blackhole", "unreachable", "prohibit")):
                continue
            dst = ipaddress.ip_network(line.split()[0])
            assert isinstance(dst, ipaddress.IPv4Network) and dst.subnet_of(api), line
    # Now that routing is known to be safe, a send from the root netns fails at once.
    pod = pods[0]
    for addr in (pod.ipv4, pod.ipv6):
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s, pytest.raises(OSError):
            s.sendto(b"x", (addr, 80))
