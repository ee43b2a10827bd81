"""Compute the next nft transaction from the node's inputs: per-object caches and element deltas.

This is the "compute" half of a sync (:mod:`secgroups_agent.syncing` does the I/O).
Re-rendering a whole node on every change costs seconds of Python at 120k set
elements, so the desired table is kept as parts, each recomputed only when its own
inputs change:

* the **static** part (base chains, shared chains, ct timeouts) — once;
* one part per **group** (its two chains and their dispatch sub-chains, its port sets and
  dispatch maps, which set twins it uses) — when its spec or the identity of a set it
  references changes;
* one part per **pod** (its group-list chains, its elements of the pod sets and maps) —
  when the pod, its groups' identities or its mark's inputs change (its groups' re-check
  counters and those of the sets they name inbound: ``secgroups.nft.epochs.pod_mark``);
  a group whose counters alone changed keeps its chains;
* the **anti-spoofing** elements (every routed pod address of the node, managed or not,
  with its interface) — when the routes change;
* the **elements** of each address-set twin (one per compiled set and family), kept per
  compiled CIDR, so that a member change touches only that member's elements.

The committed :class:`TableState` holds the *structure* (every object, with pod sets
and address sets as empty declarations) and, per set, its elements. A plan compares
the new structure with the old one object by object (unchanged parts are the same
objects) and the elements set by set, and emits ONE transaction with the renderer's
``diff_transaction`` applied to two small rulesets: the old and new versions of the
changed objects, the removed and added elements, and empty declarations of what they
reference. A full plan is ``full_transaction`` of the whole table.

The parts come from :mod:`secgroups_agent.parts` (per-object entry points composed from
the renderer's ``render``). Unit tests check that the assembled table is byte-identical
to ``render`` of the whole node, after any sequence of incremental plans.

Every name the parts use is claimed for its owner (:mod:`secgroups_agent.collisions`): a
group or group list whose name another owner holds is refused, its pods are isolated
(no group: everything denied) and the refusal is reported in the plan; the holder keeps
what it has.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from secgroups.compiled import (
    CompiledAddressSetSpec,
    CompiledGroupSpec,
    CompiledNodeSpec,
    CompiledPod,
    ObjectKey,
    SourceKind,
)
from secgroups.compiling import gc_paused
from secgroups.models import Direction
from secgroups.nft import names
from secgroups.nft.objects import (
    Chain,
    CtTimeout,
    Element,
    Map,
    Ruleset,
    Set,
    TableObject,
    skeleton,
)
from secgroups.nft.rendering import (
    MAX_HASH_SET_ADDRESSES,
    RenderError,
    RenderOptions,
    pending_sets,
)
from secgroups.nft.sealing import SEAL
from secgroups.nft.statements import Family, RefKind
from secgroups.nft.transactions import (
    Inventory,
    full_staging,
    full_transaction,
    staged_diff,
)
from secgroups_agent.collisions import (
    STATIC,
    Claims,
    Refusal,
    group_owner,
    list_owner,
    ports_owner,
    reserve,
    set_owner,
)
from secgroups_agent.parts import (
    GroupPart,
    Key,
    PartRenderer,
    PodPart,
    TwinRef,
    canonical_ip,
    cidr_elements,
    key_of,
    mark_counters,
    member_block,
    member_cidrs,
    set_identity,
    used_sets,
)
from secgroups_agent.sources import PodInputs, Snapshot, pod_inputs, same_pod_inputs


# --------------------------------------------------------------------------- state
@dataclass(frozen=True)
class TwinMembers:
    """What one address-set twin holds: the compiled member CIDRs (the snapshot's own
    tuple, so nothing per member is kept) and the number of elements they make."""

    ref: TwinRef
    spec: CompiledAddressSetSpec
    cidrs: tuple[str, ...]
    count: int

    def elements(self) -> Iterable[Element]:
        for c in self.cidrs:
            yield from cidr_elements(self.spec, c)


@dataclass(frozen=True)
class _FilledTwin(Set):
    """A twin with all its members for a full plan, the element lines ready-made
    (``parts.member_block``): the same text as ``Set``'s, without an ``Element`` per
    member. Only ever printed."""

    body: str = ""

    def with_elements(self, elements: Iterable[Element]) -> Set:
        return Set(self.name, self.key, self.interval, tuple(elements))  # skeleton(): no body

    def lines(self) -> list[str]:
        return [f"\tset {self.name} {{", *self.spec_lines(), *filter(None, [self.body]), "\t}"]


@dataclass(frozen=True)
class TableState:
    """What our table holds once a plan is committed.

    ``objects`` is the structure: every object of the table, pod sets and address sets
    as empty declarations; their elements are in ``containers`` and ``twins``.
    """

    objects: Mapping[Key, TableObject]
    containers: Mapping[str, Mapping[str, Element]]
    twins: Mapping[str, TwinMembers]
    pod_ips: Mapping[str, str]  # canonical pod IP -> pod UID
    pods: int
    generation: int | None
    # Who holds each name (collisions.py), and what was refused to get there.
    owners: Mapping[Key, str] = field(default_factory=dict)  # never mutated: shared
    refused: tuple[Refusal, ...] = ()

    @property
    def chains(self) -> list[Chain]:
        return [o for o in self.objects.values() if isinstance(o, Chain)]

    @property
    def sets(self) -> list[Set | Map]:
        return [o for o in self.objects.values() if isinstance(o, Set | Map)]

    @property
    def ct_timeouts(self) -> list[CtTimeout]:
        return [o for o in self.objects.values() if isinstance(o, CtTimeout)]

    @property
    def rules(self) -> int:
        return sum(len(c.rules) for c in self.chains)

    def set_sizes(self) -> dict[str, int]:
        sizes = {s.name: len(s.elements) for s in self.sets}
        sizes.update({name: len(els) for name, els in self.containers.items()})
        sizes.update({name: t.count for name, t in self.twins.items()})
        return sizes

    @property
    def set_elements(self) -> int:
        return sum(self.set_sizes().values())


@dataclass(frozen=True)
class Plan:
    """One transaction and the state it leads to. ``text`` is empty when nothing changes.

    ``stage`` is applied just before ``text``: it creates, complete, every object the
    change introduces (new chains with their rules, new sets and maps with their
    elements), which must exist one transaction before anything in force points at them
    (``secgroups.nft.transactions.staged_diff``, docs/nftables.md "Nothing new in the
    switch"); alone it changes no verdict. Empty when the change adds no object.
    """

    kind: Literal["full", "incremental"]
    text: str
    state: TableState
    removed_ips: frozenset[str]  # pod IPs whose pod went away (conntrack cleanup after commit)
    changed: tuple[str, ...]  # what changed, for logs
    stage: str = ""

    @property
    def noop(self) -> bool:
        return not self.text


def _same(a: object, b: object) -> bool:
    return a is b or a == b


# What a group's chains do not depend on: its re-check counter (part of its members' marks,
# in the pod parts) and the generations it requires (the source's gating).
_COUNTERS = frozenset({"recheck", "requires"})


def _same_rules(a: CompiledGroupSpec, b: CompiledGroupSpec) -> bool:
    """``a`` and ``b`` render the same group chains (they may differ in counters)."""
    return a is b or all(
        getattr(a, f) == getattr(b, f) for f in type(a).model_fields if f not in _COUNTERS
    )


@dataclass
class _Caches:
    groups: dict[str, tuple[CompiledGroupSpec, tuple[tuple[str, object], ...], GroupPart]] = field(
        default_factory=dict
    )
    pods: dict[tuple[str, str], tuple[CompiledPod, tuple[object, ...], PodPart]] = field(
        default_factory=dict
    )
    skeletons: dict[tuple[str, tuple[SourceKind, ObjectKey]], dict[Family, Set]] = field(
        default_factory=dict
    )
    full_twins: dict[str, tuple[tuple[str, ...], CompiledAddressSetSpec, Set, int]] = field(
        default_factory=dict
    )
    pod_ips: tuple[CompiledNodeSpec, dict[str, str]] | None = None
    pending: tuple[frozenset[str], dict[str, dict[str, Element]]] | None = None
    pod_section: tuple[PodInputs, list[Chain], dict[str, dict[str, Element]]] | None = None
    # Per group: (its spec, the raised set counters, what its members' pod parts depend on).
    marks: dict[str, tuple[CompiledGroupSpec, tuple[tuple[str, int], ...], tuple[object, ...]]] = (
        field(default_factory=dict)
    )
    antispoof: tuple[dict[str, str], dict[str, dict[str, Element]]] | None = None
    # The last _claim that refused nothing: its inputs (node, used groups, their parts)
    # and its answer, which then does not depend on who held what before.
    claims: (
        tuple[
            CompiledNodeSpec,
            tuple[str, ...],
            tuple[GroupPart, ...],
            tuple[dict[str, GroupPart], Claims],
        ]
        | None
    ) = None


class Planner:
    """Turns snapshots into plans; remembers the committed state and the part caches."""

    def __init__(self, node: str, options: RenderOptions | None = None) -> None:
        self.node = node
        self.options = options or RenderOptions()
        self.parts = PartRenderer(node, self.options)
        self.applied: TableState | None = None  # None: the kernel's table is unknown
        self.last_committed: TableState | None = None  # kept across forget()
        self._cache = _Caches()
        self._digests: dict[int, tuple[object, str]] = {}  # id -> (part, its digest)

    # ------------------------------------------------------------- lifecycle
    def commit(self, plan: Plan) -> None:
        """``plan`` was applied: its state is now the kernel's."""
        self.applied = self.last_committed = plan.state

    def forget(self) -> None:
        """The kernel's table is unknown (a failed or unconfirmed apply): plan in full next."""
        self.applied = None

    # ------------------------------------------------------------- parts, cached
    def _group_part(
        self, key: str, spec: CompiledGroupSpec, sets: Mapping[str, CompiledAddressSetSpec]
    ) -> GroupPart:
        hit = self._cache.groups.get(key)
        same = hit is not None and _same_rules(hit[0], spec)
        used = [d[0] for d in hit[1]] if hit is not None and same else used_sets(spec)
        deps: tuple[tuple[str, object], ...] = tuple(
            (s, set_identity(sets[s]) if s in sets else None) for s in used
        )
        if hit is not None and same and hit[1] == deps:
            if hit[0] is not spec:  # counters alone changed: compare with the new one next
                self._cache.groups[key] = (spec, deps, hit[2])
            return hit[2]
        part = self.parts.group(key, spec, sets)
        self._cache.groups[key] = (spec, deps, part)
        return part

    def _pod_part(
        self,
        pod: CompiledPod,
        groups: Mapping[str, CompiledGroupSpec],
        sets: Mapping[str, CompiledAddressSetSpec],
        sigs: Mapping[str, tuple[object, ...]],
    ) -> PodPart:
        """``sigs``: per group, what the pod part depends on (``_group_sig``)."""
        sig = tuple(sigs.get(g, g) for g in pod.groups)
        hit = self._cache.pods.get((pod.namespace, pod.name))
        if hit is not None and _same(hit[0], pod) and hit[1] == sig:
            return hit[2]
        part = self.parts.pods((pod,), groups, sets)
        self._cache.pods[(pod.namespace, pod.name)] = (pod, sig, part)
        return part

    def _skeleton(self, key: str, spec: CompiledAddressSetSpec, f: Family) -> Set:
        ident = (key, set_identity(spec))
        twins = self._cache.skeletons.get(ident)
        if twins is None:
            twins = self.parts.twin_skeletons(key, spec)
            self._cache.skeletons[ident] = twins
        return twins[f]

    def _pod_ips(self, node: CompiledNodeSpec) -> dict[str, str]:
        """Canonical pod IP -> UID; like the renderer, the later pod in (ns, name) order wins."""
        hit = self._cache.pod_ips
        if hit is not None and hit[0] is node:
            return hit[1]
        out: dict[str, str] = {}
        for pod in sorted(node.pods, key=lambda p: (p.namespace, p.name)):
            for ip in pod.ips:
                try:
                    out[canonical_ip(ip)] = pod.uid
                except ValueError:
                    continue
        self._cache.pod_ips = (node, out)
        return out

    # ------------------------------------------------------------- the desired table
    def _antispoof(self, interfaces: Mapping[str, str]) -> dict[str, dict[str, Element]]:
        """The anti-spoofing containers' elements: every routed pod address of the node,
        managed or not (cached until the routes change)."""
        hit = self._cache.antispoof
        if hit is not None and hit[0] == interfaces:
            return hit[1]
        boxes = {
            name: {el.key_text(): el for el in els}
            for name, els in self.parts.antispoof(interfaces).items()
        }
        self._cache.antispoof = (dict(interfaces), boxes)
        return boxes

    def _group_sig(
        self,
        key: str,
        spec: CompiledGroupSpec,
        sets: Mapping[str, CompiledAddressSetSpec],
        counters: tuple[tuple[str, int], ...],
    ) -> tuple[object, ...]:
        """What the pod parts of ``key``'s members depend on: its name, and its members'
        mark inputs (``parts.mark_counters``), kept while neither the group object nor
        the raised set counters (``counters``) change."""
        hit = self._cache.marks.get(key)
        if hit is None or hit[0] is not spec or hit[1] != counters:
            sig = (key, spec.group, spec.synthesized, mark_counters(key, spec, sets))
            hit = self._cache.marks[key] = (spec, counters, sig)
        return hit[2]

    def _pod_section(self, snap: Snapshot) -> tuple[list[Chain], dict[str, dict[str, Element]]]:
        """Group-list chains and container elements of all pods (cached on its inputs: the
        node, the group objects and the raised set counters, which are in the marks)."""
        inputs = pod_inputs(snap)
        node, groups, counters = inputs
        hit = self._cache.pod_section
        if hit is not None and same_pod_inputs(hit[0], inputs):
            return hit[1], hit[2]
        claimed: dict[str, int] = {}
        for pod in node.pods:
            for ip in pod.ips:
                claimed[ip] = claimed.get(ip, 0) + 1
        pods = sorted(node.pods, key=lambda p: (p.namespace, p.name))
        if any(n > 1 for n in claimed.values()):
            # Two pods claim one IP: only a render of all pods resolves the owner.
            pod_parts = [self.parts.pods(tuple(pods), snap.groups, snap.sets)]
        else:
            sigs = {g: self._group_sig(g, spec, snap.sets, counters) for g, spec in groups}
            pod_parts = [self._pod_part(p, snap.groups, snap.sets, sigs) for p in pods]
            alive = {(p.namespace, p.name) for p in pods}
            for gone_pod in set(self._cache.pods) - alive:
                del self._cache.pods[gone_pod]
            for gone_group in set(self._cache.marks) - set(snap.groups):
                del self._cache.marks[gone_group]
        chains: dict[str, Chain] = {}
        containers: dict[str, dict[str, Element]] = {n: {} for n in self.parts.static().containers}
        for part in pod_parts:
            for chain in part.chains:
                chains[chain.name] = chain
            for name, els in part.elements.items():
                box = containers[name]
                for el in els:
                    box[el.key_text()] = el  # texts are canonical, and cheap to hash
        out = list(chains.values())
        self._cache.pod_section = (inputs, out, containers)
        return out, containers

    def _claim(
        self, snap: Snapshot
    ) -> tuple[Snapshot, dict[str, GroupPart], Claims, list[Refusal]]:
        """Group parts, with every name claimed for its owner (collisions.py).

        Returns the snapshot to render pods from (the pods of refused groups and lists
        isolated: no group), the parts of the groups that got their names, the claims
        and the refusals."""
        static = self.parts.static()
        node = snap.node
        used = sorted({g for pod in node.pods for g in pod.groups if g in snap.groups})
        refused: list[Refusal] = []
        parts: dict[str, GroupPart] = {}
        for g in used:
            try:
                parts[g] = self._group_part(g, snap.groups[g], snap.sets)
            except ValueError as exc:  # RenderError included: this group, not the node
                refused.append(Refusal(group_owner(g), error=str(exc)))
        for gone in set(self._cache.groups) - set(used):
            del self._cache.groups[gone]
        hit = self._cache.claims
        if (
            not refused
            and hit is not None
            and hit[0] is node
            and hit[1] == tuple(used)
            and all(a is b for a, b in zip(hit[2], parts.values(), strict=True))
        ):
            # The hot path: no name moved. Nothing was refused, so nothing is isolated and
            # the pods render from this snapshot itself — not the cached one, whose groups
            # and sets may differ in what the parts do not hold (re-check counters).
            return snap, dict(hit[3][0]), hit[3][1], []
        wants = {g: list(_group_claims(g, part)) for g, part in parts.items()}
        lists: dict[tuple[str, ...], list[tuple[Key, str]]] = {(): _list_claims((), snap)}
        for pod in node.pods:
            groups = tuple(g for g in pod.groups if g in snap.groups)
            if groups not in lists:
                lists[groups] = _list_claims(groups, snap)
        held = self.last_committed.owners if self.last_committed is not None else {}
        claims = Claims({key_of(o): STATIC for o in static.objects})
        claims.owners.update({(RefKind.SET, n): STATIC for n in static.containers})
        reserve(claims, held, [w for ws in (*wants.values(), *lists.values()) for w in ws])
        for g in used:
            if g in parts and (no := claims.claim(group_owner(g), wants[g])) is not None:
                refused.append(no)
                del parts[g]
        isolated: set[tuple[str, ...]] = set()
        for groups, want in sorted(lists.items()):  # the empty list first: isolation
            if any(g not in parts for g in groups):
                isolated.add(groups)
            elif (no := claims.claim(list_owner(groups), want)) is not None:
                if not groups:
                    raise RenderError(no.text())  # nowhere to isolate pods to
                refused.append(no)
                isolated.add(groups)
        if isolated:
            pods = tuple(
                p.model_copy(update={"groups": ()})
                if tuple(g for g in p.groups if g in snap.groups) in isolated
                else p
                for p in node.pods
            )
            snap = dataclasses.replace(snap, node=node.model_copy(update={"pods": pods}))
        if not refused:
            self._cache.claims = (
                node,
                tuple(used),
                tuple(parts.values()),
                (parts, claims),
            )
        else:
            self._cache.claims = None
        return snap, parts, claims, refused

    def _desired(
        self, snap: Snapshot, interfaces: Mapping[str, str]
    ) -> tuple[
        dict[Key, TableObject],
        dict[str, dict[str, Element]],
        dict[str, TwinRef],
        dict[Key, str],
        tuple[Refusal, ...],
    ]:
        """The structure, the container elements, the twins used, the owner of every
        object and the refusals."""
        static = self.parts.static()
        snap, parts, claims, refused = self._claim(snap)
        group_parts = list(parts.values())
        pod_chains, containers = self._pod_section(snap)
        containers = {**containers, **self._antispoof(interfaces)}
        objects: dict[Key, TableObject] = {key_of(o): o for o in static.objects}
        for name, empty in static.containers.items():
            objects[(RefKind.SET, name)] = empty
        for chain in pod_chains:
            objects[(RefKind.CHAIN, chain.name)] = chain
        refs: dict[str, TwinRef] = {}
        for gpart in group_parts:
            for chain in gpart.chains:
                objects[(RefKind.CHAIN, chain.name)] = chain
            for obj in gpart.sets:
                objects[(RefKind.SET, obj.name)] = obj
            for ref in gpart.twins:
                refs[ref.name] = ref
        for name, ref in refs.items():
            objects[(RefKind.SET, name)] = self._skeleton(ref.key, snap.sets[ref.key], ref.family)
        # Every name claimed (a superset of the objects: what the next plan reserves).
        return objects, containers, refs, claims.owners, tuple(refused)

    def _members(
        self, ref: TwinRef, spec: CompiledAddressSetSpec, was: TwinMembers | None
    ) -> tuple[TwinMembers, list[Element], list[Element]]:
        """The twin's new members and the elements to delete and to add."""
        cidrs = member_cidrs(spec, ref.family)
        if was is not None and (was.cidrs is cidrs or was.cidrs == cidrs):
            same = was.cidrs is cidrs and was.spec is spec
            return (was if same else TwinMembers(ref, spec, cidrs, was.count)), [], []
        before = set(was.cidrs) if was is not None else set()
        after = set(cidrs)
        gone: list[Element] = []
        came: list[Element] = []
        if was is not None:
            for c in sorted(before - after):
                gone.extend(cidr_elements(was.spec, c))
        for c in sorted(after - before):
            came.extend(cidr_elements(spec, c))
        if gone and came:  # an address can move between a removed and an added CIDR
            gone_set, came_set = set(gone), set(came)
            gone, came = (
                [e for e in gone if e not in came_set],
                [e for e in came if e not in gone_set],
            )
        count = (was.count if was is not None else 0) - len(gone) + len(came)
        if count > MAX_HASH_SET_ADDRESSES:
            raise RenderError(f"address set {ref.key} has {count} elements in {ref.name}")
        return TwinMembers(ref, spec, cidrs, count), gone, came

    def _full_twin(self, ref: TwinRef, skel: Set, spec: CompiledAddressSetSpec) -> tuple[Set, int]:
        """The twin with all its members (element text cached until the members change)."""
        cidrs = member_cidrs(spec, ref.family)
        hit = self._cache.full_twins.get(ref.name)
        if (
            hit is not None
            and (hit[0] is cidrs or hit[0] == cidrs)
            and hit[1].source_kind is spec.source_kind
            and hit[2].decl() == skel.decl()
        ):
            return hit[2], hit[3]
        count, body = member_block(spec, ref.family)
        full = _FilledTwin(skel.name, skel.key, skel.interval, (), body)
        self._cache.full_twins[ref.name] = (cidrs, spec, full, count)
        return full, count

    def _pending_boxes(self, pending: frozenset[str]) -> dict[str, dict[str, Element]]:
        """The placeholder's set elements (the renderer's ``pending_sets``), cached."""
        hit = self._cache.pending
        if hit is not None and (hit[0] is pending or hit[0] == pending):
            return hit[1]
        boxes = {s.name: {e.key_text(): e for e in s.elements} for s in pending_sets(pending)}
        self._cache.pending = (pending, boxes)
        return boxes

    # ------------------------------------------------------------- plans
    def plan(
        self,
        snap: Snapshot,
        interfaces: Mapping[str, str],
        *,
        full: bool = False,
        inventory: Inventory | None = None,
        pending: frozenset[str] = frozenset(),
    ) -> Plan:
        """The transaction from the committed state (from anything, when ``full``).

        ``pending``: the addresses behind the fail-closed placeholder (``pending4/6``;
        docs/cni.md), as ``secgroups_agent.cni`` decides them.

        Raises the renderer's ``RenderError`` (a ValueError) for input nft cannot hold.
        The cyclic GC is paused meanwhile (``compiling.gc_paused``): a cold plan builds
        ~120k member elements outside ``render()`` (which pauses it too), and the
        collections they triggered walked the growing heap for half of a cold start
        (bench/agent_sync.py: 1.7 s -> 0.85 s); planning creates no reference cycles.
        """
        with gc_paused():
            return self._plan(snap, interfaces, full=full, inventory=inventory, pending=pending)

    def _plan(
        self,
        snap: Snapshot,
        interfaces: Mapping[str, str],
        *,
        full: bool,
        inventory: Inventory | None,
        pending: frozenset[str] = frozenset(),
    ) -> Plan:
        old = self.applied
        objects, boxes, refs, owners, refused = self._desired(snap, interfaces)
        containers: dict[str, Mapping[str, Element]] = dict(boxes)
        containers.update(self._pending_boxes(pending))
        pod_ips = self._pod_ips(snap.node)
        # Against the last commit, even after a failure: a pod deleted while the table's
        # state was unknown still gets its conntrack entries cleaned after the full resync.
        last = self.last_committed
        removed = frozenset(
            ip for ip, uid in (last.pod_ips.items() if last else ()) if pod_ips.get(ip) != uid
        )
        redeclared = old is not None and any(
            k in old.objects and old.objects[k] is not o and old.objects[k].decl() != o.decl()
            for k, o in objects.items()
        )
        if full or old is None or redeclared:
            return self._full(
                snap, objects, containers, refs, pod_ips, removed, inventory, owners, refused
            )

        changed: list[str] = []
        old_mini: dict[Key, TableObject] = {}
        new_mini: dict[Key, TableObject] = {}
        for k, obj in objects.items():
            was = old.objects.get(k)
            if was is None:
                new_mini[k] = obj
            elif was is not obj and was != obj:
                old_mini[k], new_mini[k] = was, obj
        for k, was in old.objects.items():
            if k not in objects:
                old_mini[k] = was
        if old_mini or new_mini:
            changed.append(f"objects:{len(set(old_mini) | set(new_mini))}")

        # Pod set and map elements.
        for name, box in containers.items():
            before = old.containers.get(name, {})
            if before is box or before == box:
                containers[name] = before  # keep the committed object: cheaper next time
                continue
            gone = [el for k, el in before.items() if box.get(k) != el]
            came = [el for k, el in box.items() if before.get(k) != el]
            k = (RefKind.SET, name)
            obj = objects[k]
            assert isinstance(obj, Set | Map)
            old_mini[k] = obj.with_elements(gone)
            new_mini[k] = obj.with_elements(came)
            changed.append(name)

        # Address-set members.
        twins: dict[str, TwinMembers] = {}
        for name, ref in sorted(refs.items()):
            k = (RefKind.SET, name)
            skel = objects[k]
            assert isinstance(skel, Set)
            held = old.twins.get(name) if k in old.objects else None
            members, gone_els, came_els = self._members(ref, snap.sets[ref.key], held)
            twins[name] = members
            if held is None:  # a new set: declared and filled in one go
                new_mini[k] = skel.with_elements(came_els)
                changed.append(f"+{name}")
            elif gone_els or came_els:
                old_mini[k] = skel.with_elements(gone_els)
                new_mini[k] = skel.with_elements(came_els)
                changed.append(name)

        state = TableState(
            objects,
            containers,
            twins,
            pod_ips,
            len(snap.node.pods),
            snap.generation,
            owners,
            refused,
        )
        if not old_mini and not new_mini:
            return Plan("incremental", "", state, removed, ())
        table = self.options.table
        small_old, small_new = _closed(old_mini, new_mini, old.objects, objects)
        stage, text = staged_diff(Ruleset.of(table, small_old), Ruleset.of(table, small_new))
        return Plan("incremental", text, state, removed, tuple(changed), stage)

    def _full(
        self,
        snap: Snapshot,
        objects: dict[Key, TableObject],
        containers: dict[str, Mapping[str, Element]],
        refs: dict[str, TwinRef],
        pod_ips: dict[str, str],
        removed: frozenset[str],
        inventory: Inventory | None,
        owners: dict[Key, str],
        refused: tuple[Refusal, ...],
    ) -> Plan:
        twins: dict[str, TwinMembers] = {}
        filled: dict[Key, TableObject] = dict(objects)
        for name, box in containers.items():
            k = (RefKind.SET, name)
            obj = objects[k]
            assert isinstance(obj, Set | Map)
            filled[k] = obj.with_elements(box.values()) if box else obj
        for name, ref in sorted(refs.items()):
            k = (RefKind.SET, name)
            skel = objects[k]
            assert isinstance(skel, Set)
            spec = snap.sets[ref.key]
            filled[k], count = self._full_twin(ref, skel, spec)
            twins[name] = TwinMembers(ref, spec, member_cidrs(spec, ref.family), count)
        for gone in set(self._cache.full_twins) - set(refs):
            del self._cache.full_twins[gone]
        ruleset = Ruleset.of(self.options.table, filled.values())
        stage, present = full_staging(ruleset, inventory)
        text = full_transaction(ruleset, present)
        state = TableState(
            objects,
            containers,
            twins,
            pod_ips,
            len(snap.node.pods),
            snap.generation,
            owners,
            refused,
        )
        return Plan("full", text, state, removed, ("full",), stage)

    def digest(self, state: TableState) -> str:
        """The 128-bit digest of the whole table ``state`` describes, the seal aside: what
        the seal holds (``secgroups.nft.sealing``). Structure by object text, pod sets and
        maps by element text, address sets by their member CIDRs; each part's digest is
        kept while the part is the same object, so a sync changing one set costs that set.
        """
        old, new = self._digests, {}
        lines: list[str] = []

        def part(thing: object, text: Callable[[], str]) -> str:
            hit = old.get(id(thing))
            if hit is None or hit[0] is not thing:
                hit = (thing, hashlib.blake2b(text().encode(), digest_size=16).hexdigest())
            new[id(thing)] = hit
            return hit[1]

        for (kind, name), obj in state.objects.items():
            if name != SEAL:
                lines.append(f"{kind} {name} {part(obj, functools.partial(_lines, obj))}")
        for name, box in state.containers.items():
            if name != SEAL:
                lines.append(f"elements {name} {part(box, functools.partial(_elements, box))}")
        for name, tw in state.twins.items():
            lines.append(f"members {name} {part(tw.cidrs, functools.partial(_members_text, tw))}")
        self._digests = new
        lines.sort()
        return hashlib.blake2b("\n".join(lines).encode(), digest_size=16).hexdigest()

    def full_ruleset(self, state: TableState) -> Ruleset:
        """The whole table of a state, with every element (for tests and diagnostics)."""
        filled: dict[Key, TableObject] = dict(state.objects)
        for name, box in state.containers.items():
            obj = filled[(RefKind.SET, name)]
            assert isinstance(obj, Set | Map)
            filled[(RefKind.SET, name)] = obj.with_elements(box.values())
        for name, members in state.twins.items():
            obj = filled[(RefKind.SET, name)]
            assert isinstance(obj, Set)
            filled[(RefKind.SET, name)] = obj.with_elements(members.elements())
        return Ruleset.of(self.options.table, filled.values())


def _lines(obj: TableObject) -> str:
    return "\n".join(obj.lines())


def _elements(box: Mapping[str, Element]) -> str:
    return "\n".join(sorted(e.text() for e in box.values()))


def _members_text(twin: TwinMembers) -> str:
    return f"{twin.spec.source_kind}\n" + "\n".join(twin.cidrs)


def _group_claims(group: str, part: GroupPart) -> Iterable[tuple[Key, str]]:
    """The names a group's part puts in the table, each with its owner."""
    mine = group_owner(group)
    for chain in part.chains:
        yield (RefKind.CHAIN, chain.name), mine
    for obj in part.sets:
        if isinstance(obj, Map):  # dispatch maps are the group's own
            yield (RefKind.SET, obj.name), mine
        else:  # port sets are named by their content and shared by equal lists
            yield (RefKind.SET, obj.name), ports_owner(",".join(e.text() for e in obj.elements))
    for ref in part.twins:
        yield (RefKind.SET, ref.name), set_owner(ref.key)


def _list_claims(groups: tuple[str, ...], snap: Snapshot) -> list[tuple[Key, str]]:
    """The two chains of an ordered group list (named as ``rendering._pod_objects`` does)."""
    readable = [snap.groups[g].group.name for g in groups] or ["none"]
    owner = list_owner(groups)
    return [
        ((RefKind.CHAIN, names.group_list_chain(groups, readable, d)), owner) for d in Direction
    ]


def _closed(
    old: dict[Key, TableObject],
    new: dict[Key, TableObject],
    old_all: Mapping[Key, TableObject],
    new_all: Mapping[Key, TableObject],
) -> tuple[list[TableObject], list[TableObject]]:
    """Both small rulesets, closed under references: every object one of them references
    and does not hold is added to each side that has it, as an empty declaration, so
    that the two declarations are equal and diff to nothing."""
    wanted = {(r.kind, r.name) for obj in (*old.values(), *new.values()) for r in obj.refs()}
    for k in wanted:
        if k not in old and k in old_all:
            old[k] = skeleton(old_all[k])
        if k not in new and k in new_all:
            new[k] = skeleton(new_all[k])
    return list(old.values()), list(new.values())
