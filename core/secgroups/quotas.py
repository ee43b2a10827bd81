"""Quota accounting (S-L-1..3), with the reason for every count.

* S-L-1 — per group, per direction, per IP type: at most 120 rules that have a remote
  security group, a remote IP address group, or inconsecutive ports (a list such as
  ``22,25,27``); a rule with several of these counts once.
* S-L-2 — at most 6,000 member pods per group.
* S-L-3 — more than 5 groups on one pod is allowed but warned about.

And the size limits of what the operator publishes (docs/architecture.md, "Limits"):
every compiled object must fit one etcd request, so the operator checks each one
before writing it (:data:`MAX_COMPILED_OBJECT_BYTES`) and never writes one that does
not fit; the user-facing limits below keep objects well inside that bound, and an
admission webhook or ``lint`` can refuse what would break them:

* :data:`MAX_RULES_PER_GROUP` rules attached to one security group, whatever they are
  (S-L-1 counts only some of them);
* :data:`MAX_ADDRESS_GROUP_CIDRS` CIDRs in one IP address group once compiled
  (:func:`address_group_cidrs`: an IPv6 range can split into up to 254 CIDRs).

What is measured against :data:`MAX_COMPILED_OBJECT_BYTES` is written here once
(:func:`spec_text`, :func:`too_large_error`): the operator's publisher holds what it
says is too large, and ``compiling`` reports the same objects, in the same words, to
``lint``, ``explain`` and ``trace``.

Pure: the operator reports the result in status (and a webhook can reject on it),
the CLI's ``lint`` prints it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel

from secgroups.addresses import parse_entry
from secgroups.facts import ClusterFacts
from secgroups.membership import GroupKey, PodKey, Scope, resolve
from secgroups.models import Direction, IPFamily, SecurityGroupRule
from secgroups.ports import is_inconsecutive

RULE_QUOTA = 120
MEMBER_LIMIT = 6000
GROUPS_PER_POD_ADVISED = 5
NEAR_FRACTION = 0.8

# etcd refuses requests over 1.5 MiB (its --max-request-bytes default); the API server
# adds metadata and managedFields to what we send. One compiled object's JSON (spec and
# labels) must stay under this, checked before every write.
MAX_COMPILED_OBJECT_BYTES = 1_000_000
# A compiled rule is ~150-400 bytes (up to ~3 KB with a 255-character description and a
# long port list): 1,000 typical rules are ~300 KB.
MAX_RULES_PER_GROUP = 1000
# A compiled IPv6 CIDR is up to 46 bytes of JSON: 10,000 are ~460 KB.
MAX_ADDRESS_GROUP_CIDRS = 10_000


def address_group_cidrs(entries: Iterable[str], limit: int = MAX_ADDRESS_GROUP_CIDRS) -> int:
    """How many CIDRs an IP address group's entries compile to (both families).

    Exact (overlapping and adjacent entries are merged first, as the compiler does), but
    computed on integers without formatting a CIDR, and it stops counting at ``limit + 1``:
    a hostile group of 5,000 IPv6 ranges (about a million CIDRs) is refused in
    milliseconds instead of compiled. ValueError for an entry that does not parse.
    """
    by_version: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    for text in entries:
        entry = parse_entry(text)
        by_version[entry.version].append((int(entry.first), int(entry.last)))
    count = 0
    for version, intervals in by_version.items():
        bits = 32 if version == 4 else 128
        merged: list[list[int]] = []
        for lo, hi in sorted(intervals):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        for first, last in merged:
            lo = first
            while lo <= last:  # the fewest aligned blocks, as addresses._to_cidrs splits them
                size = lo & -lo if lo else 1 << bits
                while size > last - lo + 1:
                    size >>= 1
                lo += size
                count += 1
                if count > limit:
                    return count
    return count


def quota_reasons(rule: SecurityGroupRule) -> tuple[str, ...]:
    """Why a rule counts against S-L-1 (empty if it does not count)."""
    out: list[str] = []
    remote = rule.spec.remote
    if remote is not None and remote.security_group is not None:
        out.append("remote security group")
    if remote is not None and remote.ip_address_group is not None:
        out.append("remote IP address group")
    if rule.spec.ports is not None and is_inconsecutive(rule.spec.ports):
        out.append("inconsecutive ports")
    return tuple(out)


def quota_key(direction: Direction, family: IPFamily) -> str:
    """Status key, e.g. ``ingressIPv4``."""
    return f"{direction.value.lower()}{family.value}"


# The words of each finding, one copy: status conditions, ``lint`` and the admission
# webhook (``secgroups.admitting``) say the same thing about the same count.


def rule_quota_error(direction: Direction, family: IPFamily, count: int) -> str:
    """S-L-1 exceeded, e.g. ``121 Ingress IPv4 rules with a remote group, ...``."""
    return (
        f"{count} {direction.value} {family.value} rules with a remote group, a remote "
        f"address group or inconsecutive ports; the limit is {RULE_QUOTA}"
    )


def rule_quota_warning(direction: Direction, family: IPFamily, count: int) -> str:
    """S-L-1 nearly used up (from :data:`NEAR_FRACTION` of the limit)."""
    return f"{count} of {RULE_QUOTA} {direction.value} {family.value} quota rules used"


def member_limit_error(count: int) -> str:
    """S-L-2 exceeded."""
    return f"{count} member pods; the limit is {MEMBER_LIMIT}"


def member_limit_warning(count: int) -> str:
    """S-L-2 nearly reached."""
    return f"{count} of {MEMBER_LIMIT} members"


def too_many_rules_error(group: GroupKey, count: int) -> str:
    """More rules attached to one group than one compiled group may hold: the webhook's
    ``TooManyRules`` refusal, ``lint``'s finding and the compiler's problem say this."""
    return (
        f"security group {group[0]}/{group[1]}: {count} rules; at most "
        f"{MAX_RULES_PER_GROUP} rules can be attached to one group"
    )


def spec_text(spec: BaseModel) -> bytes:
    """A compiled spec as the JSON text the operator writes, compares and measures:
    pydantic's own serializer (fast, in Rust), defaults left out, never ``requires``
    (the publisher adds it when writing a node or group object)."""
    text = spec.model_dump_json(by_alias=True, exclude_defaults=True, exclude={"requires"})
    return text.encode()


def too_large_error(size: int) -> str | None:
    """Why a compiled object whose :func:`spec_text` is ``size`` bytes cannot be published
    (None when it can): the operator's ``TooLarge`` and ``lint``'s ``too-large`` say this."""
    if size <= MAX_COMPILED_OBJECT_BYTES:
        return None
    return (
        f"its compiled form is {size:,} bytes; at most "
        f"{MAX_COMPILED_OBJECT_BYTES:,} can be published"
    )


def groups_per_pod_warning(count: int) -> str:
    """S-L-3: more groups on one pod than advised."""
    return f"in {count} security groups; at most {GROUPS_PER_POD_ADVISED} are advised"


@dataclass(frozen=True)
class GroupUsage:
    group: GroupKey
    members: int
    # quota_key → [(rule name, reasons)]
    counted: Mapping[str, tuple[tuple[str, tuple[str, ...]], ...]] = field(default_factory=dict)

    def count(self, key: str) -> int:
        return len(self.counted.get(key, ()))

    def usage(self) -> dict[str, int]:
        return {quota_key(d, f): self.count(quota_key(d, f)) for d in Direction for f in IPFamily}


@dataclass(frozen=True)
class Finding:
    """A quota violation (error) or warning, with the rule number of the spec it is about."""

    requirement: str  # S-L-1, S-L-2 or S-L-3
    severity: str  # "error" or "warning"
    subject: str  # "ns/group" or "ns/pod"
    message: str


@dataclass(frozen=True)
class QuotaReport:
    groups: Mapping[GroupKey, GroupUsage]
    groups_per_pod: Mapping[PodKey, int]
    findings: tuple[Finding, ...]

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "error")


def group_usage(group: GroupKey, rules: Iterable[SecurityGroupRule], members: int) -> GroupUsage:
    """S-L-1 usage of one group from the rules attached to it, and its member count."""
    counted: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for rule in sorted(rules, key=lambda r: (r.metadata.namespace or "", r.metadata.name)):
        reasons = quota_reasons(rule)
        if reasons:
            key = quota_key(rule.spec.direction, rule.spec.ip_family)
            counted.setdefault(key, []).append((rule.metadata.name, reasons))
    return GroupUsage(
        group=group, members=members, counted={k: tuple(v) for k, v in sorted(counted.items())}
    )


def group_findings(usage: GroupUsage) -> list[Finding]:
    """S-L-1 and S-L-2 errors and warnings of one group."""
    findings: list[Finding] = []
    subject = f"{usage.group[0]}/{usage.group[1]}"
    for d in Direction:
        for fam in IPFamily:
            n = usage.count(quota_key(d, fam))
            if n > RULE_QUOTA:
                findings.append(Finding("S-L-1", "error", subject, rule_quota_error(d, fam, n)))
            elif n >= RULE_QUOTA * NEAR_FRACTION:
                findings.append(Finding("S-L-1", "warning", subject, rule_quota_warning(d, fam, n)))
    if usage.members > MEMBER_LIMIT:
        findings.append(Finding("S-L-2", "error", subject, member_limit_error(usage.members)))
    elif usage.members >= MEMBER_LIMIT * NEAR_FRACTION:
        findings.append(Finding("S-L-2", "warning", subject, member_limit_warning(usage.members)))
    return findings


def account(facts: ClusterFacts, scope: Scope | None = None) -> QuotaReport:
    """Count S-L-1..3 for every group and managed pod (:func:`group_usage` per group)."""
    ms = resolve(facts, scope or Scope())
    members = ms.members()
    rules_of: dict[GroupKey, list[SecurityGroupRule]] = {}
    for rule in facts.rules:
        group = (rule.metadata.namespace or "default", rule.spec.security_group)
        rules_of.setdefault(group, []).append(rule)
    counted = {g for g, rules in rules_of.items() if any(quota_reasons(r) for r in rules)}
    all_groups = sorted(
        {(g.metadata.namespace or "default", g.metadata.name) for g in facts.groups}
        | set(members)
        | counted
    )
    usage = {g: group_usage(g, rules_of.get(g, ()), len(members.get(g, ()))) for g in all_groups}
    findings: list[Finding] = []
    for u in usage.values():
        findings.extend(group_findings(u))
    per_pod = {p: len(g) for p, g in ms.groups_of.items()}
    for pod, n in per_pod.items():
        if n > GROUPS_PER_POD_ADVISED:
            findings.append(
                Finding("S-L-3", "warning", f"{pod[0]}/{pod[1]}", groups_per_pod_warning(n))
            )
    return QuotaReport(groups=usage, groups_per_pod=per_pod, findings=tuple(findings))
