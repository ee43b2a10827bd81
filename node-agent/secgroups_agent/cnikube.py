"""What the CNI side of the agent reads and writes in the API: enforced namespaces, the
node's pods, and their readiness gate ``secgroups.dev/policy-applied`` (docs/cni.md).

* :class:`KubeNamespaces` — the namespaces carrying the enforce label (one
  label-selected list and watch, the operator's ``--enforce-label``): whether a new pod
  gets the placeholder until its policy arrives. The compiled node object lists only
  managed pods that the operator has already seen, so it cannot answer this at ADD.
* :class:`KubePods` — this node's pods (``spec.nodeName`` field selector): UID by
  name, which have the readiness gate, and whether its condition is True yet.
* :class:`Readiness` — sets the condition True (a ``pods/status`` patch with the pod's
  UID as precondition) once the pod's own policy is in force on this node: every
  address of the pod owned by its UID in the committed table and none pending. Pods the
  gate was given to but that no policy applies to (their namespace is not enforced any
  more, hostNetwork) get it True too, so they never stay unready for our sake.

Each list+watch relists with jittered backoff after any error (the API server away,
410 Gone) and is not *known* until its first list is in. The writes go through the
:class:`PodStatusApi` port (``secgroups_kube.AsyncKube``).

Neighbours: ``cni`` (the state that calls :meth:`Readiness.committed`), ``main``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from secgroups.membership import Scope
from secgroups_agent import logs
from secgroups_agent.planning import TableState
from secgroups_agent.sources import Snapshot

log = logs.get("cni")

GATE = "secgroups.dev/policy-applied"
LIST_LIMIT = 500


class WatchApi(Protocol):
    """The list/watch calls of ``secgroups_kube.AsyncKube`` the reflectors use."""

    async def list_page(
        self,
        kind: str,
        *,
        limit: int = ...,
        cont: str | None = None,
        labels: str | None = None,
        fields: str | None = None,
    ) -> tuple[list[dict[str, Any]], str, str | None]: ...

    def watch_events(
        self,
        kind: str,
        *,
        resource_version: str,
        labels: str | None = None,
        fields: str | None = None,
        timeout_s: int = ...,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]: ...


class PodStatusApi(Protocol):
    async def patch_pod_status(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any] | None: ...


class _Reflector:
    """List, then watch from the list's version; relist after any error."""

    kind = ""

    def __init__(
        self,
        api: WatchApi,
        *,
        labels: str | None = None,
        fields: str | None = None,
        backoff: tuple[float, float] = (0.2, 30.0),
    ) -> None:
        self.api = api
        self.labels = labels
        self.fields = fields
        self.backoff = backoff
        self.known = asyncio.Event()
        self.listeners: list[Callable[[], None]] = []

    def replace(self, items: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def event(self, typ: str, obj: dict[str, Any]) -> None:
        raise NotImplementedError

    def _notify(self) -> None:
        for listener in self.listeners:
            listener()

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                items: list[dict[str, Any]] = []
                cont: str | None = None
                while True:
                    page, version, cont = await self.api.list_page(
                        self.kind, limit=LIST_LIMIT, cont=cont, labels=self.labels,
                        fields=self.fields,
                    )  # fmt: skip
                    items += page
                    if not cont:
                        break
                self.replace(items)
                self.known.set()
                self._notify()
                failures = 0
                async for typ, obj in self.api.watch_events(
                    self.kind, resource_version=version, labels=self.labels, fields=self.fields
                ):
                    if typ == "BOOKMARK":
                        continue
                    self.event(typ, obj)
                    self._notify()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                first, most = self.backoff
                delay = min(first * 2 ** (failures - 1), most) * random.uniform(0.8, 1.2)
                log.warning(
                    "watch failed; relisting",
                    extra=logs.fields(kind=self.kind, error=str(exc)[:300], retry_in=delay),
                )
                await asyncio.sleep(delay)
                continue
            await asyncio.sleep(0)  # the server ended the watch: relist


class KubeNamespaces(_Reflector):
    """The enforced namespaces (label ``scope.key=scope.value``)."""

    kind = "Namespace"

    def __init__(self, api: WatchApi, scope: Scope | None = None, **kw: Any) -> None:
        scope = scope or Scope()
        super().__init__(api, labels=f"{scope.key}={scope.value}", **kw)
        self.names: set[str] = set()

    def replace(self, items: list[dict[str, Any]]) -> None:
        self.names = {str((i.get("metadata") or {}).get("name")) for i in items}

    def event(self, typ: str, obj: dict[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name"))
        # The watch is label-selected: a namespace that loses the label arrives as DELETED.
        if typ == "DELETED":
            self.names.discard(name)
        else:
            self.names.add(name)

    def enforced(self, namespace: str) -> bool | None:
        return namespace in self.names if self.known.is_set() else None

    async def wait_known(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            # not wait_for: it can swallow a cancel, and the task never ends
            async with asyncio.timeout(timeout):
                await self.known.wait()
        return self.known.is_set()


@dataclass
class PodInfo:
    namespace: str
    name: str
    uid: str
    gated: bool  # spec.readinessGates names our condition
    applied: bool  # status.conditions has it True
    host_network: bool

    @classmethod
    def of(cls, pod: Mapping[str, Any]) -> PodInfo:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        conditions = (pod.get("status") or {}).get("conditions") or ()
        return cls(
            namespace=str(meta.get("namespace")),
            name=str(meta.get("name")),
            uid=str(meta.get("uid")),
            gated=any(g.get("conditionType") == GATE for g in spec.get("readinessGates") or ()),
            applied=any(c.get("type") == GATE and c.get("status") == "True" for c in conditions),
            host_network=bool(spec.get("hostNetwork")),
        )


class KubePods(_Reflector):
    """This node's pods, by UID."""

    kind = "Pod"

    def __init__(self, api: WatchApi, node: str, **kw: Any) -> None:
        super().__init__(api, fields=f"spec.nodeName={node}", **kw)
        self.pods: dict[str, PodInfo] = {}

    def replace(self, items: list[dict[str, Any]]) -> None:
        self.pods = {p.uid: p for p in map(PodInfo.of, items)}

    def event(self, typ: str, obj: dict[str, Any]) -> None:
        info = PodInfo.of(obj)
        if typ == "DELETED":
            self.pods.pop(info.uid, None)
        else:
            self.pods[info.uid] = info


def in_force(snap: Snapshot, state: TableState, pending: frozenset[str]) -> set[str]:
    """UIDs of the node object's pods whose own policy the committed table enforces."""
    out: set[str] = set()
    for pod in snap.node.pods:
        ips = [_canonical(ip) for ip in pod.ips]
        if ips and all(ip is not None and ip not in pending and state.pod_ips.get(ip) == pod.uid
                       for ip in ips):  # fmt: skip
            out.add(pod.uid)
    return out


def _canonical(text: str) -> str | None:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


@dataclass
class Readiness:
    """Sets ``secgroups.dev/policy-applied`` True on gated pods of this node (see module)."""

    api: PodStatusApi
    pods: KubePods
    namespaces: KubeNamespaces
    clock: Callable[[], float] = time.monotonic
    retry_after: float = 2.0
    enforced_uids: set[str] = field(default_factory=set)
    _busy: set[str] = field(default_factory=set)
    _failed_at: dict[str, float] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    patched: int = 0

    def committed(self, snap: Snapshot, state: TableState, pending: frozenset[str]) -> None:
        """A commit (``CniState`` listener): pods whose policy is in force now."""
        self.enforced_uids = in_force(snap, state, pending)
        self._wake.set()

    def poke(self) -> None:
        """Pods or namespaces changed (reflector listener)."""
        self._wake.set()

    def due(self) -> list[PodInfo]:
        """Gated pods whose condition is not True and may be set now."""
        now = self.clock()
        out = []
        for uid, pod in self.pods.pods.items():
            if not pod.gated or pod.applied or uid in self._busy:
                continue
            if now - self._failed_at.get(uid, -1e9) < self.retry_after:
                continue
            managed = not pod.host_network and self.namespaces.enforced(pod.namespace)
            if managed is None:
                continue  # not known yet
            if uid in self.enforced_uids or not managed:
                out.append(pod)
        return out

    async def run(self) -> None:
        while True:
            self._wake.clear()
            for pod in self.due():
                self._busy.add(pod.uid)
                task = asyncio.create_task(self._patch(pod), name=f"readiness-{pod.uid}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            with contextlib.suppress(TimeoutError):
                # not wait_for: it can swallow a cancel, and the task never ends
                async with asyncio.timeout(self.retry_after):
                    await self._wake.wait()

    async def _patch(self, pod: PodInfo) -> None:
        managed = pod.uid in self.enforced_uids
        reason, message = (
            ("PolicyApplied", "kube-secgroups: the pod's security groups are enforced on its node")
            if managed
            else ("NotEnforced", "kube-secgroups: no security groups apply to this pod")
        )
        patch = {
            "metadata": {"uid": pod.uid},  # a new pod of the same name is not this one
            "status": {
                "conditions": [
                    {
                        "type": GATE,
                        "status": "True",
                        "reason": reason,
                        "message": message,
                        "lastTransitionTime": logs.rfc3339(time.time()),
                    }
                ]
            },
        }
        try:
            await self.api.patch_pod_status(pod.namespace, pod.name, patch)
        except Exception as exc:
            self._failed_at[pod.uid] = self.clock()
            log.warning(
                "cannot set the readiness condition; will retry",
                extra=logs.fields(pod=f"{pod.namespace}/{pod.name}", error=str(exc)[:300]),
            )
        else:
            self.patched += 1
            pod.applied = True  # the watch confirms it; no second patch meanwhile
            self._failed_at.pop(pod.uid, None)
            log.info(
                "readiness condition set",
                extra=logs.fields(pod=f"{pod.namespace}/{pod.name}", reason=reason),
            )
        finally:
            self._busy.discard(pod.uid)
            self._wake.set()
