"""The operator's Kubernetes port on the shared client: :class:`KubeCluster`.

It implements :class:`secgroups_operator.ports.Cluster` over
:class:`secgroups_kube.AsyncKube` (lightkube's async client, one connection, shared with
the agent and the CLI), so the reflectors, the publisher, the leader election and the
event recorder never see lightkube; the unit tests use
:class:`secgroups_operator.fake.FakeCluster` instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from secgroups_kube.reflector import Page
from secgroups_operator.ports import FIELD_MANAGER, ConflictError, GoneError


class KubeCluster:
    """:class:`secgroups_operator.ports.Cluster` on the shared client
    (:class:`secgroups_kube.AsyncKube`): API errors the callers tell apart become
    :class:`~secgroups_operator.ports.GoneError` (410) and
    :class:`~secgroups_operator.ports.ConflictError` (409 on a replace)."""

    def __init__(self, kube: Any) -> None:
        self.kube = kube

    @classmethod
    def connect(cls, kubeconfig: str | None) -> KubeCluster:
        from secgroups_kube import AsyncKube

        return cls(AsyncKube.connect(kubeconfig, field_manager=FIELD_MANAGER))

    async def close(self) -> None:
        await self.kube.close()

    async def list_page(
        self,
        kind: str,
        *,
        limit: int,
        cont: str | None = None,
        labels: str | None = None,
        fields: str | None = None,
    ) -> Page:
        try:
            items, rv, nxt = await self.kube.list_page(
                kind, limit=limit, cont=cont, labels=labels, fields=fields
            )
        except Exception as exc:
            if _code(exc) == 410:  # the continue token expired
                raise GoneError(str(exc)) from None
            raise
        return Page(items, rv, nxt)

    async def watch_events(
        self,
        kind: str,
        *,
        resource_version: str,
        labels: str | None = None,
        fields: str | None = None,
        timeout_s: int = 300,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        try:
            async for typ, obj in self.kube.watch_events(
                kind,
                resource_version=resource_version,
                labels=labels,
                fields=fields,
                timeout_s=timeout_s,
            ):
                yield typ, obj
        except Exception as exc:
            if _code(exc) == 410:
                raise GoneError(str(exc)) from None
            raise

    async def apply(
        self, body: Mapping[str, Any], *, field_manager: str = FIELD_MANAGER
    ) -> dict[str, Any]:
        out: dict[str, Any] = await self.kube.apply(body, field_manager=field_manager)
        return out

    async def create(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        out: dict[str, Any] | None = await self.kube.create(body)
        return out

    async def get(
        self, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        out: dict[str, Any] | None = await self.kube.get(kind, name, namespace)
        return out

    async def replace(self, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            out: dict[str, Any] = await self.kube.replace(body)
        except Exception as exc:
            if _code(exc) == 409:
                raise ConflictError(str(exc)) from None
            raise
        return out

    async def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        await self.kube.delete(kind, name, namespace)

    async def patch_status(
        self, kind: str, name: str, namespace: str | None, status: Mapping[str, Any]
    ) -> None:
        await self.kube.patch_status(kind, name, namespace, status)

    async def post_event(self, body: Mapping[str, Any]) -> None:
        await self.kube.post_event(body)


def _code(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    code = getattr(status, "code", None)
    return code if isinstance(code, int) else None
