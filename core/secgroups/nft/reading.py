"""Read our own ruleset text back: a strict parser of ``Ruleset.text()`` and a canonical sort.

Role: the tracer (``tracing``) works on the *text* the kernel receives, not on
the typed objects, so that a serialiser that writes the wrong thing is caught by
packet tables; golden tests compare :func:`canonical` texts, which sorts objects
by kind and name and elements by text while keeping rules in order (kube-proxy's
golden comparison idea). The parser knows exactly the layout ``objects`` emits
(tabs, one object per block, one element per line) and raises
:class:`UnsupportedTextError` on anything else; it does not read ``nft list`` output.

Neighbours: ``objects`` (writes the format), ``tracing`` (reads it).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from secgroups.nft.objects import PRIORITY_NAMES
from secgroups.nft.statements import ICMPV6_NAMES

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
TCP, UDP, ICMP, ICMPV6, GRE = 6, 17, 1, 58, 47
L4_NUMBERS = {"tcp": TCP, "udp": UDP, "icmp": ICMP, "ipv6-icmp": ICMPV6, "gre": GRE}
CT_STATES = ("invalid", "established", "related", "new", "untracked")


class UnsupportedTextError(ValueError):
    """The text is not in the shape our serialisers produce."""


@dataclass(frozen=True)
class TextCtTimeout:
    name: str
    protocol: str
    l3proto: str
    policy: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class TextSet:
    """A set (``value`` None) or a map; elements as written (``key`` or ``key : value``)."""

    name: str
    key: tuple[str, ...]
    value: str | None
    interval: bool
    elements: tuple[str, ...]

    @property
    def kind(self) -> str:
        return "set" if self.value is None else "map"


@dataclass(frozen=True)
class TextChain:
    name: str
    rules: tuple[str, ...]
    hook: str | None = None
    priority: int | None = None
    policy: str | None = None
    type: str | None = None
    spec: str | None = None  # the base-chain line as written


@dataclass(frozen=True)
class TextTable:
    family: str
    name: str
    ct_timeouts: dict[str, TextCtTimeout]
    sets: dict[str, TextSet]
    chains: dict[str, TextChain]


_HEAD = re.compile(r"table (\w+) (\w+) \{")
_OBJ = re.compile(r"\t(ct timeout|set|map|chain) ([a-z][a-z0-9_]*) \{")
_BASE = re.compile(r"type (\w+) hook (\w+) priority (\w+)(?: ([+-]) (\d+))?; policy (accept|drop);")


def _priority(name: str, sign: str | None, offset: str | None) -> int:
    if name not in PRIORITY_NAMES:
        raise UnsupportedTextError(f"unknown priority {name}")
    value = PRIORITY_NAMES[name]
    if sign is not None and offset is not None:
        value += int(offset) if sign == "+" else -int(offset)
    return value


def _body(lines: list[str], i: int) -> tuple[list[str], int]:
    """Lines of one object (without its braces, one tab removed) and the index after it."""
    out = []
    while i < len(lines) and lines[i] != "\t}":
        if not lines[i].startswith("\t\t"):
            raise UnsupportedTextError(f"line {i + 1}: unexpected {lines[i]!r}")
        out.append(lines[i][2:])
        i += 1
    if i == len(lines):
        raise UnsupportedTextError("unterminated object")
    return out, i + 1


def _elements(body: list[str], name: str) -> tuple[tuple[str, ...], list[str]]:
    """Split ``elements = { … }`` (one element per line, commas between) off an object body."""
    if "elements = {" not in body:
        return (), body
    start = body.index("elements = {")
    if "}" not in body[start:]:
        raise UnsupportedTextError(f"{name}: unterminated elements")
    end = body.index("}", start)
    raw = body[start + 1 : end]
    elems = []
    for j, line in enumerate(raw):
        last = j == len(raw) - 1
        if not line.startswith("\t") or line.endswith(",") == last:
            raise UnsupportedTextError(f"{name}: malformed element line {line!r}")
        elems.append(line[1:] if last else line[1:-1])
    if not elems:
        raise UnsupportedTextError(f"{name}: empty elements block")
    return tuple(elems), body[:start] + body[end + 1 :]


def parse_table(text: str) -> TextTable:
    """Parse the text of ``Ruleset.text()`` (or of a golden file written from it)."""
    lines = text.rstrip("\n").split("\n")
    head = _HEAD.fullmatch(lines[0]) if lines else None
    if head is None or lines[-1] != "}":
        raise UnsupportedTextError("not a `table <family> <name> { … }` block")
    timeouts: dict[str, TextCtTimeout] = {}
    sets: dict[str, TextSet] = {}
    chains: dict[str, TextChain] = {}
    i, body_lines = 1, lines[:-1]
    while i < len(body_lines):
        if body_lines[i] == "":
            i += 1
            continue
        m = _OBJ.fullmatch(body_lines[i])
        if m is None:
            raise UnsupportedTextError(f"line {i + 1}: unexpected {body_lines[i]!r}")
        kind, name = m.groups()
        body, i = _body(body_lines, i + 1)
        if kind == "ct timeout":
            timeouts[name] = _ct_timeout(name, body)
        elif kind in ("set", "map"):
            sets[name] = _set(kind, name, body)
        else:
            chains[name] = _chain(name, body)
    return TextTable(head.group(1), head.group(2), timeouts, sets, chains)


def _ct_timeout(name: str, body: list[str]) -> TextCtTimeout:
    if len(body) != 3 or not body[0].startswith("protocol ") or not body[1].startswith("l3proto "):
        raise UnsupportedTextError(f"ct timeout {name}: unexpected body {body}")
    m = re.fullmatch(r"policy = \{ (.*) \}", body[2])
    if m is None:
        raise UnsupportedTextError(f"ct timeout {name}: bad policy {body[2]!r}")
    policy = []
    for item in m.group(1).split(", "):
        state, _, seconds = item.partition(": ")
        policy.append((state, int(seconds)))
    return TextCtTimeout(name, body[0][9:], body[1][8:], tuple(policy))


def _set(kind: str, name: str, body: list[str]) -> TextSet:
    elems, rest = _elements(body, name)
    if not rest or not rest[0].startswith("type "):
        raise UnsupportedTextError(f"{kind} {name}: no type")
    type_text = rest[0][5:]
    value = None
    if kind == "map":
        type_text, sep, value = type_text.partition(" : ")
        if not sep:
            raise UnsupportedTextError(f"map {name}: no value type")
    interval = rest[1:] == ["flags interval"]
    if rest[1:] and not interval:
        raise UnsupportedTextError(f"{kind} {name}: unexpected {rest[1:]}")
    return TextSet(name, tuple(type_text.split(" . ")), value, interval, elems)


def _chain(name: str, body: list[str]) -> TextChain:
    if body and body[0].startswith("type "):
        m = _BASE.fullmatch(body[0])
        if m is None:
            raise UnsupportedTextError(f"chain {name}: bad base chain spec {body[0]!r}")
        ctype, hook, prio, sign, offset, policy = m.groups()
        prio_value = _priority(prio, sign, offset)
        return TextChain(name, tuple(body[1:]), hook, prio_value, policy, ctype, body[0])
    return TextChain(name, tuple(body))


def canonical(text: str) -> str:
    """``text`` with objects sorted by kind and name and elements by text; rules keep their order.

    Two rulesets that differ only in the order of definitions or elements have the
    same canonical text; a golden diff then shows only real changes.
    """
    table = parse_table(text)
    out = [f"table {table.family} {table.name} {{"]
    blocks: list[list[str]] = []
    for t in sorted(table.ct_timeouts.values(), key=lambda o: o.name):
        policy = ", ".join(f"{k}: {v}" for k, v in t.policy)
        blocks.append(
            [
                f"\tct timeout {t.name} {{",
                f"\t\tprotocol {t.protocol}",
                f"\t\tl3proto {t.l3proto}",
                f"\t\tpolicy = {{ {policy} }}",
            ]
        )
    for s in sorted(table.sets.values(), key=lambda o: o.name):
        typ = " . ".join(s.key) + ("" if s.value is None else f" : {s.value}")
        lines = [f"\t{s.kind} {s.name} {{", f"\t\ttype {typ}"]
        lines += ["\t\tflags interval"] if s.interval else []
        if s.elements:
            items = sorted(s.elements)
            lines += [
                "\t\telements = {",
                *(f"\t\t\t{e}," for e in items[:-1]),
                f"\t\t\t{items[-1]}",
            ]
            lines.append("\t\t}")
        blocks.append(lines)
    for c in sorted(table.chains.values(), key=lambda o: (o.hook is None, o.name)):
        lines = [f"\tchain {c.name} {{"]
        if c.spec is not None:
            lines.append(f"\t\t{c.spec}")
        blocks.append(lines + [f"\t\t{r}" for r in c.rules])
    for i, b in enumerate(blocks):
        out += ([""] if i else []) + b + ["\t}"]
    return "\n".join([*out, "}"]) + "\n"


# ----------------------------------------------------------------------------- rules

_TOKEN = re.compile(r'"[^"]*"|\S+')
Op = tuple[object, ...]


def parse_rule(text: str) -> tuple[list[Op], str | None]:
    """The ops of one rule of ours, and its comment; raise on any shape we do not emit."""
    toks = _TOKEN.findall(text)
    ops: list[Op] = []
    comment = None
    i = 0

    def take(*expected: str) -> str:
        nonlocal i
        if i >= len(toks) or (expected and toks[i] not in expected):
            got = toks[i] if i < len(toks) else "end of rule"
            raise UnsupportedTextError(f"{text!r}: expected {expected or 'a token'}, got {got!r}")
        i += 1
        return str(toks[i - 1])

    def setname() -> str:
        tok = take()
        if not re.fullmatch(r"@[a-z][a-z0-9_]*", tok):
            raise UnsupportedTextError(f"{text!r}: expected @set, got {tok!r}")
        return tok[1:]

    while i < len(toks):
        if comment is not None:
            raise UnsupportedTextError(f"{text!r}: tokens after the comment")
        t = take()
        if t == "meta":
            what = take("nfproto", "l4proto")
            val = take()
            if what == "nfproto" and val in ("ipv4", "ipv6"):
                ops.append(("nfproto", 4 if val == "ipv4" else 6))
            elif what == "l4proto" and val in L4_NUMBERS:
                ops.append(("l4proto", L4_NUMBERS[val]))
            else:
                raise UnsupportedTextError(f"{text!r}: meta {what} {val}")
        elif t in ("ip", "ip6"):
            fam = 4 if t == "ip" else 6
            fld = take("saddr", "daddr", "hoplimit")
            if fld == "hoplimit":
                ops.append(("hoplimit", int(take())))
            elif toks[i] == "vmap":
                take("vmap")
                ops.append(("vmap", fam, fld, setname()))
            elif toks[i] == ".":
                take(".")
                take("ct")
                take("mark")
                if fld != "daddr":
                    raise UnsupportedTextError(f"{text!r}: {t} {fld} . ct mark")
                ops.append(("addr_mark_in", fam, setname()))
            else:
                neg = toks[i] == "!="
                i += neg
                val = toks[i]
                value: object = ("set", setname()) if val.startswith("@") else _network(take(), fam)
                ops.append(("addr", fam, fld, neg, value))
        elif t in ("tcp", "udp"):
            what = take("dport", "flags")
            if what == "flags":
                for expected in ("&", "(fin|syn|rst|ack)", "!=", "syn"):
                    take(expected)
                if t != "tcp":
                    raise UnsupportedTextError(f"{text!r}: udp flags")
                ops.append(("tcp_not_syn",))
            elif i < len(toks) and toks[i] == "vmap":
                take("vmap")
                ops.append(("dport_vmap", L4_NUMBERS[t], setname()))
            else:
                val = toks[i]
                port: object = ("set", setname()) if val.startswith("@") else _ports(take())
                ops.append(("dport", L4_NUMBERS[t], port))
        elif t in ("icmp", "icmpv6"):
            what = take("type", "code")
            proto = ICMP if t == "icmp" else ICMPV6
            if toks[i] == "{" and t == "icmpv6" and what == "type":
                take("{")
                names: list[str] = []
                while toks[i] != "}":
                    names.append(take().rstrip(","))
                take("}")
                if any(n not in ICMPV6_NAMES for n in names):
                    raise UnsupportedTextError(f"{text!r}: unknown ICMPv6 names {names}")
                ops.append(("icmp_in", proto, frozenset(ICMPV6_NAMES[n] for n in names)))
            else:
                ops.append(("icmp", proto, what, int(take())))
        elif t == "ct":
            what = take("state", "direction", "mark", "timeout")
            if what == "state":
                neg = toks[i] == "!="
                i += neg
                states = take().split(",")
                if any(s not in CT_STATES for s in states):
                    raise UnsupportedTextError(f"{text!r}: ct state {states}")
                ops.append(("ct_state", neg, frozenset(states)))
            elif what == "direction":
                ops.append(("ct_direction", take("original", "reply")))
            elif what == "mark" and toks[i] != "set":
                mark = take()
                if not re.fullmatch(r"0x[0-9a-f]{8}", mark):
                    raise UnsupportedTextError(f"{text!r}: ct mark {mark}")
                ops.append(("ct_mark", int(mark, 16)))
            elif what == "mark":
                take("set")
                kw = take("ip", "ip6")
                take("daddr")
                take("map")
                ops.append(("ct_mark_set_map", 4 if kw == "ip" else 6, setname()))
            else:
                take("set")
                name = take()
                if not re.fullmatch(r'"[a-z][a-z0-9_]*"', name):
                    raise UnsupportedTextError(f"{text!r}: ct timeout {name}")
                ops.append(("ct_timeout_set", name.strip('"')))
        elif t in ("iifname", "oifname"):
            if toks[i] == "." and t == "iifname":
                take(".")
                kw = take("ip", "ip6")
                take("saddr")
                ops.append(("iif_saddr_in", 4 if kw == "ip" else 6, setname()))
            else:
                neg = toks[i] == "!="
                i += neg
                ops.append(("iface_in", t, neg, setname()))
        elif t == "counter":
            ops.append(("counter",))
        elif t in ("accept", "drop", "return"):
            ops.append(("verdict", t, None))
        elif t in ("jump", "goto"):
            ops.append(("verdict", t, take()))
        elif t == "comment":
            comment = take()
            if not (comment.startswith('"') and comment.endswith('"')):
                raise UnsupportedTextError(f"{text!r}: bad comment")
            comment = comment[1:-1]
        else:
            raise UnsupportedTextError(f"{text!r}: unknown token {t!r}")
    for op in ops[:-1]:
        if op[0] in ("verdict", "vmap", "dport_vmap"):
            raise UnsupportedTextError(f"{text!r}: verdict before the end of the rule")
    return ops, comment


def _network(text: str, fam: int) -> IPNetwork:
    net = ipaddress.ip_network(text)  # strict: host bits set would be a serialiser bug
    if net.version != fam:
        raise UnsupportedTextError(f"{text} is not IPv{fam}")
    return net


def _ports(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    if m is None:
        raise UnsupportedTextError(f"bad port {text!r}")
    return int(m.group(1)), int(m.group(2) or m.group(1))
