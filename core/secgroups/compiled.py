"""The compiled objects the operator publishes and the node agents consume.

See docs/architecture.md#compiled-objects.

Split as Antrea splits its internal policy, so that one user change writes O(1)
objects:

* :class:`CompiledGroupSpec` — one per security group in use: its ingress and egress
  rules, sorted in match order (priority, Deny before Allow, then rule id), remotes
  reduced to inline CIDRs or references to address sets;
* :class:`CompiledAddressSetSpec` — one per remote (a security group used as a remote,
  or an IP address group): its members as collapsed IPv4 and IPv6 CIDRs;
* :class:`CompiledNodeSpec` — one per node: the managed pods on it, each with its IPs,
  its ordered group list and its ingress epoch (S-CT-2 clearing,
  docs/architecture.md#existing-connections-epochs).

They are cluster-scoped custom resources of their own (kinds below), written only
by the operator. The same models are the output of ``compiling.compile_policy``
and the input of ``evaluating``, the nft renderer and the CLI.

Their fields carry types and bounds (names are DNS names, CIDRs and IPs have their
shape, lists have a maximum length, a remote's kind matches what it holds), so the
CRDs generated from them (``crdgen``) make the API server refuse a malformed compiled
object, and the agent, which parses what it watches with these models, refuses the
same. The list bounds are well above what the limits in ``quotas`` let the operator
write (which keeps every object under the size etcd accepts).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from secgroups.addresses import IPAddress, IPNetwork
from secgroups.models import (
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    Action,
    Direction,
    IPFamily,
    Protocol,
)
from secgroups.ports import PortRange
from secgroups.sharing import share_fields_set

COMPILED_GROUP_KIND = "CompiledSecurityGroup"
COMPILED_SET_KIND = "CompiledAddressSet"
COMPILED_NODE_KIND = "CompiledNodePolicy"
#: What a node's agent applied, one small object per node written by that agent alone
#: (the operator reads it for realization; see NodeAgentReport).
NODE_REPORT_KIND = "NodeAgentReport"

# Bounds of the schema (see the module docstring). The operator's own limits are lower:
# quotas.MAX_RULES_PER_GROUP rules per group, quotas.MAX_ADDRESS_GROUP_CIDRS CIDRs per
# address group, S-L-2's 6,000 members per group; every object under 1 MB.
MAX_RULES_PER_DIRECTION = 1000
MAX_PORT_SPANS = 128  # a 256-character port list has at most 128 items
MAX_SET_CIDRS = 20_000  # per family: ~0.9 MB of IPv6 CIDRs at most
MAX_PODS_PER_NODE = 5000
MAX_GROUPS_PER_POD = 1000
MAX_REFERENCES = 20_000  # groups or sets a node uses
MAX_ID_LENGTH = 320  # namespace/name of a rule: 63 + 1 + 253, with room
MAX_TEXT = 255

# Shapes of addresses. The compiler writes every member with its
# prefix length; a bare address passes the patterns (the agent reads one as a host),
# and the API server's ``format: cidr`` insists on the prefix. The IPv4 pattern is
# exact; IPv6 text is checked by its characters here and parsed by the API server and
# by the agent's renderer.
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4_CIDR_PATTERN = rf"^{_OCTET}(\.{_OCTET}){{3}}(/([0-9]|[12][0-9]|3[0-2]))?$"
IPV6_CIDR_PATTERN = r"^[0-9a-fA-F:.]*:[0-9a-fA-F:.]*(/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8]))?$"
CIDR_PATTERN = r"^[0-9a-fA-F:.]+(/[0-9]{1,3})?$"
IP_PATTERN = r"^[0-9a-fA-F:.]+$"

_CIDR_FORMAT: JsonDict = {"format": "cidr"}
MSG_POD_IP = "a pod IP must be an IPv4 or IPv6 address"
_IS_IP: JsonDict = {"x-kubernetes-validations": [{"rule": "isIP(self)", "message": MSG_POD_IP}]}

Namespace = Annotated[str, Field(max_length=63, pattern=DNS_LABEL_PATTERN)]
ObjectName = Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
# A compiled object referenced by name. Its shape is the API server's business when the
# object is written; the agent renders probes under names no object can have.
RefName = Annotated[str, Field(min_length=1, max_length=253)]
IPv4CIDR = Annotated[
    str, Field(max_length=18, pattern=IPV4_CIDR_PATTERN, json_schema_extra=_CIDR_FORMAT)
]
IPv6CIDR = Annotated[
    str, Field(max_length=43, pattern=IPV6_CIDR_PATTERN, json_schema_extra=_CIDR_FORMAT)
]
CIDR = Annotated[str, Field(max_length=43, pattern=CIDR_PATTERN, json_schema_extra=_CIDR_FORMAT)]
IP = Annotated[str, Field(max_length=39, pattern=IP_PATTERN, json_schema_extra=_IS_IP)]

MAX_INLINE_CIDRS = 64  # the compiler writes one (a rule has one CIDR remote)
MSG_REMOTE_KIND = (
    "a remote of kind Any has no cidrs and no set, CIDR no set, Set a set and no cidrs"
)


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel
    )

    def model_post_init(self, context: Any, /) -> None:
        share_fields_set(self)  # frozen: equal sets of given fields are one object


class RemoteKind(StrEnum):
    ANY = "Any"
    CIDR = "CIDR"
    SET = "Set"


class SourceKind(StrEnum):
    SECURITY_GROUP = "SecurityGroup"
    IP_ADDRESS_GROUP = "IPAddressGroup"


class ObjectKey(_Model):
    """Namespace and name of a user object (a group, a rule, an address group, a pod)."""

    namespace: Namespace = Field(description="Namespace of the object.")
    name: ObjectName = Field(description="Name of the object.")

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class PortSpan(_Model):
    """An inclusive destination-port range."""

    lo: int = Field(ge=1, le=65535, description="First port.")
    hi: int = Field(ge=1, le=65535, description="Last port (equal to lo for one port).")

    @classmethod
    def of(cls, r: PortRange) -> PortSpan:
        return cls(lo=r.lo, hi=r.hi)

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.lo <= port <= self.hi

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


class CompiledRemote(_Model):
    """A rule's peer after compilation: any address, inline CIDRs, or a named address set."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.kind == 'CIDR' ? !has(self.set) : "
                    "(self.kind == 'Set') == has(self.set) && "
                    "(!has(self.cidrs) || size(self.cidrs) == 0)",
                    "message": MSG_REMOTE_KIND,
                }
            ]
        }
    )

    kind: RemoteKind = Field(description="Any, CIDR or Set.")
    cidrs: tuple[CIDR, ...] = Field(
        default=(),
        max_length=MAX_INLINE_CIDRS,
        description="For CIDR: the networks, canonical text.",
    )
    set: RefName | None = Field(default=None, description="For Set: the CompiledAddressSet name.")

    @model_validator(mode="after")
    def _kind_matches(self) -> CompiledRemote:
        has_cidrs, has_set = bool(self.cidrs), self.set is not None
        ok = {
            RemoteKind.ANY: not has_cidrs and not has_set,
            RemoteKind.CIDR: not has_set,  # no CIDR at all matches nothing
            RemoteKind.SET: has_set and not has_cidrs,
        }
        if not ok[self.kind]:
            raise ValueError(MSG_REMOTE_KIND)
        return self

    def networks(self) -> tuple[IPNetwork, ...]:
        return tuple(ipaddress.ip_network(c) for c in self.cidrs)


class CompiledRule(_Model):
    """One rule in match order; ``id`` names its origin (``ns/rule`` or a default rule)."""

    id: str = Field(
        max_length=MAX_ID_LENGTH,
        description="Origin of the rule: namespace/name of the SecurityGroupRule.",
    )
    direction: Direction = Field(description="Ingress or Egress.")
    action: Action = Field(description="Allow or Deny.")
    priority: int = Field(ge=1, le=100, description="1-100, smaller first.")
    family: IPFamily = Field(description="IPv4 or IPv6.")
    protocol: Protocol = Field(description="TCP, UDP, ICMP, GRE or All.")
    ports: tuple[PortSpan, ...] = Field(
        default=(),
        max_length=MAX_PORT_SPANS,
        description="Merged destination port ranges; empty = all ports.",
    )
    icmp_type: int | None = Field(default=None, ge=0, le=255, description="ICMP type, if any.")
    icmp_code: int | None = Field(default=None, ge=0, le=255, description="ICMP code, if any.")
    remote: CompiledRemote = Field(description="The peer the rule matches.")
    description: str = Field(
        default="", max_length=MAX_TEXT, description="The user's description of the rule."
    )

    def sort_key(self) -> tuple[int, int, str]:
        """S-X-1: priority first, Deny before Allow at equal priority, then id for determinism."""
        return (self.priority, 0 if self.action is Action.DENY else 1, self.id)


class CompiledGroupSpec(_Model):
    """A security group's rules, sorted in match order, per direction."""

    group: ObjectKey = Field(description="The SecurityGroup this was compiled from.")
    synthesized: bool = Field(
        default=False,
        description="True for a namespace default group compiled before its object exists.",
    )
    ingress: tuple[CompiledRule, ...] = Field(
        default=(), max_length=MAX_RULES_PER_DIRECTION, description="Ingress rules in match order."
    )
    egress: tuple[CompiledRule, ...] = Field(
        default=(), max_length=MAX_RULES_PER_DIRECTION, description="Egress rules in match order."
    )
    recheck: int = Field(
        default=0,
        ge=0,
        description=(
            "Re-check counter: raised when the inbound connections of every member must be "
            "re-checked (S-CT-2); part of each member's epoch mark."
        ),
    )
    requires: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        max_length=MAX_REFERENCES,
        description=(
            "Minimum metadata.generation of the address sets ('set/<name>') the agent must "
            "have seen before applying this object: a re-check raised for a rule change is "
            "never applied against older set members."
        ),
    )

    def rules(self, direction: Direction) -> tuple[CompiledRule, ...]:
        return self.ingress if direction is Direction.INGRESS else self.egress


class CompiledAddressSetSpec(_Model):
    """Members of a remote: a security group's pod IPs or an IP address group's entries."""

    source_kind: SourceKind = Field(description="SecurityGroup or IPAddressGroup.")
    source: ObjectKey = Field(description="The object the members come from.")
    ipv4: tuple[IPv4CIDR, ...] = Field(
        default=(), max_length=MAX_SET_CIDRS, description="IPv4 members as collapsed CIDRs."
    )
    ipv6: tuple[IPv6CIDR, ...] = Field(
        default=(), max_length=MAX_SET_CIDRS, description="IPv6 members as collapsed CIDRs."
    )
    recheck: int = Field(
        default=0,
        ge=0,
        description=(
            "Re-check counter: raised with a change of members that can narrow an inbound "
            "rule naming this set (S-CT-2); part of the epoch mark of every pod whose groups "
            "name it in an inbound rule."
        ),
    )

    def networks(self, family: IPFamily) -> tuple[IPNetwork, ...]:
        items = self.ipv4 if family is IPFamily.IPV4 else self.ipv6
        return tuple(ipaddress.ip_network(c) for c in items)

    def contains(self, ip: IPAddress) -> bool:
        family = IPFamily.IPV4 if ip.version == 4 else IPFamily.IPV6
        return any(ip in n for n in self.networks(family))


class CompiledPod(_Model):
    """A managed pod on a node: its IPs, groups in sequence order, and ingress epoch."""

    namespace: Namespace = Field(description="Pod namespace.")
    name: ObjectName = Field(description="Pod name.")
    uid: str = Field(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        description="Pod UID (epochs are stamped per UID, so a new pod never reuses one).",
    )
    ips: tuple[IP, ...] = Field(
        max_length=2, description="The pod's IPs (status.podIPs), IPv4 and/or IPv6."
    )
    groups: tuple[RefName, ...] = Field(
        max_length=MAX_GROUPS_PER_POD,
        description="CompiledSecurityGroup names in the pod's sequence order (S-X-1).",
    )
    epoch: int = Field(
        default=0,
        ge=0,
        description=(
            "Ingress epoch: raised when the pod's inbound connections must be re-checked (S-CT-2)."
        ),
    )

    @property
    def key(self) -> ObjectKey:
        return ObjectKey(namespace=self.namespace, name=self.name)


class CompiledNodeSpec(_Model):
    """Everything one node's agent needs to find: its pods, and the groups and sets they use."""

    # No pattern: the CLI places unscheduled pods on a pseudo node "(unscheduled)"; the
    # API server checks the object's name, which is the node name.
    node: str = Field(max_length=253, description="Node name.")
    pods: tuple[CompiledPod, ...] = Field(
        default=(),
        max_length=MAX_PODS_PER_NODE,
        description="Managed pods, sorted by namespace/name.",
    )
    groups: tuple[RefName, ...] = Field(
        default=(),
        max_length=MAX_REFERENCES,
        description="CompiledSecurityGroup names used here, sorted.",
    )
    sets: tuple[RefName, ...] = Field(
        default=(),
        max_length=MAX_REFERENCES,
        description="CompiledAddressSet names used here, sorted.",
    )
    requires: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        max_length=2 * MAX_REFERENCES,
        description=(
            "Minimum metadata.generation of referenced objects ('group/<name>' or 'set/<name>') "
            "the agent must have seen before applying this object, so that an epoch raised for "
            "a rule or member change is never applied before that change itself."
        ),
    )


class CompiledPolicy(_Model):
    """The whole compiled state of a cluster, keyed by object name: the compiler's output."""

    groups: dict[str, CompiledGroupSpec] = Field(default_factory=dict)
    sets: dict[str, CompiledAddressSetSpec] = Field(default_factory=dict)
    nodes: dict[str, CompiledNodeSpec] = Field(default_factory=dict)

    def for_node(self, node: str) -> CompiledPolicy:
        """The slice one agent sees: its node object and the groups and sets it references."""
        spec = self.nodes.get(node, CompiledNodeSpec(node=node))
        return CompiledPolicy(
            groups={g: self.groups[g] for g in spec.groups},
            sets={s: self.sets[s] for s in spec.sets},
            nodes={node: spec},
        )


# Object envelopes, as stored on the API server (cluster-scoped).


class CompiledMeta(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="ignore", populate_by_name=True, alias_generator=to_camel
    )

    name: str
    generation: int | None = None
    resource_version: str | None = None


class CompiledSecurityGroup(_Model):
    api_version: Literal["secgroups.dev/v1alpha1"] = "secgroups.dev/v1alpha1"
    kind: Literal["CompiledSecurityGroup"] = "CompiledSecurityGroup"
    metadata: CompiledMeta
    spec: CompiledGroupSpec


class CompiledAddressSet(_Model):
    api_version: Literal["secgroups.dev/v1alpha1"] = "secgroups.dev/v1alpha1"
    kind: Literal["CompiledAddressSet"] = "CompiledAddressSet"
    metadata: CompiledMeta
    spec: CompiledAddressSetSpec


class NodeAgentStatus(_Model):
    """What the node agent last applied, reported in its node's NodeAgentReport."""

    applied_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation applied."
    )
    applied_group_revision: int | None = Field(
        default=None,
        ge=0,
        description=(
            "The resourceVersion up to which the agent had received the CompiledSecurityGroup "
            "objects of its node when it applied: a group written at or before it is enforced "
            "(the operator's realization status)."
        ),
    )
    applied_at: str | None = Field(
        default=None, max_length=64, description="When it was applied (RFC 3339)."
    )
    pods: int = Field(default=0, ge=0, description="Managed pods programmed on the node.")
    rules: int = Field(default=0, ge=0, description="nftables rules in the table.")
    set_elements: int = Field(default=0, ge=0, description="Elements in the address sets.")
    error: str | None = Field(
        default=None, max_length=32768, description="Why the last sync failed, if it did."
    )
    reason: str | None = Field(
        default=None, max_length=1024, description="CamelCase reason of the error."
    )


class CompiledNodePolicy(_Model):
    api_version: Literal["secgroups.dev/v1alpha1"] = "secgroups.dev/v1alpha1"
    kind: Literal["CompiledNodePolicy"] = "CompiledNodePolicy"
    metadata: CompiledMeta
    spec: CompiledNodeSpec


class NodeAgentReport(_Model):
    """A node agent's report of what it applied: named after the node, written by that
    node's agent only (server-side apply of the whole object), owned by the node's
    CompiledNodePolicy (deleted with it). It lives apart from the node object so that a
    report is a write of a few hundred bytes, not a rewrite of the node's whole policy,
    and so that every object has one writer: the operator the node object, the agent
    its report."""

    api_version: Literal["secgroups.dev/v1alpha1"] = "secgroups.dev/v1alpha1"
    kind: Literal["NodeAgentReport"] = "NodeAgentReport"
    metadata: CompiledMeta
    status: NodeAgentStatus = Field(default_factory=NodeAgentStatus)


def applied_nodes(
    node_objects: Iterable[Mapping[str, Any]], reports: Iterable[Mapping[str, Any]]
) -> set[str]:
    """The nodes whose agent reported (``NodeAgentReport.status.appliedGeneration``)
    applying their ``CompiledNodePolicy`` at its current generation, from the objects
    as the API server returns them."""
    applied = {
        str(r["metadata"]["name"]): (r.get("status") or {}).get("appliedGeneration")
        for r in reports
    }
    return {
        name
        for o in node_objects
        if (name := str(o["metadata"]["name"])) in applied
        and (applied[name] or 0) >= int(o["metadata"].get("generation") or 0)
    }
