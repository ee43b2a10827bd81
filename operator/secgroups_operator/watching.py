"""List-then-watch of one kind, in pages, resumed without relisting (a reflector).

:class:`Reflector` lists its kind page by page (``limit``/``continue``; each page is
handed to the sink and dropped, so 30,000 pods never sit in memory at once), then
watches from the list's resourceVersion with bookmarks. When the server ends a watch
(its timeout) or the connection breaks, it watches again **from the last
resourceVersion seen** (bookmarks keep it fresh on a quiet kind) — no relist; only
410 Gone (the version is too old) relists, as a mark-and-sweep through the sink. Errors
back off with jitter (0.2 s doubling to 30 s), so a restarted API server is not hit by
every reflector at once.

The sink gets ``begin_list(kind)``, ``upsert(kind, obj)`` per listed or added/modified
object, ``delete(kind, obj)``, ``end_list(kind)``; it runs on the event loop and must be
quick (the operator's reduces each object to slim facts).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from secgroups_operator.ports import Cluster, GoneError, RequestError

log = logging.getLogger(__name__)


class Sink(Protocol):
    def begin_list(self, kind: str) -> None: ...
    def upsert(self, kind: str, obj: dict[str, Any]) -> None: ...
    def delete(self, kind: str, obj: dict[str, Any]) -> None: ...
    def end_list(self, kind: str) -> None: ...


@dataclass
class Reflector:
    cluster: Cluster
    kind: str
    sink: Sink
    labels: str | None = None
    page: int = 500
    timeout_s: int = 300
    backoff: tuple[float, float] = (0.2, 30.0)
    listed: asyncio.Event = field(default_factory=asyncio.Event)
    resource_version: str | None = None
    lists: int = 0
    watches: int = 0
    events: int = 0
    errors: int = 0

    async def run(self) -> None:
        delay = self.backoff[0]
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                await self._watch()
                delay = self.backoff[0]
            except asyncio.CancelledError:
                raise
            except GoneError:
                log.info("%s: resourceVersion too old, listing again", self.kind)
                self.resource_version = None
                await asyncio.sleep(random.uniform(0, self.backoff[0]))
            except Exception as exc:
                self.errors += 1
                if isinstance(exc, RequestError) and exc.code == 410:
                    self.resource_version = None
                log.warning("%s: watch failed (%s); again in about %.1f s", self.kind, exc, delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.backoff[1])

    async def _list(self) -> None:
        self.sink.begin_list(self.kind)
        cont: str | None = None
        first_rv: str | None = None
        while True:
            page = await self.cluster.list_page(
                self.kind, limit=self.page, cont=cont, labels=self.labels
            )
            if first_rv is None:
                first_rv = page.resource_version  # every page is of the first's snapshot
            for obj in page.items:
                obj.setdefault("kind", self.kind)
                self.sink.upsert(self.kind, obj)
            if not page.cont:
                break
            cont = page.cont
            await asyncio.sleep(0)  # let the loop breathe between pages
        self.sink.end_list(self.kind)
        self.resource_version = first_rv
        self.lists += 1
        self.listed.set()

    async def _watch(self) -> None:
        assert self.resource_version is not None
        self.watches += 1
        async for typ, obj in self.cluster.watch(
            self.kind,
            resource_version=self.resource_version,
            labels=self.labels,
            timeout_s=self.timeout_s,
        ):
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if typ != "BOOKMARK":
                obj.setdefault("kind", self.kind)
                self.events += 1
                if typ == "DELETED":
                    self.sink.delete(self.kind, obj)
                else:
                    self.sink.upsert(self.kind, obj)
            if rv:
                self.resource_version = rv
