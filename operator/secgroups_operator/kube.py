"""The operator's Kubernetes port: list, server-side apply, delete and status patches.

:class:`Cluster` is the Protocol the reconciler talks to. The real one is
:class:`secgroups_kube.AsyncKube` (lightkube's async client, one connection, shared
with the agent and the CLI); :class:`FakeCluster` is an in-memory one for unit tests
that assigns generations the way the API server does (a spec change bumps
``metadata.generation``; status patches do not).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

FIELD_MANAGER = "secgroups-operator"


class Cluster(Protocol):
    async def list(self, kind: str) -> list[dict[str, Any]]: ...

    async def apply(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of a full object we own; returns the stored object."""
        ...

    async def delete(self, kind: str, name: str, namespace: str | None = None) -> None: ...

    async def patch_status(
        self, kind: str, name: str, namespace: str | None, status: Mapping[str, Any]
    ) -> None: ...


@dataclass
class FakeCluster:
    """In-memory API server stand-in for unit tests (generations bump on spec change)."""

    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    writes: list[tuple[str, str, str]] = field(default_factory=list)
    fail_on: set[tuple[str, str]] = field(default_factory=set)

    async def list(self, kind: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (k, _, _), o in sorted(self.objects.items()) if k == kind]

    async def apply(self, body: Mapping[str, Any]) -> dict[str, Any]:
        kind, meta = body["kind"], body["metadata"]
        if (kind, meta["name"]) in self.fail_on:
            raise RuntimeError(f"injected failure writing {kind} {meta['name']}")
        key = (kind, meta.get("namespace") or "", meta["name"])
        old = self.objects.get(key)
        new = copy.deepcopy(dict(body))
        generation = 1
        if old is not None:
            generation = old["metadata"]["generation"]
            if old.get("spec") != new.get("spec"):
                generation += 1
            if "status" in old:
                new["status"] = old["status"]
        new["metadata"] = {**new["metadata"], "generation": generation}
        self.objects[key] = new
        self.writes.append(("apply", kind, meta["name"]))
        return copy.deepcopy(new)

    async def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        self.objects.pop((kind, namespace or "", name), None)
        self.writes.append(("delete", kind, name))

    async def patch_status(
        self, kind: str, name: str, namespace: str | None, status: Mapping[str, Any]
    ) -> None:
        key = (kind, namespace or "", name)
        if key in self.objects:
            self.objects[key]["status"] = copy.deepcopy(dict(status))
            self.writes.append(("status", kind, name))
