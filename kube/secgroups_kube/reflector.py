"""List-then-watch of one kind, in pages, resumed without relisting: :class:`Reflector`.

The one list/watch loop of the operator (``secgroups_operator.watching``: one per kind
it reads) and the node agent (``secgroups_agent.sources``: its node object and the
groups and sets labelled for its node; ``secgroups_agent.cnikube``: the enforced
namespaces and the node's pods). It lists page by page (``limit``/``continue``;
each page is handed to the :class:`Sink` and dropped, so 30,000 pods never sit in
memory at once), then watches from the list's resourceVersion with bookmarks. When the
server ends a watch (its timeout) or the connection breaks, it watches again **from
the last resourceVersion seen** (bookmarks keep it fresh on a quiet kind) — no relist;
only 410 Gone (the version was compacted, or a continue token expired) relists, and the
sink sees that list between ``begin_list`` and ``end_list``, so it can sweep what the
new list lacks (mark-and-sweep). Other errors back off with jitter (0.2 s doubling to
30 s), so a restarted API server is not hit by every reflector at once.

The API side is the :class:`ListWatchApi` port (:class:`secgroups_kube.AsyncKube`, the
operator's ``Cluster``, the shells' in-memory fakes). This module imports neither
lightkube nor the HTTP library: an agent that reads a policy file never loads them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, NamedTuple, Protocol

__all__ = ["ListWatchApi", "Page", "Reflector", "Sink", "status_code"]

log = logging.getLogger(__name__)


class Page(NamedTuple):
    """One page of a list (a tuple: ``items, version, cont = await api.list_page(...)``)."""

    items: list[dict[str, Any]]
    resource_version: str  # the list's: every page is of the first page's snapshot
    cont: str | None  # the continue token of the next page, None after the last


class ListWatchApi(Protocol):
    """The two reads a reflector needs: list pages and watches, by selector."""

    async def list_page(
        self,
        kind: str,
        *,
        limit: int,
        cont: str | None = None,
        labels: str | None = None,
        fields: str | None = None,
    ) -> Page: ...

    def watch_events(
        self,
        kind: str,
        *,
        resource_version: str,
        labels: str | None = None,
        fields: str | None = None,
        timeout_s: int = 300,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """``(ADDED|MODIFIED|DELETED|BOOKMARK, object)`` after ``resource_version``, until
        the server ends the watch (``timeout_s``); a too old version raises an error whose
        :func:`status_code` is 410."""
        ...


class Sink(Protocol):
    """Where a reflector's objects go; called on the event loop, so it must be quick.

    A list is ``begin_list``, ``upsert`` per object, ``end_list`` (what the list lacks
    is gone); a watch is ``upsert`` (added or modified) and ``delete`` per event.
    """

    def begin_list(self, kind: str) -> None: ...
    def upsert(self, kind: str, obj: dict[str, Any]) -> None: ...
    def delete(self, kind: str, obj: dict[str, Any]) -> None: ...
    def end_list(self, kind: str) -> None: ...


def status_code(exc: BaseException) -> int | None:
    """The HTTP status an API error carries: ``exc.code`` (the operator's port errors) or
    ``exc.status.code`` (lightkube's ``ApiError``); None for anything else."""
    code = getattr(exc, "code", None)
    if not isinstance(code, int):
        code = getattr(getattr(exc, "status", None), "code", None)
    return code if isinstance(code, int) else None


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Reflector:
    """List, then watch, the objects of ``kind`` a selector picks, into ``sink``.

    Read by tests, metrics and the shells: ``listed`` (set after the first complete
    list), ``resource_version`` (the last one seen; None while a list is due),
    :attr:`revision`, and the counters ``lists``, ``watches``, ``events`` (watch events
    other than bookmarks) and ``errors`` (failures that backed off; a 410 relist is not
    one). ``on_bookmark`` is called after a bookmark moved ``resource_version`` (nothing
    changed, but a shell reporting :attr:`revision` may want to say so). ``logger`` and
    ``log_fields`` (structured fields for the shell's log format) say where the loop's
    own lines go.
    """

    def __init__(
        self,
        api: ListWatchApi,
        kind: str,
        sink: Sink,
        *,
        labels: str | None = None,
        fields: str | None = None,
        page: int = 500,
        timeout_s: int = 300,
        backoff: tuple[float, float] = (0.2, 30.0),
        on_bookmark: Callable[[], None] | None = None,
        logger: logging.Logger | None = None,
        log_fields: Callable[..., Mapping[str, Any]] | None = None,
    ) -> None:
        self.api, self.kind, self.sink = api, kind, sink
        self.labels, self.fields = labels, fields
        self.page, self.timeout_s, self.backoff = page, timeout_s, backoff
        self.on_bookmark = on_bookmark
        self.logger = logger or log
        self.log_fields = log_fields
        self.listed = asyncio.Event()
        self.resource_version: str | None = None
        self.lists = 0
        self.watches = 0
        self.events = 0
        self.errors = 0

    @property
    def revision(self) -> int:
        """The resourceVersion up to which this reflector has every event (0 before)."""
        try:
            return int(self.resource_version or 0)
        except ValueError:
            return 0

    async def run(self) -> None:
        """List (when due) and watch, until cancelled."""
        first, most = self.backoff
        delay = first
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                await self._watch()
                delay = first  # the server ended the watch: watch again from where it was
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if status_code(exc) == 410:
                    # Too old (or a continue token expired): list again, soon but not in
                    # step with every other reflector; no backoff, nothing is broken.
                    self.resource_version = None
                    self._log(logging.INFO, "%s: resourceVersion too old, listing again")
                    await asyncio.sleep(random.uniform(0, first))
                    continue
                self.errors += 1
                self._log(
                    logging.WARNING,
                    "%s: watch failed (%s); again in about %.1f s",
                    _short(exc),
                    delay,
                    error=_short(exc),
                    retry_in=delay,
                )
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, most)

    def _log(self, level: int, msg: str, *args: Any, **values: Any) -> None:
        extra = self.log_fields(kind=self.kind, **values) if self.log_fields else None
        self.logger.log(level, msg, self.kind, *args, extra=extra)

    async def _list(self) -> None:
        self.sink.begin_list(self.kind)
        cont: str | None = None
        first: str | None = None
        while True:
            items, version, cont = await self.api.list_page(
                self.kind, limit=self.page, cont=cont, labels=self.labels, fields=self.fields
            )
            first = first or version  # every page is of the first page's snapshot
            for obj in items:
                obj.setdefault("kind", self.kind)
                self.sink.upsert(self.kind, obj)
            if not cont:
                break
            await asyncio.sleep(0)  # let the loop breathe between pages
        self.resource_version = first
        self.lists += 1
        self.sink.end_list(self.kind)
        self.listed.set()

    async def _watch(self) -> None:
        assert self.resource_version is not None
        self.watches += 1
        async for typ, obj in self.api.watch_events(
            self.kind,
            resource_version=self.resource_version,
            labels=self.labels,
            fields=self.fields,
            timeout_s=self.timeout_s,
        ):
            if typ != "BOOKMARK":
                obj.setdefault("kind", self.kind)
                self.events += 1
                if typ == "DELETED":
                    self.sink.delete(self.kind, obj)
                else:
                    self.sink.upsert(self.kind, obj)
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if version:
                self.resource_version = str(version)
            if typ == "BOOKMARK" and self.on_bookmark is not None:
                self.on_bookmark()
