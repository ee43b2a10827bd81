"""Shadowed rules: a rule of a group that an earlier rule of the same group always beats.

Within a group the first matching rule decides (S-X-1), so a rule every one of whose
packets an earlier rule matches never decides: it is redundant when both have the same
action, dead when they differ (``kubectl secgroups lint``'s ``shadowed-rule``).

:func:`covers` is the relation, a sound approximation: when it says yes, it is so for
every packet; it may say no for a rule covered only by several earlier rules together,
or by an address set that happens to hold the right addresses today (a set's members
change live, so a set covers only itself). A CIDR that is the whole family
(``0.0.0.0/0``, ``::/0``) matches what "any" matches, and is treated as such.

:func:`shadowed` finds, for each rule, the first earlier rule that covers it. Comparing
every pair was quadratic (10,000 rules in one group: six minutes, issue 11); instead the
earlier rules are indexed by what a covering rule must have in common with the later
one — direction and family; a remote that is "any", the same set, or a CIDR containing
the later one's (found by its prefixes); the protocol, ICMP type and code, or a port
range containing the later rule's first port (a segment tree over the port space) —
so each rule is compared only with the few earlier rules that could cover it, and
:func:`covers` has the last word on each. ``bench/lint.py`` measures it.

Neighbours: ``analysis`` (the view that hands the groups' compiled rules here),
``linting`` (the findings), ``compiled`` (the rules).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from secgroups.compiled import CompiledRule, RemoteKind
from secgroups.membership import GroupKey
from secgroups.models import Direction, IPFamily, Protocol

# A network as integers: (first address, prefix length, address bits).
_Net = tuple[int, int, int]


@dataclass(frozen=True)
class Shadowing:
    """``rule`` never decides: ``by``, earlier in the same group and direction, covers it."""

    group: GroupKey
    direction: Direction
    rule: CompiledRule
    by: CompiledRule

    @property
    def same_action(self) -> bool:
        return self.rule.action is self.by.action


@functools.lru_cache(maxsize=1 << 16)
def _net(text: str) -> _Net:
    net = ipaddress.ip_network(text)
    return int(net.network_address), net.prefixlen, net.max_prefixlen


def _nets(rule: CompiledRule) -> tuple[_Net, ...]:
    return tuple(_net(c) for c in rule.remote.cidrs)


def _within(inner: _Net, outer: _Net) -> bool:
    """``inner`` is a subnet of ``outer`` (same family)."""
    (i_addr, i_len, bits), (o_addr, o_len, o_bits) = inner, outer
    return (
        bits == o_bits and o_len <= i_len and i_addr >> (bits - o_len) == o_addr >> (bits - o_len)
    )


def _is_world(rule: CompiledRule) -> bool:
    """The remote matches every address of the rule's family: any, or a /0 CIDR."""
    kind = rule.remote.kind
    return kind is RemoteKind.ANY or (
        kind is RemoteKind.CIDR and any(length == 0 for _, length, _ in _nets(rule))
    )


def _ports_cover(a: CompiledRule, b: CompiledRule) -> bool:
    if not a.ports:
        return True
    if not b.ports:
        return False
    # a's spans are merged (disjoint, not adjacent), so each of b's spans must fit in one.
    return all(any(x.lo <= y.lo and y.hi <= x.hi for x in a.ports) for y in b.ports)


def _protocol_covers(a: CompiledRule, b: CompiledRule) -> bool:
    if a.protocol is Protocol.ALL:
        return True
    if a.protocol is not b.protocol:
        return False
    if a.protocol in (Protocol.TCP, Protocol.UDP):
        return _ports_cover(a, b)
    if a.protocol is Protocol.ICMP:
        if a.icmp_type is None:
            return True
        return b.icmp_type == a.icmp_type and (a.icmp_code is None or b.icmp_code == a.icmp_code)
    return True  # GRE has no further fields


def _remote_covers(a: CompiledRule, b: CompiledRule) -> bool:
    if _is_world(a):
        return True
    ra, rb = a.remote, b.remote
    if ra.kind is RemoteKind.CIDR and rb.kind is RemoteKind.CIDR:
        nets_a = _nets(a)
        return all(any(_within(nb, na) for na in nets_a) for nb in _nets(b))
    # A set's contents change live (members come and go), so a set covers only itself;
    # a CIDR that is not the world never covers a set, whatever the set holds today.
    return ra.kind is RemoteKind.SET and rb.kind is RemoteKind.SET and ra.set == rb.set


def covers(a: CompiledRule, b: CompiledRule) -> bool:
    """Every packet ``b`` matches, ``a`` matches too (see the module docstring)."""
    return (
        a.direction is b.direction
        and a.family is b.family
        and _protocol_covers(a, b)
        and _remote_covers(a, b)
    )


# ----------------------------------------------------------------------------- the index

_PORT_BITS = 16  # ports 0-65535: the leaves of the segment tree


@dataclass
class _PortTree:
    """Rules by the port ranges they allow: each range is stored on the O(log) tree nodes
    that tile it, so the rules with a range containing port ``p`` are on the path from
    leaf ``p`` to the root. Lists grow in match order."""

    nodes: dict[int, list[tuple[int, CompiledRule]]] = field(default_factory=dict)

    def add(self, pos: int, rule: CompiledRule) -> None:
        size = 1 << _PORT_BITS
        for span in rule.ports:
            lo, hi = span.lo + size, span.hi + size + 1
            while lo < hi:
                if lo & 1:
                    self.nodes.setdefault(lo, []).append((pos, rule))
                    lo += 1
                if hi & 1:
                    hi -= 1
                    self.nodes.setdefault(hi, []).append((pos, rule))
                lo >>= 1
                hi >>= 1

    def containing(self, port: int) -> Iterator[list[tuple[int, CompiledRule]]]:
        node = port + (1 << _PORT_BITS)
        while node:
            found = self.nodes.get(node)
            if found:
                yield found
            node >>= 1


@dataclass
class _ByProtocol:
    """Earlier rules with one remote, by what a covering rule's protocol fields must be."""

    # (protocol, icmp type, icmp code) → rules: (ALL, None, None) for every protocol,
    # (P, None, None) for all of P's packets (TCP/UDP without ports, ICMP without a
    # type, GRE), (ICMP, t, None) and (ICMP, t, c) for the ICMP forms.
    whole: dict[tuple[Protocol, int | None, int | None], list[tuple[int, CompiledRule]]] = field(
        default_factory=dict
    )
    ports: dict[Protocol, _PortTree] = field(default_factory=dict)

    def add(self, pos: int, rule: CompiledRule) -> None:
        if rule.protocol in (Protocol.TCP, Protocol.UDP) and rule.ports:
            self.ports.setdefault(rule.protocol, _PortTree()).add(pos, rule)
            return
        key = (rule.protocol, rule.icmp_type, rule.icmp_code)
        self.whole.setdefault(key, []).append((pos, rule))

    def candidates(self, b: CompiledRule) -> Iterator[list[tuple[int, CompiledRule]]]:
        """Lists (each in match order) holding every earlier rule whose protocol fields
        could cover ``b``'s."""
        keys: list[tuple[Protocol, int | None, int | None]] = [(Protocol.ALL, None, None)]
        if b.protocol is not Protocol.ALL:
            keys.append((b.protocol, None, None))
        if b.protocol is Protocol.ICMP and b.icmp_type is not None:
            keys.append((Protocol.ICMP, b.icmp_type, None))
            if b.icmp_code is not None:
                keys.append((Protocol.ICMP, b.icmp_type, b.icmp_code))
        for key in keys:
            if key in self.whole:
                yield self.whole[key]
        tree = self.ports.get(b.protocol)
        if tree is not None and b.ports:
            yield from tree.containing(b.ports[0].lo)


@dataclass
class _ByRemote:
    """Earlier rules of one direction and family, by remote."""

    world: _ByProtocol = field(default_factory=_ByProtocol)
    sets: dict[str, _ByProtocol] = field(default_factory=dict)
    # A CIDR remote's networks by (prefix length, network >> host bits); the lengths
    # in use, so that a later network is looked up only at lengths that exist.
    cidrs: dict[tuple[int, int], _ByProtocol] = field(default_factory=dict)
    lengths: set[int] = field(default_factory=set)

    def add(self, pos: int, rule: CompiledRule) -> None:
        if _is_world(rule):
            self.world.add(pos, rule)
        elif rule.remote.kind is RemoteKind.SET:
            self.sets.setdefault(rule.remote.set or "", _ByProtocol()).add(pos, rule)
        else:
            for addr, length, bits in set(_nets(rule)):
                self.lengths.add(length)
                key = (length, addr >> (bits - length))
                self.cidrs.setdefault(key, _ByProtocol()).add(pos, rule)

    def candidates(self, b: CompiledRule) -> Iterator[_ByProtocol]:
        yield self.world
        if _is_world(b):
            return
        if b.remote.kind is RemoteKind.SET:
            found = self.sets.get(b.remote.set or "")
            if found is not None:
                yield found
            return
        # Every earlier CIDR rule covering b contains b's first network, so it is filed
        # under one of that network's prefixes.
        addr, length, bits = _nets(b)[0]
        for shorter in sorted(x for x in self.lengths if x <= length):
            found = self.cidrs.get((shorter, addr >> (bits - shorter)))
            if found is not None:
                yield found


def first_covers(rules: Sequence[CompiledRule]) -> list[tuple[CompiledRule, CompiledRule]]:
    """For each rule (in match order) that an earlier one covers: (rule, first cover)."""
    index: dict[tuple[Direction, IPFamily], _ByRemote] = {}
    out: list[tuple[CompiledRule, CompiledRule]] = []
    for pos, rule in enumerate(rules):
        by_remote = index.setdefault((rule.direction, rule.family), _ByRemote())
        best: tuple[int, CompiledRule] | None = None
        for by_protocol in by_remote.candidates(rule):
            for found in by_protocol.candidates(rule):
                hit = _first(found, rule, best[0] if best is not None else pos)
                if hit is not None:
                    best = hit
        if best is not None:
            out.append((rule, best[1]))
        by_remote.add(pos, rule)
    return out


def _first(
    found: Iterable[tuple[int, CompiledRule]], rule: CompiledRule, before: int
) -> tuple[int, CompiledRule] | None:
    """The first of ``found`` (in match order, all before ``rule``) that covers ``rule``
    and comes before position ``before``."""
    for pos, earlier in found:
        if pos >= before:
            return None
        if covers(earlier, rule):
            return pos, earlier
    return None


def shadowed(group: GroupKey, rules: Sequence[CompiledRule]) -> tuple[Shadowing, ...]:
    """Rules of one group (in match order) that an earlier rule of the group covers, each
    reported once against the first rule that covers it."""
    return tuple(Shadowing(group, r.direction, r, by) for r, by in first_covers(rules))
