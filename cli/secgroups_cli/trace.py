"""``kubectl secgroups trace``: would a new connection be allowed, and which rule decides?

Both checks of S-X-2 are shown: the egress rules of the sender and the ingress rules of
the receiver, each group in sequence order until one matches. An end that is not a
managed pod (an outside address, a pod of a namespace that is not enforced) is not
filtered on its side. The verdict is the core evaluator's, the same oracle the node
agent's rulesets and the lab's probes are checked against.

Exit status: 0 allowed, 1 denied, 2 bad input.
"""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass
from typing import Any

from secgroups.addresses import IPAddress
from secgroups.analysis import SideTrace, Trace, rule_name
from secgroups.evaluating import PROTO_NAMES, Packet
from secgroups.facts import PodFacts
from secgroups.models import Direction, IPFamily
from secgroups_cli.app import POD_WORDS, App, parse_ref
from secgroups_cli.describe import (
    HELD_NOTE,
    key_text,
    ports_text,
    protocol_text,
    rule_dict,
    short_key,
)
from secgroups_cli.errors import EXIT_NEGATIVE, EXIT_OK, CliError
from secgroups_cli.render import table
from secgroups_cli.sources import Snapshot

PROTOCOLS = ("tcp", "udp", "icmp", "gre")


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "trace",
        parents=parents,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="the verdict for one new connection, and the rules that decide it",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    p.add_argument("--from", dest="src", required=True, metavar="pod/NAME|IP", help="sender")
    p.add_argument("--to", dest="dst", required=True, metavar="pod/NAME|IP", help="receiver")
    p.add_argument("--proto", "--protocol", required=True, choices=PROTOCOLS, type=str.lower)
    p.add_argument("--port", type=_port, help="destination port (tcp and udp: required)")
    p.add_argument("--icmp-type", type=_byte, help="ICMP type (default: echo request)")
    p.add_argument("--icmp-code", type=_byte, help="ICMP code (default 0)")
    p.add_argument(
        "--family",
        choices=[f.value for f in IPFamily],
        help="IP family when both ends are dual-stack pods (default: IPv4 if both have one)",
    )
    p.set_defaults(run=run)


def _port(text: str) -> int:
    from secgroups.ports import NAMED_PORTS

    value = NAMED_PORTS.get(text) if not text.isdigit() else int(text)
    if value is None or not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port (1-65535 or a service name): {text}")
    return value


def _byte(text: str) -> int:
    if not text.isdigit() or int(text) > 255:
        raise argparse.ArgumentTypeError(f"not 0-255: {text}")
    return int(text)


@dataclass(frozen=True)
class Endpoint:
    text: str
    pod: PodFacts | None
    ips: tuple[IPAddress, ...]

    def label(self) -> str:
        return key_text(self.pod.key) if self.pod is not None else str(self.ips[0])

    def ip(self, family: IPFamily) -> IPAddress | None:
        return next((a for a in self.ips if a.version == family.version), None)


def endpoint(snap: Snapshot, text: str) -> Endpoint:
    """An IP address, or a pod (with all its IPs)."""
    try:
        return Endpoint(text, None, (ipaddress.ip_address(text),))
    except ValueError:
        pass
    namespace, name = parse_ref(text, POD_WORDS, "a pod or an IP address", snap.namespace)
    pod = snap.pod(namespace, name)
    if not pod.ips:
        hint = " (in a file, add status.podIPs)" if not snap.online else ""
        raise CliError(f"pod {key_text(pod.key)} has no IP address yet{hint}")
    return Endpoint(text, pod, tuple(ipaddress.ip_address(i) for i in pod.ips))


def choose_family(src: Endpoint, dst: Endpoint, wanted: str | None) -> IPFamily:
    families = [f for f in IPFamily if src.ip(f) is not None and dst.ip(f) is not None]
    if wanted is not None:
        family = IPFamily(wanted)
        if family not in families:
            raise CliError(
                f"--family {wanted}: {src.label()} and {dst.label()} do not both have an "
                f"{wanted} address"
            )
        return family
    if not families:
        raise CliError(
            f"{src.label()} ({', '.join(map(str, src.ips))}) and {dst.label()} "
            f"({', '.join(map(str, dst.ips))}) have no IP family in common"
        )
    return families[0]


def build_packet(args: argparse.Namespace, src: IPAddress, dst: IPAddress) -> Packet:
    proto = args.proto
    if proto in ("tcp", "udp"):
        if args.port is None:
            raise CliError(f"--port is required for {proto}")
    elif args.port is not None:
        raise CliError(f"--port applies to tcp and udp only, not {proto}")
    if proto != "icmp" and (args.icmp_type is not None or args.icmp_code is not None):
        raise CliError("--icmp-type and --icmp-code apply to icmp only")
    return Packet.make(str(src), str(dst), proto, args.port, args.icmp_type, args.icmp_code)


def packet_dict(packet: Packet) -> dict[str, Any]:
    return {
        "family": packet.family.value,
        "protocol": PROTO_NAMES.get(packet.proto, str(packet.proto)),
        "src": str(packet.src),
        "dst": str(packet.dst),
        "port": packet.dport,
        "icmpType": packet.icmp_type,
        "icmpCode": packet.icmp_code,
    }


def side_dict(side: SideTrace) -> dict[str, Any]:
    v = side.verdict
    return {
        "direction": side.direction.value,
        "address": str(side.address),
        "pod": key_text(side.pod) if side.pod else None,
        "filtered": v is not None,
        "allowed": True if v is None else v.allowed,
        "group": str(v.group) if v is not None and v.group is not None else None,
        "rule": rule_dict(v.rule) if v is not None and v.rule is not None else None,
        "defaultDeny": v is not None and v.rule is None,
        "note": side.note or None,
        "checks": [
            {"group": key_text(c.group), "rule": c.rule.id if c.rule else None}
            | ({"held": c.held} if c.held else {})
            for c in side.checks
        ],
    }


def report(trace: Trace, src: Endpoint, dst: Endpoint) -> dict[str, Any]:
    deciding = trace.deciding
    decided: dict[str, Any] | None = None
    if deciding is not None:
        decided = {
            "direction": deciding.direction.value,
            "pod": str(deciding.pod),
            "group": str(deciding.group) if deciding.group else None,
            "rule": deciding.rule.id if deciding.rule else None,
            "defaultDeny": deciding.rule is None,
        }
    return {
        "packet": packet_dict(trace.packet),
        "from": src.label(),
        "to": dst.label(),
        "allowed": trace.allowed,
        "verdict": "allowed" if trace.allowed else "denied",
        "decidedBy": decided,
        "egress": side_dict(trace.egress),
        "ingress": side_dict(trace.ingress),
    }


def summary(trace: Trace) -> str:
    """One line: what decided (e.g. ``rule demo/b01 of group demo/sg-b (ingress of demo/b1)``)."""
    d = trace.deciding
    if d is None:
        if trace.packet.src == trace.packet.dst:
            return trace.egress.note
        return "neither end is a managed pod: not filtered"
    side = f"{'egress' if d.direction is Direction.EGRESS else 'ingress'} of {d.pod}"
    if d.rule is None:
        return f"no rule matched: default deny ({side}, S-X-2)"
    return f"rule {d.rule.id} of group {d.group} ({side})"


def _side_text(app: App, side: SideTrace, role: str) -> str:
    style = app.style
    who = key_text(side.pod) if side.pod else str(side.address)
    title = f"{side.direction.value} of {who} ({role})"
    if side.verdict is None:
        return f"\n{style.bold(title)}\n  {side.note}\n"
    ns = side.pod[0] if side.pod else ""
    rows = []
    held = []
    for i, c in enumerate(side.checks, start=1):
        if c.held:
            held.append(c.held)
            result = "skipped: held (not published)"
            rows.append([str(i), short_key(c.group, ns), "-", "", "", "", "", result])
            continue
        if c.rule is None:
            n = len(app.snapshot().view.compiled_group(c.group).rules(side.direction))
            result = f"no match ({n} {side.direction.value.lower()} rule{'s' if n != 1 else ''})"
            rows.append([str(i), short_key(c.group, ns), "-", "", "", "", "", result])
            continue
        r = c.rule
        rows.append(
            [
                str(i),
                short_key(c.group, ns),
                rule_name(r),
                str(r.priority),
                style.action(r.action.value),
                protocol_text(r),
                ports_text(r),
                "match",
            ]
        )
    headers = ["#", "GROUP", "RULE", "PRIORITY", "ACTION", "PROTOCOL", "PORTS", "RESULT"]
    out = f"\n{style.bold(title)}\n" + table(headers, rows, style, indent="  ")
    if side.note:
        out += "  " + style.yellow(f"warning: {side.note}") + "\n"
    for why in held:
        out += "  " + style.yellow(f"warning: {why}; {HELD_NOTE}") + "\n"
    v = side.verdict
    if v.rule is None:
        out += "  " + style.red("no rule matched: default deny (S-X-2)") + "\n"
    else:
        out += f"  {style.verdict(v.allowed)} by rule {v.rule.id} of group {v.group}\n"
    return out


def render(app: App, trace: Trace, src: Endpoint, dst: Endpoint) -> str:
    style = app.style
    p = trace.packet
    port = f":{p.dport}" if p.dport is not None else ""
    icmp = f" type {p.icmp_type} code {p.icmp_code}" if p.icmp_type is not None else ""
    name = PROTO_NAMES.get(p.proto, str(p.proto))
    src_label = f"{p.src} ({src.label()})" if src.pod else str(p.src)
    dst_label = f"{p.dst}{port} ({dst.label()})" if dst.pod else f"{p.dst}{port}"
    out = f"{name}{icmp} {src_label} -> {dst_label}  [{p.family.value}]\n"
    verdict = style.verdict(trace.allowed, "ALLOWED" if trace.allowed else "DENIED")
    out += f"{style.bold('verdict:')} {verdict}: {summary(trace)}\n"
    out += _side_text(app, trace.egress, "sender")
    out += _side_text(app, trace.ingress, "receiver")
    if trace.allowed:
        out += style.dim(
            "\nReplies of this connection pass whatever the other direction's rules say (S-X-3).\n"
        )
    return out


def run(app: App, args: argparse.Namespace) -> int:
    snap = app.snapshot()
    src, dst = endpoint(snap, args.src), endpoint(snap, args.dst)
    family = choose_family(src, dst, args.family)
    src_ip, dst_ip = src.ip(family), dst.ip(family)
    assert src_ip is not None and dst_ip is not None
    trace = snap.view.trace(build_packet(args, src_ip, dst_ip))
    if app.machine:
        app.emit(report(trace, src, dst))
    else:
        app.write(render(app, trace, src, dst))
    return EXIT_OK if trace.allowed else EXIT_NEGATIVE
