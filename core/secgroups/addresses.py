"""IP addresses, CIDRs and ranges as written in rules and IP address groups (S-M-4).

Parsing accepts exactly what the API server's CEL ``isIP``/``isCIDR`` accept (Go's
``net/netip``, docs/semantics.md decision 12): no leading zeros in IPv4 octets or in
prefix lengths (``/024``, ``/00``), no signs, no IPv6 zones, no IPv4-mapped IPv6. It is
lenient about host bits (``192.0.2.1/24`` means ``192.0.2.0/24``), as cloud consoles
and ``netip.ParsePrefix`` are.
Ranges ``a-b`` are kept exact: the compiler turns them into the minimal list of
CIDRs, which nft interval sets and the evaluator both understand.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# Memoised (the results are immutable): a manifest of 10,000 rules parses each CIDR in
# several validators; ipaddress is slow enough for that to show in `lint`.
@functools.lru_cache(maxsize=1 << 16)
def parse_ip(text: str) -> IPAddress:
    """:func:`check_ip`, memoised (for the CIDRs of rules and address groups)."""
    return check_ip(text)


def check_ip(text: str) -> IPAddress:
    """Parse one IP address; ValueError if it is not one. Not memoised: for pod IPs,
    each seen once per pod version (a cache would hold every pod IP of the cluster).

    Stricter than :func:`ipaddress.ip_address`, as the API server's CEL ``isIP`` is:
    no IPv6 zone (``fe80::1%eth0``: meaningless off the host that wrote it) and no
    IPv4-mapped IPv6 (``::ffff:192.0.2.1``: it would silently match nothing, since
    IPv4 packets are matched by IPv4 rules).
    """
    addr = ipaddress.ip_address(text)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id is not None:
            raise ValueError(f"{text!r}: IPv6 zones are not allowed")
        if addr.ipv4_mapped is not None:
            raise ValueError(f"{text!r}: IPv4-mapped IPv6 addresses are not allowed")
    return addr


@functools.lru_cache(maxsize=1 << 16)
def parse_network(text: str) -> IPNetwork:
    """Parse an IP (as a /32 or /128) or a CIDR (host bits cleared); ValueError if neither."""
    if "/" in text:
        addr_text, _, length = text.partition("/")
        # ASCII digits without a leading zero (``/024``, ``/00``): netip.ParsePrefix rejects
        # those, so the API server does, where int() would read 24 and 0.
        if not (length.isascii() and length.isdigit()) or (len(length) > 1 and length[0] == "0"):
            raise ValueError(f"bad prefix length in {text!r}")
        parse_ip(addr_text)  # reject junk before ip_network's own leniency
        return ipaddress.ip_network(text, strict=False)
    return ipaddress.ip_network(parse_ip(text))


@dataclass(frozen=True, slots=True)
class AddressEntry:
    """One entry of an IP address group: a network, or an inclusive range of addresses."""

    first: IPAddress
    last: IPAddress

    @property
    def version(self) -> int:
        return self.first.version

    def networks(self) -> tuple[IPNetwork, ...]:
        return tuple(ipaddress.summarize_address_range(self.first, self.last))


def parse_entry(text: str) -> AddressEntry:
    """Parse ``IP``, ``CIDR`` or ``IP-IP`` (same family, low first); ValueError otherwise."""
    if "-" in text and "/" not in text:
        lo_text, _, hi_text = text.partition("-")
        lo, hi = parse_ip(lo_text), parse_ip(hi_text)
        if lo.version != hi.version:
            raise ValueError(f"range {text!r} mixes IPv4 and IPv6")
        if int(lo) > int(hi):
            raise ValueError(f"range {text!r} must be written low-high")
        return AddressEntry(lo, hi)
    net = parse_network(text)
    return AddressEntry(net.network_address, net.broadcast_address)


def collapse(networks: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """Merge overlapping and adjacent networks; IPv4 first, then IPv6, each sorted."""
    nets = list(networks)
    four = ipaddress.collapse_addresses(n for n in nets if isinstance(n, ipaddress.IPv4Network))
    six = ipaddress.collapse_addresses(n for n in nets if isinstance(n, ipaddress.IPv6Network))
    return (*sorted(four), *sorted(six))


def contains(networks: Iterable[IPNetwork], ip: IPAddress) -> bool:
    """True when ``ip`` lies in one of ``networks`` (of its own family)."""
    return any(ip.version == n.version and ip in n for n in networks)


# A host address as the compiler handles it: (version, integer value, canonical text, and
# that text as a /32 or /128 CIDR — what address sets list for a lone pod IP).
HostKey = tuple[int, int, str, str]


@functools.lru_cache(maxsize=1 << 17)
def host_key(text: str) -> HostKey:
    """Parse one pod IP into (version, value, canonical text, host CIDR); memoised.

    Pod IPs come back on every compile (each pod in several sets and in its node
    object); ``ipaddress`` parsing and printing dominated the compile profile.
    """
    # The C library's parser first (7x faster than ipaddress with :func:`address_text`'s
    # printer: a restart parses every pod IP, 0.4 s of its build at 30,000 pods). It
    # accepts what ipaddress accepts; what it refuses goes to ipaddress, which raises the
    # same ValueError as before (tests/unit/test_addresses.py compares the two).
    version = 6 if ":" in text else 4
    try:
        packed = socket.inet_pton(socket.AF_INET6 if version == 6 else socket.AF_INET, text)
    except (OSError, ValueError):  # or accepts with a zone (fe80::1%eth0)
        ip = ipaddress.ip_address(text)
        canonical, value, version = str(ip), int(ip), ip.version
    else:
        value = int.from_bytes(packed, "big")
        canonical = address_text(value, version)
    # The cache holds every pod IP: keep one string of each where the text is canonical;
    # the CIDR text interned, one string for all the sets a pod is in (it is in several).
    text = text if canonical == text else canonical
    return version, value, text, sys.intern(f"{text}/{32 if version == 4 else 128}")


def address_text(value: int, version: int) -> str:
    """The canonical text of an address given as an integer: ``str`` of ipaddress's,
    printed by the C library where the two agree — all but an IPv6 address holding an
    IPv4 one, which the C library prints dotted (``::ffff:1.2.3.4``); 5x faster."""
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
    text = socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))
    return text if "." not in text else str(ipaddress.IPv6Address(value))


def collapse_hosts(ips: Iterable[IPAddress]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Single addresses → the collapsed IPv4 and IPv6 CIDRs as text, each sorted.

    Gives what :func:`collapse` gives for the addresses as /32 and /128 networks.
    """
    return collapse_host_keys(
        (ip.version, int(ip), str(ip), f"{ip}/{ip.max_prefixlen}") for ip in ips
    )


def collapse_host_keys(hosts: Iterable[HostKey]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """:func:`collapse_hosts` over :func:`host_key` tuples, an order of magnitude faster
    than ``ipaddress.collapse_addresses``: it works on integers and reuses the text."""
    by_version: dict[int, dict[int, str]] = {4: {}, 6: {}}
    for version, value, _, cidr in hosts:
        by_version[version][value] = cidr
    return _host_cidrs(by_version[4], 4), _host_cidrs(by_version[6], 6)


def _host_cidrs(cidrs: dict[int, str], version: int) -> tuple[str, ...]:
    """Single addresses (value → its host CIDR text) → the fewest aligned CIDRs, in order:
    each run of consecutive addresses split into blocks, a lone address as its text."""
    values = sorted(cidrs)
    out: list[str] = []
    i, n = 0, len(values)
    while i < n:
        j = i
        while j + 1 < n and values[j + 1] == values[j] + 1:
            j += 1
        if i == j:
            out.append(cidrs[values[i]])
        else:
            out.extend(_blocks(values[i], values[j], version))
        i = j + 1
    return tuple(out)


@functools.lru_cache(maxsize=1 << 16)
def _entry_interval(text: str) -> tuple[int, int, int]:
    entry = parse_entry(text)
    return entry.version, int(entry.first), int(entry.last)


def collapse_entries(entries: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """IP address group entries (IPs, CIDRs, ranges) → collapsed IPv4 and IPv6 CIDRs as text.

    The same networks as :func:`collapse` over each entry's networks, computed on
    integers (a large compile has thousands of entries); ValueError for a bad entry.
    """
    by_version: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    for text in entries:
        version, lo, hi = _entry_interval(text)
        by_version[version].append((lo, hi))
    return (
        _to_cidrs(sorted(by_version[4]), 4),
        _to_cidrs(sorted(by_version[6]), 6),
    )


def _to_cidrs(intervals: Iterable[tuple[int, int]], version: int) -> tuple[str, ...]:
    """Sorted inclusive intervals → the fewest aligned CIDRs covering their union, in order."""
    out: list[str] = []
    merged: list[list[int]] = []
    for lo, hi in intervals:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    for first, last in merged:
        out.extend(_blocks(first, last, version))
    return tuple(out)


def _blocks(first: int, last: int, version: int) -> Iterator[str]:
    """[first, last] split into the fewest aligned blocks, largest first, as CIDR text."""
    bits = 32 if version == 4 else 128
    lo = first
    while lo <= last:
        size = lo & -lo if lo else 1 << bits
        while size > last - lo + 1:
            size >>= 1
        yield f"{address_text(lo, version)}/{bits - size.bit_length() + 1}"
        lo += size
