"""Pod IP → host-side interface, discovered from the node's routes.

The renderer needs the host-side interface of every pod on the node, managed or not
(anti-spoofing: ``pod_ifaces``, ``pod_src4/6``, ``pod_addrs4/6``; docs/nftables.md,
"Anti-spoofing"). CNIs that route pod traffic through the host (Calico, kindnet, CNI
``ptp``, the lab's routed veths) install a /32 (IPv4) or /128 (IPv6) route to each pod IP
via its veth; those routes are the source of truth here. A **pod interface** is one that
carries host routes and no other route of the main table (IPv6 link-local ``fe80::/64``
aside): an uplink with a default or subnet route, a tunnel or a bridge with a pod CIDR
is never one, even if a host route (a metadata server, a VIP) goes through it. A pod whose
route is not there yet is left out and retried when the routes change (level-triggered):
never guessed from names.

* :class:`RouteInterfaces` dumps routes and links with pyroute2 ``IPRoute`` in the current
  network namespace (the agent runs with hostNetwork, or inside a lab node netns); the
  dump is cached until :class:`RouteWatcher` sees a route or link change;
* :class:`RouteWatcher` is a raw rtnetlink socket subscribed to link and route groups,
  read from the asyncio loop; any message bumps a counter and wakes the sync loop;
* :class:`FakeInterfaces` maps IPs to names from a dict, for unit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

MAIN_TABLE = 254
RTN_UNICAST = 1
_RTMGRP_LINK = 0x1
_RTMGRP_IPV4_ROUTE = 0x40
_RTMGRP_IPV6_ROUTE = 0x400
_NETLINK_ROUTE = 0


@dataclass(frozen=True)
class HostRoute:
    """A host route to one address through one interface (our dataclass, not pyroute2's)."""

    ip: str  # canonical text
    ifname: str
    priority: int = 0


class InterfaceResolver(Protocol):
    """Finds the host-side interface of pod IPs."""

    def routed(self) -> dict[str, str]:
        """``ip → ifname`` of every host route through a pod interface (canonical IPs)."""
        ...


@functools.lru_cache(maxsize=65536)
def canonical_ip(ip: str) -> str:
    return str(ipaddress.ip_address(ip))


def pick_interfaces(routes: Iterable[HostRoute], ips: Iterable[str]) -> dict[str, str]:
    """For each wanted IP, the interface of its best host route (lowest priority)."""
    best = _best(routes)
    out: dict[str, str] = {}
    for ip in ips:
        route = best.get(canonical_ip(ip))
        if route is not None:
            out[ip] = route.ifname
    return out


def pod_routes(routes: Iterable[HostRoute], infrastructure: Iterable[str]) -> dict[str, str]:
    """``ip → ifname`` of the best host route of every IP whose interface is a pod
    interface: not one of ``infrastructure`` (interfaces with other routes)."""
    skip = set(infrastructure)
    best = _best(r for r in routes if r.ifname not in skip)
    return {ip: r.ifname for ip, r in sorted(best.items())}


def _best(routes: Iterable[HostRoute]) -> dict[str, HostRoute]:
    best: dict[str, HostRoute] = {}
    for r in routes:
        cur = best.get(r.ip)
        if cur is None or (r.priority, r.ifname) < (cur.priority, cur.ifname):
            best[r.ip] = r
    return best


class RouteInterfaces:
    """Host routes from the kernel (pyroute2), cached per :class:`RouteWatcher` change count.

    Only unicast routes in the main table whose destination is a single address and that
    leave through one interface are considered. Thread-safe: the sync loop calls it from a
    worker thread.
    """

    def __init__(self, watcher: RouteWatcher | None = None, table: int = MAIN_TABLE) -> None:
        self._watcher = watcher
        self._table = table
        self._lock = threading.Lock()
        self._cache: tuple[int, tuple[HostRoute, ...], frozenset[str]] | None = None
        self._answer: tuple[int, tuple[str, ...], dict[str, str]] | None = None
        self._routed: tuple[int, dict[str, str]] | None = None

    def host_routes(self) -> tuple[HostRoute, ...]:
        return self.dump()[0]

    def dump(self) -> tuple[tuple[HostRoute, ...], frozenset[str]]:
        """Host routes, and the interfaces that carry any other route of the table."""
        from pyroute2 import IPRoute  # imported here: unit tests never need netlink

        routes: list[HostRoute] = []
        other: set[str] = set()
        with IPRoute() as ipr:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            for family, length in ((socket.AF_INET, 32), (socket.AF_INET6, 128)):
                for r in ipr.get_routes(family=family, table=self._table):
                    table = r.get_attr("RTA_TABLE") or r["table"]
                    if table != self._table:
                        continue
                    dst, oif = r.get_attr("RTA_DST"), r.get_attr("RTA_OIF")
                    ifname = names.get(oif)
                    for hop in r.get_attr("RTA_MULTIPATH") or ():  # ECMP: every hop's device
                        if (name := names.get(hop["oif"])) is not None:
                            other.add(str(name))
                    if ifname is None:
                        continue
                    if r["dst_len"] != length or r["type"] != RTN_UNICAST or dst is None:
                        if not (family == socket.AF_INET6 and _link_local(dst, r["dst_len"])):
                            other.add(str(ifname))
                        continue
                    priority = int(r.get_attr("RTA_PRIORITY") or 0)
                    routes.append(HostRoute(canonical_ip(dst), str(ifname), priority))
        return tuple(routes), frozenset(other)

    def _dumped(self, stamp: int) -> tuple[tuple[HostRoute, ...], frozenset[str]]:
        # Read the counter before dumping: a change during the dump is seen next time.
        if self._cache is None or stamp < 0 or self._cache[0] != stamp:
            routes, other = self.dump()
            self._cache = (stamp, routes, other)
        return self._cache[1], self._cache[2]

    def routed(self) -> dict[str, str]:
        with self._lock:
            stamp = self._watcher.changes if self._watcher is not None else -1
            if stamp >= 0 and self._routed is not None and self._routed[0] == stamp:
                return dict(self._routed[1])  # nothing changed: the hot path pays nothing here
            routes, other = self._dumped(stamp)
            found = pod_routes(routes, other)
            self._routed = (stamp, found)
        return dict(found)

    def resolve(self, ips: Iterable[str]) -> dict[str, str]:
        wanted = tuple(ips)
        with self._lock:
            stamp = self._watcher.changes if self._watcher is not None else -1
            answer = self._answer
            if stamp >= 0 and answer is not None and answer[0] == stamp and answer[1] == wanted:
                return dict(answer[2])  # nothing changed: the hot path pays nothing here
            routes, _ = self._dumped(stamp)
            found = pick_interfaces(routes, wanted)
            self._answer = (stamp, wanted, found)
        return dict(found)


class RouteWatcher:
    """Counts rtnetlink link/route notifications and calls ``on_change`` for each batch.

    Runs on the asyncio loop (``loop.add_reader`` on a raw netlink socket); messages are
    not parsed — any change invalidates the route cache, and the sync loop decides.
    If the socket overflows (ENOBUFS) the change is counted all the same.
    """

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self.changes = 0
        self.on_change = on_change
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_ROUTE)
        sock.bind((0, _RTMGRP_LINK | _RTMGRP_IPV4_ROUTE | _RTMGRP_IPV6_ROUTE))
        sock.setblocking(False)
        self._sock, self._loop = sock, loop
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        got = False
        while True:
            try:
                if not sock.recv(1 << 16):
                    break
                got = True
            except BlockingIOError:
                break
            except OSError:  # ENOBUFS: we lost messages, which only means "changed"
                got = True
                break
        if got:
            self.changes += 1
            if self.on_change is not None:
                self.on_change()

    def stop(self) -> None:
        if self._sock is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        self._sock = None


def _link_local(dst: object, length: int) -> bool:
    """``fe80::/64`` (on every IPv6 interface, pods' veths included): not a sign of an uplink."""
    return length == 64 and isinstance(dst, str) and dst.lower().startswith("fe80:")


@dataclass
class FakeInterfaces:
    """``routes`` maps IPs to interface names; ``calls`` counts resolutions."""

    routes: Mapping[str, str] = field(default_factory=dict)
    calls: int = 0

    def routed(self) -> dict[str, str]:
        self.calls += 1
        return {canonical_ip(ip): name for ip, name in self.routes.items()}

    def resolve(self, ips: Iterable[str]) -> dict[str, str]:
        self.calls += 1
        known = {canonical_ip(ip): name for ip, name in self.routes.items()}
        return {ip: known[c] for ip in ips if (c := canonical_ip(ip)) in known}
