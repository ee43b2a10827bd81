"""Publishing compiled objects: what is wanted, what the API server has, and the writes
between them — one object at a time, so that one object's failure stalls nothing else.

**State.** :class:`Stored` is what the API server holds for each compiled object (from
our writes and from the operator's watch of the compiled kinds, so a standby knows it
too): a digest of its spec, its generation and resourceVersion, a digest of its node
labels, and for node objects their ``requires`` and what the node's agent reports
applied. :class:`Wanted` is what the compiler says it should be: the digest and size of
its spec, and — only until they are written — the spec itself, the node label keys of
a group or set, and the references of a node object. Nothing large is kept for objects
that are in place (at 1,000 nodes, label sets and references would be tens of MB); a
due object whose spec was dropped is asked for again (:attr:`Publisher.need_spec`).

**A round** (:meth:`Publisher.publish`) looks at the objects marked dirty and writes, in
this order:

0. the node labels of groups and sets already stored (see 2: small writes, first, so
   that a new pod on a node that did not use its groups yet waits only for them);
1. the specs of sets, then of groups (server-side apply, field manager
   ``secgroups-operator``): a group object ``requires`` the generations of the sets it
   names, as stored when it is written, and waits while one of their specs is still due
   — a group's re-check counter (S-CT-2) must never be applied against older set members
   (docs/architecture.md, "Ordering");
2. the node labels of the objects 1 created (field manager
   ``secgroups-operator-placement`` for 0 and 2, so a label change never rewrites a
   spec): a node's agent watches the objects labelled with its node
   (``naming.node_label``), so an object must carry the label *before* a node object
   references it (an agent keeps an object it still references when the object leaves
   its selection, so removing labels early is harmless; one that gains the label before
   its new spec is written gets the old spec first, then the new one);
3. node objects, **pod by pod**: a pod's new entry goes out only once every group and
   set it uses is in place (stored with its labels written; on a *bumped* node — pods
   whose epoch was raised — its latest spec published too); until then the node object
   keeps the pod's published entry (a new pod waits out of it). A pod whose epoch was
   raised then takes its new epoch with the rules it was raised for: the node object
   ``requires`` the generations of the groups and sets its pods use, so an agent never
   applies an epoch before the change (docs/architecture.md, "Ordering"). A new pod's
   first IPs raise its epoch without bumping its node: no flow of it exists to re-check;
4. deletions of groups and sets no longer wanted.

**Pipelined** (the operator's loop): steps 3-4 run as a background task, started with
the round: node objects that wait for nothing (not bumped, every ref placed: a new pod
on a node that already uses its groups) are written at once, beside steps 1-2 — a new
pod's churn is then one write's latency, not its set's write and then its node
object's — and the rest once 1-2 are done. The next round may write its groups and sets
while the task runs — most changes take effect through a group or a set, and a round's
node objects (re-checks on every node that hosts a member) took up to a second on a
loaded API server. Node objects and deletions wait for the task to end, so no object
ever has two writes in flight; the order above holds because a node object is gated and
given its ``requires`` at its own write time, from what is stored then.

**Isolation.** A failed write is retried for that object alone, with backoff (1 s
doubling to 5 min, jittered); only the pods that use it wait — other tenants' pods on the
same node are published as usual.
**Size bound**: a spec is not written when it would break
``quotas.MAX_COMPILED_OBJECT_BYTES`` (``quotas.too_large_error``, which ``compiling``
reports to the CLI in the same words; or when a group has more than
``quotas.MAX_RULES_PER_GROUP`` rules); the object is *held* — the API server keeps what
it has and agents keep enforcing that — and its owner is told (status and Event). An IP
address group the intake refused is held the same way. A node object may reference a
held object that was never published: agents render it absent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from secgroups import naming
from secgroups.compiled import (
    COMPILED_GROUP_KIND,
    COMPILED_NODE_KIND,
    COMPILED_SET_KIND,
    CompiledAddressSetSpec,
    CompiledGroupSpec,
    CompiledNodeSpec,
)
from secgroups.models import API_VERSION
from secgroups.quotas import (
    MAX_COMPILED_OBJECT_BYTES,
    MAX_RULES_PER_GROUP,
    spec_text,
    too_large_error,
    too_many_rules_error,
)
from secgroups_operator.ports import (
    FIELD_MANAGER,
    PLACEMENT_MANAGER,
    Cluster,
    ConflictError,
    RequestError,
)

log = logging.getLogger(__name__)

MANAGED_BY = {"app.kubernetes.io/managed-by": "secgroups-operator"}
ObjKey = tuple[str, str]  # (kind, name)
BACKOFF = (1.0, 300.0)
SPEC_MODELS: dict[str, Any] = {
    COMPILED_GROUP_KIND: CompiledGroupSpec,
    COMPILED_SET_KIND: CompiledAddressSetSpec,
    COMPILED_NODE_KIND: CompiledNodeSpec,
}


def canonical(data: Any) -> bytes:
    """Compact JSON text (sorted keys) of a plain value."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _digest(text: bytes) -> bytes:
    return hashlib.blake2b(text, digest_size=16).digest()


def labels_digest(keys: Iterable[str]) -> bytes:
    return _digest("\n".join(sorted(keys)).encode())


NO_LABELS = labels_digest(())


def ref_name(kind: str, name: str) -> str:
    return f"{'group' if kind == COMPILED_GROUP_KIND else 'set'}/{name}"


def ref_key(ref: str) -> ObjKey:
    prefix, _, name = ref.partition("/")
    return (COMPILED_GROUP_KIND if prefix == "group" else COMPILED_SET_KIND, name)


@dataclass(frozen=True, slots=True)
class Requires:
    """A node object's ``spec.requires`` as kept in :class:`Stored`: names (interned: 1,000
    node objects name the same groups and sets) beside their generations, in two tuples.
    At 1,000 nodes and 30,000 pods a cold start's node objects require ~500 refs each; as
    dicts of the strings decoded from the watch they held ~90 MB, as this ~8 MB."""

    names: tuple[str, ...] = ()
    generations: tuple[int, ...] = ()

    @classmethod
    def of(cls, items: Mapping[str, int] | None) -> Requires:
        pairs = sorted((items or {}).items())
        return cls(tuple(sys.intern(str(k)) for k, _ in pairs), tuple(int(v) for _, v in pairs))

    def items(self) -> Iterator[tuple[str, int]]:
        return zip(self.names, self.generations, strict=True)

    def __len__(self) -> int:
        return len(self.names)


NO_REQUIRES = Requires()


@dataclass
class Stored:
    """A compiled object as the API server has it."""

    digest: bytes
    generation: int
    rv: int
    labels: bytes = NO_LABELS  # groups and sets: digest of the node label keys
    # node objects, until their agent reports them applied (then nothing needs them)
    requires: Requires = NO_REQUIRES


@dataclass(frozen=True)
class Report:
    """What a node's agent reported in its NodeAgentReport."""

    rv: int
    applied: int | None = None  # the node object's generation it applied
    applied_revision: int | None = None  # the group objects' revision it had then


@dataclass
class Wanted:
    """A compiled object as the compiler wants it (see the module docstring)."""

    digest: bytes
    size: int
    spec: bytes | None = None  # the spec's JSON text (quotas.spec_text)
    labels: tuple[str, ...] | None = None
    labels_digest: bytes = NO_LABELS
    refs: frozenset[str] | None = None
    gone: bool = False
    held: str | None = None
    nodes: int = 0  # groups and sets: how many nodes use it
    sets: tuple[str, ...] = ()  # groups: the address sets their rules use
    owner: tuple[str, str, str] | None = None  # the user object it is compiled from


def wanted_spec(kind: str, model: Any) -> Wanted:
    """A compiled spec as a :class:`Wanted` (JSON, digest, size, size bound): runs in the
    compile thread."""
    text = spec_text(model)
    held = None
    refs = None
    sets: tuple[str, ...] = ()
    owner = None
    if kind == COMPILED_GROUP_KIND:
        rules = len(model.ingress) + len(model.egress)
        if rules > MAX_RULES_PER_GROUP:
            group = (model.group.namespace, model.group.name)
            held = f"TooManyRules: {too_many_rules_error(group, rules)}"
        sets = tuple(
            sorted({r.remote.set for r in (*model.ingress, *model.egress) if r.remote.set})
        )
        owner = ("SecurityGroup", model.group.namespace, model.group.name)
    elif kind == COMPILED_SET_KIND:
        owner = (str(model.source_kind), model.source.namespace, model.source.name)
    else:
        groups = set(model.groups)
        for pod in model.pods:
            groups.update(pod.groups)
        refs = frozenset(map(naming.group_ref, groups)).union(map(naming.set_ref, model.sets))
    if held is None and (too_large := too_large_error(len(text))) is not None:
        held = f"TooLarge: {too_large}"
    return Wanted(_digest(text), len(text), spec=text, refs=refs, held=held, sets=sets, owner=owner)


def stored_digest(kind: str, spec: Mapping[str, Any]) -> bytes:
    """The digest of a stored spec, comparable with :func:`wanted_spec`'s: parsed with the
    model and serialized the same way (the API server fills in the CRD's defaults)."""
    try:
        model = SPEC_MODELS[kind].model_validate(spec)
    except ValidationError:
        return b"invalid"
    return _digest(spec_text(model))


@dataclass
class _Retry:
    failures: int = 0
    not_before: float = 0.0
    error: str = ""


@dataclass
class RoundStats:
    writes: int = 0
    label_writes: int = 0
    deletes: int = 0
    deferred: int = 0
    failed: int = 0
    #: Node objects and deletions handed to a background task by this round.
    background: int = 0

    def __bool__(self) -> bool:
        return bool(self.writes or self.label_writes or self.deletes or self.failed)


@dataclass
class Publisher:
    """See the module docstring. ``report(key, error)`` hears about failed writes (and
    ``None`` when an object that failed is written)."""

    cluster: Cluster
    report: Callable[[ObjKey, str | None], None] = lambda _k, _e: None
    concurrency: int = 16
    stored: dict[ObjKey, Stored] = field(default_factory=dict)
    #: Per node, its agent's NodeAgentReport (the watch's latest).
    reports: dict[str, Report] = field(default_factory=dict)
    wanted: dict[ObjKey, Wanted] = field(default_factory=dict)
    dirty: set[ObjKey] = field(default_factory=set)
    #: Due objects whose spec (or labels, or references) must be produced again.
    need_spec: set[ObjKey] = field(default_factory=set)
    #: Node objects whose pods got new epochs not yet published (they require all refs).
    bumped: set[str] = field(default_factory=set)
    #: Per node, how many times it was bumped: a write clears ``bumped`` only if no
    #: bump came while it was in flight (the next round's compile may run meanwhile).
    bump_count: dict[str, int] = field(default_factory=dict)
    #: Per node, references its object gained since it was last written.
    new_refs: dict[str, set[str]] = field(default_factory=dict)
    retry: dict[ObjKey, _Retry] = field(default_factory=dict)
    #: Address sets each compiled group uses (small; kept for gating node objects).
    group_sets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Node objects written with some pods held back: (wanted digest, refs waited on).
    gated: dict[str, tuple[bytes, frozenset[str]]] = field(default_factory=dict)
    writes_total: int = 0
    last: RoundStats = field(default_factory=RoundStats)
    #: Told when a round's background writes end (their stats, seconds): due node
    #: objects may have waited for them.
    on_tail_done: Callable[[RoundStats, float], None] = lambda _s, _t: None
    #: Told when our own write stored a group object's new generation (its group's status
    #: shows the generation enforced; the watch brings back no newer version of it).
    on_group_stored: Callable[[str], None] = lambda _name: None
    _tail: asyncio.Task[RoundStats] | None = field(default=None, repr=False)
    _tail_keys: frozenset[ObjKey] = frozenset()

    # ------------------------------------------------------------------ state in

    def observe(self, obj: Mapping[str, Any]) -> Stored | None:
        """A compiled object as listed or watched; returns its :class:`Stored` if newer."""
        meta = obj.get("metadata") or {}
        kind = str(obj.get("kind"))
        key = (kind, str(meta["name"]))
        rv = int(meta.get("resourceVersion") or 0)
        old = self.stored.get(key)
        if old is not None and rv <= old.rv:
            return None
        generation = int(meta.get("generation") or 0)
        spec = obj.get("spec") or {}
        if old is not None and old.generation == generation:
            dig = old.digest  # the spec changes only with the generation
        else:
            dig = stored_digest(kind, spec)
        label_keys = [k for k in meta.get("labels") or {} if k.startswith(naming.NODE_LABEL_PREFIX)]
        st = Stored(dig, generation, rv, labels_digest(label_keys))
        if kind == COMPILED_NODE_KIND and self.applied(key[1], st) is None:
            st.requires = Requires.of(spec.get("requires"))
        self.stored[key] = st
        w = self.wanted.get(key)
        if w is not None and not w.gone:
            if self.spec_due(key, w) or self.labels_due(key, w):
                self.dirty.add(key)
            elif key in self.dirty:  # another replica wrote it: nothing left to keep
                self.dirty.discard(key)
                self._drop_bodies(key, w)
        return st

    def observe_report(self, obj: Mapping[str, Any]) -> bool:
        """A NodeAgentReport as listed or watched; True if what it says changed."""
        meta = obj.get("metadata") or {}
        node = str(meta["name"])
        rv = int(meta.get("resourceVersion") or 0)
        old = self.reports.get(node)
        if old is not None and rv <= old.rv:
            return False
        status = obj.get("status") or {}
        new = Report(rv, status.get("appliedGeneration"), status.get("appliedGroupRevision"))
        self.reports[node] = new
        st = self.stored.get((COMPILED_NODE_KIND, node))
        if st is not None and st.requires and self.applied(node, st) is not None:
            st.requires = NO_REQUIRES  # applied: requires_of carries nothing over
        return old is None or (old.applied, old.applied_revision) != (
            new.applied,
            new.applied_revision,
        )

    def observe_report_deleted(self, node: str, rv: int) -> bool:
        old = self.reports.get(node)
        if old is not None and rv >= old.rv:
            del self.reports[node]
            return True
        return False

    def applied(self, node: str, st: Stored) -> Report | None:
        """``node``'s report if its agent applied the node object ``st`` (its generation
        or a later one), else None."""
        r = self.reports.get(node)
        return r if r is not None and (r.applied or 0) >= st.generation else None

    def observe_deleted(self, kind: str, name: str, rv: int) -> None:
        key = (kind, name)
        old = self.stored.get(key)
        if old is not None and rv >= old.rv:
            del self.stored[key]
            if key in self.wanted:
                self.dirty.add(key)

    def want_spec(self, key: ObjKey, w: Wanted) -> None:
        old = self.wanted.get(key)
        if old is not None and not old.gone:  # keep what the label side knows
            w.labels, w.labels_digest, w.nodes = old.labels, old.labels_digest, old.nodes
        self.wanted[key] = w
        self.dirty.add(key)
        self.need_spec.discard(key)
        if key[0] == COMPILED_GROUP_KIND:
            self.group_sets[key[1]] = w.sets

    def hold(self, key: ObjKey, reason: str | None) -> None:
        """Hold (or release) an object the compiler cannot build: no write, no delete —
        the API server keeps what it has. Released, it gets its new spec from the same
        round's compile."""
        w = self.wanted.get(key)
        if reason is None:
            if w is not None and w.held is not None and w.spec is None and not w.digest:
                del self.wanted[key]
            return
        if w is None or w.gone:
            st = self.stored.get(key)
            w = Wanted(st.digest if st is not None else b"", 0)
            self.wanted[key] = w
        w.held = reason

    def want_labels(self, key: ObjKey, nodes: Iterable[str]) -> None:
        w = self.wanted.get(key)
        if w is None or w.gone:
            return
        keys = tuple(sorted(naming.node_label(n) for n in nodes))
        w.labels, w.labels_digest, w.nodes = keys, labels_digest(keys), len(keys)
        self.dirty.add(key)

    def want_gone(self, key: ObjKey) -> None:
        if key[0] == COMPILED_GROUP_KIND:
            self.group_sets.pop(key[1], None)
        self.wanted[key] = Wanted(b"", 0, gone=True)
        self.dirty.add(key)
        self.need_spec.discard(key)

    def add_new_refs(self, node: str, refs: Iterable[str]) -> None:
        self.new_refs.setdefault(node, set()).update(refs)

    def bump(self, nodes: Iterable[str]) -> None:
        for node in nodes:
            self.bumped.add(node)
            self.bump_count[node] = self.bump_count.get(node, 0) + 1
            self.dirty.add((COMPILED_NODE_KIND, node))

    # ------------------------------------------------------------------ state queries

    def spec_due(self, key: ObjKey, w: Wanted) -> bool:
        if w.gone or w.held is not None:
            return False
        st = self.stored.get(key)
        if st is None or st.digest != w.digest:
            return True
        return key[0] == COMPILED_NODE_KIND and key[1] in self.bumped

    def labels_due(self, key: ObjKey, w: Wanted) -> bool:
        if key[0] == COMPILED_NODE_KIND or w.gone:
            return False
        st = self.stored.get(key)
        return st is not None and st.labels != w.labels_digest

    def next_retry(self) -> float | None:
        """When the earliest object in backoff may be retried (monotonic), if any."""
        times = [r.not_before for k, r in self.retry.items() if k in self.dirty]
        return min(times) if times else None

    def held(self) -> dict[ObjKey, str]:
        return {k: w.held for k, w in self.wanted.items() if w.held is not None}

    def converged(self) -> bool:
        """Everything wanted is stored (held objects aside)."""
        return not self.dirty and not self.need_spec and not self.tail_running()

    # ------------------------------------------------------------------ a round

    def tail_running(self) -> bool:
        """Whether the node objects (and deletions) of an earlier round are still being
        written in the background (:meth:`publish` with ``pipelined``)."""
        return self._tail is not None and not self._tail.done()

    def cancel_tail(self) -> None:
        """Cancel the background writes (leadership lost): a follower writes nothing."""
        if self.tail_running():
            assert self._tail is not None
            self._tail.cancel()

    async def stop_tail(self) -> None:
        """Cancel the background writes and wait for them to end (shutdown)."""
        tail = self._tail
        self.cancel_tail()
        if tail is not None:
            await asyncio.gather(tail, return_exceptions=True)

    async def publish(self, *, pipelined: bool = False) -> RoundStats:
        """One round of writes (module docstring: specs, labels, node objects, deletions).

        ``pipelined`` (the operator's loop): the node objects and deletions are written
        by a background task and this returns once the groups and sets are written, so
        that the next change's groups and sets (what most changes need to take effect)
        never wait behind this round's node objects. While that task runs, a round
        writes groups and sets only; node objects and deletions stay due until the task
        ends (``on_tail_done``), so no object has two writes in flight. The order holds
        whatever overlaps: a node object is built and gated at its own write time, from
        what is stored then (``_pending_refs``, ``requires_of``)."""
        stats = RoundStats()
        now = time.monotonic()
        sem = asyncio.Semaphore(self.concurrency)
        busy = self.tail_running()
        keys = sorted(k for k in self.dirty if self._ready(k, now) and k not in self._tail_keys)
        first: list[ObjKey] = []
        later: list[ObjKey] = []  # node objects and deletions
        for k in keys:
            gone = k in self.wanted and self.wanted[k].gone
            (later if k[0] == COMPILED_NODE_KIND or gone else first).append(k)
        placed, specs_written = asyncio.Event(), asyncio.Event()
        if pipelined and later and not busy:
            # The tail starts now: node objects whose pods wait for nothing go out beside
            # this round's groups and sets; the rest after them (``_tail_writes``).
            self._tail_keys = frozenset(later)
            self._tail = asyncio.create_task(
                self._tail_writes(later, placed, specs_written), name="publish-tail"
            )
        try:
            await self._groups_and_sets(keys, now, sem, stats, placed)
        finally:
            placed.set()
            specs_written.set()
        if busy or (pipelined and later):  # node objects and deletions: the task's
            self._settle(first, stats)
            stats.background = 0 if busy else len(later)
            return stats
        await self._nodes_and_deletions(later, sem, stats)
        self._settle(keys, stats)
        return stats

    async def _groups_and_sets(
        self,
        keys: list[ObjKey],
        now: float,
        sem: asyncio.Semaphore,
        stats: RoundStats,
        placed: asyncio.Event,
    ) -> None:
        """Steps 1-2 of a round: the node labels of objects already stored first (small
        writes: a new pod on a node that did not use its groups yet needs only those to be
        *placed*, ``placed`` tells the tail), then sets, then groups: specs, then the
        labels of the objects they created."""
        await self._run(self._labels_due(keys, now), self._write_labels, sem, stats)
        placed.set()
        specs = []
        for k in keys:
            if k[0] == COMPILED_NODE_KIND or k not in self.wanted:
                continue
            w = self.wanted[k]
            if self.spec_due(k, w):
                if w.spec is None:
                    self.need_spec.add(k)
                else:
                    specs.append(k)
        await self._run(
            [k for k in specs if k[0] == COMPILED_SET_KIND], self._write_spec, sem, stats
        )
        groups = [k for k in specs if k[0] == COMPILED_GROUP_KIND and not self._sets_due(k[1])]
        stats.deferred += sum(1 for k in specs if k[0] == COMPILED_GROUP_KIND) - len(groups)
        await self._run(groups, self._write_spec, sem, stats)
        await self._run(self._labels_due(keys, now), self._write_labels, sem, stats)

    def _labels_due(self, keys: list[ObjKey], now: float) -> list[ObjKey]:
        """Groups and sets among ``keys`` whose node labels are to be written now."""
        labels = []
        for k in keys:
            if k[0] == COMPILED_NODE_KIND or k not in self.wanted:
                continue
            w = self.wanted[k]
            if self.labels_due(k, w) and self._ready(k, now):
                if w.labels is None:
                    self.need_spec.add(k)
                else:
                    labels.append(k)
        return labels

    async def _tail_writes(
        self, keys: list[ObjKey], placed: asyncio.Event, specs_written: asyncio.Event
    ) -> RoundStats:
        """Node objects and deletions of a pipelined round, in the background. Node objects
        of nodes that are not bumped and whose pods wait for no ref are written at once,
        beside the round's groups and sets (a new pod's entry needs its groups and sets
        placed, not their latest specs: ``_pending_refs``), and again once the round's
        labels of stored objects are written (``placed``); the others and the deletions
        once the specs are written, each gated and given its ``requires`` at its own
        write."""
        stats = RoundStats()
        t0 = time.monotonic()
        sem = asyncio.Semaphore(self.concurrency)
        early: list[asyncio.Future[None]] = []
        sent: set[ObjKey] = set()

        def write_free() -> None:
            now = time.monotonic()
            free = [k for k in keys if k not in sent and self._free_now(k, now)]
            sent.update(free)
            early.append(asyncio.ensure_future(self._run(free, self._write_node, sem, stats)))

        try:
            write_free()  # those that wait for nothing
            await placed.wait()
            write_free()  # those that waited for the labels of stored objects only
            await specs_written.wait()
            await asyncio.gather(*early)
            await self._nodes_and_deletions(keys, sem, stats)
            self._settle(keys, stats)
        except BaseException:
            for job in early:
                job.cancel()
            raise
        finally:
            self._tail_keys = frozenset()
        self.on_tail_done(stats, time.monotonic() - t0)
        return stats

    async def _nodes_and_deletions(
        self, keys: list[ObjKey], sem: asyncio.Semaphore, stats: RoundStats
    ) -> None:
        now = time.monotonic()
        # 3. node objects
        nodes = []
        for k in keys:
            if k[0] != COMPILED_NODE_KIND or k not in self.wanted or not self._ready(k, now):
                continue
            w = self.wanted[k]
            if w.gone:
                if k in self.stored:
                    nodes.append(k)
            elif self.spec_due(k, w):
                if w.spec is None or w.refs is None:
                    self.need_spec.add(k)
                elif self.gated.get(k[1]) == (w.digest, self._pending_refs(k[1], w)):
                    stats.deferred += 1  # written already with the same pods held back
                else:
                    nodes.append(k)
        await self._run(nodes, self._write_node, sem, stats)

        # 4. deletions of groups and sets (no node object references them any more)
        gone = [
            k
            for k in keys
            if k[0] != COMPILED_NODE_KIND
            and k in self.wanted
            and self.wanted[k].gone
            and k in self.stored
            and self._ready(k, now)
        ]
        await self._run(gone, self._delete, sem, stats)

    def _free_now(self, key: ObjKey, now: float) -> bool:
        """A due node object that need not wait for this round's groups and sets: its node
        is not bumped and none of its pods waits for a ref (``_pending_refs``)."""
        if key[0] != COMPILED_NODE_KIND or key[1] in self.bumped or not self._ready(key, now):
            return False
        w = self.wanted.get(key)
        if w is None or w.gone or w.spec is None or w.refs is None or not self.spec_due(key, w):
            return False
        return not self._pending_refs(key[1], w)

    def _settle(self, keys: Iterable[ObjKey], stats: RoundStats) -> None:
        """What is in place leaves the dirty set; the rest stays for the next round."""
        done: set[ObjKey] = set()
        for k in keys:
            left = self.wanted.get(k)
            if left is None:
                done.add(k)
                continue
            w = left
            if w.gone:
                if k not in self.stored:
                    done.add(k)
                    del self.wanted[k]
                    self.retry.pop(k, None)
            elif not self.spec_due(k, w) and not self.labels_due(k, w):
                done.add(k)
                self._drop_bodies(k, w)
        self.dirty -= done
        self.writes_total += stats.writes + stats.label_writes + stats.deletes
        self.last = stats

    def _ready(self, key: ObjKey, now: float) -> bool:
        r = self.retry.get(key)
        return r is None or r.not_before <= now

    def _drop_bodies(self, key: ObjKey, w: Wanted) -> None:
        w.spec = None
        w.labels = None
        w.refs = None

    def _pending(self, ref: str, latest: bool) -> bool:
        """Whether a group or set is not (yet) in the state node objects may reference:
        stored with its node labels written, and with ``latest`` its latest spec too."""
        key = ref_key(ref)
        ref_w = self.wanted.get(key)
        if key not in self.stored:
            return ref_w is not None and not ref_w.gone and ref_w.held is None
        if ref_w is None:
            return False
        return self.labels_due(key, ref_w) or (latest and self.spec_due(key, ref_w))

    def _pending_refs(self, node: str, w: Wanted) -> frozenset[str]:
        """The refs of node object ``w`` that its pods must wait for. A bumped node's pods
        carry epochs computed for the latest specs, so they wait for those (S-CT-2
        ordering); other pods need their groups and sets only *placed* — an agent that
        applies a pod's entry against an older spec of them re-checks nothing it should
        not: any later change that needs a re-check carries its own counter or epoch."""
        assert w.refs is not None
        latest = node in self.bumped
        return frozenset(r for r in w.refs if self._pending(r, latest))

    def _pod_refs(self, pod: Mapping[str, Any]) -> set[str]:
        # naming's refs are interned: a node's stored ``requires`` keeps these names (1.5
        # kB per pod at 30,000 pods otherwise).
        groups = pod.get("groups", ())
        refs = set(map(naming.group_ref, groups))
        for g in groups:
            refs.update(map(naming.set_ref, self.group_sets.get(g, ())))
        return refs

    def requires_of(
        self, node: str, refs: Iterable[str], bumped_refs: Iterable[str]
    ) -> dict[str, int]:
        """``spec.requires`` of a node object about to be written with ``refs``.

        The current generations of the refs that are new on the node or used by a pod
        whose epoch was raised; entries of the stored object are carried over until the
        node's agent has applied it (then its caches hold at least those generations)."""
        refs = set(refs)
        st = self.stored.get((COMPILED_NODE_KIND, node))
        out: dict[str, int] = {}
        if st is not None and self.applied(node, st) is None:
            out = {k: v for k, v in st.requires.items() if k in refs}
        for ref in (self.new_refs.get(node, set()) | set(bumped_refs)) & refs:
            ref_st = self.stored.get(ref_key(ref))
            if ref_st is not None:
                out[ref] = max(out.get(ref, 0), ref_st.generation)
        return dict(sorted(out.items()))

    async def _run(
        self,
        jobs: list[ObjKey],
        write: Callable[[ObjKey, RoundStats], Any],
        sem: asyncio.Semaphore,
        stats: RoundStats,
    ) -> None:
        async def one(key: ObjKey) -> None:
            async with sem:
                try:
                    await write(key, stats)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # one object's failure is that object's alone
                    self._failed(key, exc, stats)
                else:
                    if self.retry.pop(key, None) is not None:
                        self.report(key, None)

        if jobs:
            await asyncio.gather(*(one(k) for k in jobs))

    def _failed(self, key: ObjKey, exc: Exception, stats: RoundStats) -> None:
        r = self.retry.setdefault(key, _Retry())
        r.failures += 1
        delay = min(BACKOFF[0] * 2 ** (r.failures - 1), BACKOFF[1])
        r.not_before = time.monotonic() + delay * (0.5 + random.random() / 2)
        r.error = str(exc)[:500]
        stats.failed += 1
        log.warning(
            "writing %s %s failed (%d in a row; retrying in about %.0f s): %s",
            key[0],
            key[1],
            r.failures,
            delay,
            r.error,
        )
        self.report(key, r.error)

    # ------------------------------------------------------------------ writes

    def _stored_after(self, key: ObjKey, obj: Mapping[str, Any], **update: Any) -> Stored:
        meta = obj.get("metadata") or {}
        old = self.stored.get(key)
        st = Stored(
            update.get("digest", old.digest if old else b""),
            int(meta.get("generation") or 0),
            int(meta.get("resourceVersion") or 0),
            update.get("labels", old.labels if old else NO_LABELS),
            update.get("requires", old.requires if old else NO_REQUIRES),
        )
        if old is None or st.rv >= old.rv:
            self.stored[key] = st
            if key[0] == COMPILED_GROUP_KIND and (old is None or old.generation != st.generation):
                self.on_group_stored(key[1])
        return st

    def _sets_due(self, group: str) -> bool:
        """Whether a set ``group`` names has a spec still to write (its write failed, or
        waits for its retry): the group waits for it (module docstring)."""
        for name in self.group_sets.get(group, ()):
            key = (COMPILED_SET_KIND, name)
            w = self.wanted.get(key)
            if w is not None and not w.gone and w.held is None and self.spec_due(key, w):
                return True
        return False

    def group_requires(self, group: str) -> dict[str, int]:
        """``spec.requires`` of group object ``group``: the stored generations of the sets
        it names (a set never published — held — is not waited for)."""
        out = {}
        for name in self.group_sets.get(group, ()):
            st = self.stored.get((COMPILED_SET_KIND, name))
            if st is not None:
                out[naming.set_ref(name)] = st.generation
        return dict(sorted(out.items()))

    async def _write_spec(self, key: ObjKey, stats: RoundStats) -> None:
        w = self.wanted[key]
        assert w.spec is not None
        spec = json.loads(w.spec)
        if key[0] == COMPILED_GROUP_KIND:
            requires = self.group_requires(key[1])
            if requires:
                spec["requires"] = requires
        body = {
            "apiVersion": API_VERSION,
            "kind": key[0],
            "metadata": {"name": key[1], "labels": dict(MANAGED_BY)},
            "spec": spec,
        }
        stored = await self.cluster.apply(body, field_manager=FIELD_MANAGER)
        labels = [
            k
            for k in (stored.get("metadata") or {}).get("labels") or {}
            if k.startswith(naming.NODE_LABEL_PREFIX)
        ]
        self._stored_after(key, stored, digest=w.digest, labels=labels_digest(labels))
        stats.writes += 1

    async def _write_labels(self, key: ObjKey, stats: RoundStats) -> None:
        w = self.wanted[key]
        assert w.labels is not None
        body = {
            "apiVersion": API_VERSION,
            "kind": key[0],
            "metadata": {"name": key[1], "labels": dict.fromkeys(w.labels, "")},
        }
        stored = await self.cluster.apply(body, field_manager=PLACEMENT_MANAGER)
        self._stored_after(key, stored, labels=w.labels_digest)
        stats.label_writes += 1

    async def _write_node(self, key: ObjKey, stats: RoundStats) -> None:
        w = self.wanted[key]
        node = key[1]
        bumps = self.bump_count.get(node, 0)  # before any await: see ``bump_count``
        if w.gone:
            await self.cluster.delete(key[0], node)
            self.stored.pop(key, None)
            self.bumped.discard(node)
            self.bump_count.pop(node, None)
            self.new_refs.pop(node, None)
            self.gated.pop(node, None)
            stats.deletes += 1
            return
        assert w.spec is not None and w.refs is not None
        spec: dict[str, Any] = json.loads(w.spec)
        pending = self._pending_refs(node, w)
        pods = list(spec.get("pods", ()))
        held_back: set[tuple[str, str]] = set()
        if pending:
            # Pods using an object not in place keep their published entry for now.
            stored = await self.cluster.get(COMPILED_NODE_KIND, node)
            old = {
                (p["namespace"], p["name"]): p
                for p in ((stored or {}).get("spec") or {}).get("pods", ())
            }
            gated_pods = []
            for p in pods:
                pkey = (p["namespace"], p["name"])
                if self._pod_refs(p) & pending:
                    held_back.add(pkey)
                    if pkey in old:
                        gated_pods.append(old[pkey])
                else:
                    gated_pods.append(p)
            pods = gated_pods
            groups = sorted({g for p in pods for g in p.get("groups", ())})
            spec["pods"] = pods
            spec["groups"] = groups
            spec["sets"] = sorted({s for g in groups for s in self.group_sets.get(g, ())})
            for name in ("pods", "groups", "sets"):
                if not spec[name]:
                    del spec[name]
        refs = set()
        bumped_refs: set[str] = set()
        for p in pods:
            pod_refs = self._pod_refs(p)
            refs |= pod_refs
            if node in self.bumped and (p["namespace"], p["name"]) not in held_back:
                bumped_refs |= pod_refs
        refs.update(map(naming.set_ref, spec.get("sets", ())))
        requires = self.requires_of(node, refs, bumped_refs)
        if requires:
            spec["requires"] = requires
        body = {
            "apiVersion": API_VERSION,
            "kind": key[0],
            "metadata": {"name": node, "labels": dict(MANAGED_BY)},
            "spec": spec,
        }
        if w.size + len(canonical(requires)) > MAX_COMPILED_OBJECT_BYTES:
            raise RequestError(413, "the node object would exceed the size bound")
        stored_obj = await self._put_node(key, body)
        if held_back:
            digest = stored_digest(COMPILED_NODE_KIND, spec)
            self.gated[node] = (w.digest, pending)
            self.new_refs[node] = self.new_refs.get(node, set()) - refs
        else:
            digest = w.digest
            self.gated.pop(node, None)
            if self.bump_count.get(node, 0) == bumps:
                self.bumped.discard(node)
            left = self.new_refs.pop(node, set()) - refs  # refs gained meanwhile stay
            if left:
                self.new_refs[node] = left
        self._stored_after(key, stored_obj, digest=digest, requires=Requires.of(requires))
        stats.writes += 1

    async def _put_node(self, key: ObjKey, body: dict[str, Any]) -> dict[str, Any]:
        """Write a node object whole: update (PUT) with the version last seen as a
        precondition, create when there is none; a 409 (someone else wrote it, or our
        version is behind the watch) reads the current version and writes again.

        Not server-side apply, as for groups and sets: the operator is the node objects'
        only writer, and an update costs the API server less (no merge of an applied
        configuration; docs/performance.md). Never mixed with apply on one object: fields
        an update set are owned by the manager's "Update" entry, and an apply that leaves
        them out does not remove them (a node's last pods would stay)."""
        st = self.stored.get(key)
        rv = None if st is None else str(st.rv)
        for _ in range(3):
            if rv is None:
                created = await self.cluster.create(body)
                if created is not None:
                    return created
            else:
                meta = {**body["metadata"], "resourceVersion": rv}
                try:
                    return await self.cluster.replace({**body, "metadata": meta})
                except ConflictError:
                    log.info("node object %s changed under us (409): reading it again", key[1])
            current = await self.cluster.get(key[0], key[1])
            rv = None if current is None else str(current["metadata"]["resourceVersion"])
        raise RequestError(409, f"node object {key[1]} kept changing while it was written")

    async def _delete(self, key: ObjKey, stats: RoundStats) -> None:
        await self.cluster.delete(key[0], key[1])
        self.stored.pop(key, None)
        stats.deletes += 1
