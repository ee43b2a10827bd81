"""Where the agent's desired state comes from: a :class:`Snapshot` of its node's inputs.

A source runs as a task (:meth:`Source.run`), calls ``changed()`` whenever its inputs
change (the sync loop only marks itself dirty: level-triggered), and answers
:meth:`Source.snapshot` with a consistent view — or None while it is not ready, so
that the agent never syncs from partial data.

* :class:`KubeSource` watches only this node's ``CompiledNodePolicy`` (field selector
  ``metadata.name=<node>``) and, per name, the ``CompiledSecurityGroup`` and
  ``CompiledAddressSet`` objects that node object references; a watch is started when a
  reference appears and stopped when it goes. Each watch lists first and then watches
  from the list's resourceVersion (relisting after errors, 410 Gone included). It is not
  ready until the node object and every referenced object have been listed, and until
  the generations the node object ``requires`` have been seen (so an epoch raised for a
  rule or member change is never applied before the change itself,
  docs/architecture.md#existing-connections-epochs).
  Kubernetes access goes through the :class:`KubeApi` port
  (:class:`secgroups_kube.AsyncKube`, or :class:`FakeKubeApi` in unit tests).
* :class:`FileSource` reads a ``CompiledPolicy`` dump (JSON or YAML;
  ``model_dump(by_alias=True, mode="json")``) and takes its node's slice; it polls the
  file's mtime/size/inode every ``interval`` seconds. The file is one consistent
  snapshot, so ``requires`` does not apply. An envelope
  ``{"generation": N, "policy": <dump>}`` sets the generation reported in status
  (what the test harness waits for); a bare dump gets a load counter.
* :class:`StaticSource` holds a snapshot set by a unit test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import ValidationError

from secgroups.compiled import (
    COMPILED_GROUP_KIND,
    COMPILED_NODE_KIND,
    COMPILED_SET_KIND,
    CompiledAddressSet,
    CompiledAddressSetSpec,
    CompiledGroupSpec,
    CompiledNodePolicy,
    CompiledNodeSpec,
    CompiledPolicy,
    CompiledSecurityGroup,
)
from secgroups_agent import logs

log = logs.get("sources")

Changed = Callable[[], None]


@dataclass(frozen=True)
class Snapshot:
    """A consistent view of one node's inputs: its node spec and what it references.

    ``missing`` names referenced objects that do not exist (``group/<name>``,
    ``set/<name>``); they are rendered as absent (a missing group is skipped, like the
    evaluator does; a missing set is empty) and reported in status.
    """

    node: CompiledNodeSpec
    groups: Mapping[str, CompiledGroupSpec]
    sets: Mapping[str, CompiledAddressSetSpec]
    generation: int | None = None
    missing: tuple[str, ...] = ()

    def policy(self) -> CompiledPolicy:
        """The same data as the core's node slice (``CompiledPolicy.for_node``)."""
        return CompiledPolicy(
            groups=dict(self.groups), sets=dict(self.sets), nodes={self.node.node: self.node}
        )


@dataclass(frozen=True)
class SourceProblem:
    """Why a source is not ready or why its last input was rejected (for status)."""

    reason: str  # CamelCase, e.g. WaitingForInitialList, SourceInvalid
    message: str


class Source(Protocol):
    async def run(self, changed: Changed) -> None:
        """Watch inputs until cancelled; call ``changed()`` after each change."""
        ...

    def snapshot(self) -> Snapshot | None:
        """The current consistent inputs, or None while not ready."""
        ...

    def problem(self) -> SourceProblem | None:
        """What keeps the source from being ready, or what it last rejected."""
        ...


def references(node: CompiledNodeSpec) -> tuple[set[str], set[str]]:
    """Group and set names a node object references (its lists, plus its pods' groups)."""
    groups = set(node.groups)
    for pod in node.pods:
        groups.update(pod.groups)
    return groups, set(node.sets)


def slice_policy(policy: CompiledPolicy, node: str, generation: int | None = None) -> Snapshot:
    """A node's :class:`Snapshot` of a whole policy; tolerant of dangling references."""
    spec = policy.nodes.get(node, CompiledNodeSpec(node=node))
    group_names, set_names = references(spec)
    groups = {g: policy.groups[g] for g in sorted(group_names) if g in policy.groups}
    sets = {s: policy.sets[s] for s in sorted(set_names) if s in policy.sets}
    missing = sorted(
        [f"group/{g}" for g in group_names if g not in groups]
        + [f"set/{s}" for s in set_names if s not in sets]
    )
    return Snapshot(spec, groups, sets, generation, tuple(missing))


def intern(new: Snapshot, old: Snapshot | None) -> Snapshot:
    """``new`` with every part equal to ``old``'s replaced by ``old``'s object.

    The planner's caches key on object identity first (a watch delivers a new object
    only for what changed); a re-read file yields new objects for everything, so equal
    ones are swapped back here, once per load, instead of compared on every sync.
    """
    if old is None:
        return new
    groups = {k: old.groups[k] if old.groups.get(k) == v else v for k, v in new.groups.items()}
    sets = {k: old.sets[k] if old.sets.get(k) == v else v for k, v in new.sets.items()}
    node = new.node
    if node == old.node:
        node = old.node
    else:
        before = {(p.namespace, p.name): p for p in old.node.pods}
        pods = tuple(
            before[(p.namespace, p.name)] if before.get((p.namespace, p.name)) == p else p
            for p in node.pods
        )
        node = node.model_copy(update={"pods": pods})
    return Snapshot(node, groups, sets, new.generation, new.missing)


# --------------------------------------------------------------------------- static
@dataclass
class StaticSource:
    """A snapshot a unit test sets; :meth:`set` notifies the loop."""

    current: Snapshot | None = None
    current_problem: SourceProblem | None = None
    _changed: Changed | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, changed: Changed) -> None:
        self._changed = changed
        changed()  # whatever was set before the loop listened
        await self._stop.wait()

    def set(self, snapshot: Snapshot | None, problem: SourceProblem | None = None) -> None:
        self.current, self.current_problem = snapshot, problem
        if self._changed is not None:
            self._changed()

    def snapshot(self) -> Snapshot | None:
        return self.current

    def problem(self) -> SourceProblem | None:
        return self.current_problem


# --------------------------------------------------------------------------- file
def parse_policy_document(text: str) -> tuple[CompiledPolicy, int | None]:
    """A CompiledPolicy dump (JSON or YAML), or an envelope ``{generation, policy}``."""
    data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError("the policy file must hold a mapping")
    generation: int | None = None
    if "policy" in data:
        gen = data.get("generation")
        if gen is not None and not isinstance(gen, int):
            raise ValueError("generation must be an integer")
        generation, data = gen, data["policy"]
    return CompiledPolicy.model_validate(data), generation


class FileSource:
    """A policy file, polled every ``interval`` seconds (mtime, size and inode).

    Writers should replace the file atomically (write a temporary file, rename); a file
    that does not parse is reported and ignored until it changes again.
    """

    def __init__(self, path: Path, node: str, *, interval: float = 0.05) -> None:
        self.path = path
        self.node = node
        self.interval = interval
        self._stamp: tuple[int, int, int] | None = None
        self._snapshot: Snapshot | None = None
        self._problem: SourceProblem | None = SourceProblem(
            "WaitingForInitialList", f"policy file {path} not read yet"
        )
        self._loads = 0

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def poll(self) -> bool:
        """Read the file if it changed; True if the snapshot or the problem changed."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        if stamp is None:
            self._problem = SourceProblem("SourceMissing", f"policy file {self.path} is missing")
            return True
        try:
            policy, generation = parse_policy_document(self.path.read_text())
        except (OSError, ValueError, ValidationError, yaml.YAMLError) as exc:
            self._problem = SourceProblem("SourceInvalid", f"{self.path}: {_short(exc)}")
            log.warning("policy file rejected", extra=logs.fields(path=str(self.path)))
            return True
        self._loads += 1
        snap = slice_policy(
            policy, self.node, generation if generation is not None else self._loads
        )
        snap = intern(snap, self._snapshot)
        if snap == self._snapshot:
            return False
        self._snapshot, self._problem = snap, None
        return True

    async def run(self, changed: Changed) -> None:
        while True:
            if await asyncio.to_thread(self.poll):
                changed()
            await asyncio.sleep(self.interval)

    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def problem(self) -> SourceProblem | None:
        return self._problem


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- Kubernetes
class KubeApi(Protocol):
    """The two reads a reflector needs, for one object by kind and name."""

    async def list_one(self, kind: str, name: str) -> tuple[dict[str, Any] | None, str]:
        """The object (or None) and the list's resourceVersion."""
        ...

    def watch_one(
        self, kind: str, name: str, resource_version: str
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Events ``(ADDED|MODIFIED|DELETED, object)`` after ``resource_version``."""
        ...


@dataclass
class _Entry:
    """What one reflector knows about its object."""

    listed: bool = False
    obj: dict[str, Any] | None = None
    generation: int | None = None
    spec: Any = None  # the parsed spec model, or None when absent or invalid
    error: str | None = None


class Reflector:
    """List, then watch, one object by name; relist with backoff after any error."""

    def __init__(
        self,
        api: KubeApi,
        kind: str,
        name: str,
        parse: Callable[[dict[str, Any]], tuple[Any, int | None]],
        on_change: Changed,
        *,
        backoff: tuple[float, float] = (0.2, 30.0),
    ) -> None:
        self.api, self.kind, self.name = api, kind, name
        self.parse = parse
        self.on_change = on_change
        self.entry = _Entry()
        self.backoff = backoff
        self.relists = 0

    def _set(self, obj: dict[str, Any] | None) -> None:
        entry = _Entry(listed=True, obj=obj)
        if obj is not None:
            try:
                entry.spec, entry.generation = self.parse(obj)
            except (ValidationError, ValueError, KeyError, TypeError) as exc:
                entry.error = _short(exc)
                log.warning(
                    "invalid object",
                    extra=logs.fields(kind=self.kind, name=self.name, error=entry.error),
                )
        self.entry = entry
        self.on_change()

    async def run(self) -> None:
        delay = self.backoff[0]
        while True:
            try:
                obj, rv = await self.api.list_one(self.kind, self.name)
                self._set(obj)
                delay = self.backoff[0]
                async for typ, item in self.api.watch_one(self.kind, self.name, rv):
                    if typ in ("ADDED", "MODIFIED"):
                        self._set(item)
                    elif typ == "DELETED":
                        self._set(None)
                # The stream ended without an error: relist to be safe.
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "watch failed; relisting",
                    extra=logs.fields(
                        kind=self.kind, name=self.name, error=_short(exc), retry_in=delay
                    ),
                )
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, self.backoff[1])
            self.relists += 1


def _parse_node(obj: dict[str, Any]) -> tuple[CompiledNodeSpec, int | None]:
    node = CompiledNodePolicy.model_validate(obj)
    return node.spec, node.metadata.generation


def _parse_group(obj: dict[str, Any]) -> tuple[CompiledGroupSpec, int | None]:
    group = CompiledSecurityGroup.model_validate(obj)
    return group.spec, group.metadata.generation


def _parse_set(obj: dict[str, Any]) -> tuple[CompiledAddressSetSpec, int | None]:
    aset = CompiledAddressSet.model_validate(obj)
    return aset.spec, aset.metadata.generation


class KubeSource:
    """This node's CompiledNodePolicy and, per name, the objects it references."""

    def __init__(self, api: KubeApi, node: str, *, backoff: tuple[float, float] = (0.2, 30.0)):
        self.api = api
        self.node = node
        self.backoff = backoff
        self._changed: Changed = lambda: None
        self._node = Reflector(
            api, COMPILED_NODE_KIND, node, _parse_node, self._node_changed, backoff=backoff
        )
        self._children: dict[tuple[str, str], tuple[Reflector, asyncio.Task[None]]] = {}

    @property
    def watched(self) -> list[tuple[str, str]]:
        """(kind, name) of the referenced objects being watched now."""
        return sorted(self._children)

    async def run(self, changed: Changed) -> None:
        self._changed = changed
        try:
            await self._node.run()
        finally:
            tasks = [t for _, t in self._children.values()]
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            self._children.clear()

    def _wanted(self) -> set[tuple[str, str]]:
        spec = self._node.entry.spec
        if not isinstance(spec, CompiledNodeSpec):
            return set()
        groups, sets = references(spec)
        return {(COMPILED_GROUP_KIND, g) for g in groups} | {(COMPILED_SET_KIND, s) for s in sets}

    def _node_changed(self) -> None:
        wanted = self._wanted()
        for key in sorted(set(self._children) - wanted):
            _, task = self._children.pop(key)
            task.cancel()
        for key in sorted(wanted - set(self._children)):
            kind, name = key
            parse = _parse_group if kind == COMPILED_GROUP_KIND else _parse_set
            refl = Reflector(self.api, kind, name, parse, self._changed, backoff=self.backoff)
            task = asyncio.get_running_loop().create_task(refl.run(), name=f"watch {kind}/{name}")
            self._children[key] = (refl, task)
        self._changed()

    def _state(self) -> Snapshot | SourceProblem:
        node = self._node.entry
        if not node.listed:
            return SourceProblem(
                "WaitingForInitialList", f"{COMPILED_NODE_KIND} {self.node} not listed yet"
            )
        if node.obj is None:
            return Snapshot(CompiledNodeSpec(node=self.node), {}, {}, None)
        if not isinstance(node.spec, CompiledNodeSpec):
            return SourceProblem("SourceInvalid", f"{COMPILED_NODE_KIND} {self.node}: {node.error}")
        spec = node.spec
        groups: dict[str, CompiledGroupSpec] = {}
        sets: dict[str, CompiledAddressSetSpec] = {}
        missing: list[str] = []
        waiting: list[str] = []
        for (kind, name), (refl, _) in sorted(self._children.items()):
            prefix = "group" if kind == COMPILED_GROUP_KIND else "set"
            entry = refl.entry
            if not entry.listed:
                waiting.append(f"{prefix}/{name} (initial list)")
                continue
            need = spec.requires.get(f"{prefix}/{name}")
            if need is not None and (entry.generation or 0) < need:
                waiting.append(f"{prefix}/{name} generation {need}")
                continue
            if entry.spec is None:
                missing.append(f"{prefix}/{name}")
            elif prefix == "group":
                groups[name] = entry.spec
            else:
                sets[name] = entry.spec
        if waiting:
            return SourceProblem("WaitingForReferences", "waiting for " + ", ".join(waiting))
        return Snapshot(spec, groups, sets, node.generation, tuple(missing))

    def snapshot(self) -> Snapshot | None:
        state = self._state()
        return state if isinstance(state, Snapshot) else None

    def problem(self) -> SourceProblem | None:
        state = self._state()
        return state if isinstance(state, SourceProblem) else None


# --------------------------------------------------------------------------- fake API
@dataclass
class FakeKubeApi:
    """An in-memory API server for one process: objects by (kind, name), a global
    resourceVersion, and watches that replay events after a version.

    ``gate`` (if set) holds every list until it is set; ``watching`` counts the open
    watches per (kind, name); ``fail_watch`` makes the next watch of a key raise.
    """

    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    events: list[tuple[int, str, str, str, dict[str, Any]]] = field(default_factory=list)
    rv: int = 1
    gate: asyncio.Event | None = None
    watching: dict[tuple[str, str], int] = field(default_factory=dict)
    lists: list[tuple[str, str]] = field(default_factory=list)
    fail_watch: set[tuple[str, str]] = field(default_factory=set)
    _cond: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    def put(self, kind: str, name: str, spec: Mapping[str, Any], generation: int = 1) -> None:
        """Create or replace an object (like an operator's server-side apply)."""
        self.rv += 1
        typ = "MODIFIED" if (kind, name) in self.objects else "ADDED"
        obj = {
            "apiVersion": "secgroups.dev/v1alpha1",
            "kind": kind,
            "metadata": {"name": name, "generation": generation, "resourceVersion": str(self.rv)},
            "spec": dict(spec),
        }
        self.objects[(kind, name)] = obj
        self.events.append((self.rv, kind, name, typ, obj))
        self._notify()

    def delete(self, kind: str, name: str) -> None:
        obj = self.objects.pop((kind, name), None)
        if obj is not None:
            self.rv += 1
            self.events.append((self.rv, kind, name, "DELETED", obj))
            self._notify()

    def _notify(self) -> None:
        cond = self._cond
        if cond is None:
            return

        async def wake() -> None:
            async with cond:
                cond.notify_all()

        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(wake())

    async def list_one(self, kind: str, name: str) -> tuple[dict[str, Any] | None, str]:
        if self.gate is not None:
            await self.gate.wait()
        self.lists.append((kind, name))
        return self.objects.get((kind, name)), str(self.rv)

    async def watch_one(
        self, kind: str, name: str, resource_version: str
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        key = (kind, name)
        if key in self.fail_watch:
            self.fail_watch.discard(key)
            raise RuntimeError(f"injected watch failure for {kind}/{name}")
        after = int(resource_version)
        cond = self._condition()
        self.watching[key] = self.watching.get(key, 0) + 1
        try:
            while True:
                for rv, k, n, typ, obj in list(self.events):
                    if rv > after and (k, n) == key:
                        after = rv
                        yield typ, obj
                async with cond:
                    if not any(rv > after and (k, n) == key for rv, k, n, _, _ in self.events):
                        await cond.wait()
        finally:
            self.watching[key] -= 1
            if not self.watching[key]:
                del self.watching[key]
