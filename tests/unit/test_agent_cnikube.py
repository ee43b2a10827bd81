"""The CNI side's reads of the API (``secgroups_agent.cnikube``): the enforced namespaces
and the node's pods, as sinks of the shared list/watch loop, against an in-memory API
server with the selectors they use (``key=value`` labels, ``spec.nodeName``).

What a user of the agent would notice: an ADD is not answered before the namespace list
is in, a namespace losing the enforce label stops being enforced, a pod of another node is
never patched, and a broken or compacted watch loses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from secgroups.membership import Scope
from secgroups_agent import cnikube
from secgroups_agent.cnikube import GATE, KubeNamespaces, KubePods
from secgroups_agent.sources import FakeKubeApi

ENFORCE = Scope()  # secgroups.dev/enforce=true
FAST = (0.01, 0.05)  # backoff


class Api(FakeKubeApi):
    """``FakeKubeApi`` with the selectors of namespaces and pods, and their objects."""

    @staticmethod
    def _selected(obj: dict[str, Any] | None, labels: str | None, fields: str | None) -> bool:
        if obj is None:
            return False
        if labels:
            key, _, value = labels.partition("=")
            if (obj["metadata"].get("labels") or {}).get(key) != value:
                return False
        return not fields or fields == f"spec.nodeName={obj['spec'].get('nodeName')}"

    def store(self, kind: str, name: str, *, labels: dict[str, str] | None = None,
              **spec: Any) -> None:  # fmt: skip
        old = self.objects.get((kind, name))
        self.rv += 1
        meta = {"name": name, "uid": f"uid-{name}", "namespace": "default",
                "labels": labels or {}, "resourceVersion": str(self.rv)}  # fmt: skip
        obj = {"kind": kind, "metadata": meta, "spec": spec}
        self.objects[(kind, name)] = obj
        self.events.append((self.rv, kind, old, obj))
        self._notify()

    def namespace(self, name: str, enforced: bool = True) -> None:
        self.store("Namespace", name, labels={ENFORCE.key: ENFORCE.value} if enforced else {})

    def pod(self, name: str, node: str, gated: bool = False) -> None:
        gates = [{"conditionType": GATE}] if gated else []
        self.store("Pod", name, nodeName=node, readinessGates=gates)


async def until(cond: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(10):
        while not cond():
            await asyncio.sleep(0.005)
    assert cond(), what


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


async def running(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    task = asyncio.create_task(coro)
    await asyncio.sleep(0)
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_namespaces_are_unknown_until_the_paged_list_is_in_then_follow_the_label(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cnikube, "LIST_LIMIT", 2)

    async def body() -> None:
        api = Api(gate=asyncio.Event())
        for name in ("a", "b", "c"):
            api.namespace(name)
        api.namespace("plain", enforced=False)
        namespaces = KubeNamespaces(api, ENFORCE, backoff=FAST)
        seen: list[bool | None] = []
        namespaces.listeners.append(lambda: seen.append(namespaces.enforced("a")))
        task = await running(namespaces.run())

        assert namespaces.enforced("a") is None  # not known: an ADD would wait
        assert not await namespaces.wait_known(0.05)
        api.gate.set()  # type: ignore[union-attr]
        assert await namespaces.wait_known(10)
        assert namespaces.names == {"a", "b", "c"}
        assert api.lists == [("Namespace", "secgroups.dev/enforce=true")] * 2  # two pages
        assert seen == [True]  # one call for the whole list, known by then
        assert namespaces.enforced("plain") is False

        api.namespace("a", enforced=False)  # loses the label: DELETED for this watch
        await until(lambda: namespaces.enforced("a") is False, "a not enforced any more")
        api.namespace("plain")  # gains it: ADDED
        await until(lambda: namespaces.enforced("plain") is True, "plain enforced")
        assert seen == [True, False, False]
        await stop(task)

    run(body)


def test_a_failed_watch_backs_off_and_a_compacted_one_relists_what_it_missed() -> None:
    async def body() -> None:
        api = Api()
        api.namespace("a")
        api.namespace("b")
        namespaces = KubeNamespaces(api, ENFORCE, backoff=FAST)
        task = await running(namespaces.run())
        assert await namespaces.wait_known(10)

        api.fail_watch.add("Namespace")  # the next watch fails: backoff, then again
        api.compacted = api.rv + 1  # the open watch gets 410 at its next event
        api.delete("Namespace", "b")
        api.namespace("c")
        await until(lambda: namespaces.names == {"a", "c"}, "the relist swept b, has c")
        assert len(api.lists) == 2  # the first list and the one after 410
        assert namespaces.stream.errors == 1  # the injected failure, with backoff

        api.namespace("d")  # the watch after the relist delivers
        await until(lambda: namespaces.enforced("d") is True, "d enforced")
        await stop(task)

    run(body)


def test_pods_are_this_nodes_by_uid_with_their_gate() -> None:
    async def body() -> None:
        api = Api()
        api.pod("p1", "n1", gated=True)
        api.pod("other", "n2", gated=True)
        pods = KubePods(api, "n1", backoff=FAST)
        calls: list[int] = []
        pods.listeners.append(lambda: calls.append(len(pods.pods)))
        assert not await pods.wait_known(0)
        task = await running(pods.run())
        assert await pods.wait_known(10)
        assert list(pods.pods) == ["uid-p1"]  # the other node's pod is not ours
        assert pods.pods["uid-p1"].gated and not pods.pods["uid-p1"].applied

        api.pod("p2", "n1")
        await until(lambda: "uid-p2" in pods.pods, "p2 seen")
        assert not pods.pods["uid-p2"].gated
        api.delete("Pod", "p1")
        await until(lambda: "uid-p1" not in pods.pods, "p1 gone")
        assert calls == [1, 2, 1]
        await stop(task)

    run(body)
