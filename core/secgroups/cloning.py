"""Clone a security group with its rules under a new name (S-O-1), to try changes safely.

Pure: the CLI (``kubectl secgroups clone``) prints or applies the result. The clone

* keeps the description and sequence, but **not** the podSelector: a clone has no
  members until someone names it in a pod annotation, so it can be edited and tested
  (``trace``/``matrix`` on a pod annotated with it) without touching live workloads;
* carries the annotation ``secgroups.dev/cloned-from: <namespace>/<source>`` (rules:
  ``<namespace>/<source rule>``);
* gets one rule per source rule, named ``<new group>-<source rule>`` (cut with a hash
  suffix when longer than a Kubernetes name may be), in the same order;
* re-points a remote that names the source group itself (S-M-5, "current security
  group") to the clone, so that the clone's members talk to each other as the source's
  did; every other remote keeps pointing where it pointed, with its namespace written
  out when the clone lives in another namespace.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from secgroups import naming
from secgroups.facts import ClusterFacts
from secgroups.membership import GroupKey
from secgroups.models import (
    GroupRef,
    ObjectMeta,
    ObjectRef,
    Remote,
    Resource,
    SecurityGroup,
    SecurityGroupRule,
    SecurityGroupRuleSpec,
)

CLONED_FROM_ANNOTATION = "secgroups.dev/cloned-from"


class CloneError(ValueError):
    """The clone cannot be made (source missing, target taken); the message says why."""


@dataclass(frozen=True)
class Clone:
    source: GroupKey
    group: SecurityGroup
    rules: tuple[SecurityGroupRule, ...]

    def resources(self) -> tuple[Resource, ...]:
        return (self.group, *self.rules)


def clone_rule_name(new_group: str, source_rule: str) -> str:
    """``<new group>-<source rule>``, cut to a valid object name with a hash if too long."""
    return naming.bounded(f"{new_group}-{source_rule}", naming.MAX_OBJECT_NAME)


_Ref = TypeVar("_Ref", ObjectRef, GroupRef)


def _ref(ref: _Ref, rule_ns: str, target_ns: str) -> _Ref:
    """``ref`` (relative to ``rule_ns``) as seen from ``target_ns``."""
    ns = ref.namespace or rule_ns
    return ref.model_copy(update={"namespace": None if ns == target_ns else ns})


def _remote(remote: Remote | None, source: GroupKey, target: GroupKey) -> Remote | None:
    if remote is None or remote.cidr is not None:
        return remote
    if remote.security_group is not None:
        sg = remote.security_group
        if (sg.namespace or source[0], sg.name) == source:
            return Remote(security_group=GroupRef(name=target[1]))
        return Remote(security_group=_ref(sg, source[0], target[0]))
    assert remote.ip_address_group is not None
    return Remote(ip_address_group=_ref(remote.ip_address_group, source[0], target[0]))


def clone_group(facts: ClusterFacts, source: GroupKey, target: GroupKey) -> Clone:
    """The clone of group ``source`` as ``target`` (see the module docstring)."""
    groups = {(g.metadata.namespace or "default", g.metadata.name): g for g in facts.groups}
    src = groups.get(source)
    if src is None:
        names = sorted(n for ns, n in groups if ns == source[0])
        hint = f"; groups in {source[0]}: {', '.join(names)}" if names else ""
        raise CloneError(f"security group {source[0]}/{source[1]} not found{hint}")
    if target in groups:
        raise CloneError(f"security group {target[0]}/{target[1]} already exists")
    rules = sorted(
        (
            r
            for r in facts.rules
            if (r.metadata.namespace or "default", r.spec.security_group) == source
        ),
        key=lambda r: r.metadata.name,
    )
    existing_rules = {(r.metadata.namespace or "default", r.metadata.name) for r in facts.rules}
    group = SecurityGroup(
        metadata=ObjectMeta(
            name=target[1],
            namespace=target[0],
            annotations={CLONED_FROM_ANNOTATION: f"{source[0]}/{source[1]}"},
        ),
        spec=src.spec.model_copy(update={"pod_selector": None}),
    )
    out: list[SecurityGroupRule] = []
    for rule in rules:
        name = clone_rule_name(target[1], rule.metadata.name)
        if (target[0], name) in existing_rules:
            raise CloneError(f"security group rule {target[0]}/{name} already exists")
        spec = rule.spec.model_copy(
            update={
                "security_group": target[1],
                "remote": _remote(rule.spec.remote, source, target),
            }
        )
        out.append(
            SecurityGroupRule(
                metadata=ObjectMeta(
                    name=name,
                    namespace=target[0],
                    annotations={CLONED_FROM_ANNOTATION: f"{source[0]}/{rule.metadata.name}"},
                ),
                # Re-validated, so a clone is never an object the API server would refuse.
                spec=SecurityGroupRuleSpec.model_validate(
                    spec.model_dump(by_alias=True, exclude_none=True)
                ),
            )
        )
    return Clone(source=source, group=group, rules=tuple(out))


def to_manifest(resource: Resource) -> dict[str, Any]:
    """A resource as a Kubernetes manifest: camelCase, no status, no empty metadata."""
    doc = resource.model_dump(by_alias=True, exclude_none=True, mode="json")
    doc.pop("status", None)
    meta = doc["metadata"]
    for key in ("labels", "annotations"):
        if not meta.get(key):
            meta.pop(key, None)
    return doc


def to_manifests(resources: Iterable[Resource]) -> list[dict[str, Any]]:
    return [to_manifest(r) for r in resources]
