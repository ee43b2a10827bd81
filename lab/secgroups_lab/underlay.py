"""The lab underlay: one bridge in its own network namespace that every lab netns plugs into.

* ``<prefix>-ul`` is a network namespace holding the bridge ``br0``; :func:`attach` makes a veth
  pair whose bridge end is enslaved to ``br0`` and whose other end is moved into a given netns
  with the given addresses. The underlay IPv4 subnet is ``100.64.254.0/24`` (the control plane
  is ``100.64.254.254``).
* The lab owns two blocks: ``100.64.0.0/12`` (100.64.0.0-100.79.255.255) and the ULA
  ``fd64:5ec::/48``; the rest of 100.64.0.0/10 is left to the host (kind's Docker networks use
  100.88.0.0/13, Tailscale-style VPNs the whole range). The root netns has a default route out
  of this machine, so while a lab exists the root netns carries ``blackhole`` routes for both
  blocks: lab traffic from the root netns can never leave the machine. More specific routes
  (the control plane's /30 veth) win. They are removed with the last lab's underlay.
* Before it installs them, :func:`check_host_routes` refuses to start a lab on a host that
  already routes part of a block (the lab would shadow those routes): only the lab's own
  blackholes and control-plane veths may be there.

Addresses: only the lab blocks and loopback; never RFC 1918.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from secgroups_lab._cmd import ip

BRIDGE = "br0"
# The blocks the lab owns and blackholes in the root netns (docs/lab.md, "Address plan").
LAB_V4_SUPERNET = "100.64.0.0/12"
LAB_V6_SUPERNET = "fd64:5ec::/48"
# The root-netns ends of the control planes' veths: /30s of this block on links named
# ``<prefix>-cp`` (secgroups_lab.controlplane); the only lab routes besides the blackholes.
ROOT_LINK_BLOCK = "100.64.255.0/24"
UNDERLAY_V4 = "100.64.254.0/24"
UNDERLAY_V4_PREFIXLEN = 24
NETNS_DIR = Path("/run/netns")
# Lab netns names end in one of these (used to tell whether any lab still exists).
LAB_NETNS_SUFFIXES = ("-ul", "-cp")
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
_FORBIDDEN_V4 = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)


def validate_prefix(prefix: str) -> str:
    """Lab prefixes are 1-8 lowercase letters/digits, so every derived name fits IFNAMSIZ."""
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"lab prefix {prefix!r} must match {_PREFIX_RE.pattern}")
    return prefix


def check_lab_address(addr: str) -> None:
    """Raise ValueError unless ``addr`` (address or address/prefixlen) is a lab address."""
    iface = ipaddress.ip_interface(addr)
    a = iface.ip
    if isinstance(a, ipaddress.IPv4Address):
        if any(a in n for n in _FORBIDDEN_V4):
            raise ValueError(f"{addr}: RFC 1918 addresses are forbidden in the lab")
        if not (a in ipaddress.ip_network(LAB_V4_SUPERNET) or a.is_loopback):
            raise ValueError(f"{addr}: lab IPv4 addresses must be in {LAB_V4_SUPERNET}")
    elif not (a in ipaddress.ip_network(LAB_V6_SUPERNET) or a.is_loopback):
        raise ValueError(f"{addr}: lab IPv6 addresses must be in {LAB_V6_SUPERNET}")


def underlay_netns(prefix: str) -> str:
    return f"{validate_prefix(prefix)}-ul"


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def netns_list() -> list[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    out = ip("netns", "list", check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def create_netns(name: str) -> None:
    """Create the netns ``name`` with ``lo`` up."""
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", netns=name)


def delete_netns(name: str) -> bool:
    """Delete the netns ``name`` (its veth ends go with it). False if it did not exist."""
    if not netns_exists(name):
        return False
    ip("netns", "del", name)
    return True


def link_exists(name: str, netns: str | None = None) -> bool:
    return bool(ip("-o", "link", "show", "dev", name, netns=netns, check=False).strip())


class HostRouteConflictError(RuntimeError):
    """The host already routes part of a lab block; the lab would shadow that route."""


def conflicting_routes(routes: Iterable[Mapping[str, object]]) -> list[str]:
    """The routes (``ip -j route show table all`` objects) that overlap a lab block and are not
    the lab's own, as ``"<dst> dev <dev>"`` strings.

    Not conflicts: the control planes' /30s inside ``ROOT_LINK_BLOCK`` on links named
    ``*-cp`` (of this or another lab, or a killed run); blackhole, unreachable and prohibit
    routes (the lab's own, an older lab's ``100.64.0.0/10``: they send nothing anywhere, so
    the lab's blackhole takes no traffic from them); default routes (they are why the
    blackholes exist). Any other route that overlaps a block is, whether inside it (a
    Docker bridge, a VPN peer) or around it (a VPN's whole 100.64.0.0/10): the blackhole
    would take that traffic from the host.
    """
    blocks = [ipaddress.ip_network(LAB_V4_SUPERNET), ipaddress.ip_network(LAB_V6_SUPERNET)]
    cp_block = ipaddress.ip_network(ROOT_LINK_BLOCK)
    out: list[str] = []
    for r in routes:
        dst = str(r.get("dst", ""))
        if dst in ("", "default"):
            continue
        try:
            net = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if net.prefixlen == 0 or not any(
            net.version == b.version and net.overlaps(b) for b in blocks
        ):
            continue
        dev = str(r.get("dev", ""))
        kind = str(r.get("type", "unicast"))
        if kind in ("blackhole", "unreachable", "prohibit"):
            continue
        if dev.endswith("-cp") and net.version == 4 and net.subnet_of(cp_block):  # type: ignore[arg-type]
            continue
        where = f" dev {dev}" if dev else f" ({kind})"
        table = r.get("table")
        out.append(f"{dst}{where}" + (f" table {table}" if table not in (None, "main") else ""))
    return sorted(set(out))


def host_routes() -> list[dict[str, object]]:
    """Every route of this netns, all tables, both families (``ip -j route show table all``)."""
    routes: list[dict[str, object]] = []
    for family in ("-4", "-6"):
        text = ip("-j", family, "route", "show", "table", "all", check=False).strip()
        if text:
            routes += json.loads(text)
    return routes


def check_host_routes() -> None:
    """Raise HostRouteConflictError (saying which routes and what to do) if this host routes part
    of a lab block; nothing is changed either way."""
    conflicts = conflicting_routes(host_routes())
    if conflicts:
        raise HostRouteConflictError(
            f"this host already routes {', '.join(conflicts)}, which overlaps the lab's "
            f"address blocks {LAB_V4_SUPERNET} and {LAB_V6_SUPERNET}: the lab blackholes "
            "those blocks and would cut that traffic off. Nothing was started. Remove or "
            'move that network (docs/lab.md, "Address plan"), then try again.'
        )


@dataclass(frozen=True)
class Underlay:
    prefix: str
    netns: str
    bridge: str
    created: bool  # True if this call created the netns


def ensure_underlay(prefix: str) -> Underlay:
    """Create ``<prefix>-ul`` with bridge ``br0`` if missing; install the root blackhole routes
    (after :func:`check_host_routes`: HostRouteConflictError if the host routes part of a block)."""
    ns = underlay_netns(prefix)
    check_host_routes()
    install_blackholes()
    created = False
    if not netns_exists(ns):
        create_netns(ns)
        created = True
    if not link_exists(BRIDGE, ns):
        ip("link", "add", BRIDGE, "type", "bridge", netns=ns)
    ip("link", "set", BRIDGE, "up", netns=ns)
    return Underlay(prefix=prefix, netns=ns, bridge=BRIDGE, created=created)


def peer_name(prefix: str, netns: str, ifname: str) -> str:
    """The bridge-side name of ``netns``'s ``ifname``: ``<netns minus prefix>-<ifname>``."""
    base = netns.removeprefix(f"{prefix}-")
    name = f"{base}-{ifname}"
    if len(name) <= 15:
        return name
    return "v" + hashlib.sha256(f"{netns}/{ifname}".encode()).hexdigest()[:12]


def attach(
    prefix: str,
    netns: str,
    ifname: str,
    addrs: Sequence[str],
    *,
    peer: str | None = None,
) -> str:
    """Plug ``netns`` into the underlay bridge by a veth named ``ifname`` in ``netns``.

    ``addrs`` are ``address/prefixlen`` strings put on ``ifname`` (IPv6 without DAD). The
    underlay must exist (:func:`ensure_underlay`). Returns the bridge-side interface name.
    """
    ul = underlay_netns(prefix)
    if not netns_exists(ul):
        raise RuntimeError(f"underlay netns {ul} does not exist; call ensure_underlay first")
    if not netns_exists(netns):
        raise RuntimeError(f"netns {netns} does not exist")
    for a in addrs:
        check_lab_address(a)
    bridge_end = peer or peer_name(prefix, netns, ifname)
    ip("link", "add", bridge_end, "type", "veth", "peer", "name", ifname, "netns", netns, netns=ul)
    ip("link", "set", bridge_end, "master", BRIDGE, "up", netns=ul)
    for a in addrs:
        extra = ["nodad"] if ipaddress.ip_interface(a).version == 6 else []
        ip("addr", "add", a, "dev", ifname, *extra, netns=netns)
    ip("link", "set", ifname, "up", netns=netns)
    return bridge_end


def detach(netns: str, ifname: str) -> None:
    """Delete ``netns``'s underlay veth (its bridge end goes with it)."""
    if netns_exists(netns) and link_exists(ifname, netns):
        ip("link", "del", ifname, netns=netns)


def other_labs(prefix: str) -> list[str]:
    """Lab namespaces (by suffix) that do not belong to ``prefix``."""
    return [
        n for n in netns_list() if n.endswith(LAB_NETNS_SUFFIXES) and not n.startswith(f"{prefix}-")
    ]


def remove_underlay(prefix: str) -> None:
    """Delete ``<prefix>-ul``; remove the blackholes unless another lab still exists."""
    delete_netns(underlay_netns(prefix))
    if not other_labs(prefix):
        remove_blackholes()


def _blackhole_cmds() -> list[tuple[str, str]]:
    return [("-4", LAB_V4_SUPERNET), ("-6", LAB_V6_SUPERNET)]


def install_blackholes() -> None:
    """``blackhole`` routes for the lab supernets in the root netns (idempotent)."""
    for family, net in _blackhole_cmds():
        ip(family, "route", "replace", "blackhole", net)


def blackholes_present() -> list[str]:
    """The lab supernets that currently have a blackhole route in the root netns."""
    present = []
    for family, net in _blackhole_cmds():
        if ip(family, "route", "show", "type", "blackhole", "exact", net, check=False).strip():
            present.append(net)
    return present


def remove_blackholes() -> None:
    for family, net in _blackhole_cmds():
        ip(family, "route", "del", "blackhole", net, check=False)
