"""Which pods are managed, and which groups each managed pod is in, in sequence order.

docs/architecture.md#membership-and-scope: only pods in namespaces labelled
``secgroups.dev/enforce=true`` are
managed; hostNetwork pods never are, nor finished ones (their IPs may be reused).
A pod's groups are, in order: the groups named in its
``secgroups.dev/security-groups`` annotation, as written; then the groups of its
namespace whose podSelector selects it, by ``spec.sequence`` then name; and if
that leaves none *and the annotation names no group*, its namespace's default
group (S-D-1).

An annotated name whose group does not exist is fail-closed (docs/semantics.md,
decision 6): the missing group matches nothing — it is left out of the sequence,
its would-be members are in no address set — and it never sends the pod to the
default group, whose egress allows everything. A typo must not open a pod up.

Used by the compiler, the clearing planner and the CLI, so all three agree.
"""

from __future__ import annotations

import sys
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field

from secgroups import selectors
from secgroups.facts import ClusterFacts, PodFacts
from secgroups.models import DEFAULT_GROUP_NAME, ENFORCE_LABEL, SecurityGroup

GroupKey = tuple[str, str]  # (namespace, name)
PodKey = tuple[str, str]  # (namespace, name)

FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class Scope:
    """Which namespaces are enforced: those whose label ``key`` equals ``value``."""

    key: str = ENFORCE_LABEL
    value: str = "true"


@dataclass(frozen=True)
class Memberships:
    """The managed pods and their ordered groups, plus notes on names that did not resolve."""

    pods: Mapping[PodKey, PodFacts]
    groups_of: Mapping[PodKey, tuple[GroupKey, ...]]
    unknown_annotated: Mapping[PodKey, tuple[str, ...]] = field(default_factory=dict)

    def members(self) -> dict[GroupKey, tuple[PodKey, ...]]:
        """Group → its member pods, sorted."""
        out: dict[GroupKey, list[PodKey]] = {}
        for pod, groups in self.groups_of.items():
            for g in groups:
                out.setdefault(g, []).append(pod)
        return {g: tuple(sorted(p)) for g, p in sorted(out.items())}


def group_index(facts: ClusterFacts) -> dict[GroupKey, SecurityGroup]:
    return {(g.metadata.namespace or "default", g.metadata.name): g for g in facts.groups}


def is_managed(pod: PodFacts, enforced_namespaces: Container[str]) -> bool:
    return (
        pod.namespace in enforced_namespaces
        and not pod.host_network
        and pod.phase not in FINISHED_PHASES
    )


def enforced_namespaces(facts: ClusterFacts, scope: Scope) -> frozenset[str]:
    return frozenset(n.name for n in facts.namespaces if n.labels.get(scope.key) == scope.value)


def selecting_groups(groups: Iterable[SecurityGroup]) -> list[SecurityGroup]:
    """The groups (of one namespace) that have a podSelector, in sequence order, then name."""
    return sorted(
        (g for g in groups if g.spec.pod_selector is not None),
        key=lambda g: (g.spec.sequence, g.metadata.name),
    )


class Selection:
    """The groups of one namespace that have a podSelector, and whom they select.

    Pods of a namespace carry few distinct label sets (those of their Deployments),
    so the selected groups are memoised per label set: 10,000 pods in 50 namespaces
    of 10 selecting groups each need ~1,000 selector matches instead of 100,000.
    """

    def __init__(self, namespace: str, groups: Iterable[SecurityGroup]) -> None:
        self.namespace = namespace
        self.groups = selecting_groups(groups)
        self._memo: dict[frozenset[tuple[str, str]], tuple[GroupKey, ...]] = {}

    def selected(self, labels: Mapping[str, str]) -> tuple[GroupKey, ...]:
        """Keys of the groups whose podSelector selects ``labels``, in sequence order."""
        key = frozenset(labels.items())
        hit = self._memo.get(key)
        if hit is None:
            hit = tuple(
                (self.namespace, g.metadata.name)
                for g in self.groups
                if g.spec.pod_selector is not None
                and selectors.matches(g.spec.pod_selector, labels)
            )
            self._memo[key] = hit
        return hit


def missing_groups_note(names: Iterable[str]) -> str:
    """What an annotation naming groups that do not exist means (fail-closed), in words
    shared by ``explain``, ``trace``, the operator's pod event and the admission warning."""
    return (
        f"annotation names security group(s) that do not exist: {', '.join(names)}; "
        "they match nothing (fail-closed: no fallback to the default group)"
    )


def sequence_of(
    pod: PodFacts, groups: Container[GroupKey], selected: Iterable[GroupKey]
) -> tuple[tuple[GroupKey, ...], tuple[str, ...]]:
    """A managed pod's groups in sequence order, and the annotated names that do not exist.

    ``groups`` holds the keys of every existing group; ``selected`` the groups of the
    pod's namespace that select it, in sequence order (:meth:`Selection.selected`).
    The default group is the fallback only for a pod whose annotation names no group:
    a pod that names only missing groups has none (it is denied everything).
    """
    order: list[GroupKey] = []
    missing: list[str] = []
    for name in pod.annotated_groups():
        key = (pod.namespace, sys.intern(name))  # kept per pod: one string per group name
        if key in groups or name == DEFAULT_GROUP_NAME:  # the default group always exists
            order.append(key)
        else:
            missing.append(name)
    order.extend(key for key in selected if key not in order)
    if not order and not missing:
        order.append((pod.namespace, DEFAULT_GROUP_NAME))
    return tuple(order), tuple(missing)


def resolve(facts: ClusterFacts, scope: Scope | None = None) -> Memberships:
    """Compute every managed pod's group sequence (S-M-1, S-D-1; see the module docstring)."""
    enforced = enforced_namespaces(facts, scope or Scope())
    groups = group_index(facts)
    by_namespace: dict[str, list[SecurityGroup]] = {}
    for (ns, _), g in groups.items():
        by_namespace.setdefault(ns, []).append(g)
    selection = {ns: Selection(ns, gs) for ns, gs in by_namespace.items()}

    pods: dict[PodKey, PodFacts] = {}
    groups_of: dict[PodKey, tuple[GroupKey, ...]] = {}
    unknown: dict[PodKey, tuple[str, ...]] = {}
    for pod in sorted(facts.pods, key=lambda p: p.key):
        if not is_managed(pod, enforced):
            continue
        where = selection.get(pod.namespace)
        selected = where.selected(pod.labels) if where is not None else ()
        order, missing = sequence_of(pod, groups, selected)
        pods[pod.key] = pod
        groups_of[pod.key] = order
        if missing:
            unknown[pod.key] = missing
    return Memberships(pods=pods, groups_of=groups_of, unknown_annotated=unknown)
