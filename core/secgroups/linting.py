"""Lint: the best-practice warnings of S-O-2, the limits of S-L-1..3, and broken references.

Pure; the CLI's ``kubectl secgroups lint`` prints the findings and turns them into an
exit status for CI. Each finding has a stable ``code`` (for filtering and for people
searching the docs), a severity, the spec requirement it is about, and its subject.

Severities, decided here and listed in ``docs/cli.md``:

* **error** — the configuration does not do what it says: a rule attached to a group
  that does not exist (it has no effect), a remote naming a missing group or address
  group (the rule matches nothing), a pod annotation naming a missing group, a quota
  exceeded (S-L-1, S-L-2), more rules on one group than one compiled group holds (the
  admission webhook refuses the write, in the same words; the operator holds the group),
  a group or address group in use whose compiled form is too large to publish (the
  operator holds it and reports ``TooLarge`` in the same words).
* **warning** — valid but risky or wasteful (S-O-2): SSH/RDP, all ports or database
  ports open to the world; a rule shadowed by an earlier rule of its group; an ICMP
  type that its family does not have (an IPv6 rule for type 8, IPv4's echo request:
  ICMPv6's is 128); a group or address group nobody uses; a quota nearly used up; more
  than 5 groups on a pod (S-L-3).

"The world" is a remote that matches every address of the rule's family: no remote,
``0.0.0.0/0`` / ``::/0``, or an IP address group containing one of those. Only ingress
Allow rules can open a pod to the world.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from secgroups import quotas
from secgroups.analysis import PolicyView, RemoteType, rule_name
from secgroups.compiled import CompiledRule, RemoteKind
from secgroups.facts import ClusterFacts
from secgroups.membership import GroupKey, Scope
from secgroups.models import DEFAULT_GROUP_NAME, Action, Direction, IPFamily, Protocol

SSH_PORT = 22
RDP_PORT = 3389
# Internal services that should never face the world (S-O-2; the source names MySQL and
# Redis): port → service.
DATABASE_PORTS: dict[int, str] = {
    1433: "mssql",
    1521: "oracle",
    3306: "mysql",
    5432: "postgresql",
    6379: "redis",
    9200: "elasticsearch",
    11211: "memcached",
    27017: "mongodb",
}
# Protocols on which a database port is a real exposure (memcached also answers UDP).
_DATABASE_UDP = frozenset({11211})

# ICMP types in use per family (IANA's ICMP and ICMPv6 registries: assigned, deprecated
# or experimental; not the unassigned and reserved ones). A rule of the other family's
# type matches packets no standard stack sends.
ICMP_TYPES: dict[IPFamily, frozenset[int]] = {
    IPFamily.IPV4: frozenset({0, *range(3, 7), *range(8, 19), *range(30, 44), 253, 254}),
    IPFamily.IPV6: frozenset({*range(1, 5), 100, 101, 127, *range(128, 162), 200, 201}),
}
# The same message in the other family, for the hint: (IPv4 type, ICMPv6 type, name).
ICMP_TWINS = (
    (0, 129, "echo reply"),
    (3, 1, "destination unreachable"),
    (5, 137, "redirect"),
    (8, 128, "echo request"),
    (9, 134, "router advertisement"),
    (10, 133, "router solicitation"),
    (11, 3, "time exceeded"),
    (12, 4, "parameter problem"),
    (42, 160, "extended echo request"),
    (43, 161, "extended echo reply"),
)


class Severity(StrEnum):
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return 1 if self is Severity.ERROR else 0


class Code(StrEnum):
    ADMIN_OPEN = "admin-port-open-to-world"
    ALL_PORTS_OPEN = "all-ports-open-to-world"
    DATABASE_OPEN = "database-port-open-to-world"
    SHADOWED = "shadowed-rule"
    ICMP_TYPE_FAMILY = "icmp-type-not-in-family"
    UNUSED_GROUP = "unused-group"
    UNUSED_ADDRESS_GROUP = "unused-address-group"
    QUOTA = "quota"
    TOO_MANY_RULES = "too-many-rules"
    TOO_LARGE = "too-large"
    GROUP_MISSING = "group-missing"
    REMOTE_MISSING = "remote-missing"
    ANNOTATION_GROUP_MISSING = "annotation-group-missing"


@dataclass(frozen=True, order=True)
class Finding:
    """One lint finding about one object (``kind namespace/name``)."""

    namespace: str
    kind: str
    name: str
    code: Code
    severity: Severity
    requirement: str
    message: str

    @property
    def subject(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def _world(view: PolicyView, rule: CompiledRule) -> bool:
    remote = rule.remote
    if remote.kind is RemoteKind.ANY:
        return True
    if remote.kind is RemoteKind.CIDR:
        return any(n.prefixlen == 0 for n in remote.networks())
    kind, _ = view.remote_ref(rule)
    if kind is not RemoteType.IP_ADDRESS_GROUP:
        return False
    return any(n.endswith("/0") for n in view.resolve_remote(rule).networks)


def _has_port(rule: CompiledRule, port: int, udp_too: bool = False) -> bool:
    protocols = {Protocol.ALL, Protocol.TCP} | ({Protocol.UDP} if udp_too else set())
    if rule.protocol not in protocols:
        return False
    return not rule.ports or any(port in span for span in rule.ports)


def _world_findings(view: PolicyView, key: GroupKey, rule: CompiledRule) -> list[Finding]:
    if rule.direction is not Direction.INGRESS or rule.action is not Action.ALLOW:
        return []
    if not _world(view, rule):
        return []

    def finding(code: Code, message: str) -> Finding:
        return Finding(
            key[0], "SecurityGroupRule", rule_name(rule), code, Severity.WARNING, "S-O-2", message
        )

    remote = str(view.resolve_remote(rule))
    where = f"group {key[1]}: {rule.family.value} from {remote}"
    all_ports = rule.protocol is Protocol.ALL or (
        rule.protocol in (Protocol.TCP, Protocol.UDP) and not rule.ports
    )
    if all_ports:
        what = "all protocols and ports" if rule.protocol is Protocol.ALL else "all ports"
        proto = "" if rule.protocol is Protocol.ALL else f" {rule.protocol.value}"
        return [finding(Code.ALL_PORTS_OPEN, f"{what}{proto} open to the world ({where})")]
    out: list[Finding] = []
    admin = [
        name
        for port, name, udp in ((SSH_PORT, "SSH 22", False), (RDP_PORT, "RDP 3389", True))
        if _has_port(rule, port, udp)
    ]
    if admin:
        out.append(finding(Code.ADMIN_OPEN, f"{' and '.join(admin)} open to the world ({where})"))
    dbs = [
        f"{name} {port}"
        for port, name in sorted(DATABASE_PORTS.items())
        if _has_port(rule, port, port in _DATABASE_UDP)
    ]
    if dbs:
        out.append(
            finding(
                Code.DATABASE_OPEN,
                f"internal database port(s) {', '.join(dbs)} reachable from the world ({where})",
            )
        )
    return out


def _icmp_findings(key: GroupKey, rule: CompiledRule) -> list[Finding]:
    """An ICMP type its family does not have (issue 11: IPv6 with type 8 went unnoticed)."""
    if rule.protocol is not Protocol.ICMP or rule.icmp_type is None:
        return []
    if rule.icmp_type in ICMP_TYPES[rule.family]:
        return []
    six = rule.family is IPFamily.IPV6
    name, other = "ICMPv6" if six else "ICMP", "IPv4" if six else "IPv6"
    message = f"group {key[1]}: {rule.family.value} rule for {name} type {rule.icmp_type}, "
    message += f"which {name} does not have: it matches nothing a standard stack sends"
    for v4, v6, what in ICMP_TWINS:
        if rule.icmp_type == (v4 if six else v6):
            message += (
                f" ({rule.icmp_type} is {other}'s {what}; {name} {what} is type "
                f"{v6 if six else v4})"
            )
    return [
        Finding(
            key[0],
            "SecurityGroupRule",
            rule_name(rule),
            Code.ICMP_TYPE_FAMILY,
            Severity.WARNING,
            "S-M-2",
            message,
        )
    ]


def _reference_findings(view: PolicyView) -> list[Finding]:
    out: list[Finding] = []
    for rule in sorted(
        view.facts.rules, key=lambda r: (r.metadata.namespace or "", r.metadata.name)
    ):
        ns = rule.metadata.namespace or "default"
        gkey = (ns, rule.spec.security_group)
        if gkey not in view.groups:
            if gkey[1] == DEFAULT_GROUP_NAME:
                msg = (
                    f"attached to group {DEFAULT_GROUP_NAME}, which has no SecurityGroup object: "
                    "its synthesized S-D-1 rules apply and this rule has no effect"
                )
            else:
                msg = f"attached to security group {gkey[1]}, which does not exist: no effect"
            out.append(
                Finding(
                    ns,
                    "SecurityGroupRule",
                    rule.metadata.name,
                    Code.GROUP_MISSING,
                    Severity.ERROR,
                    "S-M-1",
                    msg,
                )
            )
        remote = rule.spec.remote
        if remote is None:
            continue
        if remote.security_group is not None:
            ref = (remote.security_group.namespace or ns, remote.security_group.name)
            if ref not in view.groups and ref[1] != DEFAULT_GROUP_NAME:
                what = f"security group {ref[0]}/{ref[1]}"
            else:
                continue
        elif remote.ip_address_group is not None:
            ref = (remote.ip_address_group.namespace or ns, remote.ip_address_group.name)
            if ref not in view.address_groups:
                what = f"IP address group {ref[0]}/{ref[1]}"
            else:
                continue
        else:
            continue
        out.append(
            Finding(
                ns,
                "SecurityGroupRule",
                rule.metadata.name,
                Code.REMOTE_MISSING,
                Severity.ERROR,
                "S-M-4",
                f"remote {what} does not exist: the rule matches nothing",
            )
        )
    for (ns, pod), names in sorted(view.compilation.memberships.unknown_annotated.items()):
        out.append(
            Finding(
                ns,
                "Pod",
                pod,
                Code.ANNOTATION_GROUP_MISSING,
                Severity.ERROR,
                "S-M-1",
                f"annotation names security group(s) that do not exist: {', '.join(names)}",
            )
        )
    return out


def _unused_findings(view: PolicyView) -> list[Finding]:
    used_groups: set[GroupKey] = set()
    used_ipags: set[GroupKey] = set()
    for rule in view.facts.rules:
        ns = rule.metadata.namespace or "default"
        remote = rule.spec.remote
        if remote is not None and remote.security_group is not None:
            ref = (remote.security_group.namespace or ns, remote.security_group.name)
            if ref != (ns, rule.spec.security_group):  # naming itself does not make it used
                used_groups.add(ref)
        if remote is not None and remote.ip_address_group is not None:
            used_ipags.add((remote.ip_address_group.namespace or ns, remote.ip_address_group.name))
    out: list[Finding] = []
    for key in sorted(view.groups):
        if view.members.get(key) or key in used_groups:
            continue
        why = "no member pods"
        if key[0] not in view.enforced:
            why += f" (namespace {key[0]} is not enforced)"
        out.append(
            Finding(
                key[0],
                "SecurityGroup",
                key[1],
                Code.UNUSED_GROUP,
                Severity.WARNING,
                "S-O-2",
                f"unused: {why} and no rule uses it as a remote",
            )
        )
    for key in sorted(view.address_groups):
        if key not in used_ipags:
            out.append(
                Finding(
                    key[0],
                    "IPAddressGroup",
                    key[1],
                    Code.UNUSED_ADDRESS_GROUP,
                    Severity.WARNING,
                    "S-O-2",
                    "unused: no rule uses it as a remote",
                )
            )
    return out


def _shadow_findings(view: PolicyView) -> list[Finding]:
    out: list[Finding] = []
    for s in view.shadowed_rules():
        effect = "it is redundant" if s.same_action else f"its {s.rule.action.value} never applies"
        out.append(
            Finding(
                s.group[0],
                "SecurityGroupRule",
                rule_name(s.rule),
                Code.SHADOWED,
                Severity.WARNING,
                "S-X-1",
                f"shadowed by rule {rule_name(s.by)} (priority {s.by.priority}, "
                f"{s.by.action.value}) of group {s.group[1]}, which decides first for every "
                f"packet it matches: {effect}",
            )
        )
    return out


def _quota_findings(view: PolicyView) -> list[Finding]:
    report = quotas.account(view.facts, view.scope)
    out: list[Finding] = []
    for f in report.findings:
        ns, _, name = f.subject.partition("/")
        out.append(
            Finding(
                ns,
                "Pod" if f.requirement == "S-L-3" else "SecurityGroup",
                name,
                Code.QUOTA,
                Severity(f.severity),
                f.requirement,
                f.message,
            )
        )
    return out


def _size_findings(view: PolicyView) -> list[Finding]:
    """Groups with more rules than the webhook admits (quotas.MAX_RULES_PER_GROUP), with
    or without members or an object: the webhook counts what is attached, so do we."""
    return [
        Finding(
            key[0],
            "SecurityGroup",
            key[1],
            Code.TOO_MANY_RULES,
            Severity.ERROR,
            "",  # a limit of the product, not of the spec (docs/architecture.md, "Limits")
            quotas.too_many_rules_error(key, len(rules)),
        )
        for key, rules in view.rules_of.items()
        if len(rules) > quotas.MAX_RULES_PER_GROUP
    ]


def _too_large_findings(view: PolicyView) -> list[Finding]:
    """Compiled groups and address sets over the size the operator publishes, as the
    compiler reports them (``compiling.too_large_problems``): only what is in use is
    compiled, so only that is measured."""
    return [
        Finding(
            p.namespace,
            p.kind,
            p.name,
            Code.TOO_LARGE,
            Severity.ERROR,
            "",  # a limit of the product (docs/architecture.md, "Limits")
            p.message,
        )
        for p in view.compilation.problems
        if p.reason in ("TooLarge", "SetTooLarge")
    ]


def lint(facts: ClusterFacts, scope: Scope | None = None) -> tuple[Finding, ...]:
    """Every finding for ``facts``, sorted by namespace, kind, name, code."""
    return lint_view(PolicyView(facts, scope))


def lint_view(view: PolicyView) -> tuple[Finding, ...]:
    """As :func:`lint`, over an already built view."""
    findings = _reference_findings(view)
    for key in sorted(view.groups):
        spec = view.compiled_group(key)
        for rule in (*spec.ingress, *spec.egress):
            findings.extend(_world_findings(view, key, rule))
            findings.extend(_icmp_findings(key, rule))
    findings += _shadow_findings(view)
    findings += _unused_findings(view)
    findings += _quota_findings(view)
    findings += _size_findings(view)
    findings += _too_large_findings(view)
    return tuple(sorted(set(findings)))
