"""nft transactions (``nft -f`` text) that move the kernel's table to a desired :class:`Ruleset`.

Role: the last pure step before the node agent's nft port. Each function returns
ONE transaction: nft applies a file atomically, so there is never a window with a
half-written table, and the table itself is never deleted (deleting it would drop
every ``ct timeout`` object and, with it, the timeouts of live flows).

Behaviour of nft 1.0.6 / kernel 6.18 that shapes them (verified in a netns, and
re-checked by ``tests/netns/test_nft_load.py``):

* ``flush table`` removes every rule but keeps chains, sets, **set and map
  elements** and ``ct timeout`` objects. Elements must be flushed per set.
* A chain still referenced by a verdict-map element cannot be deleted (EBUSY),
  even after ``flush table``; flushing the map first releases it.
* ``add set`` of an existing set with another type or flags fails (EEXIST);
  ``delete set`` + ``add set`` of the same name in one transaction works.
* ``add ct timeout`` of an existing object with another policy succeeds but
  changes nothing; deleting an object strips its timeouts from live conntrack
  entries (kernel ``nf_ct_untimeout``). So ct timeout objects are named by
  content (``names.ct_timeout``) and are **never deleted** here: an object no
  longer in the ruleset is left in place for the flows that still use it.

Neighbours: ``objects`` (the serialisers reused here), ``rendering`` (the
rulesets), the agent's nft port (runs the text), ``reading`` (our text format).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from secgroups.nft.elements import Element
from secgroups.nft.objects import (
    Chain,
    CtTimeout,
    Map,
    Ruleset,
    Set,
    Table,
    TableObject,
    block,
    chain_sort_key,
    skeleton,
)
from secgroups.nft.statements import RefKind

Key = tuple[RefKind, str]


@dataclass(frozen=True)
class Inventory:
    """What the kernel's table holds now: names and declarations, from ``nft -j list table``.

    Only needed by :func:`full_transaction` to delete objects the desired ruleset
    no longer has and to re-create objects whose declaration changed (an upgrade
    that changed a set's type); the agent reads it with one listing at start-up.
    """

    chains: Mapping[str, tuple[object, ...]] = field(default_factory=dict)
    sets: Mapping[str, tuple[object, ...]] = field(default_factory=dict)  # sets and maps
    ct_timeouts: frozenset[str] = frozenset()

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], table: Table | None = None) -> Inventory:
        """Parse the ``{"nftables": [...]}`` document of ``nft -j list table <table>``."""
        tbl = table or Table()
        chains: dict[str, tuple[object, ...]] = {}
        sets: dict[str, tuple[object, ...]] = {}
        timeouts: set[str] = set()
        for item in doc.get("nftables", ()):
            (kind, obj), *_ = item.items()
            if kind not in ("chain", "set", "map", "ct timeout") or not isinstance(obj, dict):
                continue
            if obj.get("table") != tbl.name or obj.get("family") != tbl.family:
                continue
            name = obj["name"]
            if kind == "chain":
                chains[name] = (
                    ("base", obj["type"], obj["hook"], obj["prio"], obj["policy"])
                    if "hook" in obj
                    else ("chain",)
                )
            elif kind in ("set", "map"):
                raw = obj["type"]
                key = tuple(raw) if isinstance(raw, list) else (raw,)
                interval = "interval" in obj.get("flags", ())
                sets[name] = (
                    ("set", key, interval) if kind == "set" else ("map", key, obj["map"], interval)
                )
            elif kind == "ct timeout":
                timeouts.add(name)
        return cls(chains=chains, sets=sets, ct_timeouts=frozenset(timeouts))


def _set_keyword(decl: tuple[object, ...]) -> str:
    return "map" if decl[0] == "map" else "set"


def full_transaction(ruleset: Ruleset, present: Inventory | None = None) -> str:
    """Atomic replace of the whole table with ``ruleset`` (start-up, periodic resync, recovery).

    ``add table; flush table`` (rules gone), then every set and map is emptied
    and re-filled and every chain re-filled. With ``present`` (the current
    :class:`Inventory`), chains, sets and maps that are not in ``ruleset`` or
    whose declaration differs are deleted (and re-created); without it they are
    left in place, flushed of rules, and objects whose declaration changed make
    the transaction fail — pass the inventory after an upgrade.
    """
    t = ruleset.table
    out = [f"add table {t}", f"flush table {t}"]
    if present is None:
        # Declare first so that `flush set` finds every set, then empty them.
        out.append(block(t, [skeleton(obj) for obj in ruleset.objects]).rstrip("\n"))
        out.extend(f"flush {s.keyword} {t} {s.name}" for s in ruleset.sets)
    else:
        # Existing sets and maps are emptied first: verdict-map elements pin their chains.
        out.extend(f"flush {_set_keyword(d)} {t} {n}" for n, d in sorted(present.sets.items()))
        for name, decl in sorted(present.chains.items()):
            want = ruleset.get(RefKind.CHAIN, name)
            if want is None or want.decl() != decl:
                out.append(f"delete chain {t} {name}")
        for name, decl in sorted(present.sets.items()):
            want = ruleset.get(RefKind.SET, name)
            if want is None or want.decl() != decl:
                out.append(f"delete {_set_keyword(decl)} {t} {name}")
    return "\n".join(out) + "\n" + ruleset.text()


def _index(ruleset: Ruleset) -> dict[Key, TableObject]:
    kinds = {"ct timeout": RefKind.CT_TIMEOUT, "set": RefKind.SET, "map": RefKind.SET}
    return {(kinds.get(o.keyword, RefKind.CHAIN), o.name): o for o in ruleset.objects}


def _element_delta(old: Set | Map, new: Set | Map) -> tuple[list[Element], list[Element]]:
    """(to delete, to add). A map element whose value changed is deleted and re-added."""
    before = {el.key_text(): el for el in old.elements}
    after = {el.key_text(): el for el in new.elements}
    gone = [el for k, el in before.items() if after.get(k) != el]
    came = [el for k, el in after.items() if before.get(k) != el]
    return gone, came


def diff_transaction(old: Ruleset, new: Ruleset) -> str:
    """The incremental transaction from ``old`` (what the kernel has) to ``new``; "" if equal.

    Order inside the one transaction: (1) flush the chains that change, go, or
    reference an object that is re-declared; (2) delete changed set and map
    elements; (3) delete re-declared objects; (4) one block that adds new and
    re-declared objects, new elements and the rules of flushed chains; (5) delete
    removed sets and maps, then removed chains. ct timeout objects are never
    deleted (see the module docstring).
    """
    if old.table != new.table:
        raise ValueError(f"cannot diff table {old.table} into {new.table}")
    t = new.table
    before, after = _index(old), _index(new)
    redeclared = _redeclared(before, after)
    removed = sorted(before.keys() - after.keys())
    common = sorted((before.keys() & after.keys()) - redeclared)

    flush: set[str] = set()
    refill: list[TableObject] = []
    deletes: list[str] = []
    partial: list[TableObject] = []
    for key in common:
        was, now = before[key], after[key]
        if isinstance(was, Chain) and isinstance(now, Chain):
            if was.rules != now.rules or any(r in redeclared for r in _refs(was)):
                flush.add(was.name)
                refill.append(now)
        elif isinstance(was, Set | Map) and isinstance(now, Set | Map) and was != now:
            gone, came = _element_delta(was, now)
            if gone:
                deletes.append(
                    f"delete element {t} {was.name} {{ {', '.join(e.key_text() for e in gone)} }}"
                )
            if came:
                partial.append(now.with_elements(came))
    for key in [*removed, *sorted(redeclared)]:
        if key[0] is RefKind.CHAIN:
            flush.add(key[1])

    out = [f"flush chain {t} {name}" for name in sorted(flush)]
    out += deletes
    out += [_delete(t, before[k]) for k in sorted(redeclared) if k[0] is RefKind.SET]
    out += [_delete(t, before[k]) for k in sorted(redeclared) if k[0] is not RefKind.SET]
    adds = [after[k] for k in sorted(after.keys() - before.keys())]
    adds += [after[k] for k in sorted(redeclared)]
    adds += partial + refill
    if adds:
        out.append(block(t, _canonical(adds)).rstrip("\n"))
    out += [_delete(t, before[k]) for k in removed if k[0] is RefKind.SET]
    out += [_delete(t, before[k]) for k in removed if k[0] is RefKind.CHAIN]
    return "\n".join(out) + "\n" if out else ""


def staged_diff(old: Ruleset, new: Ruleset) -> tuple[str, str]:
    """``(stage, switch)``: the incremental change as two transactions, applied in order.

    ``stage`` creates, complete (chains with their rules, sets and maps with their
    elements), every object that ``new`` adds: nothing in force references them yet, so it
    changes no verdict. ``switch`` is :func:`diff_transaction` from ``old`` plus those
    objects to ``new`` — the one atomic policy change; it re-points references (verdict-map
    elements, gate and member elements, refilled chains) to objects that already exist.

    Why (docs/nftables.md, "Transactions: nothing new in the switch"): the kernel pins a
    packet's *rules* to the generation current when the packet entered the base chain, but
    every set or map *lookup* reads the generation current at the lookup. A packet that
    crosses the commit can therefore take a verdict-map element added by the switch into a
    chain that the switch created — and a chain created in a transaction has no rules in
    the previous generation: the packet falls off its end. From a ``goto`` that ends the
    base chain with its ``accept`` policy (a packet both policies deny was delivered: 1 in
    ~800 datagrams, ``tests/netns/test_atomicity.py`` under load); from a ``jump`` it drops
    a packet both allow. Measured by ``tests/netns/test_nft_generations.py``. With every
    new object created one transaction earlier, both generations of every chain a new
    element can reach hold its rules. Objects that reference a re-declared object (same
    name, new type) cannot exist before the switch re-declares it; they stay in the switch.
    """
    before, after = _index(old), _index(new)
    fresh = _staged_closure(after, lambda key: key not in before, _redeclared(before, after))
    if not fresh:
        return "", diff_transaction(old, new)
    stage = block(new.table, _canonical(list(fresh)))
    return stage, diff_transaction(Ruleset.of(old.table, [*old.objects, *fresh]), new)


def full_staging(ruleset: Ruleset, present: Inventory | None) -> tuple[str, Inventory | None]:
    """``(stage, present')`` for a full resync over an existing table: every object the
    kernel lacks is created first, complete (see :func:`staged_diff`), and ``present'``
    lists them so that :func:`full_transaction` empties and refills them like any existing
    object."""
    if present is None or not present.chains:
        return "", present  # no live table: there is no policy to keep in force
    after = _index(ruleset)

    def lacking(key: Key) -> bool:
        if key[0] is RefKind.CHAIN:
            return key[1] not in present.chains
        if key[0] is RefKind.SET:
            return key[1] not in present.sets
        return key[1] not in present.ct_timeouts

    def changed(key: Key) -> bool:
        if key[0] is RefKind.CT_TIMEOUT:
            return False
        held = present.chains if key[0] is RefKind.CHAIN else present.sets
        return key[1] in held and held[key[1]] != after[key].decl()

    fresh = _staged_closure(after, lacking, {k for k in after if changed(k)})
    if not fresh:
        return "", present
    chains = {**present.chains, **{o.name: o.decl() for o in fresh if isinstance(o, Chain)}}
    sets = {**present.sets, **{o.name: o.decl() for o in fresh if isinstance(o, Set | Map)}}
    timeouts = present.ct_timeouts | {o.name for o in fresh if isinstance(o, CtTimeout)}
    stage = block(ruleset.table, _canonical(list(fresh)))
    return stage, replace(present, chains=chains, sets=sets, ct_timeouts=timeouts)


def _redeclared(before: Mapping[Key, TableObject], after: Mapping[Key, TableObject]) -> set[Key]:
    return {k for k in before.keys() & after.keys() if before[k].decl() != after[k].decl()}


def _staged_closure(
    after: Mapping[Key, TableObject], new: Callable[[Key], bool], redeclared: set[Key]
) -> list[TableObject]:
    """Every object of ``after`` that the kernel lacks (``new(key)``), for the stage
    transaction — except those that reference, directly or not, an object re-declared in
    the switch (``redeclared``): they can only be created after it."""
    candidates = {k for k in after if new(k)}
    if not redeclared:
        return [after[k] for k in sorted(candidates)]
    blocked = set(redeclared)
    changed = True
    while changed:  # propagate "references a blocked object" to a fixed point
        changed = False
        for k in candidates - blocked:
            if any(ref in blocked for ref in _refs(after[k])):
                blocked.add(k)
                changed = True
    return [after[k] for k in sorted(candidates - blocked)]


def _refs(obj: TableObject) -> Iterable[Key]:
    return ((r.kind, r.name) for r in obj.refs())


def _delete(t: Table, obj: TableObject) -> str:
    return f"delete {obj.keyword} {t} {obj.name}"


def _canonical(objects: list[TableObject]) -> Iterable[TableObject]:
    """The objects in the order ``Ruleset.text()`` uses (ct timeouts, sets and maps, chains)."""
    yield from sorted((o for o in objects if isinstance(o, CtTimeout)), key=lambda o: o.name)
    yield from sorted((o for o in objects if isinstance(o, Set | Map)), key=lambda o: o.name)
    yield from sorted((o for o in objects if isinstance(o, Chain)), key=chain_sort_key)
