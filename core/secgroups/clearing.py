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

Two readings the table leaves open, decided here and documented in
docs/semantics.md: group B in rows 1–2 may be A itself (a group that denies or allows
its own members, S-M-5); and a pod whose group *order* changes with the same groups
(S-X-1) is re-checked, since the order can change its verdicts.

The operator turns the plan into new ingress epochs (DESIGN.md §4); the node agent
never needs to know why.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from secgroups.facts import ClusterFacts
from secgroups.membership import GroupKey, PodKey, Scope, resolve
from secgroups.models import Action, Direction, SecurityGroupRule

RuleKey = tuple[str, str]
_Recheck = Callable[[GroupKey, str], None]


@dataclass(frozen=True)
class ClearingPlan:
    """Pods to re-check, each with the reasons (which S-CT-2 row, which object)."""

    reasons: Mapping[PodKey, tuple[str, ...]]

    @property
    def pods(self) -> frozenset[PodKey]:
        return frozenset(self.reasons)

    def __bool__(self) -> bool:
        return bool(self.reasons)


def _rules(facts: ClusterFacts) -> dict[RuleKey, SecurityGroupRule]:
    return {(r.metadata.namespace or "default", r.metadata.name): r for r in facts.rules}


def _group_of(rule: SecurityGroupRule) -> GroupKey:
    return (rule.metadata.namespace or "default", rule.spec.security_group)


def _remote_group(rule: SecurityGroupRule) -> GroupKey | None:
    remote = rule.spec.remote
    if remote is None or remote.security_group is None:
        return None
    ns = rule.metadata.namespace or "default"
    return (remote.security_group.namespace or ns, remote.security_group.name)


def _remote_ipag(rule: SecurityGroupRule) -> GroupKey | None:
    remote = rule.spec.remote
    if remote is None or remote.ip_address_group is None:
        return None
    ns = rule.metadata.namespace or "default"
    return (remote.ip_address_group.namespace or ns, remote.ip_address_group.name)


def _match_fields(rule: SecurityGroupRule) -> tuple[object, ...]:
    """What row 5 compares: priority, action, protocol, ports, ICMP and remote."""
    s = rule.spec
    remote = s.remote.model_dump() if s.remote is not None else None
    icmp = s.icmp.model_dump() if s.icmp is not None else None
    return (s.priority, s.action, s.protocol, s.port_ranges(), icmp, repr(remote))


def _identity(rule: SecurityGroupRule) -> tuple[object, ...]:
    """A change of these makes a modification a deletion plus an addition."""
    s = rule.spec
    return (_group_of(rule), s.direction, s.ip_family)


def plan_clearing(old: ClusterFacts, new: ClusterFacts, scope: Scope | None = None) -> ClearingPlan:
    """The S-CT-2 plan for the change from ``old`` to ``new`` (see the module docstring)."""
    scope = scope or Scope()
    old_ms, new_ms = resolve(old, scope), resolve(new, scope)
    old_members, new_members = old_ms.members(), new_ms.members()
    reasons: dict[PodKey, list[str]] = defaultdict(list)

    def pods_of(group: GroupKey) -> Iterable[PodKey]:
        return sorted(set(old_members.get(group, ())) | set(new_members.get(group, ())))

    def recheck_group(group: GroupKey, why: str) -> None:
        for pod in pods_of(group):
            reasons[pod].append(why)

    old_rules, new_rules = _rules(old), _rules(new)
    inbound_now = [r for r in new_rules.values() if r.spec.direction is Direction.INGRESS]

    # Rows 1 and 2: membership.
    for group in sorted(set(old_members) | set(new_members)):
        before, after = set(old_members.get(group, ())), set(new_members.get(group, ()))
        added, removed = after - before, before - after
        label = f"{group[0]}/{group[1]}"
        for pod in sorted(added):
            reasons[pod].append(f"S-CT-2 row 1: added to security group {label}")
        if added:
            for rule in inbound_now:
                if rule.spec.action is Action.DENY and _remote_group(rule) == group:
                    recheck_group(
                        _group_of(rule),
                        f"S-CT-2 row 1: {label} gained members and inbound Deny rule "
                        f"{rule.metadata.name} names it",
                    )
        if removed:
            recheck_group(group, f"S-CT-2 row 2: pods removed from security group {label}")
            for rule in inbound_now:
                if rule.spec.action is Action.ALLOW and _remote_group(rule) == group:
                    recheck_group(
                        _group_of(rule),
                        f"S-CT-2 row 2: {label} lost members and inbound Allow rule "
                        f"{rule.metadata.name} names it",
                    )

    # Extension: same groups, new order (S-X-1 makes order matter).
    for pod, groups in new_ms.groups_of.items():
        before_groups = old_ms.groups_of.get(pod)
        if (
            before_groups is not None
            and before_groups != groups
            and set(before_groups) == set(groups)
        ):
            reasons[pod].append("group sequence changed (S-X-1)")

    # Rows 3, 4 and 5: rules.
    for key in sorted(set(old_rules) | set(new_rules)):
        o, n = old_rules.get(key), new_rules.get(key)
        if o is not None and n is not None and _identity(o) != _identity(n):
            _rule_deleted(o, recheck_group)
            _rule_added(n, recheck_group)
        elif o is None and n is not None:
            _rule_added(n, recheck_group)
        elif n is None and o is not None:
            _rule_deleted(o, recheck_group)
        elif (
            o is not None
            and n is not None
            and n.spec.direction is Direction.INGRESS
            and _match_fields(o) != _match_fields(n)
        ):
            recheck_group(_group_of(n), f"S-CT-2 row 5: inbound rule {key[0]}/{key[1]} modified")

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
            _group_of(r)
            for r in (*old_rules.values(), *new_rules.values())
            if r.spec.direction is Direction.INGRESS and _remote_ipag(r) == key
        }
        for group in sorted(users):
            recheck_group(
                group,
                f"S-CT-2 row 6: entries of IP address group {key[0]}/{key[1]} changed",
            )

    alive = set(new_ms.pods) | set(old_ms.pods)
    return ClearingPlan(
        {pod: tuple(dict.fromkeys(why)) for pod, why in sorted(reasons.items()) if pod in alive}
    )


def _rule_added(rule: SecurityGroupRule, recheck: _Recheck) -> None:
    if rule.spec.action is Action.DENY:
        recheck(
            _group_of(rule),
            f"S-CT-2 row 3: Deny rule {rule.metadata.namespace}/{rule.metadata.name} added",
        )


def _rule_deleted(rule: SecurityGroupRule, recheck: _Recheck) -> None:
    if rule.spec.direction is Direction.INGRESS and rule.spec.action is Action.ALLOW:
        recheck(
            _group_of(rule),
            f"S-CT-2 row 4: inbound Allow rule {rule.metadata.namespace}/{rule.metadata.name} "
            "deleted",
        )


def bump_epochs(epochs: Mapping[PodKey, int], plan: ClearingPlan) -> dict[PodKey, int]:
    """New ingress epochs: every planned pod's epoch goes up by one (DESIGN.md §4)."""
    out = dict(epochs)
    for pod in plan.pods:
        out[pod] = out.get(pod, 0) + 1
    return out
