"""Where the agent's desired state comes from: a :class:`Snapshot` of its node's inputs.

A source runs as a task (:meth:`Source.run`), calls ``changed()`` whenever its inputs
change (the sync loop only marks itself dirty: level-triggered), and answers
:meth:`Source.snapshot` with a consistent view — or None while it is not ready, so
that the agent never syncs from partial data.

* :class:`KubeSource` holds three watches whatever the node uses: its
  ``CompiledNodePolicy`` (field selector ``metadata.name=<node>``) and the
  ``CompiledSecurityGroup`` and ``CompiledAddressSet`` objects labelled for its node
  (``node.secgroups.dev/<node>``, put there by the operator before a node object
  references them). Each watch (:class:`Reflector`, on the shared loop
  :class:`secgroups_kube.reflector.Reflector`) lists first (in pages) and then watches
  from the list's resourceVersion, resuming from the last version seen after a
  disconnect (bookmarks keep it fresh; only 410 Gone relists). It is not ready until
  the three have been listed and the generations the node object and the groups it
  references ``require`` have been seen (so an epoch or a group's re-check counter raised
  for a rule or member change is never applied before the change itself,
  docs/architecture.md, "Ordering"). Kubernetes access goes through the
  :class:`KubeApi` port (:class:`secgroups_kube.AsyncKube`, or :class:`FakeKubeApi`
  in unit tests).
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
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import ValidationError

from secgroups import naming
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
from secgroups_kube.reflector import ListWatchApi, Page
from secgroups_kube.reflector import Reflector as ListWatch

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
    group_revision: int | None = None  # KubeSource: the groups watch's resourceVersion

    def policy(self) -> CompiledPolicy:
        """The same data as the core's node slice (``CompiledPolicy.for_node``)."""
        return CompiledPolicy(
            groups=dict(self.groups), sets=dict(self.sets), nodes={self.node.node: self.node}
        )


# What every pod's table part and epoch mark (``epochs.pod_mark``) derive from: the node
# object, the group objects (by identity: an unchanged object is the same one,
# :func:`intern`) and the raised set counters.
PodInputs = tuple[
    CompiledNodeSpec, tuple[tuple[str, CompiledGroupSpec], ...], tuple[tuple[str, int], ...]
]


def pod_inputs(snap: Snapshot) -> PodInputs:
    return (
        snap.node,
        tuple(snap.groups.items()),
        tuple((k, s.recheck) for k, s in snap.sets.items() if s.recheck),
    )


def same_pod_inputs(a: PodInputs, b: PodInputs) -> bool:
    """Whether nothing a pod's part or mark depends on changed between ``a`` and ``b``."""
    return (
        a[0] is b[0]
        and len(a[1]) == len(b[1])
        and all(x[0] == y[0] and x[1] is y[1] for x, y in zip(a[1], b[1], strict=True))
        and a[2] == b[2]
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


def required_generations(node: CompiledNodeSpec, groups: Iterable[object]) -> dict[str, int]:
    """The generations (``group/<name>``, ``set/<name>`` → minimum) the agent must hold
    before applying ``node``: its own ``requires`` and those of the group objects it
    references (``groups``: the parsed specs held, anything else ignored), the highest
    per object. A group's ``requires`` names the sets a re-check raised on it needs (its
    counter must not re-check flows against older members)."""
    out = dict(node.requires)
    for spec in groups:
        if isinstance(spec, CompiledGroupSpec):
            for key, need in spec.requires.items():
                if need > out.get(key, -1):
                    out[key] = need
    return out


def slice_policy(policy: CompiledPolicy, node: str, generation: int | None = None) -> Snapshot:
    """A node's :class:`Snapshot` of a whole policy; tolerant of dangling references."""
    spec = policy.nodes.get(node, CompiledNodeSpec(node=node))
    group_names, set_names = references(spec)
    groups = {g: policy.groups[g] for g in sorted(group_names) if g in policy.groups}
    sets = {s: policy.sets[s] for s in sorted(set_names) if s in policy.sets}
    missing = sorted(
        [naming.group_ref(g) for g in group_names if g not in groups]
        + [naming.set_ref(s) for s in set_names if s not in sets]
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
    return Snapshot(node, groups, sets, new.generation, new.missing, new.group_revision)


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
#: The reads a reflector needs (list pages, watches), by selector: the shared port.
KubeApi = ListWatchApi


@dataclass
class _Entry:
    """One object a reflector holds."""

    generation: int | None = None
    uid: str | None = None  # a deleted and re-created object is another object
    spec: Any = None  # the parsed spec model, or None when invalid
    error: str | None = None
    gone: bool = False  # deleted or no longer selected: kept while the node references it
    untrusted: bool = False  # only a version the operator did not write was seen (trust.py)


class Reflector:
    """The objects of one kind a selector picks, vetted and parsed (see ``KubeSource``).

    The list/watch loop is the shared :class:`secgroups_kube.reflector.Reflector`
    (``stream``): watches resume from the last resourceVersion seen (bookmarks keep it
    fresh); only 410 Gone relists; errors back off with jitter (0.2 s doubling to 30 s),
    so a thousand agents reconnecting to a restarted API server do not arrive at once.
    This class is its sink: ``entries`` by name — the parsed spec, or why not (invalid,
    not written by the operator), and *gone* for what a relist lacks (mark-and-sweep) or a
    watch deleted. ``on_change`` is called after every change, after each list and after
    a bookmark (nothing changed, but :attr:`revision` moved).
    """

    def __init__(
        self,
        api: KubeApi,
        kind: str,
        parse: Callable[[dict[str, Any]], tuple[Any, int | None]],
        on_change: Changed,
        *,
        labels: str | None = None,
        fields: str | None = None,
        backoff: tuple[float, float] = (0.2, 30.0),
        page: int = 500,
        timeout_s: int = 300,
        trust: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> None:
        self.kind, self.parse = kind, parse
        # Who wrote an object (trust.writer_problem): a refused version is never parsed;
        # the last accepted one stays. Name -> why, while refused.
        self.trust = trust
        self.untrusted: dict[str, str] = {}
        self.on_change = on_change
        self.entries: dict[str, _Entry] = {}
        self._listing: set[str] | None = None  # names the list in progress has had
        self.stream = ListWatch(
            api,
            kind,
            self,
            labels=labels,
            fields=fields,
            page=page,
            timeout_s=timeout_s,
            backoff=backoff,
            on_bookmark=on_change,
            logger=log,
            log_fields=logs.fields,
        )
        self.listed = self.stream.listed

    async def run(self) -> None:
        await self.stream.run()

    @property
    def revision(self) -> int:
        """The resourceVersion up to which this reflector has every event (0 before)."""
        return self.stream.revision

    @property
    def lists(self) -> int:
        return self.stream.lists

    # ------------------------------------------------------------------ the sink
    def begin_list(self, kind: str) -> None:
        self._listing = set()

    def upsert(self, kind: str, obj: dict[str, Any]) -> None:
        if self._listing is not None:
            self._listing.add(str((obj.get("metadata") or {}).get("name")))
        self._set(obj)

    def delete(self, kind: str, obj: dict[str, Any]) -> None:
        self._gone(str((obj.get("metadata") or {}).get("name")))

    def end_list(self, kind: str) -> None:
        seen, self._listing = self._listing or set(), None
        for name in [n for n in self.entries if n not in seen]:
            self._gone(name)
        self.on_change()

    # ------------------------------------------------------------------ entries
    def _set(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name"))
        if self.trust is not None and self._refused(name, obj):
            return
        generation = meta.get("generation")
        uid = meta.get("uid")
        old = self.entries.get(name)
        if (
            old is not None
            and old.generation == generation
            and generation is not None
            and old.uid == uid
        ):
            if old.gone:  # selected again, same spec: keep the parsed model
                old.gone = False
                self.on_change()
            elif self.kind != COMPILED_NODE_KIND:
                self.on_change()  # a label change: nothing to parse, the revision moved
            return
        entry = _Entry(generation=generation, uid=uid)
        try:
            entry.spec, entry.generation = self.parse(obj)
        except (ValidationError, ValueError, KeyError, TypeError) as exc:
            entry.error = _short(exc)
            log.warning(
                "invalid object",
                extra=logs.fields(kind=self.kind, name=name, error=entry.error),
            )
        self.entries[name] = entry
        self.on_change()

    def _refused(self, name: str, obj: dict[str, Any]) -> bool:
        """True if ``obj`` was not written by the operator (``trust.py``): the last accepted
        version stays (or none, and the object counts as not there yet)."""
        assert self.trust is not None
        why = self.trust(obj)
        if why is None:
            if self.untrusted.pop(name, None) is not None:
                log.info("object accepted again", extra=logs.fields(kind=self.kind, name=name))
            return False
        if self.untrusted.get(name) != why:
            log.warning(
                "object refused: not written by the operator; the last accepted version stays",
                extra=logs.fields(kind=self.kind, name=name, why=why),
            )
        self.untrusted[name] = why
        if name not in self.entries:
            self.entries[name] = _Entry(error=f"not written by the operator: {why}", untrusted=True)
        self.on_change()
        return True

    def _gone(self, name: str) -> None:
        entry = self.entries.get(name)
        if entry is not None and not entry.gone:
            entry.gone = True
            self.on_change()

    def purge(self, keep: Callable[[str], bool]) -> None:
        """Forget gone objects ``keep`` does not name any more."""
        for name in [n for n, e in self.entries.items() if e.gone and not keep(n)]:
            del self.entries[name]


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
    """This node's CompiledNodePolicy and the groups and sets labelled for this node.

    Three watches whatever the node uses (docs/architecture.md, "Dissemination"): the
    node object by field selector, and the ``CompiledSecurityGroup`` and
    ``CompiledAddressSet`` objects carrying the label ``node.secgroups.dev/<node>``
    (``naming.node_label``), which the operator puts on every object a node uses before
    the node object references it. Groups and sets are listed before the node object.
    An object that leaves the selection (or is deleted) while the node object still
    references it keeps its last content until the node object stops referencing it: the
    operator writes the node object first, but the streams are separate.
    """

    def __init__(
        self,
        api: KubeApi,
        node: str,
        *,
        backoff: tuple[float, float] = (0.2, 30.0),
        trust: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> None:
        self.api = api
        self.node = node
        self._changed: Changed = lambda: None
        label = naming.node_label(node)
        self._groups = Reflector(
            api,
            COMPILED_GROUP_KIND,
            _parse_group,
            self._on_change,
            labels=label,
            backoff=backoff,
            trust=trust,
        )
        self._sets = Reflector(
            api,
            COMPILED_SET_KIND,
            _parse_set,
            self._on_change,
            labels=label,
            backoff=backoff,
            trust=trust,
        )
        self._node = Reflector(
            api,
            COMPILED_NODE_KIND,
            _parse_node,
            self._on_change,
            fields=f"metadata.name={node}",
            backoff=backoff,
            trust=trust,
        )

    @property
    def reflectors(self) -> tuple[Reflector, Reflector, Reflector]:
        return self._groups, self._sets, self._node

    @property
    def watched(self) -> list[tuple[str, str]]:
        """(kind, name) of the groups and sets held now (selected, or gone but referenced)."""
        self._purge()
        return sorted(
            [(COMPILED_GROUP_KIND, n) for n in self._groups.entries]
            + [(COMPILED_SET_KIND, n) for n in self._sets.entries]
        )

    def _on_change(self) -> None:
        self._changed()

    async def run(self, changed: Changed) -> None:
        self._changed = changed
        tasks = [
            asyncio.get_running_loop().create_task(r.run(), name=f"watch {r.kind}")
            for r in (self._groups, self._sets)
        ]
        try:
            # The node object last: what it references is labelled before it is written.
            await self._groups.listed.wait()
            await self._sets.listed.wait()
            await self._node.run()
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    def _purge(self) -> tuple[set[str], set[str]]:
        """Forget gone groups and sets the node object no longer references; the
        references."""
        node = self._node.entries.get(self.node)
        spec = node.spec if node is not None and not node.gone else None
        if not isinstance(spec, CompiledNodeSpec):
            return set(), set()
        group_names, set_names = references(spec)
        self._groups.purge(group_names.__contains__)
        self._sets.purge(set_names.__contains__)
        return group_names, set_names

    def _state(self) -> Snapshot | SourceProblem:
        if not (
            self._groups.listed.is_set()
            and self._sets.listed.is_set()
            and self._node.listed.is_set()
        ):
            return SourceProblem(
                "WaitingForInitialList", f"{COMPILED_NODE_KIND} {self.node} not listed yet"
            )
        node = self._node.entries.get(self.node)
        if node is None or node.gone:
            return Snapshot(CompiledNodeSpec(node=self.node), {}, {}, None)
        if not isinstance(node.spec, CompiledNodeSpec):
            return SourceProblem("SourceInvalid", f"{COMPILED_NODE_KIND} {self.node}: {node.error}")
        spec = node.spec
        group_names, set_names = self._purge()
        requires = required_generations(
            spec,
            (e.spec for n in group_names if (e := self._groups.entries.get(n)) is not None),
        )
        groups: dict[str, CompiledGroupSpec] = {}
        sets: dict[str, CompiledAddressSetSpec] = {}
        missing: list[str] = []
        waiting: list[str] = []
        for prefix, names, refl, out in (
            ("group", group_names, self._groups, groups),
            ("set", set_names, self._sets, sets),
        ):
            for name in sorted(names):
                entry = refl.entries.get(name)
                need = requires.get(f"{prefix}/{name}")
                if need is not None and (entry is None or (entry.generation or 0) < need):
                    waiting.append(f"{prefix}/{name} generation {need}")
                elif entry is not None and entry.untrusted:  # never rendered as absent
                    waiting.append(f"{prefix}/{name} (not written by the operator)")
                elif entry is None or entry.spec is None:
                    missing.append(f"{prefix}/{name}")
                else:
                    out[name] = entry.spec
        if waiting:
            return SourceProblem("WaitingForReferences", "waiting for " + ", ".join(waiting))
        return Snapshot(
            spec,
            groups,
            sets,
            node.generation,
            tuple(missing),
            group_revision=self._groups.revision,
        )

    def node_uid(self) -> str | None:
        """The uid of this node's CompiledNodePolicy as last seen (None: there is none):
        the owner of the agent's NodeAgentReport."""
        node = self._node.entries.get(self.node)
        return None if node is None or node.gone or node.untrusted else node.uid

    def snapshot(self) -> Snapshot | None:
        state = self._state()
        return state if isinstance(state, Snapshot) else None

    def problem(self) -> SourceProblem | None:
        state = self._state()
        if isinstance(state, SourceProblem):
            return state
        refused = [
            f"{r.kind}/{name}: {why}" for r in self.reflectors for name, why in r.untrusted.items()
        ]
        if refused:  # enforced from the last versions the operator wrote
            return SourceProblem("UntrustedWriter", "; ".join(sorted(refused)))
        return None


# --------------------------------------------------------------------------- fake API
@dataclass
class FakeKubeApi:
    """An in-memory API server for one process: objects by (kind, name) with their node
    labels, a global resourceVersion, list pages and watches by selector (an object
    entering or leaving a label selection is ADDED or DELETED for that watch).

    ``gate`` (if set) holds every list until it is set; ``watching`` counts open
    watches per (kind, selector); ``lists`` records (kind, selector) of each list page;
    ``fail_watch`` makes the next watch of a kind raise; ``compacted``: watches from an
    older resourceVersion get 410.
    """

    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    events: list[tuple[int, str, dict[str, Any] | None, dict[str, Any] | None]] = field(
        default_factory=list
    )
    rv: int = 1
    gate: asyncio.Event | None = None
    watching: dict[tuple[str, str], int] = field(default_factory=dict)
    lists: list[tuple[str, str]] = field(default_factory=list)
    fail_watch: set[str] = field(default_factory=set)
    compacted: int = 0
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def put(
        self,
        kind: str,
        name: str,
        spec: Mapping[str, Any],
        generation: int = 1,
        nodes: Iterable[str] = (),
    ) -> None:
        """Create or replace an object (like the operator's writes), labelled for ``nodes``."""
        old = self.objects.get((kind, name))
        labels = {naming.node_label(n): "" for n in nodes}
        self.rv += 1
        obj = {
            "apiVersion": "secgroups.dev/v1alpha1",
            "kind": kind,
            "metadata": {
                "name": name,
                "generation": generation,
                "resourceVersion": str(self.rv),
                "labels": labels,
            },
            "spec": dict(spec),
        }
        self.objects[(kind, name)] = obj
        self.events.append((self.rv, kind, old, obj))
        self._notify()

    def label(self, kind: str, name: str, nodes: Iterable[str]) -> None:
        """Set the node labels of an object (its generation does not move)."""
        old = self.objects[(kind, name)]
        self.rv += 1
        obj = {
            **old,
            "metadata": {
                **old["metadata"],
                "labels": {naming.node_label(n): "" for n in nodes},
                "resourceVersion": str(self.rv),
            },
        }
        self.objects[(kind, name)] = obj
        self.events.append((self.rv, kind, old, obj))
        self._notify()

    def delete(self, kind: str, name: str) -> None:
        obj = self.objects.pop((kind, name), None)
        if obj is not None:
            self.rv += 1
            self.events.append((self.rv, kind, obj, None))
            self._notify()

    def _notify(self) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    @staticmethod
    def _selected(obj: dict[str, Any] | None, labels: str | None, fields: str | None) -> bool:
        if obj is None:
            return False
        meta = obj["metadata"]
        if labels and labels not in (meta.get("labels") or {}):
            return False
        return not fields or fields == f"metadata.name={meta['name']}"

    async def list_page(
        self,
        kind: str,
        *,
        limit: int,
        cont: str | None = None,
        labels: str | None = None,
        fields: str | None = None,
    ) -> Page:
        if self.gate is not None:
            await self.gate.wait()
        self.lists.append((kind, labels or fields or ""))
        items = [
            o
            for (k, _), o in sorted(self.objects.items())
            if k == kind and self._selected(o, labels, fields)
        ]
        start = int(cont or 0)
        nxt = start + limit if start + limit < len(items) else None
        return Page(
            [dict(o) for o in items[start : start + limit]],
            str(self.rv),
            None if nxt is None else str(nxt),
        )

    async def watch_events(
        self,
        kind: str,
        *,
        resource_version: str,
        labels: str | None = None,
        fields: str | None = None,
        timeout_s: int = 300,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        if kind in self.fail_watch:
            self.fail_watch.discard(kind)
            raise RuntimeError(f"injected watch failure for {kind}")
        after = int(resource_version)
        if after < self.compacted:
            raise _GoneError()
        key = (kind, labels or fields or "")
        self.watching[key] = self.watching.get(key, 0) + 1
        try:
            while True:
                if after < self.compacted:
                    raise _GoneError()
                for rv, k, old, new in [e for e in self.events if e[0] > after]:
                    after = rv
                    if k != kind:
                        continue
                    was, now = (
                        self._selected(old, labels, fields),
                        self._selected(new, labels, fields),
                    )
                    if now:
                        assert new is not None
                        yield ("MODIFIED" if was else "ADDED"), dict(new)
                    elif was:
                        assert old is not None
                        gone = {**old, "metadata": {**old["metadata"], "resourceVersion": str(rv)}}
                        yield "DELETED", gone
                wake = self._wake
                if not any(e[0] > after for e in self.events):
                    await wake.wait()
        finally:
            self.watching[key] -= 1
            if not self.watching[key]:
                del self.watching[key]


class _GoneError(Exception):
    """What the fake raises for a compacted resourceVersion: a 410."""

    class _Status:
        code = 410

    status = _Status()
