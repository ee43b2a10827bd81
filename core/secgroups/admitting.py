"""Admission decisions: what the validating webhook answers, as pure functions.

The operator's webhook (``secgroups_operator.admission``) reads the few objects a
request needs from the API server and calls one function here; the answers, and their
words, are the core's, so ``kubectl secgroups lint`` and the status conditions say the
same thing (``quotas``). What is checked (docs/admission.md has the whole table):

* **SecurityGroupRule create/update** — S-L-1: a write that would take its group past
  :data:`~secgroups.quotas.RULE_QUOTA` counted rules of its direction and IP family is
  refused (a write that does not add to its bucket never is, so a group already over
  the quota can still be edited); so is a rule past
  :data:`~secgroups.quotas.MAX_RULES_PER_GROUP` rules of any kind. Near the quota the
  write passes with a warning.
* **IPAddressGroup create/update** — entries that compile to more than
  :data:`~secgroups.quotas.MAX_ADDRESS_GROUP_CIDRS` CIDRs (the schema already caps the
  entries themselves).
* **Pod create/update** — S-L-2: joining a group whose reported member count
  (``status.memberCount``) is already at :data:`~secgroups.quotas.MEMBER_LIMIT`;
  S-L-3 (more than five groups) and annotated groups that do not exist are warnings.
* **SecurityGroup create/update** — S-L-2 when its podSelector is new or changed: the
  pods it would then have, counted exactly.
* **SecurityGroup / IPAddressGroup delete** — refused while in use: a group with
  member pods or used as the remote of another group's rule (any namespace), an
  address group used by a rule; the message names the users (the first
  :data:`MAX_LISTED`, then a count). Everything may go when its namespace is being
  deleted, or namespace deletion would hang.

Neighbours: ``quotas`` (limits and words), ``membership`` (who is in which group),
``compiling.rule_group``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from secgroups.compiling import rule_group
from secgroups.facts import ClusterFacts, NamespaceFacts, PodFacts
from secgroups.membership import (
    GroupKey,
    PodKey,
    Scope,
    Selection,
    is_managed,
    missing_groups_note,
    resolve,
    sequence_of,
)
from secgroups.models import (
    Direction,
    IPAddressGroup,
    IPFamily,
    SecurityGroup,
    SecurityGroupRule,
)
from secgroups.quotas import (
    GROUPS_PER_POD_ADVISED,
    MAX_ADDRESS_GROUP_CIDRS,
    MAX_RULES_PER_GROUP,
    MEMBER_LIMIT,
    NEAR_FRACTION,
    RULE_QUOTA,
    address_group_cidrs,
    groups_per_pod_warning,
    member_limit_error,
    quota_reasons,
    rule_quota_error,
    rule_quota_warning,
    too_many_rules_error,
)

# How many users (pods, rules) a refusal names before it only counts the rest.
MAX_LISTED = 10

ObjKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Decision:
    """The answer to one admission request: allowed or not, why, and warnings."""

    allowed: bool
    message: str = ""
    reason: str = ""  # CamelCase, for the response status (QuotaExceeded, InUse, ...)
    warnings: tuple[str, ...] = ()

    @classmethod
    def allow(cls, *warnings: str) -> Decision:
        return cls(True, warnings=tuple(warnings))

    @classmethod
    def deny(cls, reason: str, message: str, warnings: Iterable[str] = ()) -> Decision:
        return cls(False, message, reason, tuple(warnings))


def key_text(key: ObjKey) -> str:
    return f"{key[0]}/{key[1]}"


def listing(keys: Sequence[ObjKey], limit: int = MAX_LISTED) -> str:
    """``ns/a, ns/b`` — at most ``limit`` names, then ``and N more``."""
    shown = ", ".join(key_text(k) for k in keys[:limit])
    return shown if len(keys) <= limit else f"{shown} and {len(keys) - limit} more"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ----------------------------------------------------------------------------- rules


def _bucket(rule: SecurityGroupRule) -> tuple[GroupKey, Direction, IPFamily]:
    return (rule_group(rule), rule.spec.direction, rule.spec.ip_family)


def rule_quota_refusal(group: GroupKey, direction: Direction, family: IPFamily, n: int) -> str:
    """The webhook's S-L-1 message: the group, then lint's words for the same count."""
    return (
        f"S-L-1 quota: security group {key_text(group)}: {rule_quota_error(direction, family, n)}"
    )


def admit_rule(
    new: SecurityGroupRule,
    old: SecurityGroupRule | None,
    siblings: Iterable[SecurityGroupRule],
) -> Decision:
    """A SecurityGroupRule create (``old`` None) or update.

    ``siblings`` are the rules stored now that are attached to the new rule's group (the
    webhook lists them by ``spec.securityGroup``); the stored copy of the rule itself may
    be among them and is not counted twice. Two rules created at the same instant are
    each counted against the other's absence: one can slip past the quota, which the
    group's status then reports (docs/admission.md, "Races").
    """
    group, direction, family = _bucket(new)
    others = [
        r for r in siblings if rule_group(r) == group and r.metadata.name != new.metadata.name
    ]
    warnings: list[str] = []
    counts = bool(quota_reasons(new))
    was_counted_here = (
        old is not None and _bucket(old) == (group, direction, family) and bool(quota_reasons(old))
    )
    if counts and not was_counted_here:
        n = 1 + sum(
            1
            for r in others
            if (r.spec.direction, r.spec.ip_family) == (direction, family) and quota_reasons(r)
        )
        if n > RULE_QUOTA:
            return Decision.deny("QuotaExceeded", rule_quota_refusal(group, direction, family, n))
        if n >= RULE_QUOTA * NEAR_FRACTION:
            warnings.append(
                f"S-L-1 quota: security group {key_text(group)}: "
                + rule_quota_warning(direction, family, n)
            )
    if old is None or rule_group(old) != group:
        total = len(others) + 1
        if total > MAX_RULES_PER_GROUP:
            return Decision.deny("TooManyRules", too_many_rules_error(group, total))
    return Decision.allow(*warnings)


# ----------------------------------------------------------------------------- address groups


def admit_address_group(new: IPAddressGroup) -> Decision:
    """An IPAddressGroup create or update: what it compiles to must fit one object."""
    n = address_group_cidrs(new.spec.addresses)
    if n > MAX_ADDRESS_GROUP_CIDRS:
        key = (new.metadata.namespace or "default", new.metadata.name)
        return Decision.deny(
            "TooLarge",
            f"IP address group {key_text(key)}: its entries compile to more than "
            f"{MAX_ADDRESS_GROUP_CIDRS} CIDRs (ranges split into CIDRs); split it into "
            "several groups",
        )
    return Decision.allow()


# ----------------------------------------------------------------------------- pods


def pod_groups(
    pod: PodFacts, namespace: NamespaceFacts | None, groups: Sequence[SecurityGroup], scope: Scope
) -> tuple[tuple[GroupKey, ...], tuple[str, ...]] | None:
    """A pod's groups in sequence order and its missing annotated names; None if unmanaged.

    ``groups`` are the SecurityGroups of the pod's namespace.
    """
    enforced = (
        {namespace.name}
        if namespace is not None and namespace.labels.get(scope.key) == scope.value
        else set()
    )
    if not is_managed(pod, enforced):
        return None
    keys = {(g.metadata.namespace or pod.namespace, g.metadata.name) for g in groups}
    selected = Selection(pod.namespace, groups).selected(pod.labels)
    return sequence_of(pod, keys, selected)


def admit_pod(
    pod: PodFacts,
    old: PodFacts | None,
    namespace: NamespaceFacts | None,
    groups: Sequence[SecurityGroup],
    member_counts: Mapping[GroupKey, int],
    scope: Scope | None = None,
) -> Decision:
    """A Pod create (``old`` None) or update (labels or the groups annotation).

    S-L-2 is judged on each group the pod *joins* against ``member_counts``, the member
    count the operator last reported in each group's status (``status.memberCount``):
    eventually consistent, so a burst of pods can overshoot by what was created since;
    the status then reports the overrun.
    """
    scope = scope or Scope()
    now = pod_groups(pod, namespace, groups, scope)
    if now is None:
        return Decision.allow()
    order, missing = now
    before = pod_groups(old, namespace, groups, scope) if old is not None else None
    had = set(before[0]) if before is not None else set()
    for key in order:
        if key in had:
            continue
        count = member_counts.get(key)
        if count is not None and count + 1 > MEMBER_LIMIT:
            return Decision.deny(
                "TooManyMembers",
                f"S-L-2: security group {key_text(key)}: {member_limit_error(count + 1)}; "
                f"pod {key_text(pod.key)} cannot join it",
            )
    warnings = []
    if missing:
        warnings.append(f"pod {key_text(pod.key)}: {missing_groups_note(missing)}")
    if len(order) > GROUPS_PER_POD_ADVISED:
        warnings.append(f"S-L-3: pod {key_text(pod.key)} {groups_per_pod_warning(len(order))}")
    return Decision.allow(*warnings)


# ----------------------------------------------------------------------------- groups


def group_write_needs_pods(new: SecurityGroup, old: SecurityGroup | None) -> bool:
    """Whether a SecurityGroup write can change who its members are (then S-L-2 needs the
    namespace's pods): a create (pods may already name it) or a podSelector change."""
    return old is None or old.spec.pod_selector != new.spec.pod_selector


def admit_group_write(
    new: SecurityGroup,
    old: SecurityGroup | None,
    facts: ClusterFacts,
    scope: Scope | None = None,
) -> Decision:
    """A SecurityGroup create or update: S-L-2 on the members it would have.

    ``facts`` hold the group's namespace, its pods and its SecurityGroups as stored now
    (with or without ``old``); the count is exact for the pods listed.
    """
    if not group_write_needs_pods(new, old):
        return Decision.allow()
    scope = scope or Scope()
    key = (new.metadata.namespace or "default", new.metadata.name)
    others = tuple(g for g in facts.groups if (g.metadata.namespace, g.metadata.name) != key)
    after = resolve(facts.model_copy(update={"groups": (*others, new)}), scope)
    n_after = len(after.members().get(key, ()))
    if n_after <= MEMBER_LIMIT:
        return Decision.allow()
    before_groups = others if old is None else (*others, old)
    before = resolve(facts.model_copy(update={"groups": before_groups}), scope)
    if n_after <= len(before.members().get(key, ())):
        return Decision.allow()  # already over: a write that adds nobody is not refused
    return Decision.deny(
        "TooManyMembers", f"S-L-2: security group {key_text(key)}: {member_limit_error(n_after)}"
    )


@dataclass(frozen=True)
class GroupUsers:
    """Who uses a security group: its member pods, and rules of other groups naming it."""

    members: tuple[PodKey, ...] = ()
    rules: tuple[ObjKey, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.members or self.rules)


def _remote_group(rule: SecurityGroupRule) -> GroupKey | None:
    remote = rule.spec.remote
    if remote is None or remote.security_group is None:
        return None
    ns = rule.metadata.namespace or "default"
    return (remote.security_group.namespace or ns, remote.security_group.name)


def _remote_address_group(rule: SecurityGroupRule) -> ObjKey | None:
    remote = rule.spec.remote
    if remote is None or remote.ip_address_group is None:
        return None
    ns = rule.metadata.namespace or "default"
    return (remote.ip_address_group.namespace or ns, remote.ip_address_group.name)


def _rule_key(rule: SecurityGroupRule) -> ObjKey:
    return (rule.metadata.namespace or "default", rule.metadata.name)


def group_users(facts: ClusterFacts, key: GroupKey, scope: Scope | None = None) -> GroupUsers:
    """The members of group ``key`` and the rules of *other* groups whose remote it is.

    ``facts`` need the group's namespace, its pods and groups, and the rules that may name
    it (any namespace). A group's own rules naming it (S-M-5) do not keep it alive.
    """
    members = resolve(facts, scope or Scope()).members().get(key, ())
    rules = sorted(
        _rule_key(r) for r in facts.rules if _remote_group(r) == key and rule_group(r) != key
    )
    return GroupUsers(tuple(members), tuple(rules))


def address_group_users(rules: Iterable[SecurityGroupRule], key: ObjKey) -> tuple[ObjKey, ...]:
    """The rules whose remote is IP address group ``key``."""
    return tuple(sorted(_rule_key(r) for r in rules if _remote_address_group(r) == key))


def admit_group_delete(
    key: GroupKey, users: GroupUsers, namespace_terminating: bool = False
) -> Decision:
    """Deleting a SecurityGroup: refused while it has members or is another rule's remote.

    As a cloud refuses to delete a group still attached to instances: deleting it would
    leave its pods in no group (denied everything, fail-closed) and turn the rules naming
    it into rules that match nothing.
    """
    if namespace_terminating or not users:
        return Decision.allow()
    parts = []
    if users.members:
        parts.append(f"{_plural(len(users.members), 'member pod')} ({listing(users.members)})")
    if users.rules:
        parts.append(
            f"it is the remote of {_plural(len(users.rules), 'rule')} ({listing(users.rules)})"
        )
    todo = []
    if users.members:
        todo.append("take the pods out of the group (annotation, labels) or delete them")
    if users.rules:
        todo.append("change or delete those rules")
    return Decision.deny(
        "InUse",
        f"security group {key_text(key)} is in use: {' and '.join(parts)}; "
        f"{' and '.join(todo)} first",
    )


def admit_address_group_delete(
    key: ObjKey, rules: Sequence[ObjKey], namespace_terminating: bool = False
) -> Decision:
    """Deleting an IPAddressGroup: refused while a rule uses it as its remote (a Deny rule
    naming it would silently become a no-op)."""
    if namespace_terminating or not rules:
        return Decision.allow()
    return Decision.deny(
        "InUse",
        f"IP address group {key_text(key)} is in use: it is the remote of "
        f"{_plural(len(rules), 'rule')} ({listing(rules)}); change or delete those rules first",
    )
