"""What the operator reports in the status of the user's objects (pure).

SecurityGroup: member count, rule count, S-L-1 quota usage per direction and IP
type, and conditions ``Ready`` (False with reason ``QuotaExceeded`` or
``TooManyMembers`` on S-L-1/S-L-2 errors) and ``Warning`` findings in its
message. SecurityGroupRule: ``Ready``, or False with ``GroupNotFound`` /
``RemoteNotFound``. IPAddressGroup: ``Ready``. Conditions keep their
``lastTransitionTime`` while their status and reason stay the same, so a steady
cluster causes no status writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from secgroups.compiling import Compilation
from secgroups.facts import ClusterFacts
from secgroups.quotas import QuotaReport

StatusKey = tuple[str, str, str]  # (kind, namespace, name)


def _condition(
    ctype: str,
    ok: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
    previous: Mapping[str, Any] | None,
) -> dict[str, Any]:
    status = "True" if ok else "False"
    since = now
    for cond in (previous or {}).get("conditions", ()):
        if (
            cond.get("type") == ctype
            and cond.get("status") == status
            and cond.get("reason") == reason
        ):
            since = cond.get("lastTransitionTime", now)
    out: dict[str, Any] = {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def compute_statuses(
    facts: ClusterFacts,
    compilation: Compilation,
    quotas: QuotaReport,
    now: str,
    previous: Mapping[StatusKey, Mapping[str, Any]],
) -> dict[StatusKey, dict[str, Any]]:
    """Desired status of every SecurityGroup, SecurityGroupRule and IPAddressGroup."""
    out: dict[StatusKey, dict[str, Any]] = {}
    members = compilation.memberships.members()
    rule_counts: dict[tuple[str, str], int] = {}
    for rule in facts.rules:
        gk = (rule.metadata.namespace or "default", rule.spec.security_group)
        rule_counts[gk] = rule_counts.get(gk, 0) + 1
    problems_by_object: dict[tuple[str, str, str], list[str]] = {}
    for p in compilation.problems:
        problems_by_object.setdefault((p.kind, p.namespace, p.name), []).append(p.message)
    findings: dict[str, list[Any]] = {}
    for f in quotas.findings:
        findings.setdefault(f.subject, []).append(f)

    group_keys = set()
    for g in facts.groups:
        ns, name = g.metadata.namespace or "default", g.metadata.name
        group_keys.add((ns, name))
        key: StatusKey = ("SecurityGroup", ns, name)
        usage = quotas.groups.get((ns, name))
        errors = [f for f in findings.get(f"{ns}/{name}", []) if f.severity == "error"]
        warnings = [f for f in findings.get(f"{ns}/{name}", []) if f.severity == "warning"]
        if errors:
            reason = "QuotaExceeded" if errors[0].requirement == "S-L-1" else "TooManyMembers"
            ready = _condition(
                "Ready",
                False,
                reason,
                "; ".join(f"{f.requirement}: {f.message}" for f in errors),
                g.metadata.generation,
                now,
                previous.get(key),
            )
        else:
            message = "; ".join(f"{f.requirement}: {f.message}" for f in warnings)
            ready = _condition(
                "Ready", True, "Compiled", message, g.metadata.generation, now, previous.get(key)
            )
        out[key] = {
            "observedGeneration": g.metadata.generation,
            "memberCount": len(members.get((ns, name), ())),
            "ruleCount": rule_counts.get((ns, name), 0),
            "rulesCountedTowardsQuota": usage.usage() if usage else {},
            "conditions": [ready],
        }

    for rule in facts.rules:
        ns, name = rule.metadata.namespace or "default", rule.metadata.name
        key = ("SecurityGroupRule", ns, name)
        gk = (ns, rule.spec.security_group)
        if gk not in group_keys:
            cond = _condition(
                "Ready",
                False,
                "GroupNotFound",
                f"security group {ns}/{rule.spec.security_group} does not exist",
                rule.metadata.generation,
                now,
                previous.get(key),
            )
        else:
            remote_problem = _remote_problem(rule, problems_by_object)
            if remote_problem:
                cond = _condition(
                    "Ready",
                    False,
                    "RemoteNotFound",
                    remote_problem,
                    rule.metadata.generation,
                    now,
                    previous.get(key),
                )
            else:
                cond = _condition(
                    "Ready", True, "Compiled", "", rule.metadata.generation, now, previous.get(key)
                )
        out[key] = {"observedGeneration": rule.metadata.generation, "conditions": [cond]}

    for ipag in facts.address_groups:
        ns, name = ipag.metadata.namespace or "default", ipag.metadata.name
        key = ("IPAddressGroup", ns, name)
        cond = _condition(
            "Ready",
            True,
            "Compiled",
            f"{len(ipag.spec.networks())} networks",
            ipag.metadata.generation,
            now,
            previous.get(key),
        )
        out[key] = {"observedGeneration": ipag.metadata.generation, "conditions": [cond]}
    return out


def _remote_problem(rule: Any, problems: Mapping[tuple[str, str, str], list[str]]) -> str:
    remote = rule.spec.remote
    ns = rule.metadata.namespace or "default"
    if remote is None:
        return ""
    for ref, kind in (
        (remote.security_group, "SecurityGroup"),
        (remote.ip_address_group, "IPAddressGroup"),
    ):
        if ref is not None and (kind, ref.namespace or ns, ref.name) in problems:
            return f"remote {kind} {ref.namespace or ns}/{ref.name} does not exist"
    return ""
