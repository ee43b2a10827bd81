"""The compiler: cluster facts → compiled per-group, per-set and per-node objects.

Pure and deterministic: the same facts in any order give byte-identical output,
so an operator restart rewrites nothing. Steps:

1. ``membership.resolve`` — managed pods and their group sequences
   (docs/architecture.md#membership-and-scope);
2. each group in use → its rules in match order (S-X-1: priority, Deny before
   Allow, then rule id), remotes reduced to inline CIDRs or address-set references;
   a namespace's ``default`` group is synthesized with the S-D-1 rules until its
   object exists;
3. each remote used by a rule → one address set shared by every rule that uses it:
   a group's member pod IPs, or an IP address group's entries as CIDRs;
4. each node → its managed pods with IPs, group lists and ingress epochs.

Problems that do not stop compilation (a rule naming a missing group, a remote
that does not exist, an annotation naming an unknown group, a group in use with more
rules than one compiled group holds) are returned beside the result; quota overruns
are ``quotas.account``'s job.

A group in use that the compiled models refuse (more than
``compiled.MAX_RULES_PER_DIRECTION`` rules in one direction) is left out, exactly as
``incremental`` leaves out what its ``failures()`` report: no compiled group, no
address sets for its rules, while its pods' node entries still name it (agents skip a
group they do not have). It is reported ``TooManyRules`` in the admission webhook's
words (``quotas.too_many_rules_error``), for every group over
``quotas.MAX_RULES_PER_GROUP`` rules, which the operator does not publish either
(docs/architecture.md, "Limits").

A compiled group or address set whose JSON is over ``quotas.MAX_COMPILED_OBJECT_BYTES``
is not published either (the operator holds it and reports ``TooLarge`` on its owner):
:func:`too_large_problems` reports it on the owning SecurityGroup or IPAddressGroup in
the operator's words (``quotas.too_large_error``), measured on the same JSON text
(``quotas.spec_text``). A group too large is held as one with too many rules is; an
address set too large has reason ``SetTooLarge`` here (the operator says ``TooLarge``
on the owner too), so that its group's own rules are not taken for held.

The per-object steps are public functions (``compile_rule``, ``compile_group``,
``compile_group_set``, ``compile_ipag_set``, ``compile_pod``, ``compile_node``) so
that ``incremental`` builds byte-identical objects from the same code.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from secgroups import naming, quotas
from secgroups.addresses import collapse_entries, collapse_host_keys, host_key
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
from secgroups.facts import ClusterFacts, PodFacts
from secgroups.membership import (
    GroupKey,
    Memberships,
    PodKey,
    Scope,
    group_index,
    missing_groups_note,
    resolve,
)
from secgroups.models import (
    DEFAULT_GROUP_NAME,
    Action,
    Direction,
    IPAddressGroup,
    IPFamily,
    Protocol,
    Remote,
    SecurityGroupRule,
)
from secgroups.ports import parse_ports


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
    # (S-CT-2 clearing, docs/architecture.md#existing-connections-epochs). Pods not listed
    # get epoch 0.
    epochs: Mapping[PodKey, int] = field(default_factory=dict)
    # Re-check counters of compiled groups and address sets, by object name (the same
    # S-CT-2 clearing for all members of a group, or all users of a set, in one object).
    group_rechecks: Mapping[str, int] = field(default_factory=dict)
    set_rechecks: Mapping[str, int] = field(default_factory=dict)


# The user object an address set is made from: a security group or an IP address group.
SetSource = tuple[SourceKind, GroupKey]


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


# Rules share few distinct remotes and port texts (each remote group is named by many
# rules): memoising their compiled forms took a third off compile_rule. Both caches hold
# frozen values only.
@functools.lru_cache(maxsize=1 << 14)
def _remote_of(remote: Remote | None, namespace: str) -> tuple[CompiledRemote, SetSource | None]:
    """The compiled remote, and the (kind, key) of the address set it needs, if any."""
    if remote is None:
        return CompiledRemote(kind=RemoteKind.ANY), None
    if remote.cidr is not None:
        net = ipaddress.ip_network(remote.cidr, strict=False)
        return CompiledRemote(kind=RemoteKind.CIDR, cidrs=(str(net),)), None
    if remote.security_group is not None:
        sg = remote.security_group
        key = (sg.namespace or namespace, sg.name)
        name = naming.sg_set_name(*key)
        return CompiledRemote(kind=RemoteKind.SET, set=name), (SourceKind.SECURITY_GROUP, key)
    assert remote.ip_address_group is not None
    ref = remote.ip_address_group
    key = (ref.namespace or namespace, ref.name)
    name = naming.ipag_set_name(*key)
    return CompiledRemote(kind=RemoteKind.SET, set=name), (SourceKind.IP_ADDRESS_GROUP, key)


def rule_group(rule: SecurityGroupRule) -> GroupKey:
    """The (namespace, name) of the security group a rule is attached to."""
    return (rule.metadata.namespace or "default", rule.spec.security_group)


@functools.lru_cache(maxsize=1 << 12)
def _port_spans(text: str | None) -> tuple[PortSpan, ...]:
    return () if text is None else tuple(PortSpan.of(r) for r in parse_ports(text))


def compile_rule(rule: SecurityGroupRule) -> tuple[CompiledRule, SetSource | None]:
    """One SecurityGroupRule → its compiled form and the address set it needs."""
    namespace = rule.metadata.namespace or "default"
    spec = rule.spec
    remote, needed = _remote_of(spec.remote, namespace)
    compiled = CompiledRule(
        id=f"{namespace}/{rule.metadata.name}",
        direction=spec.direction,
        action=spec.action,
        priority=spec.priority,
        family=spec.ip_family,
        protocol=spec.protocol,
        ports=_port_spans(spec.ports),
        icmp_type=spec.icmp.type if spec.icmp else None,
        icmp_code=spec.icmp.code if spec.icmp else None,
        remote=remote,
        description=spec.description,
    )
    return compiled, needed


def compile_group(
    key: GroupKey,
    rules: Iterable[tuple[CompiledRule, SetSource | None]] | None,
    recheck: int = 0,
) -> tuple[CompiledGroupSpec, dict[str, SetSource]]:
    """A group in use → its compiled spec and the address sets its rules reference.

    ``rules`` are the group's compiled rules (``compile_rule``), in any order; ``None``
    means the group has no object, which for a namespace's ``default`` group means the
    S-D-1 rules are synthesized. ``recheck`` is its re-check counter.
    """
    sources: dict[str, SetSource] = {}
    if rules is None:
        compiled = list(default_rules(key[0]))
        sources[naming.sg_set_name(*key)] = (SourceKind.SECURITY_GROUP, key)
    else:
        compiled = []
        for crule, needed in rules:
            compiled.append(crule)
            if needed is not None and crule.remote.set is not None:
                sources[crule.remote.set] = needed
    ordered = sorted(compiled, key=CompiledRule.sort_key)
    spec = CompiledGroupSpec(
        group=ObjectKey(namespace=key[0], name=key[1]),
        synthesized=rules is None,
        ingress=tuple(r for r in ordered if r.direction is Direction.INGRESS),
        egress=tuple(r for r in ordered if r.direction is Direction.EGRESS),
        recheck=recheck,
    )
    return spec, sources


def host_networks(ips: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Pod IPs → collapsed IPv4 and IPv6 CIDRs, each sorted (as ``addresses.collapse``)."""
    return collapse_host_keys(host_key(ip) for ip in ips)


def compile_group_set(
    key: GroupKey, member_ips: Iterable[str], recheck: int = 0
) -> CompiledAddressSetSpec:
    """The address set of security group ``key``: its member pods' IPs."""
    v4, v6 = host_networks(member_ips)
    return CompiledAddressSetSpec(
        source_kind=SourceKind.SECURITY_GROUP,
        source=ObjectKey(namespace=key[0], name=key[1]),
        ipv4=v4,
        ipv6=v6,
        recheck=recheck,
    )


def compile_ipag_set(
    key: GroupKey, ipag: IPAddressGroup | None, recheck: int = 0
) -> CompiledAddressSetSpec:
    """The address set of IP address group ``key`` (empty when it does not exist)."""
    v4, v6 = collapse_entries(() if ipag is None else ipag.spec.addresses)
    return CompiledAddressSetSpec(
        source_kind=SourceKind.IP_ADDRESS_GROUP,
        source=ObjectKey(namespace=key[0], name=key[1]),
        ipv4=v4,
        ipv6=v6,
        recheck=recheck,
    )


def compile_pod(pod: PodFacts, groups: Iterable[GroupKey], epoch: int) -> CompiledPod | None:
    """A managed pod's entry in its node object; None while it has no node or no IP."""
    if pod.node is None or not pod.ips:
        return None
    ips = sorted({host_key(i) for i in pod.ips})
    return CompiledPod(
        namespace=pod.namespace,
        name=pod.name,
        uid=pod.effective_uid,
        ips=tuple(text for _, _, text, _ in ips),
        groups=tuple(naming.compiled_group_name(*g) for g in groups),
        epoch=epoch,
    )


def compile_node(
    node: str, pods: Iterable[CompiledPod], group_sets: Mapping[str, Iterable[str]]
) -> CompiledNodeSpec:
    """One node's object: its pods sorted, the groups they use and the sets those reference.

    ``group_sets`` maps each compiled group name to the address-set names its rules use.
    """
    ordered = sorted(pods, key=lambda p: (p.namespace, p.name))
    group_names = sorted({g for p in ordered for g in p.groups})
    set_names = sorted({s for g in group_names for s in group_sets.get(g, ())})
    return CompiledNodeSpec(
        node=node, pods=tuple(ordered), groups=tuple(group_names), sets=tuple(set_names)
    )


def unknown_group_problem(pod: PodKey, missing: Iterable[str]) -> Problem:
    return Problem(
        "Pod",
        *pod,
        Severity.WARNING,
        "UnknownGroup",
        missing_groups_note(missing),
    )


def too_many_rules_problem(group: GroupKey, count: int) -> Problem:
    """A group in use with more rules than one compiled group holds: the operator holds it
    (never published, or its last published form kept) and the webhook refuses the rule
    that would make it so, in these words."""
    return Problem(
        "SecurityGroup",
        *group,
        Severity.ERROR,
        "TooManyRules",
        quotas.too_many_rules_error(group, count),
    )


def too_large_problems(
    groups: Iterable[CompiledGroupSpec],
    sets: Iterable[CompiledAddressSetSpec],
    skip: Iterable[GroupKey] = (),
) -> list[Problem]:
    """Compiled groups and address sets too large to publish, each as a problem of its
    owner (module docstring). ``skip``: groups already held for too many rules (the
    operator checks that first and reports only it)."""
    skipped = set(skip)
    out: list[Problem] = []
    for spec in groups:
        key = (spec.group.namespace, spec.group.name)
        if key not in skipped and (error := quotas.too_large_error(len(quotas.spec_text(spec)))):
            out.append(Problem("SecurityGroup", *key, Severity.ERROR, "TooLarge", error))
    for aset in sets:
        if error := quotas.too_large_error(len(quotas.spec_text(aset))):
            kind = (
                "SecurityGroup"
                if aset.source_kind is SourceKind.SECURITY_GROUP
                else "IPAddressGroup"
            )
            source = (aset.source.namespace, aset.source.name)
            out.append(Problem(kind, *source, Severity.ERROR, "SetTooLarge", error))
    return out


# Problems of a group in use that the operator does not publish (module docstring).
HELD_REASONS = frozenset({"TooManyRules", "CannotCompile", "TooLarge"})


def held_groups(problems: Iterable[Problem]) -> dict[GroupKey, str]:
    """Groups in use that the operator holds, from a compilation's problems, with why."""
    return {
        (p.namespace, p.name): p.message
        for p in problems
        if p.kind == "SecurityGroup" and p.reason in HELD_REASONS
    }


def uncompilable_group_problem(group: GroupKey, count: int, error: ValueError) -> Problem:
    """A group in use that the compiled models refuse: :func:`too_many_rules_problem`
    when it has too many rules (the only way a valid group can be refused today)."""
    if count > quotas.MAX_RULES_PER_GROUP:
        return too_many_rules_problem(group, count)
    text = " ".join(str(error).split())[:500]  # as incremental's failures() keep it
    return Problem(
        "SecurityGroup", *group, Severity.ERROR, "CannotCompile", f"cannot be compiled: {text}"
    )


def orphan_rule_problem(rule: SecurityGroupRule) -> Problem:
    """A rule attached to a group that has no object: it has no effect (yet)."""
    group = rule.spec.security_group
    if group == DEFAULT_GROUP_NAME:
        message = (
            f"security group {DEFAULT_GROUP_NAME} has no object yet: its synthesized S-D-1 "
            "rules apply and this rule has no effect until the object is created"
        )
    else:
        message = f"security group {group} does not exist; the rule has no effect"
    return Problem(
        "SecurityGroupRule",
        rule.metadata.namespace or "default",
        rule.metadata.name,
        Severity.WARNING,
        "GroupNotFound",
        message,
    )


def missing_remote_problem(source: SetSource) -> Problem:
    kind, key = source
    return Problem(
        "SecurityGroup" if kind is SourceKind.SECURITY_GROUP else "IPAddressGroup",
        *key,
        Severity.WARNING,
        "RemoteNotFound",
        "used as a rule remote but does not exist; the rule matches nothing",
    )


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector for a large, cycle-free computation.

    A compile allocates hundreds of thousands of objects that survive (the result)
    and creates no reference cycles, so the collector finds nothing to free; but the
    allocations trigger one or two full collections that walk the whole heap (the
    facts: ~500,000 objects in bench/compile.py), which measured 0.5-0.9 s of a
    1.5-2 s compile. Reference counting still frees everything as usual. Nests and
    leaves a collector disabled by the caller disabled.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def compile_policy(facts: ClusterFacts, options: CompileOptions | None = None) -> Compilation:
    """Compile the whole cluster (see the module docstring for the steps)."""
    with gc_paused():
        return _compile_policy(facts, options or CompileOptions())


def _compile_policy(facts: ClusterFacts, options: CompileOptions) -> Compilation:
    ms = resolve(facts, options.scope)
    problems = [unknown_group_problem(p, missing) for p, missing in ms.unknown_annotated.items()]
    groups = group_index(facts)
    members = ms.members()
    rules_of: dict[GroupKey, list[SecurityGroupRule]] = defaultdict(list)
    for rule in facts.rules:
        gkey = rule_group(rule)
        rules_of[gkey].append(rule)
        if gkey not in groups:
            problems.append(orphan_rule_problem(rule))

    compiled_groups: dict[str, CompiledGroupSpec] = {}
    group_sets: dict[str, tuple[str, ...]] = {}
    needed_sets: dict[str, SetSource] = {}
    too_many: list[GroupKey] = []
    for gkey in members:
        gname = naming.compiled_group_name(*gkey)
        recheck = options.group_rechecks.get(gname, 0)
        if gkey not in groups and gkey[1] == DEFAULT_GROUP_NAME:
            spec, sources = compile_group(gkey, None, recheck)
        else:
            attached = rules_of.get(gkey, ())
            try:
                rules = [compile_rule(r) for r in attached]
                spec, sources = compile_group(gkey, rules, recheck)
            except ValueError as exc:  # the compiled models refuse it: left out (module doc)
                problems.append(uncompilable_group_problem(gkey, len(attached), exc))
                continue
            if len(attached) > quotas.MAX_RULES_PER_GROUP:
                problems.append(too_many_rules_problem(gkey, len(attached)))
                too_many.append(gkey)
        compiled_groups[gname] = spec
        group_sets[gname] = tuple(sources)
        needed_sets.update(sources)

    ipags = {(a.metadata.namespace or "default", a.metadata.name): a for a in facts.address_groups}
    compiled_sets: dict[str, CompiledAddressSetSpec] = {}
    for set_name, source in sorted(needed_sets.items()):
        kind, key = source
        if kind is SourceKind.SECURITY_GROUP:
            if key not in groups and key[1] != DEFAULT_GROUP_NAME:
                problems.append(missing_remote_problem(source))
            ips = [ip for pod in members.get(key, ()) for ip in ms.pods[pod].ips]
            compiled_sets[set_name] = compile_group_set(
                key, ips, options.set_rechecks.get(set_name, 0)
            )
        else:
            if key not in ipags:
                problems.append(missing_remote_problem(source))
            compiled_sets[set_name] = compile_ipag_set(
                key, ipags.get(key), options.set_rechecks.get(set_name, 0)
            )
    problems.extend(too_large_problems(compiled_groups.values(), compiled_sets.values(), too_many))

    pods_on: dict[str, list[CompiledPod]] = {n: [] for n in facts.nodes}
    for pkey, pod in ms.pods.items():
        cpod = compile_pod(pod, ms.groups_of[pkey], options.epochs.get(pkey, 0))
        if cpod is not None:
            pods_on.setdefault(pod.node or "", []).append(cpod)
    compiled_nodes = {
        node: compile_node(node, pods, group_sets) for node, pods in sorted(pods_on.items())
    }
    policy = CompiledPolicy(
        groups=dict(sorted(compiled_groups.items())), sets=compiled_sets, nodes=compiled_nodes
    )
    return Compilation(policy=policy, memberships=ms, problems=tuple(sorted(set(problems))))
