"""A packet tracer over our ruleset text (kube-proxy's ``tracePacket`` idea).

Role: run one packet through the base chains a real packet would traverse and
return the verdict, every rule it matched, the chains it entered and the
conntrack side effects (``ct mark`` stamp, ``ct timeout`` policy). Tests use it for
packet tables and for the property "tracer over the rendered ruleset == reference
evaluator" (``secgroups.evaluating``).

It reads the *text* (``Ruleset.text()``, parsed by ``reading``), not the typed
objects, so a serialiser that writes the wrong thing shows up in packet tables.
And it understands only the statement shapes the renderer emits: any other token
sequence, set type, hook or chain type raises :class:`UnsupportedShapeError`, so a
renderer change the tracer does not model fails loudly instead of being traced
wrongly. Kernel semantics it models (with their sources):

* base chains of one hook run in priority order; ``accept`` ends only the current
  base chain, ``drop`` ends the packet (docs/nftables.md#an-accept-ends-only-its-base-chain);
* ``jump`` returns to the next rule, ``goto`` returns to the caller's caller;
  a non-base chain that ends returns; a base chain that ends applies its policy;
* a map lookup that misses (``vmap``, ``ct mark set … map``) breaks the rule:
  the rule does not match (nft_lookup / nft_map eval set NFT_BREAK); so does
  ``tcp dport vmap`` (the group-chain dispatch of ``dispatch``, an interval map) for a
  packet of another protocol or a port with no element;
* ``ct`` keys do not exist before conntrack (priority < -200) or for packets
  without an entry (invalid, untracked): the rule breaks; ``ct timeout set`` only
  acts on a new (unconfirmed) entry of the object's protocol (nft_ct_timeout_obj_eval);
* ``iifname`` is empty for locally generated packets (nft_meta_store_ifname).

Neighbours: ``reading`` (parser), ``rendering`` (what is traced).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal, cast

from secgroups.nft.objects import Ruleset
from secgroups.nft.reading import (
    CT_STATES,
    TCP,
    Op,
    TextSet,
    TextTable,
    UnsupportedTextError,
    parse_rule,
    parse_table,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
CONNTRACK_PRIORITY = -200
HOOK_PATHS = {"forward": ("prerouting", "forward"), "input": ("prerouting", "input")}
Outcome = Literal["accept", "drop", "return"]


class UnsupportedShapeError(UnsupportedTextError):
    """The ruleset holds something the tracer does not model."""


@dataclass(frozen=True)
class TracePacket:
    """A packet as it reaches the node, plus the conntrack state the kernel would give it.

    ``iif`` None = sent by the node itself (output path); ``oif`` None = delivered to
    the node (input path); both set = forwarded. ``proto`` is the IP protocol number.
    ``tcp_flags`` defaults to ``{"syn"}`` for new flows and ``{"ack"}`` otherwise.
    """

    src: IPAddress
    dst: IPAddress
    proto: int
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    iif: str | None = None
    oif: str | None = None
    ct_state: str = "new"
    ct_direction: Literal["original", "reply"] = "original"
    ct_mark: int = 0
    tcp_flags: frozenset[str] | None = None
    hoplimit: int = 64

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ValueError("source and destination of different families")
        if self.ct_state not in CT_STATES:
            raise ValueError(f"unknown ct state {self.ct_state}")
        if self.iif is None and self.oif is None:
            raise ValueError("a packet needs an input or an output interface")

    @property
    def family(self) -> int:
        return self.src.version

    @property
    def flags(self) -> frozenset[str]:
        if self.tcp_flags is not None:
            return self.tcp_flags
        return frozenset({"syn"} if self.ct_state == "new" else {"ack"})

    @property
    def hooks(self) -> tuple[str, ...]:
        if self.iif is None:
            return ("output",)
        return HOOK_PATHS["input" if self.oif is None else "forward"]


@dataclass(frozen=True)
class Step:
    """One rule that matched: where it is, its text, and what it did."""

    chain: str
    index: int
    rule: str
    effect: str

    @property
    def comment(self) -> str | None:
        m = re.search(r' comment "([^"]*)"$', self.rule)
        return m.group(1) if m else None


@dataclass(frozen=True)
class BaseResult:
    """The outcome of one base chain; ``rule`` is the step that decided (None: the policy)."""

    chain: str
    hook: str
    priority: int
    verdict: Literal["accept", "drop"]
    rule: Step | None


@dataclass(frozen=True)
class Trace:
    packet: TracePacket
    verdict: Literal["accept", "drop"]
    bases: tuple[BaseResult, ...]
    steps: tuple[Step, ...]
    chains: tuple[str, ...]
    ct_mark: int
    ct_timeout: str | None

    def base(self, chain: str) -> BaseResult | None:
        return next((b for b in self.bases if b.chain == chain), None)

    def decided_by(self, chain: str) -> str | None:
        """The comment of the rule that decided base chain ``chain`` (a compiled rule id)."""
        base = self.base(chain)
        return None if base is None or base.rule is None else base.rule.comment

    def explain(self) -> str:
        lines = [f"{self.verdict}: {self.packet}"]
        lines += [f"  {s.chain}[{s.index}] {s.rule}  -> {s.effect}" for s in self.steps]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- sets


@dataclass
class _Lookup:
    """A parsed set or map: exact keys in ``exact``; interval keys in ``ranges``."""

    key: tuple[str, ...]
    value: str | None
    interval: bool = False
    exact: dict[tuple[object, ...], str | None] = field(default_factory=dict)
    ranges: list[tuple[int, int, str | None]] = field(default_factory=list)

    def get(self, key: tuple[object, ...]) -> tuple[bool, str | None]:
        if self.ranges:
            (part,) = key
            n = (
                int(part)
                if isinstance(part, ipaddress.IPv4Address | ipaddress.IPv6Address)
                else part
            )
            for lo, hi, val in self.ranges:
                if isinstance(n, int) and lo <= n <= hi:
                    return True, val
            return False, None
        if key in self.exact:
            return True, self.exact[key]
        return False, None


def _key_part(text: str, dtype: str, interval: bool) -> object:
    if dtype in ("ipv4_addr", "ipv6_addr"):
        version = 4 if dtype == "ipv4_addr" else 6
        value: IPAddress | IPNetwork = (
            ipaddress.ip_network(text) if interval else ipaddress.ip_address(text)
        )
        if value.version != version:
            raise UnsupportedShapeError(f"{text} in a {dtype} set")
        return value
    if dtype == "inet_service":
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
        if m is None or (m.group(2) and not interval):
            raise UnsupportedShapeError(f"bad port element {text!r}")
        return (int(m.group(1)), int(m.group(2) or m.group(1)))
    if dtype == "ifname":
        m = re.fullmatch(r'"([^"\\]{1,15})"', text)
        if m is None:
            raise UnsupportedShapeError(f"bad ifname element {text!r}")
        return m.group(1)
    if dtype == "mark":
        if not re.fullmatch(r"0x[0-9a-f]{8}", text):
            raise UnsupportedShapeError(f"bad mark {text!r}")
        return int(text, 16)
    raise UnsupportedShapeError(f"set key type {dtype} is not modelled")


def _lookup(s: TextSet) -> _Lookup:
    if s.value not in (None, "verdict", "mark"):
        raise UnsupportedShapeError(f"map value type {s.value} is not modelled")
    if s.interval and len(s.key) != 1:
        raise UnsupportedShapeError(f"concatenated interval set {s.name} is not modelled")
    out = _Lookup(s.key, s.value, s.interval)
    for text in s.elements:
        key_text, sep, val = text.partition(" : ")
        if bool(sep) != (s.value is not None):
            raise UnsupportedShapeError(f"{s.name}: element {text!r} does not fit")
        if s.value == "mark" and not re.fullmatch(r"0x[0-9a-f]{8}", val):
            raise UnsupportedShapeError(f"{s.name}: bad mark value {val!r}")
        if s.value == "verdict" and not re.fullmatch(
            r"(goto|jump) [a-z][a-z0-9_]*|accept|drop", val
        ):
            raise UnsupportedShapeError(f"{s.name}: bad verdict {val!r}")
        parts = key_text.split(" . ")
        if len(parts) != len(s.key):
            raise UnsupportedShapeError(f"{s.name}: element {text!r} does not fit")
        key = tuple(_key_part(p, t, s.interval) for p, t in zip(parts, s.key, strict=True))
        value = val if sep else None
        if s.interval:
            (part,) = key
            if isinstance(part, ipaddress.IPv4Network | ipaddress.IPv6Network):
                lo, hi = int(part.network_address), int(part.broadcast_address)
            elif isinstance(part, tuple):
                lo, hi = part
            else:  # pragma: no cover - _key_part returns networks or port ranges here
                raise UnsupportedShapeError(f"{s.name}: {text!r}")
            out.ranges.append((lo, hi, value))
        else:
            out.exact[key] = value
    return out


# ----------------------------------------------------------------------------- machine

_TCP_FLAGS = frozenset({"fin", "syn", "rst", "ack"})
MAX_JUMP_DEPTH = 16  # NFT_JUMP_STACK_SIZE
_Result = tuple[str, str | None]  # (accept|drop|return|jump|goto|continue, target)


class Tracer:
    """Parses a ruleset once, then traces any number of packets through it."""

    def __init__(self, ruleset: Ruleset | str) -> None:
        self.table: TextTable = parse_table(
            ruleset.text() if isinstance(ruleset, Ruleset) else ruleset
        )
        if self.table.family != "inet":
            raise UnsupportedShapeError(f"table family {self.table.family} is not modelled")
        for chain in self.table.chains.values():
            if chain.hook is not None and (
                chain.hook not in ("prerouting", "input", "forward", "output")
                or chain.type != "filter"
            ):
                raise UnsupportedShapeError(f"base chain {chain.name} ({chain.type} {chain.hook})")
        self.sets = {name: _lookup(s) for name, s in self.table.sets.items()}
        self.rules = {
            name: [parse_rule(rule) for rule in chain.rules]
            for name, chain in self.table.chains.items()
        }
        for name, rules in self.rules.items():
            for ops, _ in rules:
                for op in ops:
                    if op[0] == "verdict" and op[2] is not None:
                        self._check_target(name, str(op[2]))
        for name, lookup in self.sets.items():
            if lookup.value == "verdict":
                for val in (*lookup.exact.values(), *(v for _, _, v in lookup.ranges)):
                    _, _, target = (val or "").partition(" ")
                    if target:
                        self._check_target(name, target)

    def _check_target(self, where: str, target: str) -> None:
        chain = self.table.chains.get(target)
        if chain is None or chain.hook is not None:
            raise UnsupportedShapeError(f"{where}: bad jump target {target}")

    def trace(self, packet: TracePacket) -> Trace:
        return _Run(self, packet).run()


def trace(ruleset: Ruleset | str, packet: TracePacket) -> Trace:
    """Run ``packet`` through ``ruleset`` (see :class:`Tracer` to trace many packets)."""
    return Tracer(ruleset).trace(packet)


class _Run:
    """The state of one packet's walk: conntrack side effects and the steps taken."""

    def __init__(self, tracer: Tracer, packet: TracePacket) -> None:
        self.t = tracer
        self.p = packet
        self.mark = packet.ct_mark
        self.timeout: str | None = None
        self.has_ct = packet.ct_state not in ("invalid", "untracked")
        self.steps: list[Step] = []
        self.chains: list[str] = []
        self.priority = 0
        self.decider: Step | None = None

    def run(self) -> Trace:
        bases: list[BaseResult] = []
        verdict: Literal["accept", "drop"] = "accept"
        for hook in self.p.hooks:
            chains = sorted(
                (c for c in self.t.table.chains.values() if c.hook == hook),
                key=lambda c: (c.priority or 0, c.name),
            )
            for chain in chains:
                self.priority, self.decider = chain.priority or 0, None
                out = self._chain(chain.name, 0)
                decided: Literal["accept", "drop"] = (
                    "drop"
                    if (out == "return" and chain.policy == "drop") or out == "drop"
                    else "accept"
                )
                rule = self.decider if out != "return" else None
                bases.append(BaseResult(chain.name, hook, self.priority, decided, rule))
                if decided == "drop":
                    verdict = "drop"
                    break
            if verdict == "drop":
                break
        return Trace(
            self.p,
            verdict,
            tuple(bases),
            tuple(self.steps),
            tuple(self.chains),
            self.mark,
            self.timeout,
        )

    def _chain(self, name: str, depth: int) -> Outcome:
        if depth > MAX_JUMP_DEPTH:
            raise UnsupportedShapeError(f"jump depth exceeded at {name}")
        self.chains.append(name)
        chain = self.t.table.chains[name]
        for index, (ops, _) in enumerate(self.t.rules[name]):
            res = self._rule(ops)
            if res is None:
                continue
            kind, target = res
            step = Step(
                name, index, chain.rules[index], kind if target is None else f"{kind} {target}"
            )
            self.steps.append(step)
            if kind in ("accept", "drop"):
                self.decider = step
                return "accept" if kind == "accept" else "drop"
            if kind == "return":
                return "return"
            if kind == "jump" and target is not None:
                out = self._chain(target, depth + 1)
                if out != "return":
                    return out
            elif kind == "goto" and target is not None:
                return self._chain(target, depth + 1)
        return "return"

    def _set(self, name: str, types: tuple[str, ...], value: str | None = None) -> _Lookup:
        s = self.t.sets.get(name)
        if s is None or s.key != types or s.value != value:
            raise UnsupportedShapeError(f"@{name} is not a {' . '.join(types)} set/map of {value}")
        return s

    def _ct(self) -> None:
        if self.priority < CONNTRACK_PRIORITY:
            raise UnsupportedShapeError("ct expression before conntrack (priority < -200)")

    def _rule(self, ops: list[Op]) -> _Result | None:
        p = self.p
        addr = {4: "ipv4_addr", 6: "ipv6_addr"}
        for op in ops:
            tag = op[0]
            if tag == "nfproto":
                if p.family != op[1]:
                    return None
            elif tag == "l4proto":
                if p.proto != op[1]:
                    return None
            elif tag == "addr":
                _, fam, fld, neg, value = op
                if p.family != fam:  # `ip saddr` carries an implicit `meta nfproto ipv4`
                    return None
                ip = p.src if fld == "saddr" else p.dst
                if isinstance(value, tuple):
                    hit = self._set(str(value[1]), (addr[p.family],)).get((ip,))[0]
                else:
                    hit = ip in value  # type: ignore[operator]
                if hit == neg:
                    return None
            elif tag == "dport":
                _, proto, value = op
                if p.proto != proto or p.dport is None:
                    return None
                if isinstance(value, tuple) and value[0] == "set":
                    hit = self._set(str(value[1]), ("inet_service",)).get((p.dport,))[0]
                else:
                    lo, hi = cast(tuple[int, int], value)
                    hit = lo <= p.dport <= hi
                if not hit:
                    return None
            elif tag == "dport_vmap":
                _, proto, name = op
                lookup = self._set(str(name), ("inet_service",), "verdict")
                if not lookup.interval:
                    raise UnsupportedShapeError(f"@{name}: port dispatch needs an interval map")
                if p.proto != proto or p.dport is None:
                    return None  # another protocol; no port to load: the rule breaks
                found, verdict = lookup.get((p.dport,))
                if not found or verdict is None:
                    return None
                kind, _, target = verdict.partition(" ")
                return (kind, target or None)
            elif tag == "icmp":
                _, proto, what, val = op
                got = p.icmp_type if what == "type" else p.icmp_code
                if p.proto != proto or got != val:
                    return None
            elif tag == "icmp_in":
                if p.proto != op[1] or p.icmp_type not in op[2]:  # type: ignore[operator]
                    return None
            elif tag == "hoplimit":
                if p.family != 6 or p.hoplimit != op[1]:
                    return None
            elif tag == "ct_state":
                self._ct()
                if (p.ct_state in op[2]) == op[1]:  # type: ignore[operator]
                    return None
            elif tag == "ct_direction":
                self._ct()
                if not self.has_ct or p.ct_direction != op[1]:
                    return None
            elif tag == "ct_mark":
                self._ct()
                if not self.has_ct or self.mark != op[1]:
                    return None
            elif tag == "tcp_not_syn":
                if p.proto != TCP or (p.flags & _TCP_FLAGS) == {"syn"}:
                    return None
            elif tag == "iface_in":
                _, which, neg, name = op
                ifname = (p.iif if which == "iifname" else p.oif) or ""
                if self._set(str(name), ("ifname",)).get((ifname,))[0] == neg:
                    return None
            elif tag == "iif_saddr_in":
                _, fam, name = op
                if p.family != fam:
                    return None
                lookup = self._set(str(name), ("ifname", addr[p.family]))
                if not lookup.get((p.iif or "", p.src))[0]:
                    return None
            elif tag == "addr_mark_in":
                self._ct()
                _, fam, name = op
                if p.family != fam or not self.has_ct:
                    return None
                if not self._set(str(name), (addr[p.family], "mark")).get((p.dst, self.mark))[0]:
                    return None
            elif tag == "counter":
                pass
            elif tag == "ct_mark_set_map":
                self._ct()
                if p.family != op[1]:
                    return None
                found, val = self._set(str(op[2]), (addr[p.family],), "mark").get((p.dst,))
                if not found:
                    return None  # a missing key breaks the rule
                if self.has_ct and val is not None:
                    self.mark = int(val, 16)
            elif tag == "ct_timeout_set":
                self._ct()
                obj = self.t.table.ct_timeouts.get(str(op[1]))
                if obj is None:
                    raise UnsupportedShapeError(f"ct timeout {op[1]} is not defined")
                proto = {"tcp": TCP, "udp": 17}[obj.protocol]
                if self.has_ct and p.ct_state == "new" and p.proto == proto:
                    self.timeout = obj.name
            elif tag == "verdict":
                return (str(op[1]), None if op[2] is None else str(op[2]))
            elif tag == "vmap":
                _, fam, fld, name = op
                if p.family != fam:
                    return None
                ip = p.src if fld == "saddr" else p.dst
                found, val = self._set(str(name), (addr[p.family],), "verdict").get((ip,))
                if not found or val is None:
                    return None
                kind, _, target = val.partition(" ")
                return (kind, target or None)
            else:  # pragma: no cover - parse_rule only makes the tags above
                raise UnsupportedShapeError(f"op {tag} is not modelled")
        return ("continue", None)
