"""The operator's one level-triggered loop: facts → epochs → compile → publish → status.

Every watch event marks the state dirty; one reconcile (debounced) then

1. takes a consistent snapshot of the facts store;
2. plans S-CT-2 clearing against the facts of the last successful round and
   raises the ingress epoch of every pod in the plan
   (docs/architecture.md#existing-connections-epochs); right after a restart, when
   there is no previous round, it re-checks conservatively every pod whose groups or
   sets differ from what is published (a re-check is always safe);
3. compiles (``secgroups.compiling``) and creates the namespace default groups the
   compilation synthesized (rules first, then the group, S-D-1);
4. publishes changed CompiledSecurityGroup and CompiledAddressSet objects, then
   CompiledNodePolicy objects — a node object whose pods got a new epoch records the
   generations of the objects it references in ``spec.requires``, so an agent never
   applies an epoch before the rule or member change it is for — then deletes what is
   no longer referenced;
5. writes the status of the user's objects when it changed.

A failure anywhere leaves the round uncommitted; the next round redoes it with
the same result (everything is derived from the facts and the committed epochs).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from secgroups.clearing import plan_clearing
from secgroups.compiled import (
    COMPILED_GROUP_KIND,
    COMPILED_NODE_KIND,
    COMPILED_SET_KIND,
    CompiledNodeSpec,
    CompiledPolicy,
)
from secgroups.compiling import Compilation, CompileOptions, compile_policy
from secgroups.facts import ClusterFacts
from secgroups.membership import PodKey, Scope
from secgroups.models import API_VERSION, DEFAULT_GROUP_NAME
from secgroups.quotas import account
from secgroups_operator.kube import Cluster
from secgroups_operator.statuses import StatusKey, compute_statuses
from secgroups_operator.store import FactsStore

log = logging.getLogger(__name__)

MANAGED_BY = {"app.kubernetes.io/managed-by": "secgroups-operator"}
ObjKey = tuple[str, str]  # (kind, name) of a compiled object


@dataclass
class Published:
    spec: str  # canonical JSON of the spec as written
    generation: int


@dataclass
class RoundResult:
    writes: int = 0
    deletes: int = 0
    bumped: frozenset[PodKey] = frozenset()
    defaults_created: tuple[str, ...] = ()
    duration_s: float = 0.0


def _canon(spec: Any) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def _spec_json(model: Any) -> dict[str, Any]:
    data: dict[str, Any] = model.model_dump(by_alias=True, mode="json", exclude_defaults=True)
    return data


def default_group_objects(namespace: str) -> list[dict[str, Any]]:
    """The S-D-1 default group of a namespace as user objects: four rules, then the group."""
    rules = []
    for family in ("IPv4", "IPv6"):
        suffix = family.lower()
        rules.append(
            {
                "apiVersion": API_VERSION,
                "kind": "SecurityGroupRule",
                "metadata": {
                    "name": f"{DEFAULT_GROUP_NAME}-ingress-{suffix}",
                    "namespace": namespace,
                    "labels": dict(MANAGED_BY),
                },
                "spec": {
                    "securityGroup": DEFAULT_GROUP_NAME,
                    "direction": "Ingress",
                    "ipFamily": family,
                    "protocol": "All",
                    "remote": {"securityGroup": {"name": DEFAULT_GROUP_NAME}},
                    "description": "Members of the default group talk to each other (S-D-1).",
                },
            }
        )
        rules.append(
            {
                "apiVersion": API_VERSION,
                "kind": "SecurityGroupRule",
                "metadata": {
                    "name": f"{DEFAULT_GROUP_NAME}-egress-{suffix}",
                    "namespace": namespace,
                    "labels": dict(MANAGED_BY),
                },
                "spec": {
                    "securityGroup": DEFAULT_GROUP_NAME,
                    "direction": "Egress",
                    "ipFamily": family,
                    "protocol": "All",
                    "description": "All outbound traffic (S-D-1).",
                },
            }
        )
    group = {
        "apiVersion": API_VERSION,
        "kind": "SecurityGroup",
        "metadata": {
            "name": DEFAULT_GROUP_NAME,
            "namespace": namespace,
            "labels": dict(MANAGED_BY),
        },
        "spec": {"description": "Default security group of the namespace (S-D-1)."},
    }
    return [*rules, group]


@dataclass
class Reconciler:
    cluster: Cluster
    store: FactsStore
    scope: Scope = field(default_factory=Scope)
    create_defaults: bool = True
    debounce_s: float = 0.02
    published: dict[ObjKey, Published] = field(default_factory=dict)
    node_requires: dict[str, dict[str, int]] = field(default_factory=dict)
    epochs: dict[PodKey, int] = field(default_factory=dict)
    last_facts: ClusterFacts | None = None
    statuses: dict[StatusKey, dict[str, Any]] = field(default_factory=dict)
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    rounds: int = 0
    last_result: RoundResult | None = None

    # ------------------------------------------------------------------ start-up

    async def recover(self) -> None:
        """Read what a previous run published: compiled objects, epochs, requirements."""
        for kind in (COMPILED_GROUP_KIND, COMPILED_SET_KIND, COMPILED_NODE_KIND):
            for obj in await self.cluster.list(kind):
                name = obj["metadata"]["name"]
                spec = obj.get("spec") or {}
                self.published[(kind, name)] = Published(
                    _canon(spec), int(obj["metadata"].get("generation") or 0)
                )
                if kind == COMPILED_NODE_KIND:
                    node = CompiledNodeSpec.model_validate(spec)
                    self.node_requires[name] = dict(node.requires)
                    for pod in node.pods:
                        self.epochs[(pod.namespace, pod.name)] = pod.epoch
        log.info(
            "recovered %d compiled objects and %d pod epochs", len(self.published), len(self.epochs)
        )

    # ------------------------------------------------------------------ one round

    async def reconcile_once(self) -> RoundResult:
        t0 = time.perf_counter()
        result = RoundResult()
        facts = self.store.snapshot()
        compilation = compile_policy(facts, CompileOptions(scope=self.scope, epochs=self.epochs))
        policy = compilation.policy
        if self.last_facts is not None:
            bumped = set(plan_clearing(self.last_facts, facts, self.scope).pods)
        else:
            bumped = self._catch_up(policy)
        epochs = dict(self.epochs)
        for pod in bumped:
            epochs[pod] = epochs.get(pod, 0) + 1
        if self.create_defaults:
            result.defaults_created = await self._create_defaults(facts, compilation)

        # Groups and sets first: node objects may require their new generations.
        changed: dict[ObjKey, int] = {}
        objects: list[tuple[str, str, Any]] = [
            *((COMPILED_GROUP_KIND, n, s) for n, s in policy.groups.items()),
            *((COMPILED_SET_KIND, n, s) for n, s in policy.sets.items()),
        ]
        for kind, name, obj_spec in objects:
            gen = await self._publish(kind, name, _spec_json(obj_spec))
            if gen is not None:
                changed[(kind, name)] = gen
                result.writes += 1

        live_pods: set[PodKey] = set()
        for node, spec in policy.nodes.items():
            pods = tuple(
                p.model_copy(update={"epoch": epochs.get((p.namespace, p.name), 0)})
                for p in spec.pods
            )
            live_pods.update((p.namespace, p.name) for p in spec.pods)
            refs = {f"group/{g}": (COMPILED_GROUP_KIND, g) for g in spec.groups}
            refs.update({f"set/{s}": (COMPILED_SET_KIND, s) for s in spec.sets})
            requires = {k: v for k, v in self.node_requires.get(node, {}).items() if k in refs}
            if any((p.namespace, p.name) in bumped for p in spec.pods):
                requires = {
                    k: self.published[ref].generation
                    for k, ref in refs.items()
                    if ref in self.published
                }
            full = spec.model_copy(update={"pods": pods, "requires": requires})
            gen = await self._publish(COMPILED_NODE_KIND, node, _spec_json(full))
            if gen is not None:
                result.writes += 1
            self.node_requires[node] = requires

        # Then delete what is no longer wanted: nodes first, then what they referenced.
        wanted = {(COMPILED_GROUP_KIND, n) for n in policy.groups}
        wanted |= {(COMPILED_SET_KIND, n) for n in policy.sets}
        wanted |= {(COMPILED_NODE_KIND, n) for n in policy.nodes}
        order = {COMPILED_NODE_KIND: 0, COMPILED_GROUP_KIND: 1, COMPILED_SET_KIND: 2}
        for kind, name in sorted(set(self.published) - wanted, key=lambda k: (order[k[0]], k[1])):
            await self.cluster.delete(kind, name)
            del self.published[(kind, name)]
            self.node_requires.pop(name, None) if kind == COMPILED_NODE_KIND else None
            result.deletes += 1

        await self._write_statuses(facts, compilation)

        self.epochs = {k: v for k, v in epochs.items() if k in live_pods or k in bumped}
        self.last_facts = facts
        self.rounds += 1
        result.bumped = frozenset(bumped)
        result.duration_s = time.perf_counter() - t0
        self.last_result = result
        if result.writes or result.deletes or bumped:
            log.info(
                "reconciled: %d writes, %d deletes, %d pods re-checked (%.1f ms)",
                result.writes,
                result.deletes,
                len(bumped),
                result.duration_s * 1000,
            )
        return result

    def _catch_up(self, policy: CompiledPolicy) -> set[PodKey]:
        """After a restart: pods whose groups, sets or group list differ from what is published."""
        stale = {
            (COMPILED_GROUP_KIND, n)
            for n, s in policy.groups.items()
            if self._differs(COMPILED_GROUP_KIND, n, _spec_json(s))
        }
        stale |= {
            (COMPILED_SET_KIND, n)
            for n, s in policy.sets.items()
            if self._differs(COMPILED_SET_KIND, n, _spec_json(s))
        }
        if not self.published:
            return set()  # first start ever: nothing was enforced before
        out: set[PodKey] = set()
        for node, spec in policy.nodes.items():
            published = self.published.get((COMPILED_NODE_KIND, node))
            old_groups = {}
            if published is not None:
                old = CompiledNodeSpec.model_validate(json.loads(published.spec))
                old_groups = {(p.namespace, p.name): p.groups for p in old.pods}
            for pod in spec.pods:
                key = (pod.namespace, pod.name)
                sets_of = {
                    r.remote.set
                    for g in pod.groups
                    for r in (*policy.groups[g].ingress, *policy.groups[g].egress)
                    if r.remote.set
                }
                if (
                    old_groups.get(key) != pod.groups
                    or any((COMPILED_GROUP_KIND, g) in stale for g in pod.groups)
                    or any((COMPILED_SET_KIND, s) in stale for s in sets_of)
                ):
                    out.add(key)
        return out

    def _differs(self, kind: str, name: str, spec: Mapping[str, Any]) -> bool:
        old = self.published.get((kind, name))
        return old is None or old.spec != _canon(spec)

    async def _publish(self, kind: str, name: str, spec: dict[str, Any]) -> int | None:
        """Apply the object if its spec changed; the new generation, or None if unchanged."""
        if not self._differs(kind, name, spec):
            return None
        body = {
            "apiVersion": API_VERSION,
            "kind": kind,
            "metadata": {"name": name, "labels": dict(MANAGED_BY)},
            "spec": spec,
        }
        stored = await self.cluster.apply(body)
        gen = int(stored["metadata"].get("generation") or 0)
        self.published[(kind, name)] = Published(_canon(spec), gen)
        return gen

    async def _create_defaults(
        self, facts: ClusterFacts, compilation: Compilation
    ) -> tuple[str, ...]:
        created = []
        for spec in compilation.policy.groups.values():
            if spec.synthesized:
                ns = spec.group.namespace
                for obj in default_group_objects(ns):
                    await self.cluster.apply(obj)
                created.append(ns)
                log.info("created the default security group of namespace %s (S-D-1)", ns)
        return tuple(created)

    async def _write_statuses(self, facts: ClusterFacts, compilation: Compilation) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        desired = compute_statuses(
            facts, compilation, account(facts, self.scope), now, self.statuses
        )
        for key, status in desired.items():
            if self.statuses.get(key) != status:
                kind, ns, name = key
                await self.cluster.patch_status(kind, name, ns, status)
                self.statuses[key] = status
        for key in set(self.statuses) - set(desired):
            del self.statuses[key]

    # ------------------------------------------------------------------ the loop

    def mark_dirty(self) -> None:
        self.dirty.set()

    async def run(self, stop: asyncio.Event, *, backoff_s: float = 1.0) -> None:
        """Reconcile when dirty (debounced) until ``stop`` is set; retry failures with backoff."""
        delay = backoff_s
        while not stop.is_set():
            waiter = asyncio.ensure_future(self.dirty.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            if stop.is_set():
                return
            await asyncio.sleep(self.debounce_s)
            self.dirty.clear()
            try:
                await self.reconcile_once()
                delay = backoff_s
            except Exception:
                log.exception("reconcile failed; retrying in %.1f s", delay)
                self.dirty.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
