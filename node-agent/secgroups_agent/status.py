"""The status port: report what the agent applied, in its NodeAgentReport or in a file.

The sync loop builds a :class:`~secgroups.compiled.NodeAgentStatus` after every sync
(applied generation, time, pods, rules, set elements, error and reason) and hands it
to a :class:`StatusReporter`, which writes it only when something other than the
time changed, and at most once per ``min_interval`` (the latest value wins), so that
a burst of member changes does not become a burst of API writes.

Writers (:class:`StatusWriter`):

* :class:`KubeReport` — server-side apply of this node's ``NodeAgentReport`` (a few
  hundred bytes, owned by the node's ``CompiledNodePolicy`` so that it goes when the node
  object goes); nothing is written while there is no node object;
* :class:`FileStatus` — a JSON file replaced atomically (what the netns tests read);
* :class:`FakeStatus` — records every write, for unit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from secgroups.compiled import COMPILED_NODE_KIND, NODE_REPORT_KIND, NodeAgentStatus
from secgroups.models import API_VERSION
from secgroups_agent import logs

if TYPE_CHECKING:  # an agent reading a policy file never loads the Kubernetes client
    from secgroups_kube import AsyncKube

log = logs.get("status")


class StatusWriter(Protocol):
    async def write(self, status: NodeAgentStatus) -> None: ...


def status_body(status: NodeAgentStatus) -> dict[str, Any]:
    return status.model_dump(by_alias=True, mode="json")


def report_body(node: str, owner_uid: str, status: NodeAgentStatus) -> dict[str, Any]:
    """The ``NodeAgentReport`` of ``node``, owned by its node object ``owner_uid``."""
    return {
        "apiVersion": API_VERSION,
        "kind": NODE_REPORT_KIND,
        "metadata": {
            "name": node,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": COMPILED_NODE_KIND,
                    "name": node,
                    "uid": owner_uid,
                }
            ],
        },
        # None fields left out: apply then drops what an earlier report set (an error).
        "status": status.model_dump(by_alias=True, mode="json", exclude_none=True),
    }


class KubeReport:
    """Applies ``NodeAgentReport/<node>`` (the client's field manager).

    ``owner``: the uid of the node's ``CompiledNodePolicy`` as the agent's watch has it,
    or None when there is none — then there is nothing to report on and nothing is
    written. A report whose owner is deleted is deleted by the garbage collector; the
    reporter writes again when the owner changes (:meth:`StatusReporter.update`)."""

    def __init__(self, client: AsyncKube, node: str, owner: Callable[[], str | None]) -> None:
        self.client = client
        self.node = node
        self.owner = owner

    async def write(self, status: NodeAgentStatus) -> None:
        uid = self.owner()
        if uid is not None:
            await self.client.apply(report_body(self.node, uid, status))


class FileStatus:
    """Writes the status as JSON to ``path`` (temporary file + rename: readers never see
    a partial file)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _write(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)

    async def write(self, status: NodeAgentStatus) -> None:
        await asyncio.to_thread(self._write, json.dumps(status_body(status), sort_keys=True) + "\n")


def read_status_file(path: Path) -> NodeAgentStatus | None:
    """The status a :class:`FileStatus` wrote, or None if there is none (yet)."""
    try:
        return NodeAgentStatus.model_validate_json(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


@dataclass
class FakeStatus:
    written: list[NodeAgentStatus] = field(default_factory=list)
    fail_next: list[Exception] = field(default_factory=list)

    async def write(self, status: NodeAgentStatus) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)
        self.written.append(status)

    @property
    def last(self) -> NodeAgentStatus | None:
        return self.written[-1] if self.written else None


def _material(status: NodeAgentStatus) -> NodeAgentStatus:
    """The status without its timestamp: what decides whether a write is needed."""
    return status.model_copy(update={"applied_at": None})


class StatusReporter:
    """Coalesces status updates into writes: only on change, at most every ``min_interval``.

    :meth:`update` never blocks; :meth:`run` (a task) does the writes and retries a
    failed write at the next update or after ``min_interval``.
    """

    def __init__(self, writer: StatusWriter, *, min_interval: float = 1.0) -> None:
        self.writer = writer
        self.min_interval = min_interval
        self._pending: NodeAgentStatus | None = None
        self._written: NodeAgentStatus | None = None
        self._written_owner: str | None = None
        self._wake = asyncio.Event()
        self.writes = 0
        self.errors = 0

    def update(self, status: NodeAgentStatus) -> None:
        if (
            self._written is not None
            and _material(status) == _material(self._written)
            and self._owner() == self._written_owner
        ):
            self._pending = None
            return
        self._pending = status
        self._wake.set()

    def _owner(self) -> str | None:
        """The object the writer reports on (a new node object gets the report again)."""
        owner: Callable[[], str | None] | None = getattr(self.writer, "owner", None)
        return owner() if owner is not None else None

    async def flush(self, timeout: float = 5.0) -> None:
        """Write the pending status now (at shutdown)."""
        if self._pending is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._write(self._pending), timeout)

    async def _write(self, status: NodeAgentStatus) -> None:
        owner = self._owner()
        await self.writer.write(status)
        self.writes += 1
        self._written, self._written_owner = status, owner
        if self._pending is status:
            self._pending = None

    async def run(self) -> None:
        last = -float("inf")
        while True:
            await self._wake.wait()
            self._wake.clear()
            wait = last + self.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            status = self._pending
            if status is None:
                continue
            last = time.monotonic()
            try:
                await self._write(status)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                log.warning("status write failed", extra=logs.fields(error=str(exc)))
                self._wake.set()  # retry after min_interval
