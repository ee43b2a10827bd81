"""Dispatch a group chain on the packet's L4 protocol and destination port before its rules.

Role: the renderer's group chains (``g_…_in``/``_eg``) hold a group's rules in compiled
order, first match wins (S-X-1). Walked linearly, a new connection pays for every rule
in front of the one that decides (~20-50 ns each, docs/performance.md). This module
rewrites one chain so that a packet walks only the rules that *can* match its protocol
and destination port, in their original order; the verdict of every packet is unchanged.

The chain's rules split into **any-protocol** rules (``All``: no L4 match) and
**specific** rules (TCP/UDP with or without ports, ICMP/ICMPv6 with or without
type/code, GRE). Every maximal run of specific rules is a *segment*; any-protocol rules
stay where they are, inline. A segment with enough rules is dispatched:

* TCP and UDP: the port space is cut at every bound of the segment's port ranges; each
  piece gets the segment's rules of that protocol that match all of it (port rules that
  cover it, port-less rules), in order, as a **sub-chain**; one interval verdict map per
  protocol (``tcp dport vmap @…``) sends each piece to its sub-chain (``goto``). A port
  without an element (no port rule covers it, or port 0) falls through to
  ``meta l4proto tcp goto <the port-less rules>`` when there are port-less rules;
* ICMP, ICMPv6, GRE: ``meta l4proto icmp goto <the segment's ICMP rules>``;
* packets of any other protocol match no rule of the segment and skip it.

The rules in a sub-chain are the original rules without their protocol and port match
(``meta l4proto tcp``, ``tcp dport …``), which the dispatch already guarantees; ICMP
type and code matches stay. Sub-chains are deduplicated by content. A dispatched
segment is its own chain, entered with ``jump``, so that its ``goto``\\s return to the
rule after it; the last item of the group chain needs no such chain (its ``goto``\\s
return to the group list, i.e. fall through to the next group, as the linear chain).

A segment stays linear when dispatching it would not pay off: fewer than
``min_rules`` rules, or more than ``max_growth`` times its rules once spread over the
sub-chains (a rule whose ports span several pieces is copied into each).

Names are content-addressed, from the group chain's name: sub-chains and segment chains
``<group chain>_<12 hex>``, maps ``gd_<group chain without g_>_<proto>_<8 hex>``; a
changed rule gives new objects (created before the rules that use them, see
``transactions.staged_diff``) instead of new elements in a live interval map.

Neighbours: ``rendering`` (classifies the rules and calls :func:`dispatch_chain`),
``statements`` (``PortVmap``), ``tracing`` (models ``tcp dport vmap``).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from secgroups.naming import short_hash
from secgroups.nft.elements import DataType, element
from secgroups.nft.objects import Chain, Map
from secgroups.nft.statements import (
    L4Proto,
    MetaL4proto,
    PortMatch,
    PortVmap,
    Rule,
    SetRef,
    check_name,
    goto,
    jump,
)
from secgroups.ports import MAX_PORT, MIN_PORT, PortRange

# Dispatch order inside a segment: the common protocols first.
PROTO_ORDER = (L4Proto.TCP, L4Proto.UDP, L4Proto.ICMP, L4Proto.ICMPV6, L4Proto.GRE)
PORTED = (L4Proto.TCP, L4Proto.UDP)


@dataclass(frozen=True)
class Classified:
    """One nft rule of a group chain and what it requires of the packet's L4 header.

    ``proto`` None: any protocol. ``ports`` (TCP/UDP only): the destination ports the
    rule matches, None for every port. ``bare``: the rule without its protocol and port
    match (what a sub-chain holds); the rule itself for any-protocol rules.
    """

    rule: Rule
    proto: L4Proto | None = None
    ports: tuple[PortRange, ...] | None = None

    def __post_init__(self) -> None:
        if self.ports is not None and (self.proto not in PORTED or not self.ports):
            raise ValueError(f"ports for {self.proto}: {self.rule.text()}")

    @functools.cached_property
    def bare(self) -> Rule:
        if self.proto is None:
            return self.rule
        parts = tuple(p for p in self.rule.parts if not isinstance(p, MetaL4proto | PortMatch))
        return Rule(parts, self.rule.comment)


@dataclass(frozen=True)
class Limits:
    """When a segment is dispatched (``RenderOptions.dispatch``)."""

    min_rules: int = 8
    max_growth: float = 4.0


@dataclass
class Dispatched:
    """A group chain and the objects its dispatch adds (none when it stays linear)."""

    chain: Chain
    chains: list[Chain]
    maps: list[Map]


def dispatch_chain(name: str, rules: Sequence[Classified], limits: Limits | None) -> Dispatched:
    """The group chain ``name`` holding ``rules`` (in match order), dispatched where it pays.

    ``limits`` None: linear (every rule inline, as before dispatch existed).
    """
    if limits is None:
        return Dispatched(Chain(name, tuple(c.rule for c in rules)), [], [])
    out = _Builder(name, limits)
    items: list[Rule] = []
    runs = _runs(rules)
    for i, (specific, run) in enumerate(runs):
        last = i == len(runs) - 1
        head = out.segment(run) if specific else None
        if head is None:
            items.extend(c.rule for c in run)
        elif last:
            items.extend(head)
        else:
            items.append(Rule((jump(out.chain(head)),)))
    return Dispatched(Chain(name, tuple(items)), list(out.chains.values()), out.maps)


def _runs(rules: Sequence[Classified]) -> list[tuple[bool, list[Classified]]]:
    """Maximal runs of specific (True) and of any-protocol (False) rules, in order."""
    out: list[tuple[bool, list[Classified]]] = []
    for c in rules:
        specific = c.proto is not None
        if out and out[-1][0] == specific:
            out[-1][1].append(c)
        else:
            out.append((specific, [c]))
    return out


class _Builder:
    def __init__(self, name: str, limits: Limits) -> None:
        self.name = name
        self.limits = limits
        self.chains: dict[str, Chain] = {}
        self.maps: list[Map] = []

    def chain(self, rules: Sequence[Rule]) -> str:
        """The name of the (deduplicated) chain holding ``rules``."""
        body = tuple(rules)
        name = check_name(f"{self.name}_{short_hash(chr(10).join(r.text() for r in body), 12)}")
        have = self.chains.get(name)
        if have is not None and have.rules != body:  # pragma: no cover - 48-bit collision
            raise ValueError(f"chain name collision: {name}")
        self.chains[name] = Chain(name, body)
        return name

    def segment(self, run: list[Classified]) -> list[Rule] | None:
        """The dispatch rules of one run of specific rules; None: keep it linear."""
        if len(run) < max(self.limits.min_rules, 1):
            return None
        head: list[Rule] = []
        subs: list[tuple[str, tuple[Rule, ...]]] = []  # (why, rules) for the growth check
        plan: list[tuple[L4Proto, list[tuple[PortRange, tuple[Rule, ...]]], tuple[Rule, ...]]] = []
        for proto in PROTO_ORDER:
            mine = [c for c in run if c.proto is proto]
            if not mine:
                continue
            portless = tuple(c.bare for c in mine if c.ports is None)
            pieces: list[tuple[PortRange, tuple[Rule, ...]]] = []
            if proto in PORTED:
                pieces = _pieces(mine)
                subs += [("port", rules) for _, rules in pieces]
            subs.append(("rest", portless))
            plan.append((proto, pieces, portless))
        copies = sum(len(rules) for _, rules in subs)
        if copies > self.limits.max_growth * len(run):
            return None
        for proto, pieces, portless in plan:
            if pieces:
                elements = [element(r, value=goto(self.chain(rules))) for r, rules in pieces]
                content = "\n".join(e.text() for e in elements)
                map_name = check_name(f"gd{self.name[1:]}_{proto}_{short_hash(content)}")
                self.maps.append(
                    Map(map_name, (DataType.INET_SERVICE,), DataType.VERDICT, tuple(elements), True)
                )
                head.append(Rule((PortVmap(proto, SetRef(map_name)),)))
            if portless:
                head.append(Rule((MetaL4proto(proto), goto(self.chain(portless)))))
        return head


def _pieces(mine: list[Classified]) -> list[tuple[PortRange, tuple[Rule, ...]]]:
    """The port space of one protocol cut at every bound of ``mine``'s port ranges: each
    piece that some port rule covers, with the rules that match all of it, in order
    (adjacent pieces with the same rules merged). Linear in the size of the result."""
    bounds = {MIN_PORT, MAX_PORT + 1}
    for c in mine:
        for r in c.ports or ():
            bounds.update((r.lo, r.hi + 1))
    cuts = sorted(bounds)
    at = {cut: i for i, cut in enumerate(cuts)}
    rules: list[list[Rule]] = [[] for _ in cuts[1:]]
    ported = [False] * len(rules)
    for c in mine:  # in order, so every piece's list is in order too
        if c.ports is None:
            for piece in rules:
                piece.append(c.bare)
            continue
        for r in c.ports:  # merged ranges: disjoint, so a rule enters a piece once
            for i in range(at[r.lo], at[r.hi + 1]):
                rules[i].append(c.bare)
                ported[i] = True
    out: list[tuple[PortRange, tuple[Rule, ...]]] = []
    for i, (lo, end) in enumerate(itertools.pairwise(cuts)):
        if not ported[i]:
            continue  # only port-less rules: the fall-through rule takes it
        held = tuple(rules[i])
        if out and out[-1][1] == held and out[-1][0].hi + 1 == lo:
            out[-1] = (PortRange(out[-1][0].lo, end - 1), held)
        else:
            out.append((PortRange(lo, end - 1), held))
    return out
