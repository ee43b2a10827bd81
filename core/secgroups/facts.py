"""Cluster facts: the compiler's whole input, as plain frozen data.

The operator builds them from its watch caches, the CLI from manifest files or a
live cluster, tests from literals. Pods and Namespaces are reduced to the slim
facts the policy depends on (docs/architecture.md#membership-and-scope): labels, node,
IPs, the groups annotation, hostNetwork and phase.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from secgroups.models import (
    GROUPS_ANNOTATION,
    IPAddressGroup,
    SecurityGroup,
    SecurityGroupRule,
    parse_resource,
)
from secgroups.sharing import intern, share_fields_set, share_labels


class _Fact(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def model_post_init(self, context: Any, /) -> None:
        share_fields_set(self)  # frozen: equal sets of given fields are one object


class NamespaceFacts(_Fact):
    name: str
    labels: dict[str, str] = Field(default_factory=dict)


class PodFacts(_Fact):
    namespace: str
    name: str
    uid: str = ""
    node: str | None = None
    ips: tuple[str, ...] = ()
    labels: dict[str, str] = Field(default_factory=dict)
    groups_annotation: str | None = None
    host_network: bool = False
    phase: str = "Running"

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        # frozen, so the dict is never changed: equal label sets are one dict
        self.__dict__["labels"] = share_labels(self.labels)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def effective_uid(self) -> str:
        """The UID, or namespace/name for pods read from files (they have none)."""
        return self.uid or f"{self.namespace}/{self.name}"

    def annotated_groups(self) -> tuple[str, ...]:
        """Group names from the annotation, in the order written (blanks and repeats dropped)."""
        if not self.groups_annotation:
            return ()
        out: list[str] = []
        for item in self.groups_annotation.split(","):
            name = item.strip()
            if name and name not in out:
                out.append(name)
        return tuple(out)

    @classmethod
    def from_manifest(cls, doc: Mapping[str, Any]) -> PodFacts:
        """Slim facts of a v1 Pod object (as returned by the API server or read from YAML)."""
        meta = doc.get("metadata") or {}
        spec = doc.get("spec") or {}
        status = doc.get("status") or {}
        ips = tuple(p["ip"] for p in status.get("podIPs") or () if p.get("ip"))
        if not ips and status.get("podIP"):
            ips = (status["podIP"],)
        node = spec.get("nodeName")
        groups = (meta.get("annotations") or {}).get(GROUPS_ANNOTATION)
        # Strings many pods share are kept once (a decoded object has its own copies).
        return cls(
            namespace=_intern(meta.get("namespace") or "default"),
            name=meta["name"],
            uid=meta.get("uid") or "",
            node=_intern(node),
            ips=ips,
            labels={_intern(k): _intern(v) for k, v in (meta.get("labels") or {}).items()},
            groups_annotation=_intern(groups),
            host_network=bool(spec.get("hostNetwork", False)),
            phase=_intern(status.get("phase") or "Running"),
        )


def _intern(value: Any) -> Any:
    """A string interned; anything else as it is (the model then refuses it)."""
    return intern(value) if isinstance(value, str) else value


class ClusterFacts(_Fact):
    """Everything the policy of a cluster depends on."""

    namespaces: tuple[NamespaceFacts, ...] = ()
    nodes: tuple[str, ...] = ()
    pods: tuple[PodFacts, ...] = ()
    groups: tuple[SecurityGroup, ...] = ()
    rules: tuple[SecurityGroupRule, ...] = ()
    address_groups: tuple[IPAddressGroup, ...] = ()

    @classmethod
    def from_manifests(cls, docs: Iterable[Mapping[str, Any]]) -> ClusterFacts:
        """Facts from Kubernetes objects: Namespaces, Pods and our three kinds; others ignored."""
        namespaces: list[NamespaceFacts] = []
        nodes: list[str] = []
        pods: list[PodFacts] = []
        groups: list[SecurityGroup] = []
        rules: list[SecurityGroupRule] = []
        address_groups: list[IPAddressGroup] = []
        for doc in docs:
            kind = doc.get("kind")
            if kind == "Namespace" and doc.get("apiVersion") == "v1":
                meta = doc.get("metadata") or {}
                namespaces.append(
                    NamespaceFacts(name=meta["name"], labels=dict(meta.get("labels") or {}))
                )
            elif kind == "Node" and doc.get("apiVersion") == "v1":
                nodes.append((doc.get("metadata") or {})["name"])
            elif kind == "Pod" and doc.get("apiVersion") == "v1":
                pods.append(PodFacts.from_manifest(doc))
            elif kind in ("SecurityGroup", "SecurityGroupRule", "IPAddressGroup"):
                resource = parse_resource(dict(doc))
                if isinstance(resource, SecurityGroup):
                    groups.append(resource)
                elif isinstance(resource, SecurityGroupRule):
                    rules.append(resource)
                else:
                    address_groups.append(resource)
        return cls(
            namespaces=tuple(namespaces),
            nodes=tuple(nodes),
            pods=tuple(pods),
            groups=tuple(groups),
            rules=tuple(rules),
            address_groups=tuple(address_groups),
        )
