"""Per-object entry points into the renderer: one group, one pod, one address set.

The planner (:mod:`secgroups_agent.planning`) caches the desired table per object, so it
needs the renderer's output for one object at a time. ``secgroups.nft.rendering`` has one
public entry point, ``render(policy, node, pod_interfaces, options)``; the functions here
render small synthetic policies and pick the objects by the names ``secgroups.nft.names``
gives them:

* the static part — ``render`` of an empty node (its sets and maps are the pod
  containers, empty);
* a group — a node whose only pod has no IP and is in that group, with the sets the
  group references emptied of members (names and declarations do not depend on them);
* a pod — the renderer's own ``pod_objects`` (its group-list chains and its elements
  of the pod containers), the one piece ``render`` composes that it also offers alone;
* the anti-spoofing elements — ``rendering.antispoof_sets`` of the node's routes;
* an address set's declarations — a probe group whose IPv4 and IPv6 rules reference it;
* member elements — built here with ``objects.element`` following the renderer's rule
  (a security group's members are single addresses in a hash set, an IP address
  group's are networks in an interval set), because the renderer has no per-element
  entry point and rendering 6,000 members to change one would defeat the purpose.

``tests/unit/test_agent_planning.py`` keeps this in step with the renderer (assembled
parts are byte-identical to ``render``); docs/agent.md lists the entry points the
renderer could offer instead, which would make this module go away.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from secgroups.compiled import (
    CompiledAddressSetSpec,
    CompiledGroupSpec,
    CompiledNodeSpec,
    CompiledPod,
    CompiledPolicy,
    CompiledRemote,
    CompiledRule,
    ObjectKey,
    RemoteKind,
    SourceKind,
)
from secgroups.models import Action, Direction, IPFamily, Protocol
from secgroups.nft import names
from secgroups.nft.elements import DataType, canonical_elements
from secgroups.nft.epochs import recheck_counters
from secgroups.nft.objects import Chain, CtTimeout, Element, Map, Ruleset, Set, TableObject, element
from secgroups.nft.rendering import (
    MAX_HASH_SET_ADDRESSES,
    RenderError,
    RenderOptions,
    antispoof_sets,
    pod_objects,
    render,
)
from secgroups.nft.statements import Family, RefKind

FAMILIES: tuple[Family, Family] = (4, 6)
Key = tuple[RefKind, str]
# Synthetic objects used to call the renderer on one part (never rendered into the table).
_PROBE_NS = "secgroups-agent"
_PROBE_GROUP = "agent:probe-group"
_PROBE_POD = CompiledPod(
    namespace=_PROBE_NS, name="probe", uid="agent-probe", ips=(), groups=(_PROBE_GROUP,)
)


def key_of(obj: TableObject) -> Key:
    if isinstance(obj, CtTimeout):
        return (RefKind.CT_TIMEOUT, obj.name)
    if isinstance(obj, Set | Map):
        return (RefKind.SET, obj.name)
    return (RefKind.CHAIN, obj.name)


@dataclass(frozen=True)
class StaticPart:
    objects: tuple[TableObject, ...]  # chains and ct timeouts that do not depend on the policy
    containers: Mapping[str, Set | Map]  # the pod sets and maps, empty
    names: frozenset[str]  # every object name of an empty node's table


@dataclass(frozen=True)
class TwinRef:
    """One family of one compiled address set, as a group's rules use it."""

    key: str
    family: Family
    name: str


@dataclass(frozen=True)
class GroupPart:
    """A group's chains (with the sub-chains of its dispatch), its port sets and dispatch
    maps, and the address-set twins its rules use."""

    chains: tuple[Chain, ...]
    sets: tuple[Set | Map, ...]
    twins: tuple[TwinRef, ...]


@dataclass(frozen=True)
class PodPart:
    """A pod's (or, as a fallback, all pods') group-list chains and container elements."""

    chains: tuple[Chain, ...]
    elements: Mapping[str, tuple[Element, ...]]  # container name -> elements


def member_cidrs(spec: CompiledAddressSetSpec, f: Family) -> tuple[str, ...]:
    return spec.ipv4 if f == 4 else spec.ipv6


def set_identity(spec: CompiledAddressSetSpec) -> tuple[SourceKind, ObjectKey]:
    """What a set's name and declaration depend on (not its members)."""
    return (spec.source_kind, spec.source)


def twin_name(key: str, spec: CompiledAddressSetSpec, f: Family) -> str:
    is_group = spec.source_kind is SourceKind.SECURITY_GROUP
    return names.address_set(key, spec.source.namespace, spec.source.name, is_group, f)


@functools.lru_cache(maxsize=65536)
def canonical_ip(ip: str) -> str:
    return str(ipaddress.ip_address(ip))


def _host_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``ipaddress.ip_address`` for canonical text, ~10x faster: 120k members are parsed
    on a cold start, and ipaddress's pure-Python parser was 80% of it (profiled)."""
    try:
        if ":" in text:
            return ipaddress.IPv6Address(int.from_bytes(socket.inet_pton(socket.AF_INET6, text)))
        return ipaddress.IPv4Address(int.from_bytes(socket.inet_pton(socket.AF_INET, text)))
    except OSError:
        return ipaddress.ip_address(text)  # not canonical: let ipaddress judge (and raise)


def cidr_elements(spec: CompiledAddressSetSpec, cidr: str) -> tuple[Element, ...]:
    """The nft elements one member CIDR of ``spec`` becomes in its twin of that family.

    Mirrors the renderer (``rendering._address_sets``): a security group's twin is a
    hash set of single addresses, an IP address group's an interval set of networks.
    Built here because the renderer has no per-element entry point; a unit test keeps
    the two in step.
    """
    if spec.source_kind is not SourceKind.SECURITY_GROUP:
        return (element(ipaddress.ip_network(cidr)),)
    if cidr.endswith(("/32", "/128")) or "/" not in cidr:  # the common case, parsed cheaply
        return (element(_host_address(cidr.partition("/")[0])),)
    net = ipaddress.ip_network(cidr)
    if net.num_addresses > MAX_HASH_SET_ADDRESSES:
        raise RenderError(f"address set member {cidr} of {spec.source} is too large")
    return tuple(element(ip) for ip in net)


def member_block(spec: CompiledAddressSetSpec, f: Family) -> tuple[int, str]:
    """(element count, the ``elements = { … }`` lines) of one twin with all its members,
    byte-identical to what the renderer's set prints (``objects.Set.lines``).

    A full plan of a big node writes 120k member addresses; building an ``Element`` per
    member cost ~5 µs and ~400 bytes each (bench/dataplane.py: most of a cold start and
    of the agent's RSS). Member lists of security groups are canonical host addresses
    (the compiler's output), so their text is the CIDR without ``/32`` (``/128``) and
    only needs checking and sorting; anything else (IP address groups, wider CIDRs,
    non-canonical text, duplicates) goes through the elements, so errors are the
    renderer's own.
    """
    cidrs = member_cidrs(spec, f)
    block = _host_block(cidrs, f) if spec.source_kind is SourceKind.SECURITY_GROUP else None
    if block is not None:
        return block
    try:
        elements = [e for c in cidrs for e in cidr_elements(spec, c)]
    except RenderError:
        raise
    except ValueError as exc:
        raise RenderError(f"address set {spec.source}: {exc}") from None
    if spec.source_kind is SourceKind.SECURITY_GROUP and len(elements) > MAX_HASH_SET_ADDRESSES:
        raise RenderError(f"address set {spec.source} has {len(elements)} IPv{f} addresses")
    dtype = DataType.IPV4_ADDR if f == 4 else DataType.IPV6_ADDR
    interval = spec.source_kind is not SourceKind.SECURITY_GROUP
    try:
        canonical = canonical_elements("twin", (dtype,), interval, elements)
    except ValueError as exc:
        raise RenderError(f"address set {spec.source}: {exc}") from None
    return len(canonical), elements_text([e.text() for e in canonical])


def elements_text(texts: list[str]) -> str:
    """``objects.Set``'s ``elements = { … }`` lines for element texts in canonical order."""
    if not texts:
        return ""
    return "\t\telements = {\n\t\t\t" + ",\n\t\t\t".join(texts) + "\n\t\t}"


def _host_block(cidrs: tuple[str, ...], f: Family) -> tuple[int, str] | None:
    """The fast path of :func:`member_block`; None when a member is not a canonical host."""
    af, suffix = (socket.AF_INET, "/32") if f == 4 else (socket.AF_INET6, "/128")
    cut = len(suffix)
    keyed: list[tuple[int, str]] = []
    append = keyed.append
    pton, ntop, from_bytes = socket.inet_pton, socket.inet_ntop, int.from_bytes
    try:
        for cidr in cidrs:
            if not cidr.endswith(suffix):
                return None
            host = cidr[:-cut]
            packed = pton(af, host)
            if ntop(af, packed) != host or (f == 6 and "." in host):
                return None  # not the renderer's text (e.g. an IPv4-mapped IPv6 address)
            append((from_bytes(packed), host))
    except OSError:
        return None
    if len(keyed) > MAX_HASH_SET_ADDRESSES:
        return None
    keyed.sort()
    if any(keyed[i][0] == keyed[i - 1][0] for i in range(1, len(keyed))):
        return None
    return len(keyed), elements_text([t for _, t in keyed])


class PartRenderer:
    """Per-object entry points, composed from ``render`` on synthetic policies."""

    def __init__(self, node: str, options: RenderOptions) -> None:
        self.node = node
        self.options = options
        self._static: StaticPart | None = None

    def _render(
        self,
        *,
        pods: tuple[CompiledPod, ...],
        groups: Mapping[str, CompiledGroupSpec],
        sets: Mapping[str, CompiledAddressSetSpec],
        interfaces: Mapping[str, str] | None = None,
    ) -> Ruleset:
        policy = CompiledPolicy(
            groups=dict(groups),
            sets=dict(sets),
            nodes={self.node: CompiledNodeSpec(node=self.node, pods=pods)},
        )
        return render(policy, self.node, interfaces or {}, self.options)

    def static(self) -> StaticPart:
        if self._static is None:
            empty = self._render(pods=(), groups={}, sets={})
            self._static = StaticPart(
                objects=(*empty.ct_timeouts, *empty.chains),
                containers={s.name: s for s in empty.sets},
                names=frozenset(o.name for o in empty.objects),
            )
        return self._static

    def group(
        self, key: str, spec: CompiledGroupSpec, sets: Mapping[str, CompiledAddressSetSpec]
    ) -> GroupPart:
        """``key``'s chains (group chains and their dispatch sub-chains), port sets and
        dispatch maps, and the set twins its rules use."""
        hollow = {
            s: sets[s].model_copy(update={"ipv4": (), "ipv6": ()})
            for s in used_sets(spec)
            if s in sets
        }
        pod = _PROBE_POD.model_copy(update={"groups": (key,)})
        rs = self._render(pods=(pod,), groups={key: spec}, sets=hollow)
        twins = {twin_name(s, hollow[s], f): (s, f) for s in hollow for f in FAMILIES}
        static = self.static().names
        owned: list[Set | Map] = []
        refs: list[TwinRef] = []
        for obj in rs.sets:
            if obj.name in static:
                continue
            if obj.name in twins:
                s, f = twins[obj.name]
                refs.append(TwinRef(s, f, obj.name))
            else:
                owned.append(obj)  # port sets, dispatch maps
        # Everything else is the group's: its two chains and their dispatch sub-chains,
        # whatever the renderer names them; only the probe pod's group-list chains are not.
        lists = {names.group_list_chain((key,), [spec.group.name], d) for d in Direction}
        chains = tuple(c for c in rs.chains if c.name not in static and c.name not in lists)
        return GroupPart(chains, tuple(owned), tuple(refs))

    def twin_skeletons(self, key: str, spec: CompiledAddressSetSpec) -> dict[Family, Set]:
        """The declarations (no elements) of both families of a compiled address set."""
        hollow = spec.model_copy(update={"ipv4": (), "ipv6": ()})
        rules = tuple(_naming_rule(f"probe-{f.value}", f, key) for f in IPFamily)
        probe = CompiledGroupSpec(group=ObjectKey(namespace=_PROBE_NS, name="probe"), ingress=rules)
        rs = self._render(pods=(_PROBE_POD,), groups={_PROBE_GROUP: probe}, sets={key: hollow})
        out: dict[Family, Set] = {}
        for f in FAMILIES:
            obj = rs.set(twin_name(key, spec, f))
            if not isinstance(obj, Set):
                raise TypeError(f"address set {obj.name} rendered as a map")
            out[f] = obj
        return out

    def pods(
        self,
        pods: tuple[CompiledPod, ...],
        groups: Mapping[str, CompiledGroupSpec],
        sets: Mapping[str, CompiledAddressSetSpec],
    ) -> PodPart:
        """The group-list chains and container elements of ``pods`` (one pod, or all):
        the renderer's ``pod_objects``, without rendering a table around them."""
        chains: list[Chain] = []
        elements: dict[str, tuple[Element, ...]] = {}
        for obj in pod_objects(groups, sets, pods):
            if isinstance(obj, Chain):
                chains.append(obj)
            elif isinstance(obj, Set | Map):
                elements[obj.name] = obj.elements
        return PodPart(tuple(chains), elements)

    def antispoof(self, interfaces: Mapping[str, str]) -> dict[str, tuple[Element, ...]]:
        """The anti-spoofing containers' elements (``rendering.antispoof_sets``) of every
        routed pod address: what ``render`` puts in them whatever the pods."""
        return {s.name: s.elements for s in antispoof_sets(interfaces)}


def mark_counters(
    key: str, spec: CompiledGroupSpec, sets: Mapping[str, CompiledAddressSetSpec]
) -> tuple[tuple[str, int], ...]:
    """What group ``key`` puts in its members' marks: its raised re-check counter and
    those of the sets it names inbound (``epochs.recheck_counters`` of the group alone)."""
    return recheck_counters((key,), {key: spec}, sets)


def _naming_rule(suffix: str, family: IPFamily, set_name: str) -> CompiledRule:
    """An inbound any-protocol Allow from ``set_name``: what makes the renderer declare the
    set (and count its re-check counter in a member's mark) in a probe policy."""
    return CompiledRule(
        id=f"{_PROBE_NS}/{suffix}",
        direction=Direction.INGRESS,
        action=Action.ALLOW,
        priority=1,
        family=family,
        protocol=Protocol.ALL,
        remote=CompiledRemote(kind=RemoteKind.SET, set=set_name),
    )


def used_sets(spec: CompiledGroupSpec) -> list[str]:
    return sorted(
        {
            r.remote.set
            for r in (*spec.ingress, *spec.egress)
            if r.remote.kind is RemoteKind.SET and r.remote.set is not None
        }
    )
