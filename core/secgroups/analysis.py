"""What-if analysis over cluster facts: a pod's groups and effective rules with provenance,
a connection traced group by group, and rules shadowed by an earlier rule.

Pure, like the rest of the core; the CLI (``kubectl secgroups explain/trace/matrix``)
and ``linting`` are its users. It adds no semantics of its own: group order comes from
``membership``, rules and remotes from ``compiling``, verdicts from ``evaluating``.
What it adds is the *why* — which annotation or selector put a pod in a group, what a
remote stands for right now, and which groups were looked at before one decided.

One reading of the input is decided here: a pod read from files may have IPs but no
``spec.nodeName`` (nobody scheduled it). Such pods are placed on the pseudo-node
:data:`UNSCHEDULED_NODE` so that the evaluator, which finds pods through the per-node
compiled objects, sees them; the node never changes a verdict the CLI shows.

Verdicts are those of the policy as the operator publishes it: a group in use that it
holds (more rules than one compiled group holds, or a compiled form too large to
publish: ``compiling.held_groups``) is absent, so agents skip it and so do the
evaluator, ``explain`` and ``trace``, which say why.
``lint`` still looks at the held group's rules (what-if, :meth:`PolicyView.compiled_group`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

from secgroups import naming, selectors
from secgroups.addresses import IPAddress
from secgroups.compiled import (
    CompiledGroupSpec,
    CompiledPolicy,
    CompiledRule,
    ObjectKey,
    RemoteKind,
)
from secgroups.compiling import (
    Compilation,
    CompileOptions,
    compile_policy,
    compile_rule,
    held_groups,
)
from secgroups.evaluating import DirectionVerdict, Evaluator, Packet, Verdict
from secgroups.facts import ClusterFacts, PodFacts
from secgroups.membership import (
    FINISHED_PHASES,
    GroupKey,
    PodKey,
    Scope,
    enforced_namespaces,
    group_index,
    missing_groups_note,
)
from secgroups.models import (
    DEFAULT_GROUP_NAME,
    GROUPS_ANNOTATION,
    Direction,
    IPAddressGroup,
    IPFamily,
    SecurityGroup,
    SecurityGroupRule,
)
from secgroups.shadowing import Shadowing, covers, shadowed

UNSCHEDULED_NODE = "(unscheduled)"


class Why(StrEnum):
    """How a pod came to be in a group (docs/architecture.md#membership-and-scope)."""

    ANNOTATION = "annotation"
    SELECTOR = "selector"
    DEFAULT = "default"


@dataclass(frozen=True)
class GroupMembership:
    """One of a pod's groups, at ``position`` (1 = matched first), and why it is there."""

    group: GroupKey
    position: int
    why: Why
    detail: str
    exists: bool  # False for a default group synthesized before its object exists
    held: str = ""  # why the operator does not publish it ('' when it does): it is skipped


class RemoteType(StrEnum):
    ANY = "any"
    CIDR = "cidr"
    SECURITY_GROUP = "securityGroup"
    IP_ADDRESS_GROUP = "ipAddressGroup"


@dataclass(frozen=True)
class ResolvedRemote:
    """What a rule's remote stands for now, in the rule's family.

    ``networks`` are the CIDRs matched (for a group: its members' IPs); ``members`` the
    member pods of a remote group; ``entries`` an IP address group's entries as written.
    """

    type: RemoteType
    family: IPFamily
    ref: GroupKey | None = None
    exists: bool = True
    networks: tuple[str, ...] = ()
    members: tuple[PodKey, ...] = ()
    entries: tuple[str, ...] = ()

    def __str__(self) -> str:
        any_net = "0.0.0.0/0" if self.family is IPFamily.IPV4 else "::/0"
        if self.type is RemoteType.ANY:
            return f"any ({any_net})"
        if self.type is RemoteType.CIDR:
            return ",".join(self.networks)
        assert self.ref is not None
        ref = f"{self.ref[0]}/{self.ref[1]}"
        if self.type is RemoteType.SECURITY_GROUP:
            if not self.exists:
                return f"group {ref} (missing: matches nothing)"
            n = len(self.members)
            return f"group {ref} ({n} member{'s' if n != 1 else ''})"
        if not self.exists:
            return f"address group {ref} (missing: matches nothing)"
        return f"address group {ref} ({', '.join(self.entries) or 'empty'})"


@dataclass(frozen=True)
class EffectiveRule:
    """A rule as it applies to one pod: ``index`` is its place in the pod's match order."""

    index: int
    group: GroupKey
    group_position: int
    rule: CompiledRule
    remote: ResolvedRemote

    @property
    def name(self) -> str:
        """The SecurityGroupRule name (or ``default:ingress-ipv4`` for a synthesized rule)."""
        return rule_name(self.rule)


@dataclass(frozen=True)
class PodPolicy:
    """A pod's groups in sequence order and its effective rules in match order (S-X-1)."""

    pod: PodFacts
    managed: bool
    unmanaged_reason: str
    groups: tuple[GroupMembership, ...]
    ingress: tuple[EffectiveRule, ...]
    egress: tuple[EffectiveRule, ...]
    unknown_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class GroupCheck:
    """One group looked at for one side of a connection, and its first matching rule."""

    group: GroupKey
    rule: CompiledRule | None
    held: str = ""  # why the group is skipped: the operator does not publish it


@dataclass(frozen=True)
class SideTrace:
    """One side of a connection: the egress of the sender or the ingress of the receiver.

    ``pod`` is None when the address is no pod at all; ``verdict`` is None when the side
    is not filtered (no managed pod there), with ``note`` saying why. A filtered side's
    ``note`` names the annotated groups that do not exist (they match nothing).
    """

    direction: Direction
    address: IPAddress
    pod: PodKey | None
    verdict: DirectionVerdict | None
    checks: tuple[GroupCheck, ...]
    note: str = ""


@dataclass(frozen=True)
class Trace:
    packet: Packet
    verdict: Verdict
    egress: SideTrace
    ingress: SideTrace

    @property
    def allowed(self) -> bool:
        return self.verdict.allowed

    @property
    def deciding(self) -> DirectionVerdict | None:
        """The side that decided: the first that denies, else the receiver's, else the sender's."""
        sides = [s.verdict for s in (self.egress, self.ingress) if s.verdict is not None]
        for v in sides:
            if not v.allowed:
                return v
        return sides[-1] if sides else None


def rule_name(rule: CompiledRule) -> str:
    """The name part of a compiled rule id (``ns/name`` → ``name``)."""
    return rule.id.split("/", 1)[1] if "/" in rule.id else rule.id


def group_rules(rules: Iterable[SecurityGroupRule]) -> tuple[CompiledRule, ...]:
    """Rules of one group compiled and sorted in match order (priority, Deny first, id)."""
    return tuple(sorted((compile_rule(r)[0] for r in rules), key=CompiledRule.sort_key))


# ----------------------------------------------------------------------------- the view


class PolicyView:
    """Cluster facts compiled once, with the lookups the explain/trace/matrix/lint need."""

    def __init__(self, facts: ClusterFacts, scope: Scope | None = None) -> None:
        self.scope = scope or Scope()
        self.facts = _placed(facts)
        self.compilation: Compilation = compile_policy(self.facts, CompileOptions(scope=self.scope))
        # Groups in use that the operator holds, and why (module docstring).
        self.held: dict[GroupKey, str] = held_groups(self.compilation.problems)
        self.policy: CompiledPolicy = _published(self.compilation.policy, self.held)
        self.evaluator = Evaluator(self.policy)
        # Groups the compilation left out (no members, held), compiled when first asked for.
        self._unpublished: dict[GroupKey, CompiledGroupSpec] = {}

    @cached_property
    def enforced(self) -> frozenset[str]:
        return enforced_namespaces(self.facts, self.scope)

    @cached_property
    def groups(self) -> dict[GroupKey, SecurityGroup]:
        return group_index(self.facts)

    @cached_property
    def address_groups(self) -> dict[GroupKey, IPAddressGroup]:
        return {
            (a.metadata.namespace or "default", a.metadata.name): a
            for a in self.facts.address_groups
        }

    @cached_property
    def rules_of(self) -> dict[GroupKey, tuple[SecurityGroupRule, ...]]:
        out: dict[GroupKey, list[SecurityGroupRule]] = {}
        for r in self.facts.rules:
            out.setdefault((r.metadata.namespace or "default", r.spec.security_group), []).append(r)
        return {k: tuple(v) for k, v in sorted(out.items())}

    @cached_property
    def pods(self) -> dict[PodKey, PodFacts]:
        return {p.key: p for p in sorted(self.facts.pods, key=lambda p: p.key)}

    @cached_property
    def members(self) -> dict[GroupKey, tuple[PodKey, ...]]:
        return self.compilation.memberships.members()

    @cached_property
    def pods_by_ip(self) -> dict[IPAddress, PodKey]:
        """Every pod's IPs (managed or not); a live pod wins over a finished one."""
        out: dict[IPAddress, PodKey] = {}
        for key, pod in self.pods.items():
            for ip in pod.ips:
                addr = ipaddress.ip_address(ip)
                if addr not in out or self.pods[out[addr]].phase in FINISHED_PHASES:
                    out[addr] = key
        return out

    def is_managed(self, key: PodKey) -> bool:
        return key in self.compilation.memberships.groups_of

    def unmanaged_reason(self, pod: PodFacts) -> str:
        """Why a pod is not managed ('' if it is)."""
        if self.is_managed(pod.key):
            return ""
        if pod.host_network:
            return "hostNetwork pods are never managed"
        if pod.phase in FINISHED_PHASES:
            return f"the pod has finished ({pod.phase})"
        if pod.namespace not in self.enforced:
            return (
                f"namespace {pod.namespace} is not enforced "
                f"(no label {self.scope.key}={self.scope.value})"
            )
        return "not managed"

    def compiled_group(self, key: GroupKey) -> CompiledGroupSpec:
        """A group's rules in match order, whether or not it has members or is held."""
        spec = self.policy.groups.get(naming.compiled_group_name(*key))
        if spec is not None:
            return spec
        if key not in self._unpublished:
            self._unpublished[key] = self._group_spec(key)
        return self._unpublished[key]

    def _group_spec(self, key: GroupKey) -> CompiledGroupSpec:
        ordered = group_rules(self.rules_of.get(key, ()))
        # Not validated: a what-if view of a group, never published, so the bounds of the
        # published object (rules per direction) must not stop lint from reporting on it.
        return CompiledGroupSpec.model_construct(
            group=ObjectKey(namespace=key[0], name=key[1]),
            synthesized=False,
            ingress=tuple(r for r in ordered if r.direction is Direction.INGRESS),
            egress=tuple(r for r in ordered if r.direction is Direction.EGRESS),
        )

    # -- remotes
    @cached_property
    def rule_objects(self) -> dict[str, SecurityGroupRule]:
        """SecurityGroupRule objects by compiled rule id (``ns/name``)."""
        return {
            f"{r.metadata.namespace or 'default'}/{r.metadata.name}": r for r in self.facts.rules
        }

    def remote_ref(self, rule: CompiledRule) -> tuple[RemoteType, GroupKey | None]:
        """The kind of ``rule``'s remote and the (namespace, name) it names, if any."""
        if rule.remote.kind is RemoteKind.ANY:
            return RemoteType.ANY, None
        if rule.remote.kind is RemoteKind.CIDR:
            return RemoteType.CIDR, None
        namespace = rule.id.split("/", 1)[0]
        obj = self.rule_objects.get(rule.id)
        remote = obj.spec.remote if obj is not None else None
        if remote is not None and remote.ip_address_group is not None:
            ref = remote.ip_address_group
            return RemoteType.IP_ADDRESS_GROUP, (ref.namespace or namespace, ref.name)
        if remote is not None and remote.security_group is not None:
            ref_sg = remote.security_group
            return RemoteType.SECURITY_GROUP, (ref_sg.namespace or namespace, ref_sg.name)
        # A synthesized default rule: its remote is the namespace's default group itself.
        return RemoteType.SECURITY_GROUP, (namespace, DEFAULT_GROUP_NAME)

    def resolve_remote(self, rule: CompiledRule) -> ResolvedRemote:
        """What ``rule``'s remote matches now, in the rule's family."""
        kind, ref = self.remote_ref(rule)
        if ref is None:
            return ResolvedRemote(kind, rule.family, networks=rule.remote.cidrs)
        compiled = self.policy.sets.get(rule.remote.set or "")
        if kind is RemoteType.SECURITY_GROUP:
            members = self.members.get(ref, ())
            if compiled is not None:
                nets = tuple(str(n) for n in compiled.networks(rule.family))
            else:  # the rule's group has no members, so nothing compiled its remote
                nets = _member_nets(self.pods, members, rule.family)
            return ResolvedRemote(
                kind,
                rule.family,
                ref=ref,
                exists=ref in self.groups or ref[1] == DEFAULT_GROUP_NAME,
                networks=nets,
                members=members,
            )
        ipag = self.address_groups.get(ref)
        if ipag is None:
            return ResolvedRemote(kind, rule.family, ref=ref, exists=False)
        nets = tuple(str(n) for n in ipag.spec.networks() if n.version == rule.family.version)
        return ResolvedRemote(
            kind, rule.family, ref=ref, networks=nets, entries=ipag.spec.addresses
        )

    # -- explain
    def pod_policy(self, key: PodKey) -> PodPolicy:
        """A pod's groups with reasons and its effective rules in match order."""
        pod = self.pods[key]
        groups_of = self.compilation.memberships.groups_of.get(key)
        if groups_of is None:
            return PodPolicy(pod, False, self.unmanaged_reason(pod), (), (), ())
        annotated = pod.annotated_groups()
        memberships: list[GroupMembership] = []
        for pos, g in enumerate(groups_of, start=1):
            obj = self.groups.get(g)
            held = self.held.get(g, "")
            if g[1] in annotated:
                why, detail = (
                    Why.ANNOTATION,
                    f"annotation {GROUPS_ANNOTATION} (item {annotated.index(g[1]) + 1})",
                )
            elif (
                obj is not None
                and obj.spec.pod_selector is not None
                and selectors.matches(obj.spec.pod_selector, pod.labels)
            ):
                why, detail = (
                    Why.SELECTOR,
                    f"podSelector {_selector_text(obj)} (sequence {obj.spec.sequence})",
                )
            else:
                why, detail = Why.DEFAULT, "no other group: the namespace default group (S-D-1)"
                if obj is None:
                    detail += ", synthesized (no SecurityGroup object)"
            memberships.append(GroupMembership(g, pos, why, detail, obj is not None, held))
        effective: dict[Direction, list[EffectiveRule]] = {d: [] for d in Direction}
        for m in memberships:
            if m.held:
                continue  # not published: agents skip it, and so does the evaluator
            spec = self.compiled_group(m.group)
            for d in Direction:
                for rule in spec.rules(d):
                    effective[d].append(
                        EffectiveRule(
                            index=len(effective[d]) + 1,
                            group=m.group,
                            group_position=m.position,
                            rule=rule,
                            remote=self.resolve_remote(rule),
                        )
                    )
        return PodPolicy(
            pod,
            True,
            "",
            tuple(memberships),
            tuple(effective[Direction.INGRESS]),
            tuple(effective[Direction.EGRESS]),
            self.compilation.memberships.unknown_annotated.get(key, ()),
        )

    # -- trace
    def trace(self, packet: Packet) -> Trace:
        """The evaluator's verdict for ``packet``, with the groups each side looked at.

        A packet to the sender's own address never leaves the pod (loopback), so it is
        allowed without a check on either side.
        """
        if packet.src == packet.dst:
            note = "same address: loopback inside the pod, never filtered"
            pod = self.pods_by_ip.get(packet.src)
            return Trace(
                packet,
                Verdict(True, None, None),
                SideTrace(Direction.EGRESS, packet.src, pod, None, (), note),
                SideTrace(Direction.INGRESS, packet.dst, pod, None, (), note),
            )
        verdict = self.evaluator.evaluate(packet)
        return Trace(
            packet,
            verdict,
            self._side(Direction.EGRESS, packet.src, verdict.egress, packet),
            self._side(Direction.INGRESS, packet.dst, verdict.ingress, packet),
        )

    def _side(
        self,
        direction: Direction,
        address: IPAddress,
        verdict: DirectionVerdict | None,
        packet: Packet,
    ) -> SideTrace:
        pod_key = self.pods_by_ip.get(address)
        if verdict is None:
            if pod_key is None:
                note = "not a pod address: not filtered here"
            else:
                note = f"not filtered: {self.unmanaged_reason(self.pods[pod_key])}"
            return SideTrace(direction, address, pod_key, None, (), note)
        checks: list[GroupCheck] = []
        key = (verdict.pod.namespace, verdict.pod.name)
        missing = self.compilation.memberships.unknown_annotated.get(key, ())
        for g in self.compilation.memberships.groups_of.get(key, ()):
            spec = self.policy.groups.get(naming.compiled_group_name(*g))
            if spec is None:  # held: skipped, as the evaluator skips it
                checks.append(GroupCheck(g, None, self.held.get(g, "not published")))
                continue
            rule = self.evaluator.first_match(spec, direction, packet)
            checks.append(GroupCheck(g, rule))
            if rule is not None:
                break
        note = missing_groups_note(missing) if missing else ""
        return SideTrace(direction, address, key, verdict, tuple(checks), note)

    # -- shadowing
    def shadowed_rules(self) -> tuple[Shadowing, ...]:
        """Shadowed rules of every group that has an object, sorted by group then rule."""
        out: list[Shadowing] = []
        for key in sorted(self.groups):
            spec = self.compiled_group(key)
            for d in Direction:
                out.extend(shadowed(key, spec.rules(d)))
        return tuple(out)


def _published(policy: CompiledPolicy, held: Mapping[GroupKey, str]) -> CompiledPolicy:
    """``policy`` without the groups the operator holds (the same object if none is)."""
    names = {naming.compiled_group_name(*g) for g in held}
    if not names & policy.groups.keys():
        return policy
    groups = {n: g for n, g in policy.groups.items() if n not in names}
    return policy.model_copy(update={"groups": groups})


def _placed(facts: ClusterFacts) -> ClusterFacts:
    """Put pods that have IPs but no node on :data:`UNSCHEDULED_NODE` (see module doc)."""
    if all(p.node is not None or not p.ips for p in facts.pods):
        return facts
    pods = tuple(
        p.model_copy(update={"node": UNSCHEDULED_NODE}) if p.node is None and p.ips else p
        for p in facts.pods
    )
    return facts.model_copy(update={"pods": pods})


def _member_nets(
    pods: Mapping[PodKey, PodFacts], members: Iterable[PodKey], family: IPFamily
) -> tuple[str, ...]:
    addrs = sorted(
        {
            ipaddress.ip_address(ip)
            for m in members
            for ip in pods[m].ips
            if ipaddress.ip_address(ip).version == family.version
        }
    )
    return tuple(str(ipaddress.ip_network(a)) for a in addrs)


def _selector_text(group: SecurityGroup) -> str:
    sel = group.spec.pod_selector
    if sel is None:
        return ""
    parts = [f"{k}={v}" for k, v in sorted(sel.match_labels.items())]
    for req in sel.match_expressions:
        values = ",".join(req.values)
        parts.append(
            f"{req.key} {req.operator} ({values})" if values else f"{req.key} {req.operator}"
        )
    return "{" + ", ".join(parts) + "}" if parts else "{} (every pod)"


__all__ = [
    "UNSCHEDULED_NODE",
    "EffectiveRule",
    "GroupCheck",
    "GroupMembership",
    "PodPolicy",
    "PolicyView",
    "RemoteType",
    "ResolvedRemote",
    "Shadowing",
    "SideTrace",
    "Trace",
    "Why",
    "covers",
    "group_rules",
    "rule_name",
    "shadowed",
]
