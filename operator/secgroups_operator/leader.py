"""One active operator, the others warm standbys: leader election on a Lease.

The Lease (``coordination.k8s.io/v1``, ``--leader-election-lease <namespace>/<name>``,
by default ``<release>-operator`` in the release namespace) names its holder. The
holder renews it every ``renew_s``; a standby takes it over when it has seen the same
(holder, renewTime) for ``lease_s`` on its *own* clock — no comparison of clocks across
machines — and writes itself in with the resourceVersion it read (a lost race is a 409,
nothing else). A holder that has not renewed for ``deadline_s`` (< ``lease_s``) stops
writing before anyone else may start. A holder that stops cleanly empties the lease, so
its standby takes over at its next poll instead of after ``lease_s``.

Both replicas watch everything and compile all the time (the standby compiles exactly
what the leader publishes, with the epochs the leader published), so a takeover only
writes what the old leader had not written yet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from secgroups_operator.ports import Cluster, ConflictError

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LeaderElector:
    cluster: Cluster
    namespace: str
    name: str
    identity: str
    lease_s: float = 8.0
    renew_s: float = 2.0
    retry_s: float = 1.0
    on_start: Callable[[], None] = lambda: None
    on_stop: Callable[[], None] = lambda: None
    leading: bool = False
    transitions: int = 0
    _seen: tuple[Any, Any] | None = None
    _seen_at: float = 0.0
    _renewed_at: float = 0.0
    _lease: dict[str, Any] | None = None
    _clock: Callable[[], float] = field(default=time.monotonic)

    @property
    def deadline_s(self) -> float:
        return self.lease_s * 2 / 3

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    await self._step()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("leader election: %s", exc)
                if self.leading and self._clock() - self._renewed_at > self.deadline_s:
                    self._demote("could not renew the lease in time")
                wait = self.renew_s if self.leading else self.retry_s
                # asyncio.wait, not wait_for: 3.11's wait_for can swallow a cancel
                stopper = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({stopper}, timeout=wait)
                finally:
                    stopper.cancel()
        finally:
            if self.leading:
                await self._release()

    async def _step(self) -> None:
        lease = await self.cluster.get("Lease", self.name, self.namespace)
        now = self._clock()
        if lease is None:
            created = await self.cluster.create(self._body(None, transitions=0))
            if created is not None:
                self._won(created, now)
            return
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        seen = (holder, spec.get("renewTime"))
        if seen != self._seen:
            self._seen, self._seen_at = seen, now
        if holder == self.identity:
            if not self.leading:  # we held it before a restart: take it back at once
                self._won(lease, now, renew=True)
            await self._renew(lease)
            return
        if self.leading:
            self._demote(f"the lease is held by {holder}")
        expired = not holder or now - self._seen_at >= float(
            spec.get("leaseDurationSeconds") or self.lease_s
        )
        if expired:
            transitions = int(spec.get("leaseTransitions") or 0) + 1
            body = self._body(lease, transitions=transitions)
            try:
                taken = await self.cluster.replace(body)
            except ConflictError:
                return  # someone else was faster
            self._won(taken, now)

    def _body(self, lease: dict[str, Any] | None, *, transitions: int) -> dict[str, Any]:
        stamp = _now()
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if lease is not None:
            meta["resourceVersion"] = lease["metadata"]["resourceVersion"]
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.lease_s),
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": transitions,
            },
        }

    async def _renew(self, lease: dict[str, Any]) -> None:
        body = dict(lease)
        body["spec"] = {**lease.get("spec", {}), "renewTime": _now()}
        body["metadata"] = {
            "name": self.name,
            "namespace": self.namespace,
            "resourceVersion": lease["metadata"]["resourceVersion"],
        }
        self._lease = await self.cluster.replace(body)
        self._renewed_at = self._clock()

    def _won(self, lease: dict[str, Any], now: float, renew: bool = False) -> None:
        self._lease = lease
        self._renewed_at = now
        if not self.leading:
            self.leading = True
            self.transitions += 1
            log.info("leading (lease %s/%s, identity %s)", self.namespace, self.name, self.identity)
            self.on_start()

    def _demote(self, why: str) -> None:
        if self.leading:
            self.leading = False
            log.warning("no longer leading: %s", why)
            self.on_stop()

    async def _release(self) -> None:
        self._demote("stopping")
        lease = self._lease
        if lease is None:
            return
        body = dict(lease)
        body["spec"] = {**lease.get("spec", {}), "holderIdentity": None}
        body["metadata"] = {
            "name": self.name,
            "namespace": self.namespace,
            "resourceVersion": lease["metadata"]["resourceVersion"],
        }
        try:
            await self.cluster.replace(body)
            log.info("lease released")
        except Exception as exc:
            log.info("lease not released: %s", exc)
