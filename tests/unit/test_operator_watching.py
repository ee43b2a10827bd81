"""The operator's reflector and leader election against the in-memory API server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from secgroups_operator.fake import FakeCluster
from secgroups_operator.leader import LeaderElector
from secgroups_operator.watching import Reflector


class Sink:
    """Keeps what it is told; a relist sweeps what the new list lacks (as the intake)."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[str, str]] = []
        self.seen: set[str] | None = None

    def begin_list(self, kind: str) -> None:
        self.log.append(("begin", kind))
        self.seen = set()

    def end_list(self, kind: str) -> None:
        self.log.append(("end", kind))
        for name in set(self.objects) - (self.seen or set()):
            del self.objects[name]
        self.seen = None

    def upsert(self, kind: str, obj: dict[str, Any]) -> None:
        self.objects[obj["metadata"]["name"]] = obj
        if self.seen is not None:
            self.seen.add(obj["metadata"]["name"])

    def delete(self, kind: str, obj: dict[str, Any]) -> None:
        self.objects.pop(obj["metadata"]["name"], None)


def ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


async def until(what: str, cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(what)
        await asyncio.sleep(0.01)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 30))


def test_lists_in_pages_then_watches_and_relists_only_when_the_version_is_gone() -> None:
    async def go() -> None:
        fake = FakeCluster()
        for i in range(7):
            fake.put(ns(f"ns-{i}"))
        sink = Sink()
        refl = Reflector(fake, "Namespace", sink, page=3, backoff=(0.01, 0.05))
        task = asyncio.create_task(refl.run())
        try:
            await until("listed", refl.listed.is_set)
            assert len(sink.objects) == 7 and refl.lists == 1
            fake.put(ns("ns-new"))
            await until("watched", lambda: "ns-new" in sink.objects)
            # The history is compacted while an object goes: 410, a relist, a sweep.
            fake.remove("Namespace", "ns-0")
            fake.compact()
            await until("relisted", lambda: refl.lists == 2)
            await until("swept", lambda: "ns-0" not in sink.objects)
            assert sink.log.count(("begin", "Namespace")) == 2
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(go)


def test_a_lease_has_one_holder_and_a_dead_one_is_replaced_after_the_lease_duration() -> None:
    async def go() -> None:
        fake = FakeCluster()
        started: list[str] = []
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        a = LeaderElector(
            fake,
            "kube-system",
            "op",
            "a",
            lease_s=0.6,
            renew_s=0.1,
            retry_s=0.05,
            on_start=lambda: started.append("a"),
        )
        b = LeaderElector(
            fake,
            "kube-system",
            "op",
            "b",
            lease_s=0.6,
            renew_s=0.1,
            retry_s=0.05,
            on_start=lambda: started.append("b"),
        )
        ta = asyncio.create_task(a.run(stop_a))
        await until("a leads", lambda: a.leading)
        tb = asyncio.create_task(b.run(stop_b))
        await asyncio.sleep(0.5)
        assert not b.leading and started == ["a"]
        a._lease = None  # a dies: its renewals stop and it cannot release the lease
        ta.cancel()
        await asyncio.gather(ta, return_exceptions=True)
        t0 = asyncio.get_running_loop().time()
        await until("b leads", lambda: b.leading, timeout=5)
        took = asyncio.get_running_loop().time() - t0
        assert took >= 0.3  # waited for the lease to run out
        assert started == ["a", "b"]
        lease = fake.get_obj("Lease", "op", "kube-system")
        assert lease is not None and lease["spec"]["holderIdentity"] == "b"
        assert lease["spec"]["leaseTransitions"] == 1
        stop_b.set()
        await tb
        released = fake.get_obj("Lease", "op", "kube-system")
        assert released is not None and released["spec"]["holderIdentity"] is None

    run(go)
