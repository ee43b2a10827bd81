"""The clearing planner: which pods' inbound connections must be re-checked after a change.

S-CT-2, row by row (old facts → new facts; "pods of X" = its members before or after):

1. pods added to SG A → the added pods; and, if an inbound rule of a group B denies
   traffic from A, all pods of B;
2. pods removed from SG A → all pods of A; and, if an inbound rule of a group B allows
   traffic from A, all pods of B;
3. rule added to A → if it is a Deny rule (inbound or outbound): all pods of A;
4. rule deleted from A → if it was an inbound Allow rule: all pods of A;
5. rule of A modified → if priority, action, protocol, ports (or ICMP type/code) or
   remote of an inbound rule changed: all pods of A; a rule that moves between
   directions, families or groups counts as deleted and added;
6. entries of an IP address group changed → for each group A with an inbound rule
   using it: all pods of A.

Readings the table leaves open, decided here and documented in docs/semantics.md:

* group B in rows 1–2 may be A itself (a group that denies or allows its own
  members, S-M-5);
* a pod whose group *order* changes with the same groups (S-X-1) is re-checked,
  since the order can change its verdicts;
* rules are compared as the compiler sees them (``compiling.compile_rule``): ports
  after merging (``22,23`` = ``22-23``), CIDRs with host bits cleared, references with
  the namespace filled in — rewriting a rule the same way is no change;
* a group's rules are its *effective* rules: a namespace's ``default`` group without
  an object has the synthesized S-D-1 rules, so creating its object replaces them
  (its inbound Allow is deleted: row 4) and deleting it brings them back; rules
  attached to a group that does not exist have no effect and are not counted;
* a rule deleted while the group keeps a rule of the same meaning, or added when it
  already had one (a rename, a duplicate, the operator creating the default group's
  object with the S-D-1 rules), changes no verdict, so nothing is re-checked;
* a member pod whose IPs change (it gets its first IP, or another one) counts as
  added (the group's address set gains the new IPs) and, if it lost an IP, removed;
  one that lands on a node (its node object starts enforcing it) counts as added:
  flows it had before were never checked;
* a pod in no group at all (its annotation names only groups that do not exist, so it
  is denied everything rather than given the default group) is re-checked when it
  arrives the way a member would be: newly managed, a new IP, or a new node.

The plan also says how the operator delivers it (docs/architecture.md#existing-connections-epochs),
in as few writes as possible — each carrier is part of a pod's epoch mark
(``secgroups.nft.epochs.pod_mark``):

* a **group's re-check counter** (its compiled object) for "all pods of A" in rows 2
  (A itself), 3, 4, 5 and 6: one write reaches every member on every node;
* an **address set's counter** for the groups B of rows 1 and 2 — the members of A the
  set holds changed, and the counter travels with them in the same object, so an agent
  never re-checks against the old members; it reaches every pod whose groups name the
  set in an inbound rule (a B whose rule has the other action is re-checked too, which
  keeps every allowed flow);
* a **pod's own epoch** (its node object, rewritten anyway since its entry changed) for
  the pods no counter reaches: pods added to a group or removed from one (a counter
  reaches only current members), pods in no group, and a new group order.

The node agent never needs to know why.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from secgroups import naming
from secgroups.compiled import CompiledRule, SourceKind
from secgroups.compiling import compile_rule, default_rules, rule_group
from secgroups.facts import ClusterFacts
from secgroups.membership import GroupKey, Memberships, PodKey, Scope, group_index, resolve
from secgroups.models import DEFAULT_GROUP_NAME, Action, Direction

_Recheck = Callable[[GroupKey, str], None]


@dataclass(frozen=True)
class ClearingPlan:
    """Pods to re-check, each with the reasons (which S-CT-2 row, which object), and how
    (see the module docstring): ``groups`` whose counter goes up, address ``sets``
    whose counter goes up, and the ``direct`` pods whose own epoch does."""

    reasons: Mapping[PodKey, tuple[str, ...]]
    groups: frozenset[GroupKey] = frozenset()
    sets: frozenset[str] = frozenset()
    direct: frozenset[PodKey] = frozenset()

    @property
    def pods(self) -> frozenset[PodKey]:
        return frozenset(self.reasons)

    def __bool__(self) -> bool:
        return bool(self.reasons)


@dataclass(frozen=True)
class _Rule:
    """An effective rule of a group, as the compiler sees it."""

    group: GroupKey
    rule: CompiledRule
    remote_group: GroupKey | None
    remote_ipag: GroupKey | None

    @property
    def id(self) -> str:
        return self.rule.id

    @property
    def inbound(self) -> bool:
        return self.rule.direction is Direction.INGRESS

    def identity(self) -> tuple[object, ...]:
        """A change of these makes a modification a deletion plus an addition."""
        return (self.group, self.rule.direction, self.rule.family)

    def match_fields(self) -> tuple[object, ...]:
        """What row 5 compares: priority, action, protocol, ports, ICMP and remote."""
        r = self.rule
        return (r.priority, r.action, r.protocol, r.ports, r.icmp_type, r.icmp_code, r.remote)

    def meaning(self) -> tuple[object, ...]:
        """Everything verdicts depend on: two rules with the same meaning are duplicates."""
        return (*self.identity(), *self.match_fields())


def _effective_rules(facts: ClusterFacts, ms: Memberships) -> dict[str, _Rule]:
    """Rule id → effective rule, for groups that exist or are synthesized (see docstring)."""
    groups = group_index(facts)
    out: dict[str, _Rule] = {}
    for rule in facts.rules:
        gkey = rule_group(rule)
        if gkey not in groups:
            continue
        crule, source = compile_rule(rule)
        remote_group = remote_ipag = None
        if source is not None:
            kind, key = source
            if kind is SourceKind.SECURITY_GROUP:
                remote_group = key
            else:
                remote_ipag = key
        out[crule.id] = _Rule(gkey, crule, remote_group, remote_ipag)
    for gkey in {g for gs in ms.groups_of.values() for g in gs}:
        if gkey[1] == DEFAULT_GROUP_NAME and gkey not in groups:
            for crule in default_rules(gkey[0]):
                remote = gkey if crule.remote.set is not None else None
                out[crule.id] = _Rule(gkey, crule, remote, None)
    return out


# Where a member is: its IPs and its node (None until scheduled).
_Place = tuple[frozenset[str], str | None]


def _member_places(ms: Memberships) -> dict[GroupKey, dict[PodKey, _Place]]:
    out: dict[GroupKey, dict[PodKey, _Place]] = defaultdict(dict)
    for pod, groups in ms.groups_of.items():
        facts = ms.pods[pod]
        place = (frozenset(facts.ips), facts.node)
        for g in groups:
            out[g][pod] = place
    return out


def _arrived(now: _Place, before: _Place | None) -> bool:
    """The member brings the group something new: an IP, or its first (another) node."""
    if before is None:
        return True
    return bool(now[0] - before[0]) or (now[1] is not None and now[1] != before[1])


def plan_clearing(old: ClusterFacts, new: ClusterFacts, scope: Scope | None = None) -> ClearingPlan:
    """The S-CT-2 plan for the change from ``old`` to ``new`` (see the module docstring)."""
    scope = scope or Scope()
    old_ms, new_ms = resolve(old, scope), resolve(new, scope)
    old_members, new_members = _member_places(old_ms), _member_places(new_ms)
    reasons: dict[PodKey, list[str]] = defaultdict(list)
    counted_groups: set[GroupKey] = set()
    counted_sets: set[str] = set()
    direct: set[PodKey] = set()

    def pods_of(group: GroupKey) -> Iterable[PodKey]:
        return sorted(set(old_members.get(group, ())) | set(new_members.get(group, ())))

    def reach(group: GroupKey, why: str) -> None:
        for pod in pods_of(group):
            reasons[pod].append(why)
        # Members that left are no longer reached by a counter of the group.
        direct.update(set(old_members.get(group, ())) - set(new_members.get(group, ())))

    def recheck_group(group: GroupKey, why: str) -> None:
        reach(group, why)
        if new_members.get(group):
            counted_groups.add(group)

    def recheck_users(group: GroupKey, named: GroupKey, why: str) -> None:
        """All pods of ``group``, whose inbound rule names group ``named``'s members."""
        reach(group, why)
        if new_members.get(group):
            counted_sets.add(naming.sg_set_name(*named))

    old_rules, new_rules = _effective_rules(old, old_ms), _effective_rules(new, new_ms)
    # Verdicts depend on which rule meanings a group has, not on names or copies: a
    # deletion that leaves a rule of the same meaning, or an addition of one the group
    # already had (a rename, a duplicate, the operator's default-group rules replacing
    # the synthesized ones), changes no verdict and re-checks nothing.
    old_meanings = {r.meaning() for r in old_rules.values()}
    new_meanings = {r.meaning() for r in new_rules.values()}

    def rule_deleted(rule: _Rule) -> None:
        if rule.meaning() not in new_meanings:
            _rule_deleted(rule, recheck_group)

    def rule_added(rule: _Rule) -> None:
        if rule.meaning() not in old_meanings:
            _rule_added(rule, recheck_group)

    inbound_now = sorted((r for r in new_rules.values() if r.inbound), key=lambda r: r.id)

    # Rows 1 and 2: membership, by the addresses each member brings to the group.
    for group in sorted(set(old_members) | set(new_members)):
        before, after = old_members.get(group, {}), new_members.get(group, {})
        added = {p for p, place in after.items() if _arrived(place, before.get(p))}
        removed = {p for p, place in before.items() if p not in after or place[0] - after[p][0]}
        label = f"{group[0]}/{group[1]}"
        for pod in sorted(added):
            reasons[pod].append(f"S-CT-2 row 1: added to security group {label}")
        direct.update(added)
        if added:
            for rule in inbound_now:
                if rule.rule.action is Action.DENY and rule.remote_group == group:
                    recheck_users(
                        rule.group,
                        group,
                        f"S-CT-2 row 1: {label} gained members and inbound Deny rule "
                        f"{rule.id} names it",
                    )
        if removed:
            recheck_group(group, f"S-CT-2 row 2: pods removed from security group {label}")
            for rule in inbound_now:
                if rule.rule.action is Action.ALLOW and rule.remote_group == group:
                    recheck_users(
                        rule.group,
                        group,
                        f"S-CT-2 row 2: {label} lost members and inbound Allow rule "
                        f"{rule.id} names it",
                    )

    # Extension: a pod in no group at all (its annotation names only missing groups:
    # fail-closed, docs/semantics.md decision 6) is denied everything. Rows 1-2 see no
    # membership change, so re-check it when it arrives as rows 1-2 would: newly
    # managed (it was unfiltered), a new IP, or a node that starts enforcing it.
    for pod, groups in new_ms.groups_of.items():
        if groups:
            continue
        was = old_ms.pods.get(pod)
        now = new_ms.pods[pod]
        before_place = None if was is None else (frozenset(was.ips), was.node)
        if _arrived((frozenset(now.ips), now.node), before_place):
            reasons[pod].append("in no security group (annotated groups missing): denied all")
            direct.add(pod)

    # Extension: same groups, new order (S-X-1 makes order matter).
    for pod, groups in new_ms.groups_of.items():
        before_groups = old_ms.groups_of.get(pod)
        if (
            before_groups is not None
            and before_groups != groups
            and set(before_groups) == set(groups)
        ):
            reasons[pod].append("group sequence changed (S-X-1)")
            direct.add(pod)

    # Rows 3, 4 and 5: rules.
    for rid in sorted(set(old_rules) | set(new_rules)):
        o, n = old_rules.get(rid), new_rules.get(rid)
        if o is not None and n is not None and o.identity() != n.identity():
            rule_deleted(o)
            rule_added(n)
        elif o is None and n is not None:
            rule_added(n)
        elif n is None and o is not None:
            rule_deleted(o)
        elif o is not None and n is not None and n.inbound and o.match_fields() != n.match_fields():
            recheck_group(n.group, f"S-CT-2 row 5: inbound rule {rid} modified")

    # Row 6: address group entries.
    old_ipags = {
        (a.metadata.namespace or "default", a.metadata.name): a for a in old.address_groups
    }
    new_ipags = {
        (a.metadata.namespace or "default", a.metadata.name): a for a in new.address_groups
    }
    for key in sorted(set(old_ipags) | set(new_ipags)):
        o_nets = old_ipags[key].spec.networks() if key in old_ipags else ()
        n_nets = new_ipags[key].spec.networks() if key in new_ipags else ()
        if o_nets == n_nets:
            continue
        users = {
            r.group
            for r in (*old_rules.values(), *new_rules.values())
            if r.inbound and r.remote_ipag == key
        }
        for group in sorted(users):
            recheck_group(
                group,
                f"S-CT-2 row 6: entries of IP address group {key[0]}/{key[1]} changed",
            )

    alive = set(new_ms.pods) | set(old_ms.pods)
    return ClearingPlan(
        {pod: tuple(dict.fromkeys(why)) for pod, why in sorted(reasons.items()) if pod in alive},
        frozenset(counted_groups),
        frozenset(counted_sets),
        frozenset(direct & alive),
    )


def _rule_added(rule: _Rule, recheck: _Recheck) -> None:
    if rule.rule.action is Action.DENY:
        recheck(rule.group, f"S-CT-2 row 3: Deny rule {rule.id} added")


def _rule_deleted(rule: _Rule, recheck: _Recheck) -> None:
    if rule.inbound and rule.rule.action is Action.ALLOW:
        recheck(rule.group, f"S-CT-2 row 4: inbound Allow rule {rule.id} deleted")


def bump_epochs(epochs: Mapping[PodKey, int], plan: ClearingPlan) -> dict[PodKey, int]:
    """New ingress epochs: every planned pod's epoch goes up by one (each pod re-checked
    through its own epoch, none through a counter).

    See docs/architecture.md#existing-connections-epochs.
    """
    out = dict(epochs)
    for pod in plan.pods:
        out[pod] = out.get(pod, 0) + 1
    return out


@dataclass(frozen=True)
class Rechecks:
    """What carries re-checks from one compilation to the next: pods' epochs and the
    counters of compiled groups and address sets, by object name (``CompileOptions``)."""

    epochs: Mapping[PodKey, int]
    groups: Mapping[str, int]
    sets: Mapping[str, int]

    def bumped(self, plan: ClearingPlan) -> Rechecks:
        """After ``plan``: each of its carriers (module docstring) goes up by one."""
        epochs, groups, sets = dict(self.epochs), dict(self.groups), dict(self.sets)
        for pod in plan.direct:
            epochs[pod] = epochs.get(pod, 0) + 1
        for key in plan.groups:
            name = naming.compiled_group_name(*key)
            groups[name] = groups.get(name, 0) + 1
        for name in plan.sets:
            sets[name] = sets.get(name, 0) + 1
        return Rechecks(epochs, groups, sets)
