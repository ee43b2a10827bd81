"""Connected clients: :class:`AsyncKube` (operator, node agent) and :class:`Kube` (CLI).

Both speak in kind names and plain dictionaries: the shells never handle lightkube
classes. Lists and stored objects come back with ``apiVersion`` and ``kind`` set; writes
carry the shell's field manager; a missing object on delete or on a status patch is
not an error (it is gone, or not published yet).

:class:`AsyncKube` is the operator's ``Cluster`` port (``list``, ``apply``, ``delete``,
``patch_status``) and the agent's ``KubeApi`` port (``list_one``, ``watch_one``); the
shells keep their in-memory fakes of those ports. Errors: :data:`ApiError` (the API
server answered with an error status), :data:`TransportError` (the API server could
not be reached; its base class, so catch ``ApiError`` first), and
:class:`~secgroups_kube.config.KubeConfigError` from ``connect``.

**HTTP/1.1, deliberately.** The agent holds one watch per referenced object, each a
long-lived request on a connection of its own; the HTTP library allows 100, so a node
referencing more than ~95 groups and sets would starve. HTTP/2 would share one
connection, but with lightkube 1.0 and h2 4 a cancelled watch stream (a reference
dropped) leaves the connection unable to serve new streams: an agent stopped applying
after a pod left a group and came back (seen in
``tests/cluster/test_e2e_stack.py::test_relabelled_pod_changes_groups_live``). Remove
when that is fixed upstream, or move the agent to one label-selected watch per kind.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx2
from lightkube import ALL_NS, ApiError, AsyncClient, Client, ConfigError, SingleConfig
from lightkube.types import PatchType

from secgroups_kube.config import KubeConfigError, load_config
from secgroups_kube.resources import (
    GLOBAL,
    NAMESPACED,
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

    async def apply(self, body: Mapping[str, Any], *, force: bool = True) -> dict[str, Any]:
        """Server-side apply of a full object we own; returns the stored object.

        ``force``: take over fields another manager set (the operator owns what it writes).
        """
        stored = await self.client.apply(
            _object(body), field_manager=self.field_manager, force=force
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
