"""``kubectl secgroups explain pod/NAME``: a pod's groups and effective rules, with provenance.

Groups in sequence order, each with why the pod is in it (annotation, podSelector with
its sequence, or the namespace default group); then the ingress and egress rules in
the order they are matched (S-X-1): group by group, and within a group by priority,
Deny before Allow. Each rule shows its group, name, priority, action, family,
protocol, ports as numbers and its remote resolved to what it matches now.
"""

from __future__ import annotations

import argparse
from typing import Any

from secgroups.analysis import EffectiveRule, PodPolicy
from secgroups.membership import missing_groups_note
from secgroups.models import Direction
from secgroups_cli.app import POD_WORDS, App, parse_ref
from secgroups_cli.describe import (
    HELD_NOTE,
    effective_rule_dict,
    key_text,
    ports_text,
    protocol_text,
    remote_text,
    short_key,
)
from secgroups_cli.errors import EXIT_OK
from secgroups_cli.render import table
from secgroups_cli.sources import Snapshot


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "explain",
        parents=parents,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="a pod's groups and effective rules, in match order, with where they come from",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    p.add_argument("pod", metavar="pod/NAME", help="the pod (pod/NAME, pod/NAMESPACE/NAME)")
    p.set_defaults(run=run)


def _origin(snap: Snapshot, r: EffectiveRule) -> str | None:
    return snap.origin("SecurityGroupRule", r.group[0], r.name)


def report(snap: Snapshot, policy: PodPolicy) -> dict[str, Any]:
    pod = policy.pod
    return {
        "pod": {
            "namespace": pod.namespace,
            "name": pod.name,
            "ips": list(pod.ips),
            "node": pod.node,
            "managed": policy.managed,
            "unmanagedReason": policy.unmanaged_reason or None,
        },
        "groups": [
            {
                "position": m.position,
                "group": key_text(m.group),
                "why": m.why.value,
                "detail": m.detail,
                "exists": m.exists,
            }
            | ({"held": m.held} if m.held else {})
            for m in policy.groups
        ],
        "unknownGroups": list(policy.unknown_groups),
        "ingress": [effective_rule_dict(r, _origin(snap, r)) for r in policy.ingress],
        "egress": [effective_rule_dict(r, _origin(snap, r)) for r in policy.egress],
    }


def _rules_table(
    app: App, direction: Direction, rules: tuple[EffectiveRule, ...], namespace: str
) -> str:
    style = app.style
    rows = [
        [
            str(r.index),
            short_key(r.group, namespace),
            r.name,
            str(r.rule.priority),
            style.action(r.rule.action.value),
            r.rule.family.value,
            protocol_text(r.rule),
            ports_text(r.rule),
            remote_text(r.remote, namespace),
        ]
        for r in rules
    ]
    headers = ["#", "GROUP", "RULE", "PRIORITY", "ACTION", "FAMILY", "PROTOCOL", "PORTS"]
    headers.append("SOURCE" if direction is Direction.INGRESS else "DESTINATION")
    return table(headers, rows, style, indent="  ") or "  (no rules: everything is denied)\n"


def render(app: App, policy: PodPolicy) -> str:
    style = app.style
    pod = policy.pod
    ips = ", ".join(pod.ips) or "no IP yet"
    lines = [f"{style.bold('Pod ' + key_text(pod.key))}  {ips}  node {pod.node or '-'}\n"]
    if not policy.managed:
        lines.append(
            f"  not managed: {policy.unmanaged_reason}\n"
            "  Its traffic is not filtered by security groups on its side.\n"
        )
        return "".join(lines)
    if policy.unknown_groups:
        lines.append(
            style.yellow(f"  warning: {missing_groups_note(policy.unknown_groups)}") + "\n"
        )
    lines.append(f"\n{style.bold('Groups')} (sequence order: the first is matched first)\n")
    rows = [[str(m.position), short_key(m.group, pod.namespace), m.detail] for m in policy.groups]
    lines.append(
        table(["#", "GROUP", "WHY"], rows, style, indent="  ")
        or "  (none: the pod is in no group, so everything to and from it is denied)\n"
    )
    for m in policy.groups:
        if m.held:
            note = f"warning: {m.held}; {HELD_NOTE}"
            lines.append(style.yellow("  " + note) + "\n")
    for direction, rules in (
        (Direction.INGRESS, policy.ingress),
        (Direction.EGRESS, policy.egress),
    ):
        lines.append(
            f"\n{style.bold(direction.value)} rules in match order "
            "(the first match decides; no match: denied)\n"
        )
        lines.append(_rules_table(app, direction, rules, pod.namespace))
    return "".join(lines)


def run(app: App, args: argparse.Namespace) -> int:
    snap = app.snapshot()
    namespace, name = parse_ref(args.pod, POD_WORDS, "explain", snap.namespace)
    pod = snap.pod(namespace, name)
    policy = snap.view.pod_policy(pod.key)
    if app.machine:
        app.emit(report(snap, policy))
    else:
        app.write(render(app, policy))
    return EXIT_OK
