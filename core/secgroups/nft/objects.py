"""Typed nft objects — table, chains, sets, maps, elements, ct timeouts — and the :class:`Ruleset`.

Role: the value the renderer returns and the transaction builder consumes. Each
object has one serialiser, ``lines()``, the text of its definition inside a
``table inet secgroups { … }`` block; ``Ruleset.text()`` joins them in canonical
order, so the same input always gives byte-identical text (golden files, restarts
that change nothing). ``transactions`` reuses the same ``lines()`` for the blocks of
a transaction, and ``Element.text()`` / ``key_text()`` for element commands.

Like knftables' fake, a :class:`Ruleset` refuses dangling references (``@set``,
``jump``/``goto``, verdict-map targets, ``ct timeout set``) and duplicate names.

Neighbours: ``statements`` (rule parts), ``rendering`` (builds a Ruleset),
``transactions`` (turns Rulesets into nft transactions), ``reading``/``tracing``
(parse the text back).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from typing import Literal

from secgroups.nft.elements import (
    DataType,
    Element,
    Ifname,
    KeyPart,
    Mark,
    canonical_elements,
    element,
)
from secgroups.nft.statements import (
    Family,
    L4Proto,
    Ref,
    RefKind,
    Rule,
    Verdict,
    VerdictKind,
    check_name,
    ip_keyword,
)

# Element types are re-exported: callers that build sets and maps import them from here.
__all__ = [
    "HOOK_ORDER",
    "PRIORITY_NAMES",
    "BaseSpec",
    "Chain",
    "CtTimeout",
    "DataType",
    "Element",
    "Hook",
    "Ifname",
    "KeyPart",
    "Map",
    "Mark",
    "Priority",
    "Ruleset",
    "Set",
    "Table",
    "TableObject",
    "block",
    "chain_sort_key",
    "element",
    "skeleton",
]

TAB = "\t"


def _elements_lines(elements: tuple[Element, ...]) -> list[str]:
    if not elements:
        return []
    body = [f"\t\t\t{el._text}," for el in elements]
    body[-1] = body[-1][:-1]
    return [f"{TAB * 2}elements = {{", *body, f"{TAB * 2}}}"]


@dataclass(frozen=True)
class Set:
    """A named set: hash (``interval=False``) or interval; keys may be concatenated."""

    name: str
    key: tuple[DataType, ...]
    interval: bool = False
    elements: tuple[Element, ...] = ()

    keyword = "set"

    def __post_init__(self) -> None:
        check_name(self.name)
        if not self.key or DataType.VERDICT in self.key:
            raise ValueError(f"bad key type for set {self.name}")
        object.__setattr__(
            self, "elements", canonical_elements(self.name, self.key, self.interval, self.elements)
        )

    def decl(self) -> tuple[object, ...]:
        return ("set", self.key, self.interval)

    def spec_lines(self) -> list[str]:
        lines = [f"{TAB * 2}type {' . '.join(self.key)}"]
        return [*lines, f"{TAB * 2}flags interval"] if self.interval else lines

    def lines(self) -> list[str]:
        return [
            f"{TAB}set {self.name} {{",
            *self.spec_lines(),
            *_elements_lines(self.elements),
            f"{TAB}}}",
        ]

    def refs(self) -> tuple[Ref, ...]:
        return ()

    def with_elements(self, elements: Iterable[Element]) -> Set:
        return replace(self, elements=tuple(elements))


@dataclass(frozen=True)
class Map:
    """A named map: ``key : mark`` (epochs) or ``key : verdict`` (dispatch to chains)."""

    name: str
    key: tuple[DataType, ...]
    value: DataType
    elements: tuple[Element, ...] = ()
    interval: bool = False

    keyword = "map"

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.value not in (DataType.VERDICT, DataType.MARK):
            raise ValueError(f"map {self.name}: unsupported value type {self.value}")
        for el in self.elements:
            ok = isinstance(el.value, Verdict if self.value is DataType.VERDICT else Mark)
            if not ok or (isinstance(el.value, Verdict) and el.value.kind not in _MAP_VERDICTS):
                raise ValueError(f"map {self.name}: bad value in {el.text()}")
        object.__setattr__(
            self, "elements", canonical_elements(self.name, self.key, self.interval, self.elements)
        )

    def decl(self) -> tuple[object, ...]:
        return ("map", self.key, self.value, self.interval)

    def spec_lines(self) -> list[str]:
        lines = [f"{TAB * 2}type {' . '.join(self.key)} : {self.value}"]
        return [*lines, f"{TAB * 2}flags interval"] if self.interval else lines

    def lines(self) -> list[str]:
        return [
            f"{TAB}map {self.name} {{",
            *self.spec_lines(),
            *_elements_lines(self.elements),
            f"{TAB}}}",
        ]

    def refs(self) -> tuple[Ref, ...]:
        return tuple(
            sorted(
                {
                    r
                    for el in self.elements
                    if isinstance(el.value, Verdict)
                    for r in el.value.refs()
                }
            )
        )

    def with_elements(self, elements: Iterable[Element]) -> Map:
        return replace(self, elements=tuple(elements))


_MAP_VERDICTS = (VerdictKind.GOTO, VerdictKind.JUMP, VerdictKind.ACCEPT, VerdictKind.DROP)

TCP_STATES = (
    "syn_sent", "syn_recv", "established", "fin_wait", "close_wait", "last_ack",
    "time_wait", "close", "syn_sent2", "retrans", "unacknowledged",
)  # fmt: skip
UDP_STATES = ("unreplied", "replied")


@dataclass(frozen=True)
class CtTimeout:
    """A ``ct timeout`` object (nft 1.0.6 builds them for tcp and udp only).

    See docs/nftables.md#conntrack-timeouts-and-ct-timeout-objects.

    The kernel silently ignores ``add`` of an existing object with a new policy
    (verified on nft 1.0.6 / kernel 6.18), and deleting one strips the timeouts of
    every live entry that uses it (``nf_ct_untimeout``), so the renderer names them
    by content and transactions never delete them.
    """

    name: str
    protocol: L4Proto
    family: Family
    policy: tuple[tuple[str, int], ...]

    keyword = "ct timeout"

    def __post_init__(self) -> None:
        check_name(self.name)
        states = {L4Proto.TCP: TCP_STATES, L4Proto.UDP: UDP_STATES}.get(self.protocol)
        if states is None:
            raise ValueError(f"ct timeout {self.name}: nft 1.0.6 supports only tcp and udp")
        for state, seconds in self.policy:
            if state not in states or seconds <= 0:
                raise ValueError(f"ct timeout {self.name}: bad policy {state}={seconds}")

    def decl(self) -> tuple[object, ...]:
        return ("ct timeout", self.protocol, self.family, self.policy)

    def lines(self) -> list[str]:
        policy = ", ".join(f"{state}: {seconds}" for state, seconds in self.policy)
        return [
            f"{TAB}ct timeout {self.name} {{",
            f"{TAB * 2}protocol {self.protocol}",
            f"{TAB * 2}l3proto {ip_keyword(self.family)}",
            f"{TAB * 2}policy = {{ {policy} }}",
            f"{TAB}}}",
        ]

    def refs(self) -> tuple[Ref, ...]:
        return ()


class Hook(StrEnum):
    PREROUTING = "prerouting"
    INPUT = "input"
    FORWARD = "forward"
    OUTPUT = "output"
    POSTROUTING = "postrouting"


HOOK_ORDER = {h: i for i, h in enumerate(Hook)}
# Standard priority names (nft(8), "CHAIN PRIORITIES") and their numeric values.
PRIORITY_NAMES = {
    "raw": -300,
    "mangle": -150,
    "dstnat": -100,
    "filter": 0,
    "security": 50,
    "srcnat": 100,
}


@dataclass(frozen=True, slots=True)
class Priority:
    """A base-chain priority written as a standard name plus an offset (``filter + 10``)."""

    base: Literal["raw", "mangle", "dstnat", "filter", "security", "srcnat"]
    offset: int = 0

    @property
    def value(self) -> int:
        return PRIORITY_NAMES[self.base] + self.offset

    def text(self) -> str:
        if self.offset == 0:
            return self.base
        return f"{self.base} {'+' if self.offset > 0 else '-'} {abs(self.offset)}"


@dataclass(frozen=True, slots=True)
class BaseSpec:
    """What makes a chain a base chain: type, hook, priority and policy."""

    hook: Hook
    priority: Priority
    policy: Literal["accept", "drop"] = "accept"
    type: Literal["filter"] = "filter"

    def text(self) -> str:
        prio = self.priority.text()
        return f"type {self.type} hook {self.hook} priority {prio}; policy {self.policy};"


@dataclass(frozen=True)
class Chain:
    """A chain: a base chain when ``base`` is set, else a regular chain reached by jump/goto."""

    name: str
    rules: tuple[Rule, ...] = ()
    base: BaseSpec | None = None

    keyword = "chain"

    def __post_init__(self) -> None:
        check_name(self.name)

    def decl(self) -> tuple[object, ...]:
        if self.base is None:
            return ("chain",)
        b = self.base
        return ("base", b.type, str(b.hook), b.priority.value, b.policy)

    def lines(self) -> list[str]:
        head = [] if self.base is None else [f"{TAB * 2}{self.base.text()}"]
        body = [f"{TAB * 2}{rule.text()}" for rule in self.rules]
        return [f"{TAB}chain {self.name} {{", *head, *body, f"{TAB}}}"]

    def refs(self) -> tuple[Ref, ...]:
        return tuple(sorted({r for rule in self.rules for r in rule.refs()}))

    def with_rules(self, rules: Iterable[Rule]) -> Chain:
        return replace(self, rules=tuple(rules))


@dataclass(frozen=True, slots=True)
class Table:
    family: Literal["inet"] = "inet"
    name: str = "secgroups"

    def __str__(self) -> str:
        return f"{self.family} {self.name}"


TableObject = CtTimeout | Set | Map | Chain


def chain_sort_key(chain: Chain) -> tuple[int, int, int, str]:
    """Base chains first, in packet order (hook, then priority); then regular chains by name."""
    if chain.base is None:
        return (1, 0, 0, chain.name)
    return (0, HOOK_ORDER[chain.base.hook], chain.base.priority.value, chain.name)


def block(table: Table, objects: Iterable[TableObject]) -> str:
    """The ``table … { … }`` text of ``objects``, in the order given, one blank line between."""
    parts: list[str] = []
    for obj in objects:
        if parts:
            parts.append("")
        parts.extend(obj.lines())
    return "\n".join([f"table {table} {{", *parts, "}"]) + "\n"


def skeleton(obj: TableObject) -> TableObject:
    """The object without content: declaration only (no elements, no rules)."""
    if isinstance(obj, Set | Map):
        return obj.with_elements(())
    if isinstance(obj, Chain):
        return obj.with_rules(())
    return obj


@dataclass(frozen=True)
class Ruleset:
    """The whole desired content of our table, canonically ordered and closed under references.

    Build it with :meth:`of` (which sorts); direct construction checks the order.
    ``ct_timeouts`` and ``sets`` (sets and maps: one nft namespace) sort by name;
    ``chains`` by :func:`chain_sort_key`.
    """

    table: Table
    ct_timeouts: tuple[CtTimeout, ...] = ()
    sets: tuple[Set | Map, ...] = ()
    chains: tuple[Chain, ...] = ()
    _index: dict[tuple[RefKind, str], TableObject] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    @classmethod
    def of(cls, table: Table, objects: Iterable[TableObject]) -> Ruleset:
        objs = list(objects)
        return cls(
            table=table,
            ct_timeouts=tuple(
                sorted((o for o in objs if isinstance(o, CtTimeout)), key=lambda o: o.name)
            ),
            sets=tuple(sorted((o for o in objs if isinstance(o, Set | Map)), key=lambda o: o.name)),
            chains=tuple(sorted((o for o in objs if isinstance(o, Chain)), key=chain_sort_key)),
        )

    def __post_init__(self) -> None:
        index = self._index
        for kind, group in (
            (RefKind.CT_TIMEOUT, self.ct_timeouts),
            (RefKind.SET, self.sets),
            (RefKind.CHAIN, self.chains),
        ):
            for obj in group:
                if (kind, obj.name) in index:
                    raise ValueError(f"duplicate {kind} {obj.name}")
                index[(kind, obj.name)] = obj
        if (
            list(self.ct_timeouts) != sorted(self.ct_timeouts, key=lambda o: o.name)
            or list(self.sets) != sorted(self.sets, key=lambda o: o.name)
            or list(self.chains) != sorted(self.chains, key=chain_sort_key)
        ):
            raise ValueError("Ruleset objects are not in canonical order; build it with Ruleset.of")
        for obj in self.objects:
            for ref in obj.refs():
                target = index.get((ref.kind, ref.name))
                if target is None:
                    raise ValueError(
                        f"{obj.keyword} {obj.name} references missing {ref.kind} {ref.name}"
                    )
                if (
                    ref.kind is RefKind.CHAIN
                    and isinstance(target, Chain)
                    and target.base is not None
                ):
                    raise ValueError(f"{obj.keyword} {obj.name} jumps to base chain {ref.name}")

    @property
    def objects(self) -> tuple[TableObject, ...]:
        """Every object, in the order of the text: ct timeouts, sets and maps, chains."""
        return (*self.ct_timeouts, *self.sets, *self.chains)

    def get(self, kind: RefKind, name: str) -> TableObject | None:
        return self._index.get((kind, name))

    def chain(self, name: str) -> Chain:
        obj = self._index.get((RefKind.CHAIN, name))
        if not isinstance(obj, Chain):
            raise KeyError(f"no chain {name}")
        return obj

    def set(self, name: str) -> Set | Map:
        obj = self._index.get((RefKind.SET, name))
        if not isinstance(obj, Set | Map):
            raise KeyError(f"no set or map {name}")
        return obj

    @cached_property
    def rule_count(self) -> int:
        return sum(len(c.rules) for c in self.chains)

    @cached_property
    def element_count(self) -> int:
        return sum(len(s.elements) for s in self.sets)

    def text(self) -> str:
        """The whole table as one nft block (what golden files hold; ``nft -f`` loads it)."""
        return block(self.table, self.objects)
