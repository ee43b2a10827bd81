"""The operator's Kubernetes port: list, server-side apply, delete and status patches.

:class:`Cluster` is the Protocol the reconciler talks to; :class:`LightkubeCluster`
is the real one (lightkube's async client, one connection), :class:`FakeCluster`
an in-memory one for unit tests that assigns generations the way the API server
does (a spec change bumps ``metadata.generation``; status patches do not).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.resources.core_v1 import Namespace, Node, Pod
from lightkube.types import PatchType

from secgroups.kinds import KINDS
from secgroups.models import GROUP, VERSION

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


def _resource(kind: str) -> Any:
    if kind == "Pod":
        return Pod
    if kind == "Namespace":
        return Namespace
    if kind == "Node":
        return Node
    k = KINDS[kind]
    factory = create_namespaced_resource if k.namespaced else create_global_resource
    return factory(GROUP, VERSION, kind, k.plural)


class LightkubeCluster:
    """The real API server, through one lightkube AsyncClient."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def list(self, kind: str) -> list[dict[str, Any]]:
        res = _resource(kind)
        out = []
        async for obj in self.client.list(
            res, namespace="*" if _namespaced(kind) else None, chunk_size=500
        ):
            out.append(_to_dict(obj, kind))
        return out

    async def apply(self, body: Mapping[str, Any]) -> dict[str, Any]:
        res = _resource(body["kind"])
        obj = res.from_dict(dict(body)) if hasattr(res, "from_dict") else res(**body)
        meta = body["metadata"]
        stored = await self.client.apply(
            obj,
            name=meta["name"],
            namespace=meta.get("namespace"),
            field_manager=FIELD_MANAGER,
            force=True,
        )
        return _to_dict(stored, body["kind"])

    async def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        try:
            await self.client.delete(_resource(kind), name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise

    async def patch_status(
        self, kind: str, name: str, namespace: str | None, status: Mapping[str, Any]
    ) -> None:
        res: Any = _resource(kind)
        try:
            await self.client.patch(
                res.Status,
                name,
                {"status": dict(status)},
                namespace=namespace,
                patch_type=PatchType.MERGE,
                field_manager=FIELD_MANAGER,
            )
        except ApiError as exc:
            if exc.status.code != 404:
                raise


def _namespaced(kind: str) -> bool:
    return kind == "Pod" or (kind in KINDS and KINDS[kind].namespaced)


def _to_dict(obj: Any, kind: str) -> dict[str, Any]:
    data: dict[str, Any] = obj if isinstance(obj, dict) else obj.to_dict()
    data.setdefault("kind", kind)
    return data


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
