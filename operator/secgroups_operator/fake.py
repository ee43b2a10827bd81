"""An in-memory API server for the operator's unit tests (:class:`FakeCluster`).

It behaves like the real one where the operator's logic depends on it: one global
resourceVersion; ``metadata.generation`` bumps on a spec change only; server-side apply
per field manager (labels owned by each manager, the spec by whoever sends one); list
pages with continue tokens; watches from a resourceVersion with label selectors,
including the ADDED/DELETED a watcher sees when an object starts or stops matching;
410 GoneError for a resourceVersion older than the last compaction; etcd's request-size
limit. Failures can be injected per object (``fail``), slowness per kind (``hold``).
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from secgroups_kube.reflector import Page
from secgroups_operator.ports import (
    FIELD_MANAGER,
    ConflictError,
    GoneError,
    RequestError,
    selector_matches,
)

ETCD_MAX_REQUEST_BYTES = 1_572_864  # 1.5 MiB
Key = tuple[str, str, str]


@dataclass
class _Change:
    rv: int
    kind: str
    old: dict[str, Any] | None
    new: dict[str, Any] | None


@dataclass
class FakeCluster:
    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    writes: list[tuple[str, str, str]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    #: (kind, name) → exception raised by the next writes of that object, until removed.
    fail: dict[tuple[str, str], Exception] = field(default_factory=dict)
    rv: int = 100
    compacted: int = 0
    history: list[_Change] = field(default_factory=list)
    _labels: dict[Key, dict[str, dict[str, str]]] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    watches_open: int = 0
    #: kind → writes (applies) of that kind wait until the event is set: a slow API server
    #: (``kind:field-manager``: that manager's applies only; ``list:kind``: the pages of
    #: that kind's lists after the first).
    hold: dict[str, asyncio.Event] = field(default_factory=dict)

    # ------------------------------------------------------------------ test helpers

    def put(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace an object as a user would (kubectl apply), bumping versions."""
        body = copy.deepcopy(dict(obj))
        key = _key(body)
        old = self.objects.get(key)
        meta = body.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{key[0]}-{key[1]}-{key[2]}")
        generation = 1
        if old is not None:
            generation = old["metadata"].get("generation", 1)
            if old.get("spec") != body.get("spec"):
                generation += 1
            if "status" in old and "status" not in body:
                body["status"] = old["status"]
        meta["generation"] = generation
        return self._store(key, old, body)

    def remove(self, kind: str, name: str, namespace: str = "") -> None:
        key = (kind, namespace, name)
        old = self.objects.pop(key, None)
        self._labels.pop(key, None)
        if old is not None:
            self._record(kind, old, None)

    def get_obj(self, kind: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        return self.objects.get((kind, namespace, name))

    def of_kind(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k[2]: o for k, o in sorted(self.objects.items()) if k[0] == kind}

    def compact(self) -> None:
        """Forget history: watches from older resourceVersions get 410 GoneError."""
        self.compacted = self.rv
        self.history.clear()

    # ------------------------------------------------------------------ reads

    async def list_page(
        self,
        kind: str,
        *,
        limit: int,
        cont: str | None = None,
        labels: str | None = None,
        fields: str | None = None,
    ) -> Page:
        await asyncio.sleep(0)
        gate = self.hold.get(f"list:{kind}") if cont else None
        if gate is not None:
            await gate.wait()
        items = [
            copy.deepcopy(o)
            for k, o in sorted(self.objects.items())
            if k[0] == kind and _matches(o, labels, fields)
        ]
        start = int(cont or 0)
        chunk = items[start : start + limit]
        nxt = start + limit if start + limit < len(items) else None
        return Page(chunk, str(self.rv), None if nxt is None else str(nxt))

    async def watch_events(
        self,
        kind: str,
        *,
        resource_version: str,
        labels: str | None = None,
        fields: str | None = None,
        timeout_s: int = 300,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        after = int(resource_version)
        if after < self.compacted:
            raise GoneError(f"too old resource version: {after} ({self.compacted})")
        self.watches_open += 1
        try:
            while True:
                if after < self.compacted:
                    raise GoneError(f"too old resource version: {after} ({self.compacted})")
                for change in [c for c in self.history if c.rv > after]:
                    after = change.rv
                    if change.kind != kind:
                        continue
                    was = change.old is not None and _matches(change.old, labels, fields)
                    now = change.new is not None and _matches(change.new, labels, fields)
                    if was and now:
                        assert change.new is not None
                        yield "MODIFIED", copy.deepcopy(change.new)
                    elif now:
                        assert change.new is not None
                        yield "ADDED", copy.deepcopy(change.new)
                    elif was:
                        gone = copy.deepcopy(change.new or change.old)
                        assert gone is not None
                        gone["metadata"]["resourceVersion"] = str(change.rv)
                        yield "DELETED", gone
                changed = self._changed
                if not any(c.rv > after for c in self.history) and after >= self.compacted:
                    # asyncio.wait, not wait_for: 3.11's wait_for can swallow a cancel
                    waiter = asyncio.ensure_future(changed.wait())
                    try:
                        done, _ = await asyncio.wait({waiter}, timeout=1.0)
                    finally:
                        waiter.cancel()
                    if not done:
                        yield "BOOKMARK", {"metadata": {"resourceVersion": str(self.rv)}}
                        after = max(after, self.rv)
        finally:
            self.watches_open -= 1

    async def get(
        self, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        obj = self.objects.get((kind, namespace or "", name))
        return copy.deepcopy(obj) if obj is not None else None

    # ------------------------------------------------------------------ writes

    async def apply(
        self, body: Mapping[str, Any], *, field_manager: str = FIELD_MANAGER
    ) -> dict[str, Any]:
        await asyncio.sleep(0)
        kind = str(body.get("kind"))
        gate = self.hold.get(f"{kind}:{field_manager}") or self.hold.get(kind)
        if gate is not None:
            await gate.wait()
        key = _key(body)
        self._check(key, body)
        old = self.objects.get(key)
        new: dict[str, Any] = (
            copy.deepcopy(old)
            if old is not None
            else {
                "apiVersion": body.get("apiVersion"),
                "kind": key[0],
                "metadata": {"name": key[2], "uid": f"uid-{key[2]}", "generation": 1},
            }
        )
        if key[1]:
            new["metadata"]["namespace"] = key[1]
        owned = self._labels.setdefault(key, {})
        owned[field_manager] = dict((body.get("metadata") or {}).get("labels") or {})
        labels: dict[str, str] = {}
        for mine in owned.values():
            labels.update(mine)
        new["metadata"]["labels"] = labels
        if "spec" in body:
            if old is not None and old.get("spec") != body["spec"]:
                new["metadata"]["generation"] = old["metadata"]["generation"] + 1
            new["spec"] = copy.deepcopy(body["spec"])
        self.writes.append(("apply", key[0], key[2]))
        if old is not None and new == old:  # a no-op apply: no new version, no event
            return copy.deepcopy(old)
        return self._store(key, old, new)

    async def create(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        key = _key(body)
        self._check(key, body)
        self.writes.append(("create", key[0], key[2]))
        if key in self.objects:
            return None
        new = copy.deepcopy(dict(body))
        new["metadata"]["generation"] = 1
        new["metadata"].setdefault("uid", f"uid-{key[2]}")
        return self._store(key, None, new)

    async def replace(self, body: Mapping[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        gate = self.hold.get(str(body.get("kind")))
        if gate is not None:
            await gate.wait()
        key = _key(body)
        self._check(key, body)
        old = self.objects.get(key)
        want = (body.get("metadata") or {}).get("resourceVersion")
        if old is None or want != old["metadata"]["resourceVersion"]:
            raise ConflictError(f"{key}: the object has been modified")
        self.writes.append(("replace", key[0], key[2]))
        return self._store(key, old, copy.deepcopy(dict(body)))

    async def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        await asyncio.sleep(0)
        key = (kind, namespace or "", name)
        self._check(key, {})
        self.writes.append(("delete", kind, name))
        old = self.objects.pop(key, None)
        self._labels.pop(key, None)
        if old is not None:
            self._record(kind, old, None)

    async def patch_status(
        self, kind: str, name: str, namespace: str | None, status: Mapping[str, Any]
    ) -> None:
        await asyncio.sleep(0)
        key = (kind, namespace or "", name)
        self._check(key, {"status": status})
        old = self.objects.get(key)
        if old is None:
            return
        new = copy.deepcopy(old)
        merged = dict(new.get("status") or {})
        for k, v in status.items():
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = copy.deepcopy(v)
        new["status"] = merged
        self.writes.append(("status", kind, name))
        self._store(key, old, new)

    async def post_event(self, body: Mapping[str, Any]) -> None:
        await asyncio.sleep(0)
        self.events.append(copy.deepcopy(dict(body)))

    # ------------------------------------------------------------------ internals

    def _check(self, key: Key, body: Mapping[str, Any]) -> None:
        exc = self.fail.get((key[0], key[2]))
        if exc is not None:
            raise exc
        if len(json.dumps(body)) > ETCD_MAX_REQUEST_BYTES:
            raise RequestError(500, "etcdserver: request is too large")

    def _store(self, key: Key, old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        new["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[key] = new
        self._record(key[0], old, new, bump=False)
        return copy.deepcopy(new)

    def _record(
        self, kind: str, old: dict[str, Any] | None, new: dict[str, Any] | None, bump: bool = True
    ) -> None:
        if bump:
            self.rv += 1
        self.history.append(_Change(self.rv, kind, copy.deepcopy(old), copy.deepcopy(new)))
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


def _key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return (str(body["kind"]), meta.get("namespace") or "", meta["name"])


def _matches(obj: Mapping[str, Any], labels: str | None, fields: str | None) -> bool:
    meta = obj.get("metadata") or {}
    if not selector_matches(labels, meta.get("labels") or {}):
        return False
    if fields:
        for term in fields.split(","):
            path, _, value = term.partition("=")
            if path == "metadata.name" and meta.get("name") != value:
                return False
            if path == "metadata.namespace" and meta.get("namespace") != value:
                return False
    return True
