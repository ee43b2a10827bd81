"""The operator's view of the cluster: slim facts per object, fed by watch events.

Each watched object is reduced at the edge to what the policy depends on
(``secgroups.facts``); the store keeps the newest version per object (by
resourceVersion, with tombstones for deletions, so a late list item cannot
resurrect a deleted object) and hands out consistent :class:`ClusterFacts`
snapshots. Invalid custom objects (the API server validates, but an older CRD
version might not have) are kept out and reported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from secgroups.facts import ClusterFacts, NamespaceFacts, PodFacts
from secgroups.models import IPAddressGroup, SecurityGroup, SecurityGroupRule, parse_resource

log = logging.getLogger(__name__)

KINDS = ("Namespace", "Node", "Pod", "SecurityGroup", "SecurityGroupRule", "IPAddressGroup")
Key = tuple[str, str, str]  # (kind, namespace or "", name)


def _rv(obj: Mapping[str, Any]) -> int:
    text = (obj.get("metadata") or {}).get("resourceVersion") or "0"
    try:
        return int(text)
    except ValueError:  # opaque in theory; etcd revisions in practice
        return 0


def key_of(kind: str, obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (kind, meta.get("namespace") or "", meta["name"])


@dataclass
class FactsStore:
    """Newest slim facts per object; ``version`` increases on every effective change."""

    objects: dict[Key, object] = field(default_factory=dict)
    versions: dict[Key, int] = field(default_factory=dict)
    tombstones: dict[Key, int] = field(default_factory=dict)
    invalid: dict[Key, str] = field(default_factory=dict)
    version: int = 0

    def upsert(self, kind: str, obj: Mapping[str, Any]) -> bool:
        """Record an added or modified object; False if it was stale or unchanged."""
        key = key_of(kind, obj)
        rv = _rv(obj)
        if rv and (rv <= self.versions.get(key, 0) or rv <= self.tombstones.get(key, 0)):
            return False
        try:
            fact = _reduce(kind, obj)
        except (ValidationError, ValueError) as exc:
            self.invalid[key] = str(exc)
            log.warning("ignoring invalid %s %s/%s: %s", kind, key[1], key[2], exc)
            changed = self.objects.pop(key, None) is not None
            self.version += changed
            return changed
        self.invalid.pop(key, None)
        self.versions[key] = rv
        if self.objects.get(key) == fact:
            return False
        self.objects[key] = fact
        self.version += 1
        return True

    def delete(self, kind: str, obj: Mapping[str, Any]) -> bool:
        key = key_of(kind, obj)
        self.tombstones[key] = max(_rv(obj), self.versions.pop(key, 0))
        self.invalid.pop(key, None)
        if self.objects.pop(key, None) is None:
            return False
        self.version += 1
        return True

    def replace_kind(self, kind: str, items: Sequence[Mapping[str, Any]]) -> None:
        """Apply a full list of ``kind``: upsert all, drop what the list no longer has."""
        seen = set()
        for obj in items:
            seen.add(key_of(kind, obj))
            self.upsert(kind, obj)
        for key in [k for k in self.objects if k[0] == kind and k not in seen]:
            del self.objects[key]
            self.versions.pop(key, None)
            self.version += 1

    def snapshot(self) -> ClusterFacts:
        by_kind: dict[str, list[Any]] = {k: [] for k in KINDS}
        for (kind, _, _), fact in sorted(self.objects.items()):
            by_kind[kind].append(fact)
        return ClusterFacts(
            namespaces=tuple(by_kind["Namespace"]),
            nodes=tuple(by_kind["Node"]),
            pods=tuple(by_kind["Pod"]),
            groups=tuple(by_kind["SecurityGroup"]),
            rules=tuple(by_kind["SecurityGroupRule"]),
            address_groups=tuple(by_kind["IPAddressGroup"]),
        )


def _reduce(kind: str, obj: Mapping[str, Any]) -> object:
    meta = obj.get("metadata") or {}
    if kind == "Namespace":
        return NamespaceFacts(name=meta["name"], labels=dict(meta.get("labels") or {}))
    if kind == "Node":
        return str(meta["name"])
    if kind == "Pod":
        return PodFacts.from_manifest(obj)
    doc = {k: v for k, v in obj.items() if k in ("apiVersion", "kind", "metadata", "spec")}
    doc["metadata"] = {
        k: v
        for k, v in meta.items()
        if k in ("name", "namespace", "uid", "generation", "labels", "annotations")
    }
    resource = parse_resource(doc)
    assert isinstance(resource, SecurityGroup | SecurityGroupRule | IPAddressGroup)
    return resource
