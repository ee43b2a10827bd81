"""Pod IP → host-side interface, discovered from the node's routes.

The renderer needs each local pod's host-side interface (anti-spoofing pairs and the
``pod_ifaces`` gate, docs/nftables.md "Static objects"). CNIs that route pod traffic through the
host (Calico, kindnet, CNI ``ptp``, the lab's routed veths) install a /32 (IPv4) or
/128 (IPv6) route to each pod IP via its veth; that route is the source of truth here.
A pod whose route is not there yet is left out and retried when the routes change
(level-triggered): never guessed from names.

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

    def resolve(self, ips: Iterable[str]) -> dict[str, str]:
        """``ip → ifname`` for the IPs that have a host route now (others are absent)."""
        ...


@functools.lru_cache(maxsize=65536)
def canonical_ip(ip: str) -> str:
    return str(ipaddress.ip_address(ip))


def pick_interfaces(routes: Iterable[HostRoute], ips: Iterable[str]) -> dict[str, str]:
    """For each wanted IP, the interface of its best host route (lowest priority)."""
    best: dict[str, HostRoute] = {}
    for r in routes:
        cur = best.get(r.ip)
        if cur is None or (r.priority, r.ifname) < (cur.priority, cur.ifname):
            best[r.ip] = r
    out: dict[str, str] = {}
    for ip in ips:
        route = best.get(canonical_ip(ip))
        if route is not None:
            out[ip] = route.ifname
    return out


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
        self._cache: tuple[int, tuple[HostRoute, ...]] | None = None
        self._answer: tuple[int, tuple[str, ...], dict[str, str]] | None = None

    def host_routes(self) -> tuple[HostRoute, ...]:
        from pyroute2 import IPRoute  # imported here: unit tests never need netlink

        routes: list[HostRoute] = []
        with IPRoute() as ipr:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            for family, length in ((socket.AF_INET, 32), (socket.AF_INET6, 128)):
                for r in ipr.get_routes(family=family, table=self._table):
                    if r["dst_len"] != length or r["type"] != RTN_UNICAST:
                        continue
                    dst, oif = r.get_attr("RTA_DST"), r.get_attr("RTA_OIF")
                    table = r.get_attr("RTA_TABLE") or r["table"]
                    if dst is None or oif not in names or table != self._table:
                        continue
                    routes.append(
                        HostRoute(
                            canonical_ip(dst), str(names[oif]), int(r.get_attr("RTA_PRIORITY") or 0)
                        )
                    )
        return tuple(routes)

    def resolve(self, ips: Iterable[str]) -> dict[str, str]:
        wanted = tuple(ips)
        with self._lock:
            stamp = self._watcher.changes if self._watcher is not None else -1
            answer = self._answer
            if stamp >= 0 and answer is not None and answer[0] == stamp and answer[1] == wanted:
                return dict(answer[2])  # nothing changed: the hot path pays nothing here
            if self._cache is None or stamp < 0 or self._cache[0] != stamp:
                # Read the counter before dumping: a change during the dump is seen next time.
                self._cache = (stamp, self.host_routes())
            found = pick_interfaces(self._cache[1], wanted)
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


@dataclass
class FakeInterfaces:
    """``routes`` maps IPs to interface names; ``calls`` counts resolutions."""

    routes: Mapping[str, str] = field(default_factory=dict)
    calls: int = 0

    def resolve(self, ips: Iterable[str]) -> dict[str, str]:
        self.calls += 1
        known = {canonical_ip(ip): name for ip, name in self.routes.items()}
        return {ip: known[c] for ip in ips if (c := canonical_ip(ip)) in known}
