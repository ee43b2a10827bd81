"""The user-facing resources: SecurityGroup, SecurityGroupRule and IPAddressGroup.

API group ``secgroups.dev``, version ``v1alpha1``, all namespaced (docs/api.md).
These frozen pydantic models are the one copy of the schema: the CRDs in
``crds/`` are generated from them (``crdgen``), their ``x-kubernetes-validations``
(CEL) rules live beside the Python validators that enforce the same thing with
the same message, and every shell (operator, agent, CLI) parses input with them.

Neighbours: ``ports`` (S-M-3 port grammar), ``addresses`` (IP/CIDR/range
parsing), ``compiled`` (what the operator publishes), ``facts`` (the compiler's
input, built from these models plus Pods and Namespaces).
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError

from secgroups import addresses
from secgroups import ports as portspec
from secgroups.sharing import share_fields_set

GROUP = "secgroups.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Pod annotation naming the pod's groups in sequence order
# (docs/architecture.md#membership-and-scope).
GROUPS_ANNOTATION = "secgroups.dev/security-groups"
# Namespace label that puts a namespace's pods under enforcement (Helm value).
ENFORCE_LABEL = "secgroups.dev/enforce"
DEFAULT_GROUP_NAME = "default"

# DNS-1123 label (namespaces, group names used in annotations) and subdomain.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

# Messages shared by the Python validators and the CEL rules.
MSG_PORTS_PROTOCOL = "ports are allowed only when protocol is TCP or UDP"
MSG_ICMP_PROTOCOL = "icmp type/code are allowed only when protocol is ICMP"
MSG_REMOTE_ONE = "remote must set exactly one of cidr, securityGroup or ipAddressGroup"
MSG_CIDR_SYNTAX = "remote.cidr must be an IP address or a CIDR (e.g. 192.0.2.0/24, 2001:db8::/32)"
MSG_CIDR_FAMILY = (
    "remote.cidr must be of the rule's ipFamily (IPv4 rules take IPv4, IPv6 rules IPv6)"
)
MSG_GROUP_NAME = "security group names must be DNS labels (lower case, digits, '-', at most 63)"
MSG_ADDRESS_SYNTAX = (
    "each address must be an IP (192.0.2.1), a CIDR (192.0.2.0/24) or a range (192.0.2.1-192.0.2.9)"
)
MSG_ADDRESS_FAMILY = "every address must be of the group's ipFamily"
MSG_ADDRESS_DUPLICATE = "addresses must not repeat"
MSG_SELECTOR_VALUES_NEEDED = "values must be non-empty for operators In and NotIn"
MSG_SELECTOR_VALUES_FORBIDDEN = "values must be empty for operators Exists and DoesNotExist"
# The API server's words for a value of the wrong JSON type (the catalogue's shared text).
MSG_INTEGER = "must be of type integer"


def _json_integer(value: Any) -> Any:
    """What the API server takes for ``type: integer``: a JSON number without a fraction.

    ``5`` and ``5.0`` pass (as 5); ``"5"``, ``true`` and ``5.5`` do not — pydantic's lax
    mode would read the first two as 5 and 1 (docs/semantics.md, decision 12).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        got = type(value).__name__
    elif isinstance(value, float) and not value.is_integer():
        got = repr(value)
    else:
        return int(value)
    raise PydanticCustomError("int_type", MSG_INTEGER + ", got {got}", {"got": got})


# An integer field as the API server validates it (see _json_integer).
JsonInt = Annotated[int, BeforeValidator(_json_integer)]

# CEL fragments, shared by several rules below (crdgen copies the rules into crds/).


def _cel_le_search(lo: str, hi: str, a: int, b: int, bits: int) -> str:
    """CEL: IP ``lo`` <= IP ``hi`` (same family, ``bits`` long), by binary search on prefixes.

    The Kubernetes IP library cannot order addresses, and CRD CEL cannot afford to
    expand IPv6 text (no ``cel.bind``; splitting and joining strings defeats the cost
    estimator). Instead: find the longest prefix both share with ``cidr(lo/p).containsIP(hi)``
    (monotone in p), then lo <= hi iff they are equal or lo has a 0 at the first bit that
    differs. Invariant: the longest shared prefix lies in [a, b]. The search is a tree of
    ternaries, so one evaluation (and the estimated cost) follows a single path of about
    log2(bits) checks; the rule text is long but generated.
    """
    if a == b:
        if a == bits:
            return "true"
        # Bit a of lo is 0 iff lo's /a+1 block holds the network address of its /a block.
        return f"cidr({lo} + '/{a + 1}').containsIP(cidr({lo} + '/{a}').masked().ip())"
    m = (a + b + 1) // 2
    shares = f"cidr({lo} + '/{m}').containsIP({hi})"
    upper = _cel_le_search(lo, hi, m, b, bits)
    lower = _cel_le_search(lo, hi, a, m - 1, bits)
    return f"({shares} ? {upper} : {lower})"


def _cel_address_ok(a: str) -> str:
    """CEL: ``a`` is an IP, a CIDR or a range ``lo-hi`` of one family with lo <= hi.

    Mirrors ``addresses.parse_entry``. ``[v].all(x, ...)`` binds ``x`` to the string ``v``
    so that splitting ``a`` is paid for once in the cost estimate.
    """
    ordered = (
        f"(ip(lo).family() == 4 ? {_cel_le_search('lo', 'hi', 0, 32, 32)} : "
        f"{_cel_le_search('lo', 'hi', 0, 128, 128)})"
    )
    return (
        f"isIP({a}) || isCIDR({a}) || ({a}.split('-', 3).size() == 2 && "
        f"[{a}.split('-', 3)[0]].all(lo, [{a}.split('-', 3)[1]].all(hi, "
        f"isIP(lo) && isIP(hi) && ip(lo).family() == ip(hi).family() && {ordered})))"
    )


# CEL: 4 or 6, the version of the object's spec.ipFamily (defaulted before CEL runs).
_CEL_SELF_FAMILY = "(self.ipFamily == 'IPv6' ? 6 : 4)"


def _cel_address_family_is(a: str, family: str) -> str:
    """CEL: the address string ``a`` is of ``family`` (4 or 6), or too broken to tell.

    Broken entries pass here: the item rule reports them with MSG_ADDRESS_SYNTAX. A range
    counts as the family of its first address (the item rule rejects mixed ranges).
    """
    first = f"{a}.split('-', 2)[0]"
    return (
        f"(isIP({a}) ? ip({a}).family() == {family} : (isCIDR({a}) ? "
        f"cidr({a}).ip().family() == {family} : "
        f"(!isIP({first}) || ip({first}).family() == {family})))"
    )


def _cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    out: JsonDict = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


class _Model(BaseModel):
    """Base for spec models: frozen, unknown fields rejected, camelCase on the wire."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        populate_by_name=True,
        alias_generator=to_camel,
        use_enum_values=False,
    )

    def model_post_init(self, context: Any, /) -> None:
        share_fields_set(self)  # frozen: equal sets of given fields are one object


class Direction(StrEnum):
    """Ingress: traffic to the group's pods (remote = source). Egress: from them (remote = dest)."""

    INGRESS = "Ingress"
    EGRESS = "Egress"


class Action(StrEnum):
    ALLOW = "Allow"
    DENY = "Deny"


class IPFamily(StrEnum):
    IPV4 = "IPv4"
    IPV6 = "IPv6"

    @property
    def version(self) -> Literal[4, 6]:
        return 4 if self is IPFamily.IPV4 else 6


class Protocol(StrEnum):
    """S-M-2 protocols. ICMP means ICMPv6 in IPv6 rules."""

    TCP = "TCP"
    UDP = "UDP"
    ICMP = "ICMP"
    GRE = "GRE"
    ALL = "All"


# ----------------------------------------------------------------------------- metadata


class ObjectMeta(BaseModel):
    """The slice of Kubernetes ObjectMeta the product reads; other fields are ignored.

    Not validated beyond types: the API server has checked the metadata of every object
    it stores, and ``decoding.parse_manifest`` checks a manifest's as the API server
    would (``metarules``).
    """

    model_config = ConfigDict(
        frozen=True, extra="ignore", populate_by_name=True, alias_generator=to_camel
    )

    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        share_fields_set(self)  # frozen, like the _Model kinds: one set per distinct set


class LabelSelectorRequirement(_Model):
    key: str = Field(description="The label key the selector applies to.", max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the key relates to the values: In, NotIn, Exists or DoesNotExist."
    )
    values: tuple[str, ...] = Field(
        default=(),
        description="Values for In and NotIn; must be empty for Exists and DoesNotExist.",
        max_length=64,
    )

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(MSG_SELECTOR_VALUES_NEEDED)
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(MSG_SELECTOR_VALUES_FORBIDDEN)
        return self

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!(self.operator in ['In', 'NotIn']) || size(self.values) > 0",
                    MSG_SELECTOR_VALUES_NEEDED,
                    ".values",
                ),
                _cel(
                    "self.operator in ['In', 'NotIn'] || size(self.values) == 0",
                    MSG_SELECTOR_VALUES_FORBIDDEN,
                    ".values",
                ),
            ]
        }
    )


def _no_server_default(schema: JsonDict) -> None:
    """Leave the default out of the generated schema (the Python default still applies)."""
    schema.pop("default", None)


class LabelSelector(_Model):
    """A Kubernetes label selector; an empty selector selects every pod of the namespace."""

    match_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels a pod must carry, all of them."
    )
    match_expressions: tuple[LabelSelectorRequirement, ...] = Field(
        default=(),
        description="Requirements a pod's labels must meet, all of them.",
        max_length=32,
        # No `default: []` in the CRD: the API server would store an empty list that
        # `kubectl describe` shows as an empty "Match Expressions:" line.
        json_schema_extra=_no_server_default,
    )


# ----------------------------------------------------------------------------- status


# metav1.Condition lists are maps keyed by type (as in every built-in API): server-side
# apply merges one condition without clobbering the others.
_CONDITIONS_LIST: JsonDict = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


class Condition(BaseModel):
    """metav1.Condition."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel
    )

    type: str = Field(description="Condition type, e.g. Ready.", max_length=316)
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="Machine-readable CamelCase reason.", max_length=1024)
    message: str = Field(default="", description="Human-readable detail.", max_length=32768)
    last_transition_time: str = Field(description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the condition was set for."
    )


class Realization(BaseModel):
    """Where a group's current compiled rules are enforced (the node agents' reports)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel
    )

    nodes_desired: int = Field(default=0, ge=0, description="Nodes whose pods use the group.")
    nodes_realized: int = Field(
        default=0,
        ge=0,
        description=(
            "Of those, nodes whose agent has applied the group's current compiled rules "
            "and its node's latest object."
        ),
    )
    nodes: str = Field(default="0/0", max_length=32, description="nodesRealized/nodesDesired.")
    generation: int | None = Field(
        default=None,
        ge=0,
        description="metadata.generation of the CompiledSecurityGroup those nodes enforce.",
    )


class GroupStatus(BaseModel):
    """Status the operator reports on a SecurityGroup."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel
    )

    observed_generation: int | None = Field(
        default=None, description="Last generation the operator handled."
    )
    conditions: tuple[Condition, ...] = Field(
        default=(),
        description="Ready and QuotaExceeded conditions.",
        json_schema_extra=_CONDITIONS_LIST,
    )
    member_count: int | None = Field(
        default=None, description="Number of managed pods in the group."
    )
    rule_count: int | None = Field(
        default=None, description="Number of rules attached to the group."
    )
    rules_counted_towards_quota: dict[str, int] = Field(
        default_factory=dict,
        description=(
            "How many of the group's rules count towards the S-L-1 quota, per direction and "
            "IP type (ingressIPv4, ingressIPv6, egressIPv4, egressIPv6; at most 120 each): "
            "only rules with a remote security group, a remote IP address group or "
            "inconsecutive ports (a list such as 22,25,27) count, so this can be lower than "
            "ruleCount."
        ),
    )
    realization: Realization | None = Field(
        default=None,
        description=(
            "Nodes that enforce the group's current compiled rules / nodes that need them, "
            "from the node agents' reports (updated at most about once a second)."
        ),
    )


class ObjectStatus(BaseModel):
    """Status the operator reports on rules and address groups."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel
    )

    observed_generation: int | None = Field(
        default=None, description="Last generation the operator handled."
    )
    conditions: tuple[Condition, ...] = Field(
        default=(), description="Ready condition and why not.", json_schema_extra=_CONDITIONS_LIST
    )


# ----------------------------------------------------------------------------- SecurityGroup


class SecurityGroupSpec(_Model):
    """What the group is and which pods join it by label; its rules are SecurityGroupRules."""

    description: str = Field(default="", description="Free text shown by kubectl.", max_length=255)
    sequence: JsonInt = Field(
        default=100,
        ge=1,
        le=10000,
        description=(
            "Order of this group among the groups that select a pod through podSelector "
            "(lower first, then by name). Groups named in the pod annotation "
            "secgroups.dev/security-groups come first, in the order written there."
        ),
    )
    pod_selector: LabelSelector | None = Field(
        default=None,
        description=(
            "Pods of this namespace that join the group. Absent: only pods that name the group in "
            "their secgroups.dev/security-groups annotation. Empty ({}): every pod of the "
            "namespace."
        ),
    )


class SecurityGroup(_Model):
    """A named set of rules whose member pods share ingress and egress policy (S-M-1)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "self.metadata.name.size() <= 63 && "
                    f"self.metadata.name.matches('{DNS_LABEL_PATTERN}')",
                    MSG_GROUP_NAME,
                )
            ]
        }
    )

    api_version: Literal["secgroups.dev/v1alpha1"] = "secgroups.dev/v1alpha1"
    kind: Literal["SecurityGroup"] = "SecurityGroup"
    metadata: ObjectMeta
    spec: SecurityGroupSpec = Field(default_factory=SecurityGroupSpec)
    status: GroupStatus | None = None

    @field_validator("metadata")
    @classmethod
    def _name_is_label(cls, meta: ObjectMeta) -> ObjectMeta:
        if len(meta.name) > 63 or not _match(DNS_LABEL_PATTERN, meta.name):
            raise ValueError(MSG_GROUP_NAME)
        return meta


# ----------------------------------------------------------------------------- SecurityGroupRule


class ObjectRef(_Model):
    """An IPAddressGroup by name; in the rule's namespace unless given."""

    name: str = Field(
        description="Name of the referenced object.",
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
    )
    namespace: str | None = Field(
        default=None,
        description="Namespace of the referenced object; defaults to the rule's own namespace.",
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
    )


class GroupRef(_Model):
    """A SecurityGroup by name; in the rule's namespace unless given.

    Group names are DNS labels (they are listed in the pod annotation), so a reference
    that could never name a group — dots, more than 63 characters — is rejected."""

    name: str = Field(
        description="Name of the SecurityGroup (a DNS label).",
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
    )
    namespace: str | None = Field(
        default=None,
        description="Namespace of the SecurityGroup; defaults to the rule's own namespace.",
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
    )


class Remote(_Model):
    """The peer of a rule: source of ingress traffic, destination of egress traffic (S-M-4)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "(has(self.cidr) ? 1 : 0) + (has(self.securityGroup) ? 1 : 0) + "
                    "(has(self.ipAddressGroup) ? 1 : 0) == 1",
                    MSG_REMOTE_ONE,
                )
            ]
        }
    )

    cidr: str | None = Field(
        default=None,
        description="An IP address or CIDR of the rule's ipFamily, e.g. 203.0.113.0/24.",
        max_length=64,
        json_schema_extra={
            "x-kubernetes-validations": [_cel("isIP(self) || isCIDR(self)", MSG_CIDR_SYNTAX)]
        },
    )
    security_group: GroupRef | None = Field(
        default=None,
        description=(
            "A security group: the IPs of all its member pods, updated live. May be the rule's own "
            "group (members talk to each other, S-M-5)."
        ),
    )
    ip_address_group: ObjectRef | None = Field(
        default=None, description="An IPAddressGroup: its IPs, CIDRs and ranges, updated live."
    )

    @field_validator("cidr")
    @classmethod
    def _cidr_syntax(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                addresses.parse_network(value)
            except ValueError:
                raise ValueError(MSG_CIDR_SYNTAX) from None
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Remote:
        if sum(x is not None for x in (self.cidr, self.security_group, self.ip_address_group)) != 1:
            raise ValueError(MSG_REMOTE_ONE)
        return self


class ICMPMatch(_Model):
    type: JsonInt = Field(
        ge=0, le=255, description="ICMP (or ICMPv6 in IPv6 rules) type, e.g. 8 = echo request."
    )
    code: int | None = Field(
        default=None, ge=0, le=255, description="ICMP code; absent = any code."
    )

    @field_validator("code", mode="before")
    @classmethod
    def _code_is_json_integer(cls, value: Any) -> Any:
        # JsonInt inside Optional loses ge/le in the JSON schema (pydantic), hence by hand.
        return value if value is None else _json_integer(value)


class SecurityGroupRuleSpec(_Model):
    """One allow/deny rule of a security group (S-M-2)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!has(self.ports) || self.protocol in ['TCP', 'UDP']",
                    MSG_PORTS_PROTOCOL,
                    ".ports",
                ),
                _cel("!has(self.icmp) || self.protocol == 'ICMP'", MSG_ICMP_PROTOCOL, ".icmp"),
                _cel(
                    "!has(self.remote) || !has(self.remote.cidr) || "
                    "!(isIP(self.remote.cidr) || isCIDR(self.remote.cidr)) || "
                    "(isIP(self.remote.cidr) ? ip(self.remote.cidr).family() : "
                    "cidr(self.remote.cidr).ip().family()) == (self.ipFamily == 'IPv6' ? 6 : 4)",
                    MSG_CIDR_FAMILY,
                    ".remote.cidr",
                ),
            ]
        }
    )

    security_group: str = Field(
        description="Name of the SecurityGroup (same namespace) this rule belongs to.",
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
    )
    direction: Direction = Field(description="Ingress (to the group's pods) or Egress (from them).")
    action: Action = Field(
        default=Action.ALLOW, description="Allow or Deny; at equal priority Deny wins."
    )
    priority: JsonInt = Field(
        default=1, ge=1, le=100, description="1 (matched first) to 100 (matched last)."
    )
    ip_family: IPFamily = Field(
        default=IPFamily.IPV4, description="IPv4 or IPv6 (the rule's type)."
    )
    protocol: Protocol = Field(description="TCP, UDP, ICMP (ICMPv6 for IPv6 rules), GRE or All.")
    ports: str | None = Field(
        default=None,
        description=(
            "Destination ports, TCP and UDP only: 22, 80-82, 22,25,27 or 22-24,25; service names "
            "such as ssh, http, https, mysql, postgresql, redis are accepted and stored as numbers "
            "once compiled. Absent = all ports."
        ),
        max_length=portspec.PORTS_MAX_LENGTH,
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(f"self.matches('{portspec.PORTS_PATTERN}')", portspec.MSG_SYNTAX),
                _cel(
                    f"!self.matches('{portspec.PORTS_PATTERN}') || self.split(',').all(t, "
                    "!t.matches('^[0-9]') || t.split('-').all(n, int(n) >= 1 && int(n) <= 65535))",
                    portspec.MSG_BOUNDS,
                ),
                _cel(
                    f"!self.matches('{portspec.PORTS_PATTERN}') || self.split(',').all(t, "
                    "!t.matches('^[0-9]+-[0-9]+$') || "
                    "int(t.split('-')[0]) <= int(t.split('-')[1]))",
                    portspec.MSG_ORDER,
                ),
                _cel(
                    f"!self.matches('{portspec.PORTS_PATTERN}') || self.split(',').all(t, "
                    "t.matches('^[0-9]') || t in ["
                    + ", ".join(f"'{n}'" for n in sorted(portspec.NAMED_PORTS))
                    + "])",
                    portspec.MSG_NAME,
                ),
            ]
        },
    )
    icmp: ICMPMatch | None = Field(
        default=None, description="ICMP type and code, protocol ICMP only."
    )
    remote: Remote | None = Field(
        default=None,
        description=(
            "Source (ingress) or destination (egress). Absent = any address of the ipFamily."
        ),
    )
    description: str = Field(default="", description="Free text.", max_length=255)

    @field_validator("ports")
    @classmethod
    def _ports_syntax(cls, value: str | None) -> str | None:
        return None if value is None else portspec.validate_ports(value)

    @model_validator(mode="after")
    def _cross_field(self) -> SecurityGroupRuleSpec:
        if self.ports is not None and self.protocol not in (Protocol.TCP, Protocol.UDP):
            raise ValueError(MSG_PORTS_PROTOCOL)
        if self.icmp is not None and self.protocol is not Protocol.ICMP:
            raise ValueError(MSG_ICMP_PROTOCOL)
        cidr = self.remote.cidr if self.remote is not None else None
        if cidr is not None and addresses.parse_network(cidr).version != self.ip_family.version:
            raise ValueError(MSG_CIDR_FAMILY)
        return self

    def port_ranges(self) -> tuple[portspec.PortRange, ...]:
        """The merged destination port ranges; empty = all ports."""
        return () if self.ports is None else portspec.parse_ports(self.ports)


class SecurityGroupRule(_Model):
    """A rule object attached to a SecurityGroup of its namespace by spec.securityGroup."""

    api_version: Literal["secgroups.dev/v1alpha1"] = "secgroups.dev/v1alpha1"
    kind: Literal["SecurityGroupRule"] = "SecurityGroupRule"
    metadata: ObjectMeta
    spec: SecurityGroupRuleSpec
    status: ObjectStatus | None = None


# ----------------------------------------------------------------------------- IPAddressGroup


class IPAddressGroupSpec(_Model):
    """A named list of addresses used as a rule remote; edits apply live (S-M-4)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    # has(): the API server checks `default: {}` of spec against this rule
                    # without applying the nested defaults first.
                    "!has(self.addresses) || "
                    f"self.addresses.all(a, {_cel_address_family_is('a', _CEL_SELF_FAMILY)})",
                    MSG_ADDRESS_FAMILY,
                    ".addresses",
                ),
            ]
        }
    )

    description: str = Field(default="", description="Free text.", max_length=255)
    ip_family: IPFamily = Field(
        default=IPFamily.IPV4, description="IPv4 or IPv6; every address must match."
    )
    addresses: tuple[str, ...] = Field(
        default=(),
        description=(
            "IPs (192.0.2.1), CIDRs (192.0.2.0/24) or ranges (192.0.2.1-192.0.2.9), all of the "
            "group's ipFamily."
        ),
        max_length=5000,
        json_schema_extra={
            "x-kubernetes-list-type": "set",
            "items": {
                "type": "string",
                "maxLength": 90,
                "x-kubernetes-validations": [_cel(_cel_address_ok("self"), MSG_ADDRESS_SYNTAX)],
            },
        },
    )

    @field_validator("addresses")
    @classmethod
    def _each_address(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            try:
                addresses.parse_entry(value)
            except ValueError:
                raise ValueError(f"{MSG_ADDRESS_SYNTAX} (got {value!r})") from None
        if len(set(values)) != len(values):
            raise ValueError(MSG_ADDRESS_DUPLICATE)
        return values

    @model_validator(mode="after")
    def _one_family(self) -> IPAddressGroupSpec:
        for value in self.addresses:
            if addresses.parse_entry(value).version != self.ip_family.version:
                raise ValueError(f"{MSG_ADDRESS_FAMILY} (got {value!r})")
        return self

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The addresses as collapsed, sorted networks (ranges split into CIDRs)."""
        return addresses.collapse(
            nw for a in self.addresses for nw in addresses.parse_entry(a).networks()
        )


class IPAddressGroup(_Model):
    api_version: Literal["secgroups.dev/v1alpha1"] = "secgroups.dev/v1alpha1"
    kind: Literal["IPAddressGroup"] = "IPAddressGroup"
    metadata: ObjectMeta
    spec: IPAddressGroupSpec = Field(default_factory=IPAddressGroupSpec)
    status: ObjectStatus | None = None


Resource = SecurityGroup | SecurityGroupRule | IPAddressGroup
RESOURCE_KINDS: dict[str, type[SecurityGroup] | type[SecurityGroupRule] | type[IPAddressGroup]] = {
    "SecurityGroup": SecurityGroup,
    "SecurityGroupRule": SecurityGroupRule,
    "IPAddressGroup": IPAddressGroup,
}


def parse_resource(doc: dict[str, Any]) -> Resource:
    """Parse one object of our API group as the API server stores it; raise ValueError
    (pydantic's ValidationError) if invalid.

    Fields are read by their JSON names only (``securityGroup``, never ``security_group``:
    the API server knows no other). A manifest as a user writes it — with nulls, a
    status, fields the API server would reject as unknown — goes through
    ``decoding.parse_manifest`` instead, which does what the API server does first.
    """
    kind = doc.get("kind")
    if doc.get("apiVersion") != API_VERSION or kind not in RESOURCE_KINDS:
        raise ValueError(
            f"not a {API_VERSION} SecurityGroup, SecurityGroupRule or IPAddressGroup: {kind}"
        )
    return RESOURCE_KINDS[kind].model_validate(doc, by_alias=True, by_name=False)


def _match(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern.strip("^$"), value) is not None
