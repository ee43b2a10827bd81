"""The shared list-then-watch loop (``secgroups_kube.reflector``) against a scripted API:
what the sink sees, where each watch resumes, and which failures relist or back off.
The operator's and the agent's reflectors on it are tested through their in-memory API
servers (test_operator_watching.py, test_agent_sources.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from secgroups_kube.reflector import Page, Reflector, status_code


class GoneError(Exception):
    """A 410 as lightkube raises it (``exc.status.code``)."""

    class _Status:
        code = 410

    status = _Status()


def obj(name: str, rv: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": str(rv)}}


class ScriptedApi:
    """Lists ``pages``; each watch plays the next script: events, then an exception or
    (no exception) the server ending the watch. After the last script it waits."""

    def __init__(self, pages: list[Page], scripts: list[tuple[list[Any], Exception | None]]):
        self.pages = pages
        self.scripts = scripts
        self.list_calls: list[str | None] = []
        self.watch_from: list[str] = []

    async def list_page(self, kind: str, *, cont: str | None = None, **_: Any) -> Page:
        self.list_calls.append(cont)
        return self.pages[int(cont or 0)]

    async def watch_events(
        self, kind: str, *, resource_version: str, **_: Any
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        self.watch_from.append(resource_version)
        if not self.scripts:
            await asyncio.Event().wait()
        events, error = self.scripts.pop(0)
        for event in events:
            yield event
        if error is not None:
            raise error


class Sink:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def begin_list(self, kind: str) -> None:
        self.calls.append(("begin", kind))

    def upsert(self, kind: str, obj: dict[str, Any]) -> None:
        self.calls.append(("upsert", obj["metadata"]["name"]))

    def delete(self, kind: str, obj: dict[str, Any]) -> None:
        self.calls.append(("delete", obj["metadata"]["name"]))

    def end_list(self, kind: str) -> None:
        self.calls.append(("end", kind))


async def settle(cond: Any, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.005)


def test_pages_then_a_watch_resumed_from_the_last_version_and_a_relist_only_on_410() -> None:
    async def body() -> None:
        pages = [Page([obj("a", 3)], "10", "1"), Page([obj("b", 4)], "11", None)]
        api = ScriptedApi(
            pages,
            [
                # a change, a delete and a bookmark; then the connection breaks
                (
                    [
                        ("MODIFIED", obj("a", 12)),
                        ("DELETED", obj("b", 13)),
                        ("BOOKMARK", obj("", 20)),
                    ],
                    RuntimeError("connection reset"),
                ),
                ([("ADDED", obj("c", 21))], None),  # the server ends this watch
                ([], GoneError("too old")),  # compacted: list again
            ],
        )
        sink, bookmarks = Sink(), []
        refl = Reflector(
            api,
            "Thing",
            sink,
            page=1,
            backoff=(0.01, 0.05),
            on_bookmark=lambda: bookmarks.append(1),
        )
        task = asyncio.create_task(refl.run())
        try:
            await settle(lambda: refl.lists == 2 and len(api.watch_from) == 4, "a relist")
            # Both pages within one list; the version is the first page's.
            listed = [("begin", "Thing"), ("upsert", "a"), ("upsert", "b"), ("end", "Thing")]
            assert sink.calls[:4] == listed
            assert sink.calls[4:7] == [("upsert", "a"), ("delete", "b"), ("upsert", "c")]
            assert sink.calls[7:] == listed  # the relist
            # Resumed from the bookmark after the error and from the last event after the
            # server ended the watch; from the new list's version after the 410.
            assert api.watch_from == ["10", "20", "21", "10"]
            assert api.list_calls == [None, "1", None, "1"]
            assert bookmarks == [1]
            assert (refl.errors, refl.watches, refl.events) == (1, 4, 3)
            assert refl.listed.is_set() and refl.revision == 10
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(asyncio.wait_for(body(), 30))


def test_status_code_reads_both_error_shapes() -> None:
    class PortError(Exception):
        code = 409

    assert status_code(GoneError()) == 410
    assert status_code(PortError()) == 409
    assert status_code(RuntimeError("x")) is None
