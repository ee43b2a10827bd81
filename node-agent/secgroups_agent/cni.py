"""The agent's side of the chained CNI plugin: bindings and the fail-closed placeholder.

The plugin (``cni/``, Go) tells the agent at CNI ADD which pod (namespace, name, UID) got
which addresses, and waits for the answer. This module keeps those **bindings** (one per
sandbox, persisted so that a restarted agent keeps pending what was pending) and decides,
at every sync, which addresses are **pending**: behind the placeholder that lets nothing
but ND/DHCP to or from them (``secgroups.nft.basechains``; docs/cni.md).

An address of a binding is pending unless the table can already be trusted for it:

* the compiled node object gives it to **another** pod UID (a deleted pod's entry the
  operator has not removed yet: IP reuse) — pending, whatever the namespace, so the new
  pod never sends or receives with the old pod's allowances;
* its pod is managed (its namespace is enforced) and the node object does not give the
  address to the pod's own UID yet — pending until the pod's own policy arrives;
* until the conntrack entries of its addresses are deleted (they belong to the sandbox
  that had them before), for an address a policy governs — pending, so that no stale
  entry carries the new pod's packets once its policy accepts "established"; the clean-up
  starts once the placeholder is in force (no packet can confirm a new entry then) and
  runs beside the ADD's answer;
* otherwise (the pod's own UID holds it, or an unmanaged pod's address nobody holds) —
  not pending.

So an address leaves ``pending`` only in the transaction that installs the policy
compiled for the same pod UID, or once it is clear that no policy applies. The sync loop
(:mod:`secgroups_agent.syncing`) asks :meth:`CniState.pending` for every plan and reports
every commit to :meth:`CniState.committed`, which is when waiting ADDs are answered.

Neighbours: ``cniserver`` (the socket), ``cnikube`` (which namespaces are enforced,
the pods of the node and their readiness gate), ``syncing`` (the loop), ``conntrack``
(entries of a reused address are deleted at ADD).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from secgroups.compiled import CompiledNodeSpec
from secgroups.nft import names
from secgroups_agent import logs
from secgroups_agent.conntrack import ConntrackPort
from secgroups_agent.planning import TableState
from secgroups_agent.sources import Snapshot, SourceProblem

log = logs.get("cni")

PROTOCOL_VERSION = 1
STATE_POLICY = "policy"  # the pod's own policy is in force
STATE_PLACEHOLDER = "placeholder"  # nothing but ND/DHCP until it is
STATE_UNMANAGED = "unmanaged"  # no policy applies and nobody else's does


class CniError(ValueError):
    """A request the agent refuses (the message goes back to the plugin, then to the pod's
    events)."""


# ----------------------------------------------------------------------------- bindings


@dataclass(frozen=True)
class Binding:
    """One sandbox's addresses, for one pod UID, as the plugin reported them at ADD."""

    container_id: str
    namespace: str
    name: str
    uid: str
    ips: tuple[str, ...]  # canonical addresses, no prefix length
    host_interface: str | None = None
    managed: bool = True  # its namespace was enforced when last known (the fallback)
    created: float = 0.0
    cleaned: bool = False  # the conntrack entries of its addresses were deleted

    @property
    def pod(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ips": list(self.ips)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Binding:
        return cls(
            container_id=str(data["container_id"]),
            namespace=str(data["namespace"]),
            name=str(data["name"]),
            uid=str(data["uid"]),
            ips=tuple(str(ip) for ip in data["ips"]),
            host_interface=data.get("host_interface"),
            managed=bool(data.get("managed", True)),
            created=float(data.get("created", 0.0)),
            cleaned=bool(data.get("cleaned", False)),
        )


def canonical_ips(texts: Iterable[str]) -> tuple[str, ...]:
    """Addresses as the plugin sends them (``100.64.1.2/32``, ``fd00::2/64``, or bare)
    → canonical text without the prefix length. Raises :class:`CniError`."""
    out: list[str] = []
    for text in texts:
        try:
            ip = ipaddress.ip_interface(str(text).strip()).ip
        except ValueError:
            raise CniError(f"{text!r} is not an IP address") from None
        if str(ip) not in out:
            out.append(str(ip))
    return tuple(out)


class BindingStore:
    """Bindings as one JSON file per sandbox under ``directory`` (``/var/run`` on a node:
    it survives an agent restart, not a reboot — nor do the sandboxes). ``None``: in
    memory only (unit tests)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def _path(self, container_id: str) -> Path:
        assert self.directory is not None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in container_id)
        return self.directory / f"{safe[:200]}.json"

    def load(self) -> dict[str, Binding]:
        if self.directory is None or not self.directory.is_dir():
            return {}
        out: dict[str, Binding] = {}
        for path in sorted(self.directory.glob("*.json")):
            try:
                b = Binding.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning(
                    "unreadable CNI binding ignored",
                    extra=logs.fields(file=str(path), error=str(exc)),
                )
                continue
            out[b.container_id] = b
        return out

    def save(self, binding: Binding) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(binding.container_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(binding.to_json(), sort_keys=True))
        os.replace(tmp, path)

    def remove(self, container_id: str) -> None:
        if self.directory is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self._path(container_id).unlink()


# ----------------------------------------------------------------------------- decisions


def claimants(node: CompiledNodeSpec) -> dict[str, frozenset[str]]:
    """Canonical address → the UIDs of the node object's pods that claim it."""
    out: dict[str, set[str]] = {}
    for pod in node.pods:
        for text in pod.ips:
            try:
                ip = str(ipaddress.ip_address(text))
            except ValueError:
                continue  # the renderer refuses it; nothing to trust it for
            out.setdefault(ip, set()).add(pod.uid)
    return {ip: frozenset(uids) for ip, uids in out.items()}


def pending_ips(
    bindings: Iterable[Binding],
    claims: Mapping[str, frozenset[str]],
    managed: Callable[[Binding], bool],
) -> frozenset[str]:
    """The addresses behind the placeholder (see the module docstring)."""
    out: set[str] = set()
    for b in bindings:
        is_managed = managed(b)
        for ip in b.ips:
            uids = claims.get(ip, frozenset())
            if (
                uids - {b.uid}
                or (b.uid not in uids and is_managed)
                or (not b.cleaned and (is_managed or uids))
            ):
                out.add(ip)
    return frozenset(out)


def protection(
    binding: Binding, pending: frozenset[str], owners: Mapping[str, str], managed: bool
) -> str | None:
    """What protects ``binding``'s pod in a committed table: ``placeholder`` (some address
    pending), ``policy`` (its own), ``unmanaged``; None while none of these holds."""
    state = STATE_POLICY if managed else STATE_UNMANAGED
    for ip in binding.ips:
        if ip in pending:
            state = STATE_PLACEHOLDER
        elif owners.get(ip) == binding.uid:
            continue
        elif managed or ip in owners:
            return None
    return state


def committed_pending(state: TableState) -> frozenset[str]:
    """The addresses a committed table holds in ``pending4``/``pending6``."""
    out: set[str] = set()
    for f in (4, 6):
        out.update(state.containers.get(names.fam(names.PENDING, f), {}))
    return frozenset(out)


# ----------------------------------------------------------------------------- the state


class Namespaces(Protocol):
    """Which namespaces are enforced (``cnikube``)."""

    def enforced(self, namespace: str) -> bool | None:
        """True/False, or None while not known (the initial list not done)."""
        ...

    async def wait_known(self, timeout: float) -> bool:
        """Wait until :meth:`enforced` answers (False at the timeout)."""
        ...


class StaticNamespaces:
    """A fixed answer: ``names`` enforced (``"*"``: all). For an agent without an API server."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)

    def enforced(self, namespace: str) -> bool | None:
        return "*" in self.names or namespace in self.names

    async def wait_known(self, timeout: float) -> bool:
        del timeout
        return True


@dataclass
class Commit:
    """What the last commit made of the bindings (for waiting requests)."""

    seq: int = 0
    version: int = -1  # the bindings' version the commit was planned from
    pending: frozenset[str] = frozenset()
    owners: Mapping[str, str] = field(default_factory=dict)


CommitListener = Callable[[Snapshot, TableState, frozenset[str]], None]


class CniState:
    """Bindings, the pending addresses, and the answers to the plugin's requests."""

    def __init__(
        self,
        store: BindingStore,
        namespaces: Namespaces,
        *,
        changed: Callable[[], None] = lambda: None,
        conntrack: ConntrackPort | None = None,
        problem: Callable[[], SourceProblem | None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.namespaces = namespaces
        self.changed = changed
        self.conntrack = conntrack
        self.problem = problem
        self.clock = clock
        self.wall = wall
        self.bindings: dict[str, Binding] = store.load()
        self.version = 0
        self.planned = -1
        self.last = Commit()
        self.listeners: list[CommitListener] = []
        self._commit = asyncio.Event()
        self._claims: tuple[CompiledNodeSpec, dict[str, frozenset[str]]] | None = None
        self._cleaning: dict[str, asyncio.Task[None]] = {}  # container ID -> its clean-up
        if self.bindings:
            log.info("CNI bindings restored", extra=logs.fields(count=len(self.bindings)))

    # ------------------------------------------------------------- the sync loop's side
    def managed(self, binding: Binding) -> bool:
        known = self.namespaces.enforced(binding.namespace)
        return binding.managed if known is None else known

    def pending(self, snap: Snapshot) -> frozenset[str]:
        """The addresses behind the placeholder, for the plan about to be made."""
        hit = self._claims
        if hit is None or hit[0] is not snap.node:
            hit = (snap.node, claimants(snap.node))
            self._claims = hit
        self.planned = self.version
        return pending_ips(self.bindings.values(), hit[1], self.managed)

    def _start_cleaning(self, binding: Binding) -> None:
        if self.conntrack is None:
            self._cleaned(binding)
            return
        task = asyncio.get_running_loop().create_task(
            self._clean(binding), name=f"cni-conntrack-{binding.container_id[:12]}"
        )
        self._cleaning[binding.container_id] = task

    async def _clean(self, binding: Binding) -> None:
        """Delete the conntrack entries of the binding's addresses (retried with backoff);
        the addresses stay pending until it is done (see :func:`pending_ips`)."""
        assert self.conntrack is not None
        delay = 0.5
        try:
            while binding.container_id in self.bindings:
                t0 = self.clock()
                try:
                    n = await asyncio.to_thread(self.conntrack.delete_ips, list(binding.ips))
                except Exception as exc:
                    log.warning(
                        "conntrack clean-up of a new pod's addresses failed; it stays behind "
                        "the placeholder, retrying",
                        extra=logs.fields(pod=binding.pod, error=str(exc), retry_in=delay),
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                log.info(
                    "conntrack of a new pod's addresses cleaned",
                    extra=logs.fields(
                        pod=binding.pod, entries=n, ms=round((self.clock() - t0) * 1000, 1)
                    ),
                )
                self._cleaned(binding)
                return
        finally:
            if self._cleaning.get(binding.container_id) is asyncio.current_task():
                del self._cleaning[binding.container_id]

    def _cleaned(self, done: Binding) -> None:
        b = self.bindings.get(done.container_id)
        if b is None or b.cleaned or b.ips != done.ips:
            return  # gone, or replaced by a new binding with other addresses
        b = dataclasses.replace(b, cleaned=True)
        self.bindings[b.container_id] = b
        self.store.save(b)
        self.version += 1
        self.changed()

    def committed(self, snap: Snapshot, state: TableState) -> None:
        """A plan from :meth:`pending`'s answer is in the kernel: answer who waits."""
        pending = committed_pending(state)
        was = self.last.pending
        self.last = Commit(self.last.seq + 1, self.planned, pending, state.pod_ips)
        if was - pending:
            self._left_pending(was - pending, state)
        for b in list(self.bindings.values()):
            # Only behind the placeholder: before it, the IP's old policy could let a
            # packet create a new entry right after the clean-up.
            if not b.cleaned and b.container_id not in self._cleaning and set(b.ips) <= pending:
                self._start_cleaning(b)
        self._commit.set()
        self._commit = asyncio.Event()
        for listener in self.listeners:
            try:
                listener(snap, state, pending)
            except Exception:
                log.exception("CNI commit listener failed")

    def _left_pending(self, released: frozenset[str], state: TableState) -> None:
        """Log the pods whose placeholder this commit lifted (the placeholder-to-policy
        time: docs/cni.md, "Figures")."""
        now = self.wall()
        for b in self.bindings.values():
            if released & set(b.ips) and not set(b.ips) & self.last.pending:
                by = "policy" if all(state.pod_ips.get(ip) == b.uid for ip in b.ips) else "none"
                log.info(
                    "placeholder lifted",
                    extra=logs.fields(
                        pod=b.pod, uid=b.uid, by=by, ms=round((now - b.created) * 1000, 1)
                    ),
                )

    # ------------------------------------------------------------- the plugin's side
    async def add(self, req: Mapping[str, Any]) -> dict[str, Any]:
        """ADD: bind the pod's addresses, answer once a commit protects them."""
        t0 = self.clock()
        deadline = t0 + _timeout(req)
        cid = _text(req, "containerID")
        namespace, name, uid = _text(req, "namespace"), _text(req, "name"), _text(req, "uid")
        ips = canonical_ips(req.get("ips") or ())
        if not ips:
            raise CniError(f"pod {namespace}/{name}: the previous plugin gave it no address")
        if not await self.namespaces.wait_known(max(0.0, deadline - self.clock())):
            raise CniError(
                f"the agent does not know yet whether namespace {namespace} is enforced "
                "(its namespace list has not loaded)"
            )
        managed = self.namespaces.enforced(namespace)
        binding = Binding(
            cid, namespace, name, uid, ips,
            req.get("hostInterface") or None, bool(managed), self.wall(),
        )  # fmt: skip
        for other in list(self.bindings.values()):
            if other.container_id == cid or set(other.ips) & set(ips):
                # The runtime gave these addresses to a new sandbox: the old binding is
                # stale (its DEL was lost, or this is a retried ADD).
                del self.bindings[other.container_id]
                self.store.remove(other.container_id)
                if (task := self._cleaning.pop(other.container_id, None)) is not None:
                    task.cancel()
        self.bindings[cid] = binding
        self.store.save(binding)
        self.version += 1
        self.changed()
        t1 = self.clock()
        state = await self._wait_safe(binding, deadline)
        t2 = self.clock()
        ms = round((t2 - t0) * 1000, 1)
        log.info(
            "pod network opened",
            extra=logs.fields(
                pod=binding.pod,
                uid=uid,
                ips=list(ips),
                state=state,
                ms=ms,
                # where the time went: binding, then the commit
                phases_ms=[round((b - a) * 1000, 1) for a, b in ((t0, t1), (t1, t2))],
            ),
        )
        return {"ok": True, "state": state, "detail": f"{ms} ms"}

    async def _wait_safe(self, binding: Binding, deadline: float) -> str:
        version = self.version
        while True:
            last = self.last
            if last.version >= version:
                state = protection(binding, last.pending, last.owners, self.managed(binding))
                if state is not None:
                    return state
            left = deadline - self.clock()
            if left <= 0:
                raise CniError(self._not_safe_reason(binding))
            event = self._commit
            with contextlib.suppress(TimeoutError):
                # not wait_for: it can swallow a cancel, and the task never ends
                async with asyncio.timeout(left):
                    await event.wait()

    def _not_safe_reason(self, binding: Binding) -> str:
        problem = self.problem()
        if self.last.seq == 0:
            why = f"{problem.reason}: {problem.message}" if problem else "no sync applied yet"
            return f"the agent is not ready ({why})"
        if problem is not None:
            return f"the agent cannot apply the node's table ({problem.reason}: {problem.message})"
        return f"the placeholder for pod {binding.pod} was not applied in time"

    async def delete(self, req: Mapping[str, Any]) -> dict[str, Any]:
        """DEL: forget the sandbox's binding (its addresses leave the placeholder, or stay
        pending while another pod's stale policy holds them)."""
        cid = _text(req, "containerID", required=False)
        gone = self.bindings.pop(cid, None) if cid else None
        if gone is not None:
            self.store.remove(cid)
            task = self._cleaning.pop(cid, None)
            if task is not None:
                task.cancel()
            self.version += 1
            self.changed()
            log.info("pod network released", extra=logs.fields(pod=gone.pod, ips=list(gone.ips)))
        return {"ok": True}

    async def check(self, req: Mapping[str, Any]) -> dict[str, Any]:
        """CHECK: the sandbox is known and protected now."""
        cid = _text(req, "containerID")
        binding = self.bindings.get(cid)
        if binding is None:
            raise CniError(f"sandbox {cid} is unknown to the agent")
        state = protection(binding, self.last.pending, self.last.owners, self.managed(binding))
        if state is None:
            raise CniError(f"pod {binding.pod} is not protected yet")
        return {"ok": True, "state": state}

    async def handle(self, req: Mapping[str, Any]) -> dict[str, Any]:
        """One request → its reply (errors as ``{"ok": false, "error": ...}``)."""
        command = str(req.get("command", ""))
        try:
            if int(req.get("version", 0)) != PROTOCOL_VERSION:
                raise CniError(
                    f"protocol version {req.get('version')!r} (the agent speaks "
                    f"{PROTOCOL_VERSION}): plugin and agent are of different releases"
                )
            if command == "ADD":
                return await self.add(req)
            if command == "DEL":
                return await self.delete(req)
            if command == "CHECK":
                return await self.check(req)
            raise CniError(f"unknown command {command!r}")
        except CniError as exc:
            pod = f"{req.get('namespace')}/{req.get('name')}"
            log.warning(
                "CNI request refused",
                extra=logs.fields(command=command, pod=pod, error=str(exc)),
            )
            return {"ok": False, "error": str(exc)}


def _text(req: Mapping[str, Any], key: str, *, required: bool = True) -> str:
    value = req.get(key)
    if not isinstance(value, str) or (required and not value):
        if required:
            raise CniError(f"the request has no {key}")
        return ""
    return value


def _timeout(req: Mapping[str, Any]) -> float:
    """Seconds the plugin waits (it sends what its deadline leaves), within bounds."""
    try:
        ms = float(req.get("timeoutMs") or 10_000)
    except (TypeError, ValueError):
        ms = 10_000
    return min(max(ms, 100.0), 120_000.0) / 1000
