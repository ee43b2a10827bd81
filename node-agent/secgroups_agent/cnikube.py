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

The two are sinks of the agent's and operator's one list/watch loop,
:class:`secgroups_kube.reflector.Reflector`: paged lists, watches resumed from the last
resourceVersion seen, a relist on 410 Gone, jittered backoff after any other error (the
API server away). Each is not *known* until its first list is in, and calls its
``listeners`` after each list and each change. The reads go through that loop's
``ListWatchApi`` port, the writes through :class:`PodStatusApi` (both
``secgroups_kube.AsyncKube``).

Neighbours: ``cni`` (the state that calls :meth:`Readiness.committed`), ``main``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from secgroups.membership import Scope
from secgroups_agent import logs
from secgroups_agent.planning import TableState
from secgroups_agent.sources import Snapshot
from secgroups_kube.reflector import ListWatchApi, Reflector

log = logs.get("cni")

GATE = "secgroups.dev/policy-applied"
LIST_LIMIT = 500
V = TypeVar("V")


class PodStatusApi(Protocol):
    async def patch_pod_status(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any] | None: ...


class _Cache(Generic[V]):
    """One value per object of ``kind`` a selector picks, kept by a sink of the shared
    list/watch loop (``stream``, :class:`secgroups_kube.reflector.Reflector`).

    A list builds a new map and replaces the old one whole at its end (the objects the
    list lacks are gone); a watch event changes one entry. Not :attr:`known` until the
    first list is in; ``listeners`` are called after each list and each watch event.
    """

    kind = ""

    def __init__(
        self,
        api: ListWatchApi,
        *,
        labels: str | None = None,
        fields: str | None = None,
        backoff: tuple[float, float] = (0.2, 30.0),
    ) -> None:
        self.items: dict[str, V] = {}
        self._listing: dict[str, V] | None = None  # the list in progress
        self.known = asyncio.Event()
        self.listeners: list[Callable[[], None]] = []
        self.stream = Reflector(
            api,
            self.kind,
            self,
            labels=labels,
            fields=fields,
            page=LIST_LIMIT,
            backoff=backoff,
            logger=log,
            log_fields=logs.fields,
        )

    def entry(self, obj: dict[str, Any]) -> tuple[str, V]:
        """The key and value ``obj`` is kept as."""
        raise NotImplementedError

    async def run(self) -> None:
        await self.stream.run()

    async def wait_known(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            # not wait_for: it can swallow a cancel, and the task never ends
            async with asyncio.timeout(timeout):
                await self.known.wait()
        return self.known.is_set()

    def _notify(self) -> None:
        for listener in self.listeners:
            listener()

    # ------------------------------------------------------------------ the sink
    def begin_list(self, kind: str) -> None:
        self._listing = {}

    def upsert(self, kind: str, obj: dict[str, Any]) -> None:
        key, value = self.entry(obj)
        if self._listing is not None:
            self._listing[key] = value
            return
        self.items[key] = value
        self._notify()

    def delete(self, kind: str, obj: dict[str, Any]) -> None:
        key, _ = self.entry(obj)
        self.items.pop(key, None)
        self._notify()

    def end_list(self, kind: str) -> None:
        self.items, self._listing = self._listing or {}, None
        self.known.set()
        self._notify()


class KubeNamespaces(_Cache[None]):
    """The enforced namespaces (label ``scope.key=scope.value``), by name.

    The watch is label-selected: a namespace that loses the label arrives as DELETED.
    """

    kind = "Namespace"

    def __init__(self, api: ListWatchApi, scope: Scope | None = None, **kw: Any) -> None:
        scope = scope or Scope()
        super().__init__(api, labels=f"{scope.key}={scope.value}", **kw)

    def entry(self, obj: dict[str, Any]) -> tuple[str, None]:
        return str((obj.get("metadata") or {}).get("name")), None

    @property
    def names(self) -> set[str]:
        return set(self.items)

    def enforced(self, namespace: str) -> bool | None:
        return namespace in self.items if self.known.is_set() else None


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


class KubePods(_Cache[PodInfo]):
    """This node's pods (field selector ``spec.nodeName``), by UID."""

    kind = "Pod"

    def __init__(self, api: ListWatchApi, node: str, **kw: Any) -> None:
        super().__init__(api, fields=f"spec.nodeName={node}", **kw)

    def entry(self, obj: dict[str, Any]) -> tuple[str, PodInfo]:
        info = PodInfo.of(obj)
        return info.uid, info

    @property
    def pods(self) -> dict[str, PodInfo]:
        return self.items


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
