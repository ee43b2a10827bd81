"""Set and map elements: typed key parts (addresses, CIDRs, ports, interface names, marks).

Role: the values that fill ``objects.Set`` and ``objects.Map``; per-pod state and
remote-group members are elements, so a node's ruleset is mostly these (120k of
121k items in the reference node of docs/performance.md). An :class:`Element` computes its
text and sort key once, because sets of 6,000 members are serialised, sorted and
compared on every sync and ``ipaddress`` objects are slow to format; elements are
equal when their texts are. :func:`canonical_elements` sorts them and rejects
type mismatches, duplicate keys and overlapping intervals before nft would.

Neighbours: ``objects`` (sets and maps), ``statements`` (verdicts as map values),
``rendering`` (builds elements).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from secgroups.nft.statements import Verdict, address_text
from secgroups.ports import PortRange


class DataType(StrEnum):
    IPV4_ADDR = "ipv4_addr"
    IPV6_ADDR = "ipv6_addr"
    INET_SERVICE = "inet_service"
    IFNAME = "ifname"
    MARK = "mark"
    VERDICT = "verdict"


@dataclass(frozen=True, slots=True, order=True)
class Ifname:
    """A network interface name, as a set key (quoted in nft text)."""

    name: str

    def __post_init__(self) -> None:
        # IFNAMSIZ is 16 with the NUL; quotes/backslashes/spaces would break the nft string.
        if not (0 < len(self.name) <= 15) or any(c in self.name for c in ' "\\/:*\t\n'):
            raise ValueError(f"invalid interface name {self.name!r}")

    def __str__(self) -> str:
        return f'"{self.name}"'


@dataclass(frozen=True, slots=True, order=True)
class Mark:
    """A 32-bit conntrack mark value (an epoch stamp)."""

    value: int

    def __post_init__(self) -> None:
        if not 0 <= self.value <= 0xFFFFFFFF:
            raise ValueError(f"mark {self.value} is not 32-bit")

    def __str__(self) -> str:
        return f"0x{self.value:08x}"


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
KeyPart = IPAddress | IPNetwork | PortRange | Ifname | Mark
MapValue = Mark | Verdict


_V4A, _V6A = ipaddress.IPv4Address, ipaddress.IPv6Address
_V4N, _V6N = ipaddress.IPv4Network, ipaddress.IPv6Network
SortKey = tuple[tuple[int, int] | str, ...]


def _ipv4_text(n: int) -> str:
    # 10x faster than str(IPv4Address): sets of 6,000 members are formatted on every render.
    return f"{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


def _part_text(part: KeyPart) -> str:
    kind = type(part)
    if kind is _V4A:
        return _ipv4_text(int(part))  # type: ignore[arg-type]
    if kind is _V4N or kind is _V6N:
        return address_text(part)  # type: ignore[arg-type]
    return str(part)


def _part_sort_key(part: KeyPart) -> tuple[int, int] | str:
    kind = type(part)
    if kind is _V4A or kind is _V6A:
        return (int(part), part.max_prefixlen)  # type: ignore[arg-type,union-attr]
    if kind is _V4N or kind is _V6N:
        return (int(part.network_address), part.prefixlen)  # type: ignore[union-attr]
    if isinstance(part, PortRange):
        return (part.lo, part.hi)
    if isinstance(part, Mark):
        return (part.value, 0)
    return str(part)


def _allowed(dtype: DataType, interval: bool) -> tuple[type, ...]:
    """The Python types a key part of ``dtype`` may have (hash sets hold addresses, not CIDRs)."""
    return {
        DataType.IPV4_ADDR: (_V4N,) if interval else (_V4A,),
        DataType.IPV6_ADDR: (_V6N,) if interval else (_V6A,),
        DataType.INET_SERVICE: (PortRange,),
        DataType.IFNAME: (Ifname,),
        DataType.MARK: (Mark,),
    }.get(dtype, ())


@dataclass(frozen=True, slots=True, eq=False)
class Element:
    """A set element (``key``) or map element (``key : value``); keys may be concatenations.

    Its text and sort key are computed once: sets of 6,000 members are serialised,
    sorted and compared on every sync, and ``ipaddress`` objects are slow to format.
    Two elements are equal when their texts are (the text is canonical).
    """

    key: tuple[KeyPart, ...]
    value: MapValue | None = None
    _key_text: str = field(init=False, repr=False)
    _text: str = field(init=False, repr=False)
    _sort: SortKey = field(init=False, repr=False)

    def __post_init__(self) -> None:
        key = self.key
        if len(key) == 1:
            key_text = _part_text(key[0])
            sort: SortKey = (_part_sort_key(key[0]),)
        else:
            key_text = " . ".join([_part_text(p) for p in key])
            sort = tuple([_part_sort_key(p) for p in key])
        value = self.value
        if value is None:
            text = key_text
        else:
            text = f"{key_text} : {value.text() if isinstance(value, Verdict) else value}"
        object.__setattr__(self, "_key_text", key_text)
        object.__setattr__(self, "_text", text)
        object.__setattr__(self, "_sort", sort)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Element) and self._text == other._text

    def __hash__(self) -> int:
        return hash(self._text)

    def key_text(self) -> str:
        return self._key_text

    def text(self) -> str:
        return self._text

    def sort_key(self) -> SortKey:
        return self._sort


def element(*key: KeyPart, value: MapValue | None = None) -> Element:
    return Element(tuple(key), value)


def canonical_elements(
    name: str, key: tuple[DataType, ...], interval: bool, elements: Iterable[Element]
) -> tuple[Element, ...]:
    """Sort elements, check their types, reject duplicate keys and overlapping intervals."""
    out = sorted(elements, key=Element.sort_key)
    allowed = [_allowed(t, interval) for t in key]
    if len(key) == 1 and not interval and key[0] is not DataType.INET_SERVICE:
        # Fast path for the big hash sets (member IPs): same checks, no per-element branching.
        ok = allowed[0]
        if all(len(el.key) == 1 and type(el.key[0]) in ok for el in out):
            texts = [el._key_text for el in out]
            if len(set(texts)) == len(texts):
                return tuple(out)
    prev_end = -1
    prev_key = None
    for el in out:
        parts = el.key
        if len(parts) != len(key) or not all(
            type(p) in ok for p, ok in zip(parts, allowed, strict=True)
        ):
            raise ValueError(f"element {el.text()} does not fit {name} ({' . '.join(key)})")
        if el._key_text == prev_key:
            raise ValueError(f"duplicate element {el.key_text()} in {name}")
        prev_key = el._key_text
        if interval:
            first = parts[0]
            if isinstance(first, PortRange):
                start, end = first.lo, first.hi
            elif isinstance(first, _V4N | _V6N):
                start = int(first.network_address)
                end = start + (1 << (first.max_prefixlen - first.prefixlen)) - 1
            else:  # pragma: no cover - the type check rules this out
                raise ValueError(f"not an interval: {el.text()}")
            if start <= prev_end:
                raise ValueError(f"overlapping interval {el.key_text()} in {name}")
            prev_end = end
        elif key == (DataType.INET_SERVICE,) and not all(
            p.lo == p.hi for p in parts if isinstance(p, PortRange)
        ):
            raise ValueError(
                f"element {el.text()} does not fit {name}: a range needs an interval set"
            )
    return tuple(out)
