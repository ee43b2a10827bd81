"""The operator's loop: watch events → incremental compile (off the event loop) →
epochs → publish, one object at a time → statuses and Events.

* **Input.** Reflectors (``watching``) feed every object through the intake
  (``intake``: slim facts, per-version parse cache, bad objects kept out and reported),
  which queues compiler events. A round takes the whole queue as one batch.
* **Compile while the lists come in.** Before the initial lists are complete, every
  ``preload_s`` the events that have arrived go to the compiler in the worker thread
  (:meth:`IncrementalCompiler.preload`: memberships, node places, compiled groups), so
  the initial build after the last page compiles only the rest — the address sets, the
  node objects, what is published and the statuses. Nothing is written before the lists
  are complete.
* **Compile.** The batch goes to :class:`secgroups.incremental.IncrementalCompiler` in a
  worker thread (``asyncio.to_thread``): the loop keeps serving watches, health and
  writes while it runs. One event reaches only what it changes: a pod's churn recompiles
  its node object and the address sets it is in.
* **Epochs and re-check counters** (S-CT-2; docs/architecture.md, "Existing
  connections: epochs"). The compiler's flush names the pods whose inbound connections
  must be re-checked and how to reach them: the leader raises, in the same round, the
  counters of the groups and address sets that reach most of them (one write each,
  whatever the number of nodes) and the epochs of the few others (pods that joined or
  left a group), marking their nodes, whose objects then wait for and ``require`` the
  groups and sets they reference (``publishing``).
* **Publish** (``publishing``): specs, node labels, node objects, deletions; each
  object's failure is retried alone, oversized objects are held and reported.
* **Status** (``statuses``) of the objects a batch reached, and the realization of
  each group (nodes whose agent enforces its current compiled rules / nodes that use
  it) from the agents' reports, written at most once a second — never once per pod.
* **Default groups** (S-D-1): created once, rules then group, with create-if-absent —
  never applied over a user's edits; a namespace that refuses (terminating, an object
  quota) is retried alone, with an Event.

**Leader and standby.** Both replicas run everything above except the writes: the
standby compiles with the epochs and counters the leader publishes (mirrored from the
compiled objects it watches), so on takeover (``leader``) it only writes what the old
leader had not — and re-checks, conservatively, every pod whose groups, sets or node
object differ from what is published (a re-check is always safe; a missed one is not).
A fresh start is a takeover from nobody.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from secgroups import naming
from secgroups.compiled import (
    COMPILED_GROUP_KIND,
    COMPILED_NODE_KIND,
    COMPILED_SET_KIND,
    NODE_REPORT_KIND,
    SourceKind,
)
from secgroups.compiling import CompileOptions, gc_paused, uncompilable_group_problem
from secgroups.incremental import (
    Changes,
    Delete,
    Event,
    IncrementalCompiler,
    Kind,
    SetEpochs,
    Upsert,
)
from secgroups.membership import PodKey, Scope, missing_groups_note
from secgroups.models import (
    API_VERSION,
    DEFAULT_GROUP_NAME,
    IPAddressGroup,
    SecurityGroup,
    SecurityGroupRule,
)
from secgroups.quotas import MAX_ADDRESS_GROUP_CIDRS, address_group_cidrs
from secgroups_operator.events import EventRecorder
from secgroups_operator.intake import Intake, Problem
from secgroups_operator.ports import Cluster
from secgroups_operator.publishing import (
    MANAGED_BY,
    ObjKey,
    Publisher,
    RoundStats,
    Wanted,
    wanted_spec,
)
from secgroups_operator.statuses import (
    StatusKey,
    StatusWriter,
    group_status,
    ipag_status,
    now_stamp,
    problem_status,
    rule_status,
    with_publish_error,
    with_realization,
)

log = logging.getLogger(__name__)

USER_KINDS = ("SecurityGroup", "SecurityGroupRule", "IPAddressGroup")
KIND_OF = {
    COMPILED_GROUP_KIND: "group",
    COMPILED_SET_KIND: "set",
    COMPILED_NODE_KIND: "node",
}


@dataclass
class Options:
    scope: Scope = field(default_factory=Scope)
    create_defaults: bool = True
    debounce_s: float = 0.005
    status_interval_s: float = 1.0
    #: Node objects and deletions written in the background (``Publisher.publish``).
    pipelined: bool = True
    #: Re-checks carried by group and set counters where they reach (else every planned
    #: pod's epoch: the behaviour before counters, kept for comparisons).
    recheck_counters: bool = True
    #: A new pod's node object waits only for its groups and sets to be placed (else for
    #: their latest specs, as a re-checked pod's does: the behaviour before, kept for
    #: comparisons).
    new_pods_early: bool = True
    #: While the initial lists come in, compile what has arrived every this many seconds
    #: (:meth:`Reconciler.preload`); 0: only once they are all in (the behaviour before,
    #: kept for comparisons).
    preload_s: float = 0.5


#: A preload waits for at least this many events (fewer are left for the build).
PRELOAD_MIN_EVENTS = 2000


@dataclass
class _Floor:
    """Epochs and counters published by another replica: never go below them."""

    epochs: Mapping[PodKey, int]
    groups: Mapping[str, int] = field(default_factory=dict)
    sets: Mapping[str, int] = field(default_factory=dict)


@dataclass
class _Result:
    """What one compile round hands back to the loop."""

    specs: list[tuple[ObjKey, Wanted | None]] = field(default_factory=list)
    labels: list[tuple[ObjKey, frozenset[str]]] = field(default_factory=list)
    new_refs: dict[str, set[str]] = field(default_factory=dict)
    bumped_nodes: set[str] = field(default_factory=set)
    rechecked: int = 0
    statuses: dict[StatusKey, dict[str, Any]] = field(default_factory=dict)
    gone_statuses: set[StatusKey] = field(default_factory=set)
    defaults: set[str] = field(default_factory=set)
    held: dict[ObjKey, str | None] = field(default_factory=dict)
    #: Compiled objects the compiled models refuse (held while so), or None again.
    failed: dict[ObjKey, str | None] = field(default_factory=dict)
    pod_failures: list[tuple[str, str, str]] = field(default_factory=list)
    #: Pods naming groups that do not exist: (namespace, name, uid, the names).
    missing_groups: list[tuple[str, str, str, tuple[str, ...]]] = field(default_factory=list)
    compile_s: float = 0.0
    events: int = 0


@dataclass
class RoundInfo:
    events: int = 0
    compile_s: float = 0.0
    publish_s: float = 0.0
    writes: int = 0
    rechecked: int = 0
    at: float = 0.0


class Reconciler:
    """See the module docstring. ``run()`` after the reflectors have listed once."""

    def __init__(self, cluster: Cluster, options: Options | None = None, *, identity: str = ""):
        self.cluster = cluster
        self.options = options or Options()
        self.identity = identity or "secgroups-operator"
        self.events = EventRecorder(cluster, instance=self.identity, enabled=False)
        self.statuses = StatusWriter(cluster, interval_s=self.options.status_interval_s)
        self.publisher = Publisher(cluster, report=self._write_failed)
        self.publisher.on_tail_done = self._tail_done
        self.publisher.on_group_stored = self.group_republished
        self.intake = Intake(emit=self._emit, report=self._problem)
        self.compiler: IncrementalCompiler | None = None
        self.leading = False
        self.loaded = asyncio.Event()
        self.last = RoundInfo()
        self.rounds = 0
        #: When the initial lists were in (set by the caller), and when everything was
        #: first published after them (None until then): the start-up figure.
        self.lists_done: float | None = None
        self.published_at: float | None = None
        self._queue: list[Event | _Floor] = []
        self._wake = asyncio.Event()
        self._status_wake = asyncio.Event()
        self.statuses.notify = self._status_wake.set
        self._takeover = False
        # loop-owned views
        self._published_epochs: dict[PodKey, int] = {}
        self._published_rechecks: dict[str, dict[str, int]] = {
            COMPILED_GROUP_KIND: {},
            COMPILED_SET_KIND: {},
        }
        self._group_nodes: dict[str, frozenset[str]] = {}
        self._node_groups: dict[str, set[str]] = {}
        self._group_key_of: dict[str, tuple[str, str]] = {}  # compiled name → (ns, name)
        self._group_base: dict[StatusKey, dict[str, Any]] = {}
        self._publish_errors: dict[StatusKey, str] = {}
        self._defaults_done: set[str] = set()
        self._defaults_retry: dict[str, tuple[int, float]] = {}
        self._defaults_wanted: set[str] = set()
        # compile-thread-owned
        self._held: dict[ObjKey, str] = {}
        self._rule_group: dict[tuple[str, str], tuple[str, str]] = {}
        self._rule_remotes: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
        self._set_owner: dict[str, tuple[str, str, str]] = {}  # compiled set → source
        self._rules_by_remote: dict[tuple[str, str, str], set[tuple[str, str]]] = {}
        self._refused: frozenset[tuple[str, str]] = frozenset()
        # the compiler the initial lists are preloaded into (``preload``), until the build
        self._preloaded: IncrementalCompiler | None = None
        self._preload_error: BaseException | None = None
        self._preload_lock = asyncio.Lock()
        self.preloads = 0  # batches preloaded (figures for logs and benchmarks)
        self.preloaded_events = 0

    # ------------------------------------------------------------------ sinks

    def _emit(self, event: Event) -> None:
        self._queue.append(event)
        self._wake.set()

    def input_sink(self) -> _InputSink:
        return _InputSink(self)

    def compiled_sink(self) -> _CompiledSink:
        return _CompiledSink(self)

    def _problem(self, problem: Problem) -> None:
        kind, ns, name = problem.key
        self.events.warn(kind, ns, name, problem.reason, problem.message, problem.uid)
        if kind in USER_KINDS:
            since = self.statuses.since.get(problem.key)
            self.statuses.want(
                problem.key, problem_status(problem.reason, problem.message, now_stamp(), since)
            )
            self._wake.set()

    def _write_failed(self, key: ObjKey, error: str | None) -> None:
        owner = self._owner(key)
        if owner is None:
            return
        if error is None:
            self._publish_errors.pop(owner, None)
        else:
            self._publish_errors[owner] = error
            self.events.warn(
                owner[0], owner[1], owner[2], "PublishFailed", f"{key[0]} {key[1]}: {error}"
            )
        if owner in self._group_base:
            self.statuses.want(owner, self._group_base[owner])

    def _owner(self, key: ObjKey) -> StatusKey | None:
        kind, name = key
        if kind == COMPILED_GROUP_KIND and name in self._group_key_of:
            ns, gname = self._group_key_of[name]
            return ("SecurityGroup", ns, gname)
        if kind == COMPILED_NODE_KIND:
            return ("Node", "", name)
        return self._set_owner.get(name)

    # ------------------------------------------------------------------ leadership

    def start_leading(self) -> None:
        self.leading = True
        self._takeover = True
        self.events.enabled = True
        # What a standby saw and could not post: the problems standing now.
        for problem in list(self.intake.problems.values()):
            kind, ns, name = problem.key
            self.events.warn(kind, ns, name, problem.reason, problem.message, problem.uid)
        for key, held in self.publisher.held().items():
            owner = self._owner(key)
            if owner is not None:
                reason, _, message = held.partition(": ")
                self.events.warn(*owner, reason, f"{key[0]} {key[1]} not published: {message}")
        self._wake.set()

    def stop_leading(self) -> None:
        self.leading = False
        self.events.enabled = False
        self.publisher.cancel_tail()  # a follower writes nothing

    def _tail_done(self, stats: RoundStats, seconds: float) -> None:
        """A round's background writes ended: node objects that waited are due now."""
        log.info(
            "round: 0 events, compile 0.0 ms, %d writes in %.1f ms, 0 pods re-checked "
            "(node objects and deletions)",
            stats.writes + stats.deletes,
            seconds * 1000,
        )
        self._wake.set()
        self._status_wake.set()

    # ------------------------------------------------------------------ the loop

    async def write_statuses(self, stop: asyncio.Event) -> None:
        """Status writes, beside the rounds (21,000 statuses to write must never delay a
        compiled object): at most one round of writes per ``status_interval_s``."""
        while not stop.is_set():
            due = self.statuses.due_in() if self.leading else None
            if due is None:
                waiter = asyncio.ensure_future(self._status_wake.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                self._status_wake.clear()
                continue
            if due > 0:
                await asyncio.sleep(due)
            try:
                await self.statuses.flush(self._overlay)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("writing statuses failed; retrying")
                await asyncio.sleep(1.0)

    async def run(self, stop: asyncio.Event) -> None:
        await self._initial_build()
        self.loaded.set()
        writer = asyncio.create_task(self.write_statuses(stop), name="statuses")
        try:
            await self._loop(stop)
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            await self.publisher.stop_tail()

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            timeout = self._next_timer()
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait(
                {waiter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            stopper.cancel()
            if stop.is_set():
                return
            if self._queue and self.options.debounce_s:
                await asyncio.sleep(self.options.debounce_s)
            self._wake.clear()
            try:
                await self.round(pipelined=self.options.pipelined)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile round failed; retrying")
                await asyncio.sleep(1.0)
                self._wake.set()

    def _next_timer(self) -> float | None:
        times: list[float] = []
        now = time.monotonic()
        if self.leading:
            r = self.publisher.next_retry()
            if r is not None:
                times.append(max(0.0, r - now))
            for ns in self._defaults_wanted - self._defaults_done:
                times.append(max(0.0, self._defaults_retry.get(ns, (0, 0.0))[1] - now))
        return min(times) if times else None

    async def round(self, *, pipelined: bool = False) -> RoundInfo:
        """One round: compile the queued batch, then (leading) write what is due.

        ``pipelined`` (the loop): the round's node objects and deletions are written in
        the background (``Publisher.publish``), so the next batch's groups and sets go
        out without waiting for them."""
        info = RoundInfo(at=time.monotonic())
        batch, self._queue = self._queue, []
        need = set(self.publisher.need_spec)
        due: list[ObjKey] = []
        takeover = self.leading and self._takeover
        if takeover:
            due = [k for k, w in self.publisher.wanted.items() if self.publisher.spec_due(k, w)]
        if batch or need or takeover:
            result = await asyncio.to_thread(
                self._compute, batch, need, due if takeover else None, self.leading
            )
            self._take(result)
            info.events, info.compile_s, info.rechecked = (
                result.events,
                result.compile_s,
                result.rechecked,
            )
        if takeover:
            self._takeover = False
        if self.leading:
            t0 = time.monotonic()
            stats = await self.publisher.publish(pipelined=pipelined)
            if stats.background:
                log.info(
                    "round: %d node objects and deletions due, written in the background",
                    stats.background,
                )
            info.writes = stats.writes + stats.label_writes + stats.deletes
            if self.publisher.need_spec:
                self._wake.set()  # bodies dropped after writing are needed again
            if self.options.create_defaults:
                await self._create_defaults()
            self._status_wake.set()
            info.publish_s = time.monotonic() - t0
        self.rounds += 1
        self.last = info
        if self.published_at is None and self.leading and self.publisher.converged():
            self.published_at = time.monotonic()
            since = self.published_at - (self.lists_done or self.published_at)
            log.info(
                "all compiled objects published: %d objects (%d writes) %.2f s after the "
                "initial lists",
                len(self.publisher.stored),
                self.publisher.writes_total,
                since,
            )
        if info.writes or info.rechecked:
            log.info(
                "round: %d events, compile %.1f ms, %d writes in %.1f ms, %d pods re-checked",
                info.events,
                info.compile_s * 1000,
                info.writes,
                info.publish_s * 1000,
                info.rechecked,
            )
        return info

    # ------------------------------------------------------------------ initial build

    async def preload(self, stop: asyncio.Event) -> None:
        """While the initial lists come in (until :attr:`lists_done` is set): every
        ``preload_s``, hand what has arrived to the compiler in the worker thread
        (module docstring), so that the build after the last page has only the rest to
        compile. Writes nothing; a failure is raised by the build."""
        if self.options.preload_s <= 0:
            return
        while self.lists_done is None and not stop.is_set():
            await asyncio.sleep(self.options.preload_s)
            if self.lists_done is not None or len(self._queue) < PRELOAD_MIN_EVENTS:
                continue
            async with self._preload_lock:  # the build waits for a batch under way
                events, self._queue = self._queue, []
                options = self._compile_options()
                try:
                    await asyncio.to_thread(self._preload_batch, events, options)
                except Exception as exc:  # the build raises it: nothing half-compiled is used
                    self._preload_error = exc
                    return
                self.preloads += 1

    def _preload_batch(self, events: list[Event | _Floor], options: CompileOptions) -> None:
        facts_events = [e for e in events if not isinstance(e, _Floor)]
        with gc_paused():
            if self._preloaded is None:
                self._preloaded = IncrementalCompiler(options=options)
            self._preloaded.preload(facts_events)
            self._track(facts_events)
            gc.freeze()  # as the build's result: it lives as long as the process
        self.preloaded_events += len(facts_events)

    def _compile_options(self) -> CompileOptions:
        """Compile options with the epochs and counters published so far (copies)."""
        return CompileOptions(
            scope=self.options.scope,
            epochs=dict(self._published_epochs),
            group_rechecks=dict(self._published_rechecks[COMPILED_GROUP_KIND]),
            set_rechecks=dict(self._published_rechecks[COMPILED_SET_KIND]),
        )

    async def _initial_build(self) -> None:
        async with self._preload_lock:
            events, self._queue = self._queue, []
        if self._preload_error is not None:
            raise self._preload_error
        options = self._compile_options()
        preloaded, self._preloaded = self._preloaded, None
        refused = frozenset(self.intake.refused)
        t0 = time.monotonic()

        def build() -> _Result:
            # The collector stays off for the whole build, not only the compile: what
            # follows it (the rule index, the wanted specs, the statuses) allocates
            # enough to trigger full collections, each walking the whole heap for
            # nothing — a build makes no reference cycles (1 s of a 4.8 s build at
            # 30,000 pods: bench/operator_memory.py's restart). Everything built lives
            # as long as the process: frozen before the collector is back, so it never
            # walks it.
            with gc_paused():
                out = _build()
                gc.freeze()
            return out

        def _build() -> _Result:
            self._refused = refused
            facts_events = [e for e in events if not isinstance(e, _Floor)]
            inc = preloaded if preloaded is not None else IncrementalCompiler(options=options)
            # Epochs and counters published since the compiler was made (a preload's
            # first batch), as a floor; empty for a compiler made now.
            floor = SetEpochs(
                {p: v for p, v in options.epochs.items() if v > inc.epoch(p)},
                {g: v for g, v in options.group_rechecks.items() if v > inc.group_recheck(g)},
                {x: v for x, v in options.set_rechecks.items() if v > inc.set_recheck(x)},
            )
            changes = inc.load([*facts_events, floor])
            self.compiler = inc
            out = _Result(events=self.preloaded_events + len(facts_events))
            self._track(facts_events)
            for key, text in changes.failed.items():
                if key[0] != "Pod" and text is not None:
                    reason = self._failure_reason(inc, *key, text)
                    out.failed[key] = reason
                    self._held[key] = reason
                    out.held[key] = reason
                elif text is not None:
                    ns, _, pod_name = key[1].partition("/")
                    out.pod_failures.append((ns, pod_name, text))
            self._wanted_all(inc, out)
            self._defaults_of(inc, changes, out, everything=True)
            self._statuses_all(inc, out)
            _missing_groups(inc, out)
            return out

        result = await asyncio.to_thread(build)
        wanted = {k for k, _ in result.specs} | set(result.failed)
        for key in list(self.publisher.stored):
            if key not in wanted:
                result.specs.append((key, None))
        self._take(result)
        log.info(
            "initial build: %d objects in (%d of them compiled in %d batches while the "
            "lists came in), %d compiled objects, %.2f s",
            result.events,
            self.preloaded_events,
            self.preloads,
            len(wanted),
            time.monotonic() - t0,
        )

    # ------------------------------------------------------------------ compile thread

    def _compute(
        self,
        batch: list[Event | _Floor],
        need: set[ObjKey],
        due: list[ObjKey] | None,
        leading: bool,
    ) -> _Result:
        t0 = time.perf_counter()
        inc = self.compiler
        assert inc is not None
        self._refused = frozenset(self.intake.refused)
        events: list[Event] = []
        for e in batch:
            if isinstance(e, _Floor):
                floor = SetEpochs(
                    {p: v for p, v in e.epochs.items() if v > inc.epoch(p)},
                    {g: v for g, v in e.groups.items() if v > inc.group_recheck(g)},
                    {x: v for x, v in e.sets.items() if v > inc.set_recheck(x)},
                )
                if floor.epochs or floor.groups or floor.sets:
                    events.append(floor)
            else:
                events.append(e)
        out = _Result(events=len(batch))
        changes = inc.apply_all(events)
        direct: set[PodKey] = set()
        groups: set[str] = set()
        sets: set[str] = set()
        if leading and not self.options.recheck_counters:
            direct = set(changes.recheck)
            out.rechecked = len(changes.recheck)
        elif leading:
            direct = set(changes.recheck_direct)
            groups = {naming.compiled_group_name(*g) for g in changes.recheck_groups}
            sets = set(changes.recheck_sets)
            out.rechecked = len(changes.recheck)
        if due is not None:
            caught = self._catch_up(inc, due)
            direct |= caught[0]
            groups |= caught[1]
            sets |= caught[2]
        if direct or groups or sets:
            changes.merge(
                inc.apply(
                    SetEpochs(
                        {p: inc.epoch(p) + 1 for p in direct},
                        {g: inc.group_recheck(g) + 1 for g in groups},
                        {x: inc.set_recheck(x) + 1 for x in sets},
                    )
                )
            )
            # A pod that just got its first IPs has its epoch raised too (row 1), but no
            # flow of its own to re-check: its node object need not wait for the new
            # group and set specs (publishing: "bumped"), so it is written beside its
            # set rather than after it.
            ordered = direct - changes.first_ips if self.options.new_pods_early else direct
            out.bumped_nodes = {n for p in ordered if (n := inc.node_of(p)) is not None}
            out.rechecked = max(out.rechecked, len(direct))
        touched = self._track(events)
        self._changed(inc, changes, out)
        for key in sorted(need):
            self._regenerate(inc, key, out)
        self._statuses_of(inc, events, changes, touched, out)
        self._defaults_of(inc, changes, out)
        _missing_groups(inc, out)
        out.compile_s = time.perf_counter() - t0
        return out

    def _catch_up(
        self, inc: IncrementalCompiler, due: Iterable[ObjKey]
    ) -> tuple[set[PodKey], set[str], set[str]]:
        """What to re-check after a takeover — pods on node objects that differ from what
        is published, groups and sets whose published spec differs — as the pods whose
        epochs and the groups and sets whose counters go up."""
        pods: set[PodKey] = set()
        groups: set[str] = set()
        sets: set[str] = set()
        for kind, name in due:
            if kind == COMPILED_NODE_KIND:
                pods |= inc.pods_on(name)
            elif kind == COMPILED_GROUP_KIND:
                if inc.compiled_group(name) is not None:
                    groups.add(name)
            elif inc.compiled_set(name) is not None:
                sets.add(name)
        return pods, groups, sets

    def _wanted_of(self, kind: str, name: str, model: Any) -> Wanted:
        w = wanted_spec(kind, model)
        if kind == COMPILED_SET_KIND and model.source_kind is SourceKind.IP_ADDRESS_GROUP:
            ref = (model.source.namespace, model.source.name)
            if ref in self._refused:
                w.held = (
                    f"TooLarge: IP address group {ref[0]}/{ref[1]} compiles to more than "
                    f"{MAX_ADDRESS_GROUP_CIDRS} CIDRs"
                )
        return w

    def _note_held(self, key: ObjKey, w: Wanted | None, out: _Result) -> None:
        held = w.held if w is not None else None
        if self._held.get(key) != held:
            if held is None:
                self._held.pop(key, None)
            else:
                self._held[key] = held
            out.held[key] = held

    def _changed(self, inc: IncrementalCompiler, changes: Changes, out: _Result) -> None:
        for (kind, name), text in changes.failed.items():
            if kind == "Pod":
                if text is not None:
                    ns, _, pod_name = name.partition("/")
                    out.pod_failures.append((ns, pod_name, text))
                continue
            reason = None if text is None else self._failure_reason(inc, kind, name, text)
            out.failed[(kind, name)] = reason
            if reason is None:
                self._held.pop((kind, name), None)
            else:
                self._held[(kind, name)] = reason
            out.held[(kind, name)] = reason
        for kind, table in (
            (COMPILED_GROUP_KIND, changes.groups),
            (COMPILED_SET_KIND, changes.sets),
            (COMPILED_NODE_KIND, changes.nodes),
        ):
            for name, spec in table.items():
                w = None if spec is None else self._wanted_of(kind, name, spec)
                out.specs.append(((kind, name), w))
                self._note_held((kind, name), w, out)
        for name in changes.placed_groups:
            out.labels.append(((COMPILED_GROUP_KIND, name), inc.nodes_of_group(name)))
        for name in changes.placed_sets:
            out.labels.append(((COMPILED_SET_KIND, name), inc.nodes_of_set(name)))
        for node, refs in changes.new_refs.items():
            out.new_refs.setdefault(node, set()).update(refs)

    def _failure_reason(self, inc: IncrementalCompiler, kind: str, name: str, text: str) -> str:
        if kind == COMPILED_GROUP_KIND:
            spec = inc.compiled_group(name)
            key = self._group_key_of.get(name) or (
                (spec.group.namespace, spec.group.name) if spec is not None else None
            )
            if key is not None:  # as compile_policy reports it (and the CLI shows it held)
                n = len(inc.rules_of(key))
                problem = uncompilable_group_problem(key, n, ValueError(text))
                return f"{problem.reason}: {problem.message}"
        return f"TooLarge: cannot be compiled: {text}"

    def _regenerate(self, inc: IncrementalCompiler, key: ObjKey, out: _Result) -> None:
        kind, name = key
        model: Any = (
            inc.compiled_group(name)
            if kind == COMPILED_GROUP_KIND
            else inc.compiled_set(name)
            if kind == COMPILED_SET_KIND
            else inc.compiled_node(name)
        )
        out.specs.append((key, None if model is None else self._wanted_of(kind, name, model)))
        if model is not None and kind == COMPILED_GROUP_KIND:
            out.labels.append((key, inc.nodes_of_group(name)))
        elif model is not None and kind == COMPILED_SET_KIND:
            out.labels.append((key, inc.nodes_of_set(name)))

    def _wanted_all(self, inc: IncrementalCompiler, out: _Result) -> None:
        groups, sets, nodes = inc.compiled()
        for name, spec in list(groups.items()):
            w = self._wanted_of(COMPILED_GROUP_KIND, name, spec)
            out.specs.append(((COMPILED_GROUP_KIND, name), w))
            self._note_held((COMPILED_GROUP_KIND, name), w, out)
            out.labels.append(((COMPILED_GROUP_KIND, name), inc.nodes_of_group(name)))
        sets_on = inc.nodes_of_every_set()
        for name, set_spec in list(sets.items()):
            w = self._wanted_of(COMPILED_SET_KIND, name, set_spec)
            out.specs.append(((COMPILED_SET_KIND, name), w))
            self._note_held((COMPILED_SET_KIND, name), w, out)
            out.labels.append(((COMPILED_SET_KIND, name), frozenset(sets_on.get(name, ()))))
        for name, node_spec in list(nodes.items()):
            w = self._wanted_of(COMPILED_NODE_KIND, name, node_spec)
            out.specs.append(((COMPILED_NODE_KIND, name), w))
            self._note_held((COMPILED_NODE_KIND, name), w, out)

    # ------------------------------------------------------------------ statuses (thread)

    def _track(self, events: Iterable[Event]) -> set[tuple[str, str]]:
        """Index rules by group and by remote (which statuses an event reaches); returns
        the groups of the rules the events touched, before and after."""
        touched: set[tuple[str, str]] = set()
        for e in events:
            if isinstance(e, Upsert) and isinstance(e.obj, SecurityGroupRule):
                key = (e.obj.metadata.namespace or "default", e.obj.metadata.name)
                touched |= self._untrack_rule(key)
                group = (key[0], e.obj.spec.security_group)
                self._rule_group[key] = group
                touched.add(group)
                remotes = _remotes(e.obj)
                self._rule_remotes[key] = remotes
                for remote in remotes:
                    self._rules_by_remote.setdefault(remote, set()).add(key)
            elif isinstance(e, Delete) and e.kind is Kind.SECURITY_GROUP_RULE:
                touched |= self._untrack_rule((e.namespace or "default", e.name))
        return touched

    def _untrack_rule(self, key: tuple[str, str]) -> set[tuple[str, str]]:
        group = self._rule_group.pop(key, None)
        for remote in self._rule_remotes.pop(key, ()):
            keys = self._rules_by_remote.get(remote)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._rules_by_remote[remote]
        return {group} if group is not None else set()

    def _statuses_of(
        self,
        inc: IncrementalCompiler,
        events: Iterable[Event],
        changes: Changes,
        touched: set[tuple[str, str]],
        out: _Result,
    ) -> None:
        groups: set[tuple[str, str]] = set(changes.member_groups) | touched
        rules: set[tuple[str, str]] = set()
        ipags: set[tuple[str, str]] = set()
        for e in events:
            if isinstance(e, Upsert):
                obj = e.obj
                if not isinstance(obj, SecurityGroup | SecurityGroupRule | IPAddressGroup):
                    continue
                key = (obj.metadata.namespace or "default", obj.metadata.name)
                kind: str = obj.kind
            elif isinstance(e, Delete) and e.kind.value in USER_KINDS:
                key, kind = (e.namespace or "default", e.name), e.kind.value
            else:
                continue
            if kind == "SecurityGroup":
                groups.add(key)
                rules |= set(inc.rules_of(key))
                rules |= self._rules_by_remote.get(("SecurityGroup", *key), set())
            elif kind == "SecurityGroupRule":
                rules.add(key)
            else:
                ipags.add(key)
                rules |= self._rules_by_remote.get(("IPAddressGroup", *key), set())
        for key in out.held:
            if key[0] == COMPILED_GROUP_KIND:
                spec = inc.compiled_group(key[1])
                if spec is not None:
                    groups.add((spec.group.namespace, spec.group.name))
        self._statuses_for(inc, groups, rules, ipags, out)

    def _statuses_all(self, inc: IncrementalCompiler, out: _Result) -> None:
        self._statuses_for(inc, inc.group_keys(), inc.rule_keys(), inc.ipag_keys(), out)

    def _statuses_for(
        self,
        inc: IncrementalCompiler,
        groups: Iterable[tuple[str, str]],
        rules: Iterable[tuple[str, str]],
        ipags: Iterable[tuple[str, str]],
        out: _Result,
    ) -> None:
        now = now_stamp()
        since = self.statuses.since
        for key in groups:
            skey = ("SecurityGroup", *key)
            group = inc.group(key)
            if group is None:
                out.gone_statuses.add(skey)
                continue
            held = self._held.get((COMPILED_GROUP_KIND, naming.compiled_group_name(*key)))
            out.statuses[skey] = group_status(
                group,
                inc.rules_of(key).values(),
                inc.member_count(key),
                held=held,
                now=now,
                since=since.get(skey),
            )
        for key in rules:
            skey = ("SecurityGroupRule", *key)
            rule = inc.rule(key)
            if rule is None:
                out.gone_statuses.add(skey)
                continue
            out.statuses[skey] = rule_status(
                rule,
                group_exists=inc.group_exists((key[0], rule.spec.security_group)),
                missing_remote=_missing_remote(inc, rule),
                now=now,
                since=since.get(skey),
            )
        for key in ipags:
            skey = ("IPAddressGroup", *key)
            if key in self._refused:
                continue  # the intake reported it (TooLarge)
            ipag = inc.ipag(key)
            if ipag is None:
                out.gone_statuses.add(skey)
                continue
            cidrs = address_group_cidrs(ipag.spec.addresses)
            out.statuses[skey] = ipag_status(ipag, cidrs=cidrs, now=now, since=since.get(skey))

    def _defaults_of(
        self, inc: IncrementalCompiler, changes: Changes, out: _Result, everything: bool = False
    ) -> None:
        names = inc.compiled()[0].keys() if everything else changes.groups.keys()
        for name in names:
            spec = inc.compiled_group(name)
            if spec is not None and spec.synthesized:
                out.defaults.add(spec.group.namespace)

    # ------------------------------------------------------------------ back on the loop

    def _take(self, result: _Result) -> None:
        pub = self.publisher
        for key, reason in result.failed.items():
            pub.hold(key, reason)
        for ns, name, text in result.pod_failures:
            self.events.warn("Pod", ns, name, "TooLarge", f"cannot be compiled: {text}")
        for ns, name, uid, names in result.missing_groups:  # at most once per repeat_s
            self.events.warn("Pod", ns, name, "UnknownGroup", missing_groups_note(names), uid)
        for key, w in result.specs:
            if w is None:
                pub.want_gone(key)
            else:
                pub.want_spec(key, w)
                if key[0] == COMPILED_GROUP_KIND and w.owner is not None:
                    self._group_key_of[key[1]] = (w.owner[1], w.owner[2])
                elif key[0] == COMPILED_SET_KIND and w.owner is not None:
                    self._set_owner[key[1]] = w.owner
        for key, nodes in result.labels:
            pub.want_labels(key, nodes)
            if key[0] == COMPILED_GROUP_KIND:
                self._place_group(key[1], nodes)
        for node, refs in result.new_refs.items():
            pub.add_new_refs(node, refs)
        if result.bumped_nodes:
            pub.bump(result.bumped_nodes)
        for key, held in result.held.items():
            owner = self._owner(key)
            if held is not None and owner is not None:
                reason, _, message = held.partition(": ")
                self.events.warn(*owner, reason, f"{key[0]} {key[1]} not published: {message}")
        for skey in result.gone_statuses:
            self.statuses.forget(skey)
            self._group_base.pop(skey, None)
        for skey, status in result.statuses.items():
            if skey[0] == "SecurityGroup":
                self._group_base[skey] = status
            self.statuses.want(skey, status)
        self._defaults_wanted |= result.defaults
        if result.statuses:
            self._status_wake.set()

    def _place_group(self, name: str, nodes: frozenset[str]) -> None:
        old = self._group_nodes.get(name, frozenset())
        for n in old - nodes:
            self._node_groups.get(n, set()).discard(name)
        for n in nodes - old:
            self._node_groups.setdefault(n, set()).add(name)
        if nodes:
            self._group_nodes[name] = nodes
        else:
            self._group_nodes.pop(name, None)
        key = self._group_key_of.get(name)
        if key is not None and ("SecurityGroup", *key) in self._group_base:
            skey = ("SecurityGroup", *key)
            self.statuses.want(skey, self._group_base[skey])

    def _overlay(self, key: StatusKey, status: dict[str, Any]) -> dict[str, Any]:
        if key[0] != "SecurityGroup":
            return status
        cname = naming.compiled_group_name(key[1], key[2])
        desired = self._group_nodes.get(cname, frozenset())
        st = self.publisher.stored.get((COMPILED_GROUP_KIND, cname))
        realized = 0
        if st is not None:
            for node in desired:
                nst = self.publisher.stored.get((COMPILED_NODE_KIND, node))
                report = self.publisher.applied(node, nst) if nst is not None else None
                if report is not None and (report.applied_revision or 0) >= st.rv:
                    realized += 1
        out = with_realization(
            status, len(desired), realized, st.generation if st is not None else None
        )
        error = self._publish_errors.get(key)
        if error is not None:
            out = with_publish_error(out, error, now_stamp())
        return out

    def node_reported(self, node: str) -> None:
        """A node's agent reported what it applied: its groups' realization may move."""
        self._status_wake.set()
        for name in self._node_groups.get(node, ()):
            key = self._group_key_of.get(name)
            skey = ("SecurityGroup", *key) if key is not None else None
            if skey is not None and skey in self._group_base:
                self.statuses.want(skey, self._group_base[skey])
        if self.leading:
            self._wake.set()

    def group_republished(self, name: str) -> None:
        key = self._group_key_of.get(name)
        if key is not None:
            skey = ("SecurityGroup", *key)
            if skey in self._group_base:
                self.statuses.want(skey, self._group_base[skey])

    # ------------------------------------------------------------------ default groups

    async def _create_defaults(self) -> None:
        now = time.monotonic()
        for ns in sorted(self._defaults_wanted - self._defaults_done):
            failures, not_before = self._defaults_retry.get(ns, (0, 0.0))
            if not_before > now:
                continue
            try:
                for obj in default_group_objects(ns):
                    await self.cluster.create(obj)  # None: it exists — left as the user has it
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = min(2.0**failures, 300.0)
                self._defaults_retry[ns] = (failures, now + delay)
                log.warning("default group of %s not created (retry in %.0f s): %s", ns, delay, exc)
                self.events.warn(
                    "Namespace", "", ns, "DefaultGroupNotCreated", f"{DEFAULT_GROUP_NAME}: {exc}"
                )
                continue
            self._defaults_done.add(ns)
            self._defaults_retry.pop(ns, None)
            log.info("created the default security group of namespace %s (S-D-1)", ns)

    # ------------------------------------------------------------------ standby mirror

    def mirror_counter(self, kind: str, obj: Mapping[str, Any]) -> None:
        """A group's or set's re-check counter another replica published: the compiler
        never goes below it."""
        name = (obj.get("metadata") or {}).get("name")
        n = int((obj.get("spec") or {}).get("recheck") or 0)
        published = self._published_rechecks[kind]
        if not name or n <= published.get(name, 0):
            return
        published[name] = n
        if self.compiler is not None:
            if kind == COMPILED_GROUP_KIND:
                self._queue.append(_Floor({}, groups={name: n}))
            else:
                self._queue.append(_Floor({}, sets={name: n}))
            self._wake.set()

    def mirror_node(self, obj: Mapping[str, Any]) -> None:
        """Epochs another replica published: the compiler never goes below them."""
        raised: dict[PodKey, int] = {}
        for pod in (obj.get("spec") or {}).get("pods") or ():
            key = (pod.get("namespace"), pod.get("name"))
            epoch = int(pod.get("epoch") or 0)
            if epoch > self._published_epochs.get(key, 0):
                self._published_epochs[key] = epoch
                raised[key] = epoch
        if raised and self.compiler is not None:
            self._queue.append(_Floor(raised))
            self._wake.set()


def default_group_objects(namespace: str) -> list[dict[str, Any]]:
    """The S-D-1 default group of a namespace as user objects: four rules, then the group."""
    rules = []
    for family in ("IPv4", "IPv6"):
        suffix = family.lower()
        rules.append(
            {
                "apiVersion": API_VERSION,
                "kind": "SecurityGroupRule",
                "metadata": {
                    "name": f"{DEFAULT_GROUP_NAME}-ingress-{suffix}",
                    "namespace": namespace,
                    "labels": dict(MANAGED_BY),
                },
                "spec": {
                    "securityGroup": DEFAULT_GROUP_NAME,
                    "direction": "Ingress",
                    "ipFamily": family,
                    "protocol": "All",
                    "remote": {"securityGroup": {"name": DEFAULT_GROUP_NAME}},
                    "description": "Members of the default group talk to each other (S-D-1).",
                },
            }
        )
        rules.append(
            {
                "apiVersion": API_VERSION,
                "kind": "SecurityGroupRule",
                "metadata": {
                    "name": f"{DEFAULT_GROUP_NAME}-egress-{suffix}",
                    "namespace": namespace,
                    "labels": dict(MANAGED_BY),
                },
                "spec": {
                    "securityGroup": DEFAULT_GROUP_NAME,
                    "direction": "Egress",
                    "ipFamily": family,
                    "protocol": "All",
                    "description": "All outbound traffic (S-D-1).",
                },
            }
        )
    group = {
        "apiVersion": API_VERSION,
        "kind": "SecurityGroup",
        "metadata": {
            "name": DEFAULT_GROUP_NAME,
            "namespace": namespace,
            "labels": dict(MANAGED_BY),
        },
        "spec": {"description": "Default security group of the namespace (S-D-1)."},
    }
    return [*rules, group]


def _remotes(rule: SecurityGroupRule) -> list[tuple[str, str, str]]:
    ns = rule.metadata.namespace or "default"
    remote = rule.spec.remote
    out = []
    if remote is not None and remote.security_group is not None:
        out.append(
            ("SecurityGroup", remote.security_group.namespace or ns, remote.security_group.name)
        )
    if remote is not None and remote.ip_address_group is not None:
        ref = remote.ip_address_group
        out.append(("IPAddressGroup", ref.namespace or ns, ref.name))
    return out


def _missing_groups(inc: IncrementalCompiler, out: _Result) -> None:
    """Pods whose annotation names groups that do not exist get a Warning event: they are
    fail-closed, in no group for those names (docs/semantics.md, decision 6)."""
    for key, names in sorted(inc.unknown_annotated().items()):
        pod = inc.pod(key)
        out.missing_groups.append((key[0], key[1], pod.uid if pod is not None else "", names))


def _missing_remote(inc: IncrementalCompiler, rule: SecurityGroupRule) -> str | None:
    for kind, ns, name in _remotes(rule):
        if kind == "SecurityGroup":
            if not inc.group_exists((ns, name)) and name != DEFAULT_GROUP_NAME:
                return f"remote SecurityGroup {ns}/{name} does not exist"
        elif not inc.ipag_exists((ns, name)):
            return f"remote IPAddressGroup {ns}/{name} does not exist"
    return None


class _InputSink:
    """Reflector sink of the input kinds: the intake, plus our objects' current statuses."""

    def __init__(self, rec: Reconciler) -> None:
        self.rec = rec

    def begin_list(self, kind: str) -> None:
        self.rec.intake.begin_list(kind)

    def end_list(self, kind: str) -> None:
        self.rec.intake.end_list(kind)

    def upsert(self, kind: str, obj: dict[str, Any]) -> None:
        if kind in USER_KINDS:
            meta = obj.get("metadata") or {}
            key = (kind, meta.get("namespace") or "default", meta["name"])
            self.rec.statuses.observe(key, obj.get("status"))
        self.rec.intake.upsert(kind, obj)

    def delete(self, kind: str, obj: dict[str, Any]) -> None:
        if kind in USER_KINDS:
            meta = obj.get("metadata") or {}
            self.rec.statuses.forget((kind, meta.get("namespace") or "default", meta["name"]))
        self.rec.intake.delete(kind, obj)


class _CompiledSink:
    """Reflector sink of the compiled kinds: what is published, and the agents' reports."""

    def __init__(self, rec: Reconciler) -> None:
        self.rec = rec
        self._seen: dict[str, set[str]] = {}

    def begin_list(self, kind: str) -> None:
        self._seen[kind] = set()

    def end_list(self, kind: str) -> None:
        seen = self._seen.pop(kind, set())
        if kind == NODE_REPORT_KIND:
            pub = self.rec.publisher
            for node in [n for n in pub.reports if n not in seen]:
                if pub.observe_report_deleted(node, pub.reports[node].rv):
                    self.rec.node_reported(node)
            return
        for key in [k for k in self.rec.publisher.stored if k[0] == kind and k[1] not in seen]:
            st = self.rec.publisher.stored[key]
            self.rec.publisher.observe_deleted(kind, key[1], st.rv)

    def upsert(self, kind: str, obj: dict[str, Any]) -> None:
        name = (obj.get("metadata") or {})["name"]
        if kind in self._seen:
            self._seen[kind].add(name)
        pub = self.rec.publisher
        if kind == NODE_REPORT_KIND:
            if pub.observe_report(obj):
                self.rec.node_reported(name)
            return
        before = pub.stored.get((kind, name))
        st = pub.observe(obj)
        if st is None:
            return
        if kind == COMPILED_NODE_KIND:
            if before is None or before.generation != st.generation:
                self.rec.mirror_node(obj)
        else:
            if before is None or before.generation != st.generation:
                self.rec.mirror_counter(kind, obj)
            if kind == COMPILED_GROUP_KIND:
                self.rec.group_republished(name)
        if pub.dirty and self.rec.leading:
            self.rec._wake.set()

    def delete(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        rv = int(meta.get("resourceVersion") or 0)
        if kind == NODE_REPORT_KIND:
            if self.rec.publisher.observe_report_deleted(meta["name"], rv):
                self.rec.node_reported(meta["name"])
            return
        self.rec.publisher.observe_deleted(kind, meta["name"], rv)
        if self.rec.leading:
            self.rec._wake.set()
