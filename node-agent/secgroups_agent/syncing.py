"""The level-triggered sync loop: inputs changed → one atomic transaction → conntrack → status.

Any event (a watch event, a policy file change, a route change) only calls
:meth:`SyncLoop.changed`, which marks the loop dirty. The loop then runs ONE sync that
reads the current inputs (never the events), so a burst of events coalesces into one
sync, and a sync started late still applies the latest state. Syncs are rate-limited
by a token bucket (``burst`` syncs at once, then one per ``min_interval``).

A sync:

1. takes the source's :class:`~secgroups_agent.sources.Snapshot` (none until the
   initial lists completed: then nothing is applied and readiness stays false);
2. reads every pod interface from the routes (:mod:`~secgroups_agent.interfaces`);
3. **computes** a :class:`~secgroups_agent.planning.Plan` (in a worker thread) —
   incremental against the committed state, or full: at start, after any failure,
   every ``resync_period`` and when drift was detected;
4. **emits** it: one ``nft -f`` transaction (:mod:`~secgroups_agent.nftables`); on
   failure the committed state is forgotten, the next sync is a full resync, retried
   with exponential backoff;
5. after the commit only, deletes the conntrack entries of pod IPs that went away
   (:mod:`~secgroups_agent.conntrack`), then sweeps the inbound flows of pods whose mark
   the commit changed — an epoch, or a group's or set's re-check counter
   (:mod:`~secgroups_agent.sweeping`: still allowed → the new mark, denied → the
   tombstone whose replies the table drops); failures are retried, and a sweep yields to
   a waiting policy change (what is left is swept after it);
6. reports status (:mod:`~secgroups_agent.status`) and metrics.

Every ``drift_period`` seconds a separate task (:class:`~secgroups_agent.drift.DriftChecker`,
through its own ``reader`` backend so that the hot path never waits for a listing)
compares the table with the committed state; a result that overlapped a commit is
dropped; drift triggers a full resync.
The loop beats :class:`~secgroups_agent.server.Health` at least every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from secgroups.compiled import NodeAgentStatus
from secgroups.nft.rendering import RenderError
from secgroups.nft.sealing import SEAL, read_seal, seal_text, unseal_text
from secgroups.nft.transactions import Inventory
from secgroups_agent import logs
from secgroups_agent.conntrack import ConntrackPort
from secgroups_agent.drift import DriftChecker
from secgroups_agent.interfaces import InterfaceResolver
from secgroups_agent.metrics import Metrics
from secgroups_agent.nftables import NftBackend, NftError
from secgroups_agent.planning import Plan, Planner, TableState
from secgroups_agent.server import Health
from secgroups_agent.sources import PodInputs, Snapshot, Source, pod_inputs, same_pod_inputs
from secgroups_agent.status import StatusReporter
from secgroups_agent.sweeping import (
    Sweeper,
    epoch_elements,
    kernel_stale_marks,
    pod_marks,
    stale_marks,
)

log = logs.get("sync")


@dataclass(frozen=True)
class SyncConfig:
    resync_period: float = 300.0  # full resync at least this often (seconds)
    drift_period: float = 10.0  # drift check this often, between syncs
    min_interval: float = 0.05  # token bucket: one sync per interval after the burst
    burst: int = 5
    retry_backoff: tuple[float, float] = (0.5, 30.0)  # after a failed apply: first, max
    nft_timeout: float = 30.0
    heartbeat: float = 1.0
    seal_delay: float = 1.0  # seal the table once no commit came for this long (sealing.py)


class TokenBucket:
    """``burst`` tokens, one more every ``interval`` seconds (kube-proxy's BoundedFrequencyRunner
    idea): isolated changes sync at once, sustained churn at most 1/interval per second."""

    def __init__(self, interval: float, burst: int, now: float) -> None:
        self.interval = interval
        self.burst = max(1, burst)
        self.tokens = float(self.burst)
        self.stamp = now

    def take(self, now: float) -> float:
        """0.0 if a token was taken; else seconds until one is available."""
        if self.interval <= 0:
            return 0.0
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) / self.interval)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) * self.interval


@dataclass
class _Step:
    plan: Plan | None = None
    render_error: str | None = None
    nft_error: NftError | None = None
    timings: dict[str, float] = field(default_factory=dict)
    adopted: bool = False  # the table was found as wanted and sealed: nothing applied
    sealed: bool = False  # the transaction sealed the table


@dataclass
class SyncResult:
    """What the last sync did (for tests and logs)."""

    outcome: str  # applied, noop, not-ready, render-failed, nft-failed
    kind: str = ""
    plan: Plan | None = None
    error: str | None = None
    latency: float = 0.0  # seconds from the first change it includes to its commit
    timings: dict[str, float] = field(default_factory=dict)  # inputs, compute, emit


class Placeholder(Protocol):
    """The CNI side (``secgroups_agent.cni``): which addresses are behind the fail-closed
    placeholder in the next plan, and what each commit put in force (docs/cni.md)."""

    def pending(self, snap: Snapshot) -> frozenset[str]: ...

    def committed(self, snap: Snapshot, state: TableState) -> None: ...


class SyncLoop:
    def __init__(
        self,
        *,
        source: Source,
        planner: Planner,
        nft: NftBackend,
        conntrack: ConntrackPort,
        interfaces: InterfaceResolver,
        reporter: StatusReporter,
        metrics: Metrics,
        health: Health,
        config: SyncConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        reader: NftBackend | None = None,
    ) -> None:
        self.source = source
        self.planner = planner
        self.nft = nft
        self.conntrack = conntrack
        self.interfaces = interfaces
        self.reporter = reporter
        self.metrics = metrics
        self.health = health
        self.config = config or SyncConfig()
        self.clock = clock
        self.wall = wall
        self.reader = reader or nft
        self.placeholder: Placeholder | None = None  # set by the CNI side (cniserver.start)
        self.drift = DriftChecker(
            self.reader, family=planner.options.table.family, table=planner.options.table.name
        )
        self._commits = 0
        self._event = asyncio.Event()
        self._dirty = False
        self._dirty_since: float | None = None
        self._need_full = True
        self._failures = 0
        self._retry_at = 0.0
        now = clock()
        self._bucket = TokenBucket(self.config.min_interval, self.config.burst, now)
        self._last_full = now
        self._pending_ct: set[str] = set()
        self._ct_error: str | None = None
        self._ct_failures = 0
        # The sweep (sweeping.py): marks per pod UID as last committed (None: unknown
        # before the first commit, when the kernel's in_epoch maps are read instead),
        # old marks still to sweep per UID, and the snapshot they are judged against.
        self.sweeper = Sweeper(conntrack)
        self._marks: tuple[PodInputs, dict[str, int]] | None = None
        self._kernel_epochs: dict[str, int] | None = None
        self._stale: dict[str, set[int]] = {}
        self._swept_snap: Snapshot | None = None
        self._sweep_error: str | None = None
        self._sweep_failures = 0
        self._applied_at: float | None = None
        # The seal (secgroups.nft.sealing): the first full plan may adopt the table in place;
        # after an incremental commit the table is sealed again once idle.
        self._adopting = True
        self._seal_at: float | None = None
        self._writes = 0  # odd while a transaction of ours may be under way
        self._drift_now = asyncio.Event()
        self._refused: tuple[str, ...] = ()  # refusals of the last commit (collisions.py)
        # The groups watch's resourceVersion of the last snapshot applied (realization).
        self._group_revision: int | None = None
        self._last_error: tuple[str, str] | None = None
        self.results: list[SyncResult] = []  # the last few, newest last
        self.syncs = 0

    # ------------------------------------------------------------- events
    def changed(self) -> None:
        """Inputs changed: sync soon (call from the loop's thread)."""
        if not self._dirty:
            self._dirty = True
            self._dirty_since = self.clock()
        self._event.set()

    def request_full(self) -> None:
        self._need_full = True
        self.changed()

    # ------------------------------------------------------------- loop
    async def run(self) -> None:
        """Sync whenever dirty, resync on a timer, check drift beside; never returns."""
        drift = asyncio.create_task(self._drift_loop(), name="drift")
        try:
            await self._sync_loop()
        finally:
            drift.cancel()
            await asyncio.gather(drift, return_exceptions=True)

    async def _sync_loop(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop enforcement updates: log, resync later
                log.exception("sync loop step failed; full resync after backoff")
                self.metrics.sync_errors.labels("Internal").inc()
                self.planner.forget()
                self._need_full = True
                self._failures += 1
                first, most = self.config.retry_backoff
                self._retry_at = self.clock() + min(first * 2 ** (self._failures - 1), most)
                self._dirty = True
                await asyncio.sleep(0.01)

    async def _step(self) -> None:
        """One wake-up: a timer action or a sync, or wait for the next event."""
        cfg = self.config
        self.health.beat()
        now = self.clock()
        applied = self.planner.applied
        if (
            applied is not None
            and not self._need_full
            and now - self._last_full >= cfg.resync_period
        ):
            log.info("periodic full resync")
            self.request_full()
        timeout = cfg.heartbeat
        if self._dirty:
            if now < self._retry_at:
                timeout = min(timeout, self._retry_at - now)
            else:
                wait = self._bucket.take(now)
                if wait == 0.0:
                    await self.sync_once()
                    return
                timeout = min(timeout, wait)
        elif self._pending_ct or self._stale:
            if now >= self._retry_at:
                await self._conntrack_cleanup(frozenset())
                await self._sweep()
                self._report()
                return
            timeout = min(timeout, self._retry_at - now)
        elif self._seal_at is not None:
            if now >= self._seal_at:
                await self._seal()
                return
            timeout = min(timeout, self._seal_at - now)
        self._event.clear()
        with contextlib.suppress(TimeoutError):
            # not wait_for: it can swallow a cancel, and the task never ends
            async with asyncio.timeout(max(timeout, 0.001)):
                await self._event.wait()

    def _record(self, result: SyncResult) -> SyncResult:
        self.results = [*self.results[-9:], result]
        return result

    async def sync_once(self) -> SyncResult:
        """One sync from the current inputs (the loop calls it; tests may too)."""
        self.syncs += 1
        started = self.clock()
        since = self._dirty_since if self._dirty_since is not None else started
        self._dirty, self._dirty_since = False, None
        snap = self.source.snapshot()
        if snap is None:
            problem = self.source.problem()
            reason, message = (
                (problem.reason, problem.message) if problem else ("NotReady", "source not ready")
            )
            if not self.health.ready:
                self.health.not_ready_reason = message
            self._last_error = (reason, message)
            self._report()
            return self._record(SyncResult("not-ready", error=message))
        full = self._need_full or self.planner.applied is None
        # Compute and emit are separate steps, run in ONE worker-thread hop: every hop is
        # a GIL hand-over that costs up to the switch interval on the hot path.
        # ``_writes`` is odd while a write may be under way (drift checks then wait).
        pending = self.placeholder.pending(snap) if self.placeholder else frozenset[str]()
        self._writes += 1
        try:
            step = await asyncio.to_thread(self._compute_and_emit, snap, full, pending)
        finally:
            self._writes += 1
        plan = step.plan
        if step.render_error is not None:
            self.metrics.sync_errors.labels("RenderFailed").inc()
            self._last_error = ("RenderFailed", step.render_error)
            log.error("cannot render the node's policy", extra=logs.fields(error=step.render_error))
            self._report()
            return self._record(SyncResult("render-failed", error=step.render_error))
        assert plan is not None
        if step.nft_error is not None:
            return self._record(self._apply_failed(plan, step.nft_error))
        self.planner.commit(plan)
        self._commits += 1
        self._adopting = False
        if step.adopted:
            self.metrics.adoptions.inc()
            log.info(
                "adopted the table in place: its seal is the digest of the wanted table",
                extra=logs.fields(generation=plan.state.generation, pods=plan.state.pods),
            )
        if step.sealed or step.adopted:
            self._seal_at = None
        elif not plan.noop:
            self._seal_at = self.clock() + self.config.seal_delay
        self._group_revision = snap.group_revision
        latency = self.clock() - since
        self._committed(plan, started, since, step.timings)
        if self.placeholder is not None:
            self.placeholder.committed(snap, plan.state)  # answers waiting CNI ADDs
        self._note_epochs(snap)
        await self._conntrack_cleanup(plan.removed_ips)
        await self._sweep()
        self._report(snap)
        outcome = "adopted" if step.adopted else "noop" if plan.noop else "applied"
        return self._record(
            SyncResult(outcome, plan.kind, plan, latency=latency, timings=step.timings)
        )

    def _compute_and_emit(
        self, snap: Snapshot, full: bool, pending: frozenset[str] = frozenset()
    ) -> _Step:
        """In a worker thread: resolve interfaces, compute the plan, apply it."""
        step = _Step()
        t0 = self.clock()
        interfaces = self.interfaces.routed()  # every pod's, managed or not (anti-spoofing)
        inventory = self._inventory() if full else None
        t1 = self.clock()
        try:
            step.plan = self.planner.plan(
                snap, interfaces, full=full, inventory=inventory, pending=pending
            )
        except (RenderError, ValueError, KeyError) as exc:
            step.render_error = str(exc)
            return step
        t2 = self.clock()
        self._seal_plan(step)
        if not step.plan.noop:
            if self._marks is None and self._kernel_epochs is None:
                self._kernel_epochs = self._read_kernel_epochs()
            try:
                if step.plan.stage:  # new objects first, complete (transactions.staged_diff)
                    self.nft.apply(step.plan.stage, timeout=self.config.nft_timeout)
                self.nft.apply(step.plan.text, timeout=self.config.nft_timeout)
            except NftError as exc:
                step.nft_error = exc
        t3 = self.clock()
        step.timings = {"inputs": t1 - t0, "compute": t2 - t1, "emit": t3 - t2}
        return step

    def _seal_plan(self, step: _Step) -> None:
        """Seal a full plan in its own transaction, unseal any other (sealing.py); at the
        first full plan of this process, adopt the table if it is already the one wanted.
        """
        plan = step.plan
        assert plan is not None
        table = self.planner.options.table
        if plan.noop:
            return
        if plan.kind != "full":
            if plan.stage:  # the first transaction that changes the table
                step.plan = dataclasses.replace(plan, stage=unseal_text(table) + plan.stage)
            else:
                step.plan = dataclasses.replace(plan, text=unseal_text(table) + plan.text)
            return
        digest = self.planner.digest(plan.state)
        if self._adopting and self._adoptable(plan.state, digest):
            step.plan = dataclasses.replace(plan, text="", stage="")
            step.adopted = True
            return
        step.plan = dataclasses.replace(plan, text=plan.text + seal_text(table, digest))
        step.sealed = True

    def _adoptable(self, state: TableState, digest: str) -> bool:
        """The kernel's table is sealed with ``digest`` and its structure is ``state``'s
        (chains, rule counts, declarations, element counts: drift.py)."""
        table = self.planner.options.table
        try:
            seal = read_seal(self.reader.list_json(f"set {table} {SEAL}", timeout=5.0))
        except NftError as exc:  # no table, no seal (an older agent's table)
            log.debug("no seal", extra=logs.fields(error=exc.message))
            return False
        if seal != digest:
            log.info(
                "the table is not the one wanted: rewriting it",
                extra=logs.fields(seal=seal, want=digest),
            )
            return False
        try:
            problems = self.drift.check(state, timeout=self.config.nft_timeout)
        except NftError as exc:
            log.warning("cannot check the table's structure", extra=logs.fields(error=exc.message))
            return False
        if problems:
            log.warning(
                "the table carries the wanted seal but differs: rewriting it",
                extra=logs.fields(differences=problems[:20]),
            )
            return False
        return True

    async def _seal(self) -> None:
        """Once idle after incremental commits: write the seal of the committed state."""
        state, commits = self.planner.applied, self._commits
        if state is None:
            self._seal_at = None
            return
        digest = await asyncio.to_thread(self.planner.digest, state)
        if commits != self._commits or self._dirty or self.planner.applied is not state:
            return  # something moved meanwhile: the next idle moment seals
        try:
            text = seal_text(self.planner.options.table, digest)
            self._writes += 1
            try:
                await asyncio.to_thread(self.nft.apply, text, timeout=self.config.nft_timeout)
            finally:
                self._writes += 1
        except NftError as exc:
            log.warning("cannot seal the table; will retry", extra=logs.fields(error=exc.message))
            self._seal_at = self.clock() + self.config.retry_backoff[1]
            return
        self._seal_at = None
        log.debug("table sealed", extra=logs.fields(digest=digest))

    def _inventory(self) -> Inventory | None:
        """The table's current declarations, so a full resync can delete strays.

        ``list ruleset -t`` rather than ``list table -t``: measured 51 ms against 209 ms
        for 1,239 rules and 120k elements (nft 1.0.6 fetches elements for the latter)."""
        table = self.planner.options.table
        try:
            doc = self.reader.list_json("ruleset", terse=True, timeout=self.config.nft_timeout)
        except NftError as exc:
            log.warning(
                "cannot list the table before a full resync", extra=logs.fields(error=str(exc))
            )
            return None
        return None if doc is None else Inventory.from_json(doc, table)

    def _read_kernel_epochs(self) -> dict[str, int]:
        """Before the first commit: pod IP → mark from the kernel's ``in_epoch*`` maps, so
        that epochs raised while the agent was down are swept too (empty if none)."""
        table = self.planner.options.table
        out: dict[str, int] = {}
        for f in (4, 6):
            target = f"map {table.family} {table.name} in_epoch{f}"
            try:
                out.update(epoch_elements(self.reader.list_json(target, timeout=5.0)))
            except NftError as exc:  # no table yet (the usual first start), or no map
                log.debug("no epochs in the kernel", extra=logs.fields(error=exc.message))
        return out

    def _note_epochs(self, snap: Snapshot) -> None:
        """After a commit: which pods got a new mark, with the old one, to sweep. A mark
        changes with the pod's epoch (the node object) or with a re-check counter of its
        groups or of the sets they name inbound (the group and set objects)."""
        node = snap.node
        self._swept_snap = snap  # pending sweeps are judged against the latest commit
        inputs = pod_inputs(snap)
        if self._marks is not None and same_pod_inputs(self._marks[0], inputs):
            return
        marks = pod_marks(node, snap.groups, snap.sets)
        if self._marks is None:
            found = kernel_stale_marks(self._kernel_epochs or {}, node, marks)
            self._kernel_epochs = None
        else:
            found = stale_marks(self._marks[1], marks)
        for uid, olds in found.items():
            self._stale.setdefault(uid, set()).update(olds)
        for uid in [u for u in self._stale if u not in marks]:
            del self._stale[uid]  # gone: its IPs' entries are deleted instead
        self._marks = (inputs, marks)

    async def _sweep(self) -> None:
        """Sweep the pending old marks against the last committed snapshot (sweeping.py)."""
        snap = self._swept_snap
        if not self._stale or snap is None:
            self._sweep_error = None
            return
        stale = {uid: frozenset(marks) for uid, marks in self._stale.items()}
        result = await asyncio.to_thread(self.sweeper.sweep, snap, stale, lambda: self._dirty)
        self._stale = result.remaining
        m = self.metrics
        m.conntrack_rechecked.labels("kept").inc(result.kept)
        m.conntrack_rechecked.labels("cut").inc(result.cut)
        counts = {
            "pods": len(stale),
            "kept": result.kept,
            "cut": result.cut,
            "foreign": result.foreign,
            "gone": result.gone,
            "left": len(result.remaining),
            "ms": round(result.seconds * 1000, 3),
        }
        if result.error is None:
            self._sweep_error = None
            self._sweep_failures = 0
            log.info("inbound flows re-checked", extra=logs.fields(**counts))
            return
        self._sweep_error = result.error
        self._sweep_failures += 1
        m.conntrack_errors.inc()
        first, most = self.config.retry_backoff
        self._retry_at = self.clock() + min(first * 2 ** (self._sweep_failures - 1), most)
        log.warning(
            "re-checking inbound flows failed; will retry",
            extra=logs.fields(**counts, error=result.error),
        )

    def _apply_failed(self, plan: Plan, exc: NftError) -> SyncResult:
        cfg = self.config
        self.planner.forget()
        self._need_full = True
        self._failures += 1
        delay = min(cfg.retry_backoff[0] * 2 ** (self._failures - 1), cfg.retry_backoff[1])
        self._retry_at = self.clock() + delay
        self._dirty, self._dirty_since = True, self._dirty_since or self.clock()
        self.metrics.sync_errors.labels(exc.reason).inc()
        self._last_error = (exc.reason, exc.message)
        log.error(
            "nft transaction failed; next sync is a full resync",
            extra=logs.fields(
                kind=plan.kind,
                reason=exc.reason,
                error=exc.message,
                detail=exc.detail,
                retry_in=delay,
                backend=self.nft.name,
            ),
        )
        self._report()
        return SyncResult("nft-failed", plan.kind, plan, exc.message)

    def _committed(
        self, plan: Plan, started: float, since: float, timings: dict[str, float]
    ) -> None:
        now = self.clock()
        m = self.metrics
        if plan.kind == "full":
            self._need_full = False
            self._last_full = now
            self.drift.invalidate()
            # Hundreds of thousands of long-lived cached objects: keep them out of the
            # cyclic GC's full collections, which otherwise cost tens of ms at random
            # points of the hot path (measured: member-change p99 13 ms -> 2 ms).
            gc.collect()
            gc.freeze()
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = None
        state = plan.state
        if not plan.noop:
            m.sync_duration.labels(plan.kind).observe(now - started)
            m.change_latency.observe(now - since)
            m.syncs.labels(plan.kind).inc()
            self._applied_at = self.wall()
            log.info(
                "applied",
                extra=logs.fields(
                    kind=plan.kind,
                    ms=round((now - started) * 1000, 3),
                    phases_ms={k: round(v * 1000, 3) for k, v in timings.items()},
                    changed=list(plan.changed),
                    generation=state.generation,
                    pods=state.pods,
                    bytes=len(plan.text),
                ),
            )
        elif self._applied_at is None:
            self._applied_at = self.wall()
        refused = tuple(r.text() for r in state.refused)
        if refused != self._refused:
            for text in sorted(set(refused) - set(self._refused)):
                log.error("object refused; its pods are isolated", extra=logs.fields(error=text))
            if not refused:
                log.info("no object refused any more")
            self._refused = refused
        m.refused.set(len(refused))
        m.last_success.set(self.wall())
        m.rules.set(state.rules)
        m.pods.set(state.pods)
        m.set_sizes(state.set_sizes())
        m.ready.set(1)
        self.health.ready = True

    async def _conntrack_cleanup(self, removed: frozenset[str]) -> None:
        applied = self.planner.applied
        in_use = set(applied.pod_ips) if applied is not None else set()
        # IPs removed now are cleaned even if a new pod took them over in the same commit
        # (the old pod's flows must not survive); older leftovers only while unused.
        todo = set(removed) | {ip for ip in self._pending_ct if ip not in in_use}
        self._pending_ct = set()
        if not todo:
            self._ct_error = None
            return
        try:
            n = await asyncio.to_thread(self.conntrack.delete_ips, sorted(todo))
        except Exception as exc:
            self._pending_ct = todo
            self._ct_error = str(exc)
            self._ct_failures += 1
            self.metrics.conntrack_errors.inc()
            first, most = self.config.retry_backoff
            self._retry_at = self.clock() + min(first * 2 ** (self._ct_failures - 1), most)
            log.warning(
                "conntrack cleanup failed; will retry",
                extra=logs.fields(ips=sorted(todo), error=str(exc)),
            )
            return
        self._ct_error = None
        self._ct_failures = 0
        self.metrics.conntrack_deleted.inc(n)
        log.info("conntrack entries deleted", extra=logs.fields(ips=sorted(todo), entries=n))

    @property
    def writing(self) -> bool:
        """A transaction of ours may be under way."""
        return self._writes % 2 == 1

    def tampered(self, why: str) -> None:
        """Another process changed our table (``tamper.TableMonitor``): rewrite it now."""
        self.metrics.drift.inc()
        log.warning(
            "our table was changed by another process; full resync", extra=logs.fields(why=why)
        )
        self.request_full()

    def check_drift_soon(self) -> None:
        """Run a drift check now rather than at the next period (e.g. events were lost)."""
        self._drift_now.set()

    async def _drift_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                # not wait_for: it can swallow a cancel, and the task never ends
                async with asyncio.timeout(self.config.drift_period):
                    await self._drift_now.wait()
            self._drift_now.clear()
            expected = self.planner.applied
            if expected is None or self._dirty:
                continue  # a sync is due anyway
            try:
                await self.check_drift(expected)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("drift check failed")

    async def check_drift(self, expected: TableState) -> bool:
        """Compare the kernel with ``expected``; request a full resync on drift. True if
        drift was found (a check that overlapped a commit is inconclusive: False)."""
        commits, writes = self._commits, self._writes
        if writes % 2:
            return False  # a write is under way: the table is between two states
        try:
            problems = await asyncio.to_thread(
                self.drift.check, expected, timeout=self.config.nft_timeout
            )
        except NftError as exc:
            log.warning("drift check failed", extra=logs.fields(error=exc.message))
            return False
        if (
            commits != self._commits
            or writes != self._writes
            or self.planner.applied is not expected
        ):
            return False
        if problems:
            self.metrics.drift.inc()
            log.warning(
                "our table was changed by someone else; full resync",
                extra=logs.fields(differences=problems[:20]),
            )
            self.request_full()
            return True
        return False

    # ------------------------------------------------------------- status
    def status(self, snap: Snapshot | None = None) -> NodeAgentStatus:
        state = self.planner.last_committed
        reason, error = (None, None)
        if self._last_error is not None:
            reason, error = self._last_error
        elif self._ct_error is not None or self._sweep_error is not None:
            reason, error = "ConntrackFailed", self._ct_error or self._sweep_error
        elif (problem := self.source.problem()) is not None:
            reason, error = problem.reason, problem.message  # e.g. a file that stopped parsing
        elif state is not None and state.refused:
            collided = any(r.holder for r in state.refused)
            reason = "NameCollision" if collided else "ObjectRefused"
            error = "; ".join(r.text() for r in state.refused)
        elif snap is not None and snap.missing:
            reason, error = (
                "MissingReferences",
                "not found (rendered as absent): " + ", ".join(snap.missing),
            )
        body: dict[str, Any] = {"error": error, "reason": reason}
        if state is not None:
            body.update(
                applied_generation=state.generation,
                applied_group_revision=self._group_revision,
                applied_at=logs.rfc3339(self._applied_at) if self._applied_at else None,
                pods=state.pods,
                rules=state.rules,
                set_elements=state.set_elements,
            )
        return NodeAgentStatus(**body)

    def _report(self, snap: Snapshot | None = None) -> None:
        self.reporter.update(self.status(snap))
