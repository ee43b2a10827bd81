"""Connected clients: :class:`AsyncKube` (operator, node agent) and :class:`Kube` (CLI).

Both speak in kind names and plain dictionaries: the shells never handle lightkube
classes. Lists and stored objects come back with ``apiVersion`` and ``kind`` set; writes
carry the shell's field manager; a missing object on delete or on a status patch is
not an error (it is gone, or not published yet).

:class:`AsyncKube` serves the operator (behind its ``Cluster`` port, ``KubeCluster``) and
the agent; its ``list_page`` and ``watch_events`` are the
:class:`~secgroups_kube.reflector.ListWatchApi` both shells' reflectors read through. The
shells keep in-memory fakes of their ports. Errors: :data:`ApiError` (the API server
answered with an error status), :data:`TransportError` (the API server could not be
reached; its base class, so catch ``ApiError`` first), and
:class:`~secgroups_kube.config.KubeConfigError` from ``connect``.

**HTTP/1.1, deliberately.** Each watch holds a long-lived request on a connection of its
own (the HTTP library allows 100). The agent holds three (its node object, and the groups
and sets labelled for its node), the operator nine, so that is plenty. HTTP/2 would share
one connection, but with lightkube 1.0 and h2 4 a cancelled watch stream left the
connection unable to serve new streams (an agent that watched one object per reference
stopped applying after a pod left a group and came back).
"""

from __future__ import annotations

import builtins
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx2
import msgspec
from lightkube import ALL_NS, ApiError, AsyncClient, Client, ConfigError, SingleConfig
from lightkube.models.meta_v1 import Status
from lightkube.types import PatchType

from secgroups_kube.config import KubeConfigError, load_config
from secgroups_kube.reflector import Page
from secgroups_kube.resources import (
    GLOBAL,
    NAMESPACED,
    api_path,
    api_version,
    global_resource,
    namespaced,
    namespaced_resource,
    to_dict,
)

__all__ = ["ApiError", "AsyncKube", "Kube", "TransportError", "is_not_found"]

#: lightkube 1.x is built on httpx2; its base error covers connection failures and
#: timeouts (and is also the base of :data:`ApiError`).
TransportError: type[Exception] = httpx2.HTTPError
LIST_CHUNK = 500  # objects per list page: bounded memory on large clusters


def is_not_found(exc: ApiError) -> bool:
    """Whether the API server answered 404."""
    return exc.status is not None and exc.status.code == 404


def _status_resource(kind: str) -> Any:
    # The status subresources of our kinds (core kinds' status is never ours to write).
    return NAMESPACED[kind].Status if kind in NAMESPACED else GLOBAL[kind].Status


def _object(body: Mapping[str, Any]) -> Any:
    """``body`` as an instance of its kind's resource class, for ``apply``."""
    kind = str(body["kind"])
    res: Any = namespaced_resource(kind) if namespaced(kind) else global_resource(kind)
    return res.from_dict(dict(body))


class AsyncKube:
    """The API server through one lightkube ``AsyncClient`` (see the module docstring)."""

    def __init__(self, client: AsyncClient, config: SingleConfig, field_manager: str) -> None:
        self.client = client
        self.config = config
        self.field_manager = field_manager

    @classmethod
    def connect(
        cls,
        kubeconfig: str | os.PathLike[str] | None = None,
        *,
        field_manager: str,
        context: str | None = None,
        in_cluster: bool = False,
    ) -> AsyncKube:
        """A client for the cluster the kubeconfig rule (:mod:`secgroups_kube.config`) picks."""
        config = load_config(kubeconfig, context, in_cluster=in_cluster)
        try:
            client = AsyncClient(config=config, field_manager=field_manager, http2=False)
        except ConfigError as exc:
            raise KubeConfigError(f"cannot use the kubeconfig: {exc}") from None
        return cls(client, config, field_manager)

    async def close(self) -> None:
        await self.client.close()

    async def list(self, kind: str) -> list[dict[str, Any]]:
        """Every object of ``kind``, in every namespace."""
        if namespaced(kind):
            items: Any = self.client.list(
                namespaced_resource(kind), namespace=ALL_NS, chunk_size=LIST_CHUNK
            )
        else:
            items = self.client.list(global_resource(kind), chunk_size=LIST_CHUNK)
        return [to_dict(obj, kind) async for obj in items]

    async def list_one(self, kind: str, name: str) -> tuple[dict[str, Any] | None, str]:
        """The cluster-scoped object ``kind/name`` (or None) and the list's resourceVersion."""
        items = self.client.list(global_resource(kind), fields={"metadata.name": name})
        found: dict[str, Any] | None = None
        async for obj in items:
            found = to_dict(obj, kind)
        return found, items.resourceVersion

    async def watch_one(
        self, kind: str, name: str, resource_version: str
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Events ``(ADDED|MODIFIED|DELETED, object)`` of ``kind/name`` after the version."""
        async for typ, obj in self.client.watch(
            global_resource(kind),
            fields={"metadata.name": name},
            resource_version=resource_version,
        ):
            yield str(typ), to_dict(obj, kind)

    async def apply(
        self, body: Mapping[str, Any], *, force: bool = True, field_manager: str | None = None
    ) -> dict[str, Any]:
        """Server-side apply of a full object we own; returns the stored object.

        ``force``: take over fields another manager set (the operator owns what it writes).
        ``field_manager``: another manager than the client's (the operator writes the node
        labels of compiled objects under a manager of their own, so a label change never
        touches the spec and the reverse).
        """
        stored = await self.client.apply(
            _object(body), field_manager=field_manager or self.field_manager, force=force
        )
        return to_dict(stored, str(body["kind"]))

    async def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        """Delete ``kind/name``; an object already gone is fine."""
        try:
            if namespaced(kind):
                await self.client.delete(namespaced_resource(kind), name, namespace=namespace)
            else:
                await self.client.delete(global_resource(kind), name)
        except ApiError as exc:
            if not is_not_found(exc):
                raise

    async def patch_status(
        self, kind: str, name: str, namespace: str | None, status: Mapping[str, Any]
    ) -> None:
        """Merge-patch the status subresource of one of our objects; a missing one is fine."""
        try:
            await self.client.patch(
                _status_resource(kind),
                name,
                {"status": dict(status)},
                namespace=namespace,
                patch_type=PatchType.MERGE,
                field_manager=self.field_manager,
            )
        except ApiError as exc:
            if not is_not_found(exc):
                raise

    # ---------------------------------------------------------------- raw JSON requests
    #
    # What lightkube does not offer, over lightkube's own HTTP client (its authentication,
    # TLS and server URL): list *pages* as plain dictionaries (the operator reduces each
    # page of 500 pods to slim facts and drops it: one 20,000-pod list held whole cost
    # 619 MB), watches with bookmarks (``allowWatchBookmarks``: a quiet watch keeps a
    # fresh resourceVersion and resumes without a relist), create-if-absent, get,
    # replace with a resourceVersion precondition (leases), and Events. Responses are
    # decoded with msgspec (lightkube's decoder). Errors are lightkube's ``ApiError``.

    def _http(self) -> httpx2.AsyncClient:
        # lightkube 1.x keeps its configured httpx2 client here (pinned <2 in pyproject).
        http: httpx2.AsyncClient = self.client._client._client
        return http

    async def _request(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None, body: Any = None
    ) -> Any:
        content = None if body is None else msgspec.json.encode(body)
        headers = {"Content-Type": "application/json"} if content is not None else None
        resp = await self._http().request(
            method, path, params=dict(params or {}), content=content, headers=headers
        )
        if resp.status_code >= 400:
            raise ApiError(request=resp.request, response=resp)
        return msgspec.json.decode(resp.content) if resp.content else None

    async def list_page(
        self,
        kind: str,
        *,
        limit: int = LIST_CHUNK,
        cont: str | None = None,
        labels: str | None = None,
        fields: str | None = None,
    ) -> Page:
        """One page of ``kind`` in every namespace: (items, the list's resourceVersion,
        the continue token of the next page or None)."""
        params: dict[str, Any] = {"limit": limit}
        if cont:
            params["continue"] = cont
        if labels:
            params["labelSelector"] = labels
        if fields:
            params["fieldSelector"] = fields
        data = await self._request("GET", api_path(kind), params=params)
        meta = data.get("metadata") or {}
        items: builtins.list[dict[str, Any]] = data.get("items") or []
        version = api_version(kind)
        for item in items:  # list items come without apiVersion and kind
            item.setdefault("apiVersion", version)
            item.setdefault("kind", kind)
        return Page(items, str(meta.get("resourceVersion") or ""), meta.get("continue") or None)

    async def watch_events(
        self,
        kind: str,
        *,
        resource_version: str,
        labels: str | None = None,
        fields: str | None = None,
        timeout_s: int = 300,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """``(ADDED|MODIFIED|DELETED|BOOKMARK, object)`` of ``kind`` after
        ``resource_version``, until the server ends the watch (``timeout_s``). An
        ``ERROR`` event is raised as ``ApiError`` (410 Gone: the version is too old)."""
        params: dict[str, Any] = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": timeout_s,
        }
        if labels:
            params["labelSelector"] = labels
        if fields:
            params["fieldSelector"] = fields
        timeout = httpx2.Timeout(10.0, read=timeout_s + 30.0)
        async with self._http().stream(
            "GET", api_path(kind), params=params, timeout=timeout
        ) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise ApiError(request=resp.request, response=resp)
            async for line in resp.aiter_lines():
                if not line:
                    continue
                event = msgspec.json.decode(line)
                typ, obj = str(event.get("type")), event.get("object") or {}
                if typ == "ERROR":
                    status: Any = Status.from_dict(obj)
                    raise ApiError(status=status)
                yield typ, obj

    async def get(
        self, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        """The object, or None if there is none."""
        try:
            data: dict[str, Any] = await self._request("GET", api_path(kind, namespace, name))
        except ApiError as exc:
            if is_not_found(exc):
                return None
            raise
        return data

    async def create(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create ``body``; None if an object of that name exists (it is left as it is)."""
        meta = body.get("metadata") or {}
        try:
            data: dict[str, Any] = await self._request(
                "POST",
                api_path(str(body["kind"]), meta.get("namespace")),
                params={"fieldManager": self.field_manager},
                body=body,
            )
        except ApiError as exc:
            if exc.status is not None and exc.status.code == 409:
                return None
            raise
        return data

    async def replace(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Update with ``metadata.resourceVersion`` as a precondition (409 if it moved)."""
        meta = body.get("metadata") or {}
        data: dict[str, Any] = await self._request(
            "PUT",
            api_path(str(body["kind"]), meta.get("namespace"), meta["name"]),
            params={"fieldManager": self.field_manager},
            body=body,
        )
        return data

    async def patch_pod_status(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Strategic-merge-patch a Pod's status (the node agent's readiness condition:
        ``status.conditions`` merge by type, so other conditions are kept); None if the
        pod is gone. A ``metadata.uid`` in ``patch`` that is not the pod's makes the API
        server refuse the patch (the pod was replaced by one of the same name)."""
        resp = await self._http().request(
            "PATCH",
            api_path("Pod", namespace, name) + "/status",
            params={"fieldManager": self.field_manager},
            content=msgspec.json.encode(patch),
            headers={"Content-Type": "application/strategic-merge-patch+json"},
        )
        if resp.status_code == 404:
            return None
        if resp.status_code >= 400:
            raise ApiError(request=resp.request, response=resp)
        data: dict[str, Any] = msgspec.json.decode(resp.content)
        return data

    async def post_event(self, body: Mapping[str, Any]) -> None:
        """Create a core/v1 Event (in ``body``'s namespace)."""
        meta = body.get("metadata") or {}
        await self._request(
            "POST", api_path("Event", meta.get("namespace") or "default"), body=body
        )


class Kube:
    """The API server through one synchronous lightkube ``Client`` (the CLI's)."""

    def __init__(self, client: Client, config: SingleConfig, field_manager: str) -> None:
        self.client = client
        self.config = config
        self.field_manager = field_manager

    @classmethod
    def connect(
        cls,
        kubeconfig: str | os.PathLike[str] | None = None,
        *,
        field_manager: str,
        context: str | None = None,
    ) -> Kube:
        """A client for the cluster the kubeconfig rule (:mod:`secgroups_kube.config`) picks."""
        config = load_config(kubeconfig, context)
        try:
            client = Client(config=config, field_manager=field_manager)
        except ConfigError as exc:
            raise KubeConfigError(f"cannot use the kubeconfig: {exc}") from None
        return cls(client, config, field_manager)

    @property
    def server(self) -> str:
        """The API server's URL."""
        return self.config.cluster.server

    @property
    def namespace(self) -> str:
        """The context's namespace (``default`` when it names none)."""
        return self.config.namespace

    def close(self) -> None:
        self.client.close()

    def list(self, kind: str) -> list[dict[str, Any]]:
        """Every object of ``kind``, in every namespace."""
        if namespaced(kind):
            items: Any = self.client.list(
                namespaced_resource(kind), namespace=ALL_NS, chunk_size=LIST_CHUNK
            )
        else:
            items = self.client.list(global_resource(kind), chunk_size=LIST_CHUNK)
        return [to_dict(obj, kind) for obj in items]

    def apply(
        self, body: Mapping[str, Any], *, dry_run: bool = False, force: bool = False
    ) -> dict[str, Any]:
        """Server-side apply (``dry_run``: validated by the server, not stored)."""
        stored = self.client.apply(
            _object(body), field_manager=self.field_manager, force=force, dry_run=dry_run
        )
        return to_dict(stored, str(body["kind"]))
