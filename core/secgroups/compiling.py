"""The compiler: cluster facts → compiled per-group, per-set and per-node objects.

Pure and deterministic: the same facts in any order give byte-identical output,
so an operator restart rewrites nothing. Steps:

1. ``membership.resolve`` — managed pods and their group sequences (DESIGN.md §2);
2. each group in use → its rules in match order (S-X-1: priority, Deny before
   Allow, then rule id), remotes reduced to inline CIDRs or address-set references;
   a namespace's ``default`` group is synthesized with the S-D-1 rules until its
   object exists;
3. each remote used by a rule → one address set shared by every rule that uses it:
   a group's member pod IPs, or an IP address group's entries as CIDRs;
4. each node → its managed pods with IPs, group lists and ingress epochs.

Problems that do not stop compilation (a rule naming a missing group, quota
overruns, …) are returned beside the result; ``quotas`` explains the limits.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from secgroups import naming
from secgroups.addresses import IPNetwork, collapse
from secgroups.compiled import (
    CompiledAddressSetSpec,
    CompiledGroupSpec,
    CompiledNodeSpec,
    CompiledPod,
    CompiledPolicy,
    CompiledRemote,
    CompiledRule,
    ObjectKey,
    PortSpan,
    RemoteKind,
    SourceKind,
)
from secgroups.facts import ClusterFacts
from secgroups.membership import GroupKey, Memberships, PodKey, Scope, group_index, resolve
from secgroups.models import (
    DEFAULT_GROUP_NAME,
    Action,
    Direction,
    IPAddressGroup,
    IPFamily,
    Protocol,
    SecurityGroupRule,
)


class Severity(StrEnum):
    WARNING = "Warning"
    ERROR = "Error"


@dataclass(frozen=True, order=True)
class Problem:
    """Something wrong with the input that compilation worked around; shown in status and lint."""

    kind: str
    namespace: str
    name: str
    severity: Severity
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity} {self.kind} {self.namespace}/{self.name}: {self.message}"


@dataclass(frozen=True)
class CompileOptions:
    scope: Scope = field(default_factory=Scope)
    # Ingress epochs of pods, kept by the operator from one compilation to the next
    # (S-CT-2 clearing, DESIGN.md §4). Pods not listed get epoch 0.
    epochs: Mapping[PodKey, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Compilation:
    policy: CompiledPolicy
    memberships: Memberships
    problems: tuple[Problem, ...]


def default_rules(namespace: str) -> tuple[CompiledRule, ...]:
    """S-D-1: ingress from the default group itself, egress to anywhere; IPv4 and IPv6."""
    own_set = naming.sg_set_name(namespace, DEFAULT_GROUP_NAME)
    out: list[CompiledRule] = []
    for family in IPFamily:
        suffix = family.value.lower()
        out.append(
            CompiledRule(
                id=f"{namespace}/{DEFAULT_GROUP_NAME}:ingress-{suffix}",
                direction=Direction.INGRESS,
                action=Action.ALLOW,
                priority=1,
                family=family,
                protocol=Protocol.ALL,
                remote=CompiledRemote(kind=RemoteKind.SET, set=own_set),
                description="default group: members talk to each other (S-D-1)",
            )
        )
        out.append(
            CompiledRule(
                id=f"{namespace}/{DEFAULT_GROUP_NAME}:egress-{suffix}",
                direction=Direction.EGRESS,
                action=Action.ALLOW,
                priority=1,
                family=family,
                protocol=Protocol.ALL,
                remote=CompiledRemote(kind=RemoteKind.ANY),
                description="default group: all outbound traffic (S-D-1)",
            )
        )
    return tuple(out)


def _remote_of(
    rule: SecurityGroupRule, namespace: str
) -> tuple[CompiledRemote, tuple[str, GroupKey] | None]:
    """The compiled remote, and the (kind, key) of the address set it needs, if any."""
    remote = rule.spec.remote
    if remote is None:
        return CompiledRemote(kind=RemoteKind.ANY), None
    if remote.cidr is not None:
        net = ipaddress.ip_network(remote.cidr, strict=False)
        return CompiledRemote(kind=RemoteKind.CIDR, cidrs=(str(net),)), None
    if remote.security_group is not None:
        ref = remote.security_group
        key = (ref.namespace or namespace, ref.name)
        name = naming.sg_set_name(*key)
        return CompiledRemote(kind=RemoteKind.SET, set=name), (SourceKind.SECURITY_GROUP, key)
    assert remote.ip_address_group is not None
    ref = remote.ip_address_group
    key = (ref.namespace or namespace, ref.name)
    name = naming.ipag_set_name(*key)
    return CompiledRemote(kind=RemoteKind.SET, set=name), (SourceKind.IP_ADDRESS_GROUP, key)


def compile_rule(rule: SecurityGroupRule) -> tuple[CompiledRule, tuple[str, GroupKey] | None]:
    """One SecurityGroupRule → its compiled form and the address set it needs."""
    namespace = rule.metadata.namespace or "default"
    spec = rule.spec
    remote, needed = _remote_of(rule, namespace)
    compiled = CompiledRule(
        id=f"{namespace}/{rule.metadata.name}",
        direction=spec.direction,
        action=spec.action,
        priority=spec.priority,
        family=spec.ip_family,
        protocol=spec.protocol,
        ports=tuple(PortSpan.of(r) for r in spec.port_ranges()),
        icmp_type=spec.icmp.type if spec.icmp else None,
        icmp_code=spec.icmp.code if spec.icmp else None,
        remote=remote,
        description=spec.description,
    )
    return compiled, needed


def _sorted_split(
    rules: Iterable[CompiledRule],
) -> tuple[tuple[CompiledRule, ...], tuple[CompiledRule, ...]]:
    ordered = sorted(rules, key=CompiledRule.sort_key)
    return (
        tuple(r for r in ordered if r.direction is Direction.INGRESS),
        tuple(r for r in ordered if r.direction is Direction.EGRESS),
    )


def _member_networks(ips: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    nets: list[IPNetwork] = [ipaddress.ip_network(ip) for ip in ips]
    merged = collapse(nets)
    return (
        tuple(str(n) for n in merged if n.version == 4),
        tuple(str(n) for n in merged if n.version == 6),
    )


def compile_policy(facts: ClusterFacts, options: CompileOptions | None = None) -> Compilation:
    """Compile the whole cluster (see the module docstring for the steps)."""
    options = options or CompileOptions()
    problems: list[Problem] = []
    ms = resolve(facts, options.scope)
    for pod_key, missing in ms.unknown_annotated.items():
        problems.append(
            Problem(
                "Pod",
                *pod_key,
                Severity.WARNING,
                "UnknownGroup",
                f"annotation names unknown security group(s): {', '.join(missing)}",
            )
        )
    groups = group_index(facts)
    members = ms.members()
    rules_of: dict[GroupKey, list[SecurityGroupRule]] = {}
    for rule in facts.rules:
        key = (rule.metadata.namespace or "default", rule.spec.security_group)
        rules_of.setdefault(key, []).append(rule)

    compiled_groups: dict[str, CompiledGroupSpec] = {}
    needed_sets: dict[str, tuple[str, GroupKey]] = {}
    for gkey in sorted(members):
        gname = naming.compiled_group_name(*gkey)
        if gkey not in groups and gkey[1] == DEFAULT_GROUP_NAME:
            compiled = list(default_rules(gkey[0]))
            needed_sets[naming.sg_set_name(*gkey)] = (SourceKind.SECURITY_GROUP, gkey)
            synthesized = True
        else:
            compiled = []
            synthesized = False
            for rule in rules_of.get(gkey, ()):
                crule, needed = compile_rule(rule)
                compiled.append(crule)
                if needed is not None and crule.remote.set is not None:
                    needed_sets[crule.remote.set] = needed
        ingress, egress = _sorted_split(compiled)
        compiled_groups[gname] = CompiledGroupSpec(
            group=ObjectKey(namespace=gkey[0], name=gkey[1]),
            synthesized=synthesized,
            ingress=ingress,
            egress=egress,
        )

    ipags = {(a.metadata.namespace or "default", a.metadata.name): a for a in facts.address_groups}
    compiled_sets: dict[str, CompiledAddressSetSpec] = {}
    for set_name, (kind, key) in sorted(needed_sets.items()):
        compiled_sets[set_name] = _compile_set(kind, key, ms, groups, ipags, problems)

    compiled_nodes = _compile_nodes(facts, ms, compiled_groups, options)
    policy = CompiledPolicy(groups=compiled_groups, sets=compiled_sets, nodes=compiled_nodes)
    return Compilation(policy=policy, memberships=ms, problems=tuple(sorted(set(problems))))


def _compile_set(
    kind: str,
    key: GroupKey,
    ms: Memberships,
    groups: Mapping[GroupKey, object],
    ipags: Mapping[GroupKey, IPAddressGroup],
    problems: list[Problem],
) -> CompiledAddressSetSpec:
    source = ObjectKey(namespace=key[0], name=key[1])
    if kind == SourceKind.SECURITY_GROUP:
        if key not in groups and key[1] != DEFAULT_GROUP_NAME:
            problems.append(
                Problem(
                    "SecurityGroup",
                    *key,
                    Severity.WARNING,
                    "RemoteNotFound",
                    "used as a rule remote but does not exist; the rule matches nothing",
                )
            )
        ips = [ip for pod in ms.members().get(key, ()) for ip in ms.pods[pod].ips]
        v4, v6 = _member_networks(ips)
        return CompiledAddressSetSpec(
            source_kind=SourceKind.SECURITY_GROUP, source=source, ipv4=v4, ipv6=v6
        )
    ipag = ipags.get(key)
    if ipag is None:
        problems.append(
            Problem(
                "IPAddressGroup",
                *key,
                Severity.WARNING,
                "RemoteNotFound",
                "used as a rule remote but does not exist; the rule matches nothing",
            )
        )
        nets: tuple[IPNetwork, ...] = ()
    else:
        nets = ipag.spec.networks()
    return CompiledAddressSetSpec(
        source_kind=SourceKind.IP_ADDRESS_GROUP,
        source=source,
        ipv4=tuple(str(n) for n in nets if n.version == 4),
        ipv6=tuple(str(n) for n in nets if n.version == 6),
    )


def _compile_nodes(
    facts: ClusterFacts,
    ms: Memberships,
    compiled_groups: Mapping[str, CompiledGroupSpec],
    options: CompileOptions,
) -> dict[str, CompiledNodeSpec]:
    pods_on: dict[str, list[CompiledPod]] = {n: [] for n in facts.nodes}
    for key, pod in ms.pods.items():
        if pod.node is None or not pod.ips:
            continue
        ips = sorted((ipaddress.ip_address(i) for i in pod.ips), key=lambda a: (a.version, a))
        pods_on.setdefault(pod.node, []).append(
            CompiledPod(
                namespace=pod.namespace,
                name=pod.name,
                uid=pod.effective_uid,
                ips=tuple(str(i) for i in ips),
                groups=tuple(naming.compiled_group_name(*g) for g in ms.groups_of[key]),
                epoch=options.epochs.get(key, 0),
            )
        )
    out: dict[str, CompiledNodeSpec] = {}
    for node in sorted(pods_on):
        pods = sorted(pods_on[node], key=lambda p: (p.namespace, p.name))
        group_names = sorted({g for p in pods for g in p.groups})
        set_names = sorted(
            {
                r.remote.set
                for g in group_names
                for r in (*compiled_groups[g].ingress, *compiled_groups[g].egress)
                if r.remote.set is not None
            }
        )
        out[node] = CompiledNodeSpec(
            node=node, pods=tuple(pods), groups=tuple(group_names), sets=tuple(set_names)
        )
    return out
