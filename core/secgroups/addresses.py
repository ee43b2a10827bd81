"""IP addresses, CIDRs and ranges as written in rules and IP address groups (S-M-4).

Parsing is strict about syntax (no leading zeros, valid prefix lengths) and lenient
about host bits (``192.0.2.1/24`` means ``192.0.2.0/24``), as cloud consoles are.
Ranges ``a-b`` are kept exact: the compiler turns them into the minimal list of
CIDRs, which nft interval sets and the evaluator both understand.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(text: str) -> IPAddress:
    """Parse one IP address; ValueError if it is not one."""
    return ipaddress.ip_address(text)


def parse_network(text: str) -> IPNetwork:
    """Parse an IP (as a /32 or /128) or a CIDR (host bits cleared); ValueError if neither."""
    if "/" in text:
        addr_text, _, length = text.partition("/")
        if not length.isdigit():
            raise ValueError(f"bad prefix length in {text!r}")
        ipaddress.ip_address(addr_text)  # reject junk before ip_network's own leniency
        return ipaddress.ip_network(text, strict=False)
    return ipaddress.ip_network(ipaddress.ip_address(text))


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
        lo, hi = ipaddress.ip_address(lo_text), ipaddress.ip_address(hi_text)
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
