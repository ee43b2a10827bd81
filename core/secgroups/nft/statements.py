"""Typed parts of an nft rule (matches, statements, verdicts) and the :class:`Rule` that joins them.

Role: the only place where nft rule text is spelled. Each part is a small frozen
value with one serialiser (``text()``) and the names it references (``refs()``),
so ``objects.Ruleset`` can reject dangling ``@set`` / ``jump`` references the way
knftables' fake does. Nothing outside ``secgroups.nft`` builds rule strings.

Neighbours: ``objects`` (chains, sets and maps that hold rules), ``rendering``
(builds rules from compiled policy), ``tracing`` (parses the text back with its
own strict grammar, so a part whose text drifts from its meaning fails a test).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from secgroups.ports import PortRange

Family = Literal[4, 6]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Our own names: lower-case identifiers. nft's scanner also takes '-', '.' and '/',
# but keywords (`fwd`, `ingress`, ...) are rejected in some positions (a chain named
# `fwd` fails to parse: docs/nftables.md#what-nft-106-parses-and-rejects), so every
# name we make has a prefix or
# an underscore that no keyword has. The kernel takes 255 characters (NFT_NAME_MAXLEN 256
# with the NUL; 256 fail with ERANGE, nft 1.0.6 refuses more than 256 itself); we keep to
# 128: room for the 128-bit digests of ``names`` and the dispatch suffixes after them.
NAME_PATTERN = r"[a-z][a-z0-9_]{0,127}"
_NAME_RE = re.compile(NAME_PATTERN)

# nft comments are limited to 128 bytes; quotes and backslashes would end the string.
COMMENT_MAX = 128
_COMMENT_RE = re.compile(r'[^"\\\n\r\t]{1,128}')


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid object name of ours, else raise ValueError."""
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"invalid nft object name {name!r} (want {NAME_PATTERN})")
    return name


def check_comment(comment: str) -> str:
    if not _COMMENT_RE.fullmatch(comment) or len(comment.encode()) > COMMENT_MAX:
        raise ValueError(f"invalid nft comment {comment!r} (1-128 bytes, no quotes)")
    return comment


def ip_keyword(family: Family) -> str:
    """``ip`` or ``ip6``: the payload keyword of a family."""
    return "ip" if family == 4 else "ip6"


def nfproto(family: Family) -> str:
    return "ipv4" if family == 4 else "ipv6"


def address_text(net: IPNetwork) -> str:
    """A network as nft writes it: bare address for a host route, else CIDR."""
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


class RefKind(StrEnum):
    SET = "set"  # a set or a map (they share one namespace in nft)
    CHAIN = "chain"
    CT_TIMEOUT = "ct timeout"


@dataclass(frozen=True, slots=True, order=True)
class Ref:
    """A by-name reference from a rule or element to another object of the table."""

    kind: RefKind
    name: str


class L4Proto(StrEnum):
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"
    ICMPV6 = "ipv6-icmp"
    GRE = "gre"


class AddrField(StrEnum):
    SADDR = "saddr"
    DADDR = "daddr"


class Iface(StrEnum):
    IIF = "iifname"
    OIF = "oifname"


class CtState(StrEnum):
    """Conntrack states, in nft's bit order (which is also its listing order)."""

    INVALID = "invalid"
    ESTABLISHED = "established"
    RELATED = "related"
    NEW = "new"
    UNTRACKED = "untracked"


_CT_ORDER = {s: i for i, s in enumerate(CtState)}


class CtDir(StrEnum):
    ORIGINAL = "original"
    REPLY = "reply"


class VerdictKind(StrEnum):
    ACCEPT = "accept"
    DROP = "drop"
    RETURN = "return"
    JUMP = "jump"
    GOTO = "goto"


@dataclass(frozen=True, slots=True)
class SetRef:
    """``@name``: a named set or map used in a match or lookup."""

    name: str

    def __post_init__(self) -> None:
        check_name(self.name)

    def text(self) -> str:
        return f"@{self.name}"


# ----------------------------------------------------------------------------- matches


@dataclass(frozen=True, slots=True)
class MetaNfproto:
    """``meta nfproto ipv4``: pins a rule to one family when nothing else does."""

    family: Family

    def text(self) -> str:
        return f"meta nfproto {nfproto(self.family)}"

    def refs(self) -> tuple[Ref, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class MetaL4proto:
    proto: L4Proto

    def text(self) -> str:
        return f"meta l4proto {self.proto}"

    def refs(self) -> tuple[Ref, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class AddrMatch:
    """``ip saddr 192.0.2.0/24`` or ``ip6 daddr @rg_x_6`` (``!=`` when negated)."""

    family: Family
    field: AddrField
    value: IPNetwork | SetRef
    negate: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.value, SetRef) and self.value.version != self.family:
            raise ValueError(f"{self.value} is not an IPv{self.family} network")

    def text(self) -> str:
        op = "!= " if self.negate else ""
        val = self.value.text() if isinstance(self.value, SetRef) else address_text(self.value)
        return f"{ip_keyword(self.family)} {self.field} {op}{val}"

    def refs(self) -> tuple[Ref, ...]:
        return (Ref(RefKind.SET, self.value.name),) if isinstance(self.value, SetRef) else ()


@dataclass(frozen=True, slots=True)
class PortMatch:
    """``tcp dport 22``, ``udp dport 8000-8080`` or ``tcp dport @ps_x`` (implies the protocol)."""

    proto: L4Proto
    ports: PortRange | SetRef

    def __post_init__(self) -> None:
        if self.proto not in (L4Proto.TCP, L4Proto.UDP):
            raise ValueError(f"ports only for tcp/udp, not {self.proto}")

    def text(self) -> str:
        val = self.ports.text() if isinstance(self.ports, SetRef) else str(self.ports)
        return f"{self.proto} dport {val}"

    def refs(self) -> tuple[Ref, ...]:
        return (Ref(RefKind.SET, self.ports.name),) if isinstance(self.ports, SetRef) else ()


@dataclass(frozen=True, slots=True)
class IcmpMatch:
    """``icmp type 8 icmp code 0`` / ``icmpv6 type 128`` (implies the ICMP protocol)."""

    family: Family
    type: int | None
    code: int | None = None

    def __post_init__(self) -> None:
        if self.type is None and self.code is None:
            raise ValueError("IcmpMatch needs a type or a code")

    def text(self) -> str:
        kw = "icmp" if self.family == 4 else "icmpv6"
        out = [] if self.type is None else [f"{kw} type {self.type}"]
        if self.code is not None:
            out.append(f"{kw} code {self.code}")
        return " ".join(out)

    def refs(self) -> tuple[Ref, ...]:
        return ()


# ICMPv6 types that static chains name (the tracer maps them back to numbers).
ICMPV6_NAMES: dict[str, int] = {
    "mld-listener-query": 130,
    "mld-listener-report": 131,
    "mld-listener-done": 132,
    "nd-router-solicit": 133,
    "nd-router-advert": 134,
    "nd-neighbor-solicit": 135,
    "nd-neighbor-advert": 136,
    "nd-redirect": 137,
    "mld2-listener-report": 143,
}


@dataclass(frozen=True, slots=True)
class Icmpv6TypeIn:
    """``icmpv6 type { nd-neighbor-solicit, ... }``: for the static ND/MLD rules only.

    An anonymous set (docs/nftables.md#anonymous-sets-in-rules-load-30-times-slower):
    harmless in a handful of static rules, 30x slower to load when thousands of compiled
    rules carry one.
    """

    types: tuple[str, ...]

    def __post_init__(self) -> None:
        unknown = [t for t in self.types if t not in ICMPV6_NAMES]
        if unknown or not self.types:
            raise ValueError(f"unknown ICMPv6 type names {unknown}")

    def text(self) -> str:
        return "icmpv6 type { " + ", ".join(self.types) + " }"

    def refs(self) -> tuple[Ref, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class HopLimit:
    """``ip6 hoplimit 255``: ND packets must come from the link itself (RFC 4861 §7.1)."""

    value: int

    def text(self) -> str:
        return f"ip6 hoplimit {self.value}"

    def refs(self) -> tuple[Ref, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class CtStateMatch:
    """``ct state established,related`` or ``ct state != new``."""

    states: frozenset[CtState]
    negate: bool = False

    def text(self) -> str:
        names = ",".join(s.value for s in sorted(self.states, key=lambda s: _CT_ORDER[s]))
        return f"ct state {'!= ' if self.negate else ''}{names}"

    def refs(self) -> tuple[Ref, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class CtDirectionMatch:
    direction: CtDir

    def text(self) -> str:
        return f"ct direction {self.direction}"

    def refs(self) -> tuple[Ref, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class CtMarkMatch:
    """``ct mark 0xffffffff``: the flow carries exactly this mark (the reply-path tombstone)."""

    mark: int

    def __post_init__(self) -> None:
        if not 0 <= self.mark <= 0xFFFFFFFF:
            raise ValueError(f"ct mark {self.mark} is not a 32-bit value")

    def text(self) -> str:
        return f"ct mark {self.mark:#010x}"

    def refs(self) -> tuple[Ref, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class TcpNotSyn:
    """``tcp flags & (fin|syn|rst|ack) != syn``: a TCP packet that cannot open a connection.

    With ``ct state new`` it is the guard against conntrack's mid-stream pickup
    (``nf_conntrack_tcp_loose``), which would otherwise flip a re-created flow's
    direction (docs/nftables.md#a-deleted-tcp-entry-comes-back-with-its-direction-flipped).
    nft lists it as
    ``tcp flags != syn / fin,syn,rst,ack``.
    """

    def text(self) -> str:
        return "tcp flags & (fin|syn|rst|ack) != syn"

    def refs(self) -> tuple[Ref, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class IfaceInSet:
    """``iifname != @pod_ifaces``."""

    iface: Iface
    set: SetRef
    negate: bool = False

    def text(self) -> str:
        return f"{self.iface} {'!= ' if self.negate else ''}{self.set.text()}"

    def refs(self) -> tuple[Ref, ...]:
        return (Ref(RefKind.SET, self.set.name),)


@dataclass(frozen=True, slots=True)
class IfaceSaddrInSet:
    """``iifname . ip saddr @pod_src4``: the anti-spoofing pair lookup."""

    family: Family
    set: SetRef

    def text(self) -> str:
        return f"iifname . {ip_keyword(self.family)} saddr {self.set.text()}"

    def refs(self) -> tuple[Ref, ...]:
        return (Ref(RefKind.SET, self.set.name),)


@dataclass(frozen=True, slots=True)
class DaddrMarkInSet:
    """``ip daddr . ct mark @in_valid4``: the epoch fast path (docs/nftables.md, "Epochs")."""

    family: Family
    set: SetRef

    def text(self) -> str:
        return f"{ip_keyword(self.family)} daddr . ct mark {self.set.text()}"

    def refs(self) -> tuple[Ref, ...]:
        return (Ref(RefKind.SET, self.set.name),)


# ----------------------------------------------------------------------------- statements


@dataclass(frozen=True, slots=True)
class Counter:
    def text(self) -> str:
        return "counter"

    def refs(self) -> tuple[Ref, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class CtMarkSetFromMap:
    """``ct mark set ip daddr map @in_epoch4``: stamp the flow with the pod's current epoch.

    If the key is missing the lookup breaks the rule (the rule does not match), so
    the renderer keeps ``in_epoch*`` keyed by exactly the IPs of ``in_disp*``.
    nft 1.0.6 rejects a masked form (``ct mark and … or … map``), see
    docs/nftables.md#what-nft-106-parses-and-rejects.
    """

    family: Family
    map: SetRef

    def text(self) -> str:
        return f"ct mark set {ip_keyword(self.family)} daddr map {self.map.text()}"

    def refs(self) -> tuple[Ref, ...]:
        return (Ref(RefKind.SET, self.map.name),)


@dataclass(frozen=True, slots=True)
class CtTimeoutSet:
    """``ct timeout set "tcp4_…"``: attach a timeout policy to a still unconfirmed entry."""

    name: str

    def __post_init__(self) -> None:
        check_name(self.name)

    def text(self) -> str:
        return f'ct timeout set "{self.name}"'

    def refs(self) -> tuple[Ref, ...]:
        return (Ref(RefKind.CT_TIMEOUT, self.name),)


# ----------------------------------------------------------------------------- terminals


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: VerdictKind
    target: str | None = None

    def __post_init__(self) -> None:
        needs_target = self.kind in (VerdictKind.JUMP, VerdictKind.GOTO)
        if needs_target != (self.target is not None):
            raise ValueError(f"verdict {self.kind} with target {self.target!r}")
        if self.target is not None:
            check_name(self.target)

    def text(self) -> str:
        return str(self.kind) if self.target is None else f"{self.kind} {self.target}"

    def refs(self) -> tuple[Ref, ...]:
        return () if self.target is None else (Ref(RefKind.CHAIN, self.target),)


ACCEPT = Verdict(VerdictKind.ACCEPT)
DROP = Verdict(VerdictKind.DROP)
RETURN = Verdict(VerdictKind.RETURN)


def jump(chain: str) -> Verdict:
    return Verdict(VerdictKind.JUMP, chain)


def goto(chain: str) -> Verdict:
    return Verdict(VerdictKind.GOTO, chain)


@dataclass(frozen=True, slots=True)
class VmapLookup:
    """``ip saddr vmap @eg_disp4``: dispatch on a pod IP; no element = the rule does not match."""

    family: Family
    field: AddrField
    map: SetRef

    def text(self) -> str:
        return f"{ip_keyword(self.family)} {self.field} vmap {self.map.text()}"

    def refs(self) -> tuple[Ref, ...]:
        return (Ref(RefKind.SET, self.map.name),)


@dataclass(frozen=True, slots=True)
class PortVmap:
    """``tcp dport vmap @gd_…``: dispatch a group chain on the destination port (``rendering``
    and ``dispatch``). The map is ``inet_service : verdict`` with ``flags interval``; a port
    with no element (or a packet of another protocol) does not match: the next rule runs."""

    proto: L4Proto
    map: SetRef

    def __post_init__(self) -> None:
        if self.proto not in (L4Proto.TCP, L4Proto.UDP):
            raise ValueError(f"port dispatch only for tcp/udp, not {self.proto}")

    def text(self) -> str:
        return f"{self.proto} dport vmap {self.map.text()}"

    def refs(self) -> tuple[Ref, ...]:
        return (Ref(RefKind.SET, self.map.name),)


Match = (
    MetaNfproto
    | MetaL4proto
    | AddrMatch
    | PortMatch
    | IcmpMatch
    | Icmpv6TypeIn
    | HopLimit
    | CtStateMatch
    | CtDirectionMatch
    | CtMarkMatch
    | TcpNotSyn
    | IfaceInSet
    | IfaceSaddrInSet
    | DaddrMarkInSet
)
Statement = Counter | CtMarkSetFromMap | CtTimeoutSet
Terminal = Verdict | VmapLookup | PortVmap
Part = Match | Statement | Terminal


@dataclass(frozen=True, slots=True)
class Rule:
    """One nft rule: parts in order (matches, then statements, then at most one terminal).

    Its text is what ``add rule`` receives and what ``nft list`` shows back (nft may
    print some parts differently, e.g. numeric ICMP types by name).
    """

    parts: tuple[Part, ...]
    comment: str | None = None

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("empty rule")
        for part in self.parts[:-1]:
            if isinstance(part, Verdict | VmapLookup | PortVmap):
                raise ValueError(f"terminal {part.text()!r} must end the rule")
        if self.comment is not None:
            check_comment(self.comment)

    @property
    def terminal(self) -> Terminal | None:
        last = self.parts[-1]
        return last if isinstance(last, Verdict | VmapLookup | PortVmap) else None

    def text(self) -> str:
        body = " ".join(p.text() for p in self.parts)
        return body if self.comment is None else f'{body} comment "{self.comment}"'

    def refs(self) -> tuple[Ref, ...]:
        return tuple(r for p in self.parts for r in p.refs())
