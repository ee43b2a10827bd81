"""Kubernetes Events the operator posts about one object (core/v1, type Warning).

What one object's problem looks like to its owner besides its status: ``kubectl
describe`` and ``kubectl get events`` show it. Posting never blocks the reconciler and
never fails it: events are queued, posted by a task of their own, and dropped (logged)
when the API server refuses them. The same (object, reason, message) is posted at most
once per :attr:`EventRecorder.repeat_s`, and at most :attr:`EventRecorder.burst` events
go out per second, so a hostile tenant cannot flood the API server through us.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from secgroups_operator.ports import Cluster

log = logging.getLogger(__name__)
COMPONENT = "secgroups-operator"
API_VERSIONS = {"Pod": "v1", "Namespace": "v1", "Node": "v1"}


@dataclass
class EventRecorder:
    cluster: Cluster
    instance: str = COMPONENT
    repeat_s: float = 600.0
    burst: int = 20
    queue: deque[dict[str, Any]] = field(default_factory=deque)
    posted: int = 0
    dropped: int = 0
    _last: dict[tuple[str, str, str, str, str], float] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    enabled: bool = True  # a standby posts nothing

    def warn(
        self, kind: str, namespace: str, name: str, reason: str, message: str, uid: str = ""
    ) -> None:
        """Queue a Warning event about ``kind namespace/name`` (deduplicated)."""
        if not self.enabled:
            return
        key = (kind, namespace, name, reason, message)
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self.repeat_s:
            return
        self._last[key] = now
        if len(self._last) > 50_000:  # forget the oldest half; they may repeat sooner
            for k in sorted(self._last, key=self._last.__getitem__)[: len(self._last) // 2]:
                del self._last[k]
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        involved: dict[str, Any] = {
            "apiVersion": API_VERSIONS.get(kind, "secgroups.dev/v1alpha1"),
            "kind": kind,
            "name": name,
        }
        if namespace:
            involved["namespace"] = namespace
        if uid:
            involved["uid"] = uid
        self.queue.append(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"generateName": f"{name[:200]}.", "namespace": namespace or "default"},
                "involvedObject": involved,
                "reason": reason,
                "message": message[:1024],
                "type": "Warning",
                "count": 1,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "source": {"component": COMPONENT},
                "reportingComponent": COMPONENT,
                "reportingInstance": self.instance,
            }
        )
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.queue:
                batch = [self.queue.popleft() for _ in range(min(self.burst, len(self.queue)))]
                started = time.monotonic()
                for body in batch:
                    try:
                        await self.cluster.post_event(body)
                        self.posted += 1
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        self.dropped += 1
                        log.info("event %s not posted: %s", body["reason"], exc)
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
