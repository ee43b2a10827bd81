"""``kubectl secgroups matrix``: the expected connectivity between pods, one grid per port.

Rows are senders, columns receivers; ``.`` allowed, ``X`` denied. A pod reaching its own
IP never leaves the pod (loopback), so the diagonal is always ``.``. Extra endpoints
(``--ip``, e.g. an office address) join as rows and columns. Every cell is the core
evaluator's verdict, the same one ``trace`` explains and the lab compares with real
probes; the JSON form names the deciding rule of every cell.
"""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass
from typing import Any

from secgroups.addresses import IPAddress
from secgroups.evaluating import Packet
from secgroups.membership import FINISHED_PHASES
from secgroups.models import IPFamily
from secgroups.ports import NAMED_PORTS
from secgroups_cli.app import App
from secgroups_cli.describe import key_text
from secgroups_cli.errors import EXIT_OK, CliError
from secgroups_cli.render import table

DEFAULT_PORTS = "tcp/22,tcp/80,udp/53,icmp"


@dataclass(frozen=True)
class PortSpec:
    """One grid: a protocol and a destination port (or ICMP type)."""

    proto: str
    port: int | None = None
    icmp_type: int | None = None

    def __str__(self) -> str:
        if self.port is not None:
            return f"{self.proto}/{self.port}"
        if self.icmp_type is not None:
            return f"{self.proto}/{self.icmp_type}"
        return self.proto


def parse_ports(text: str) -> tuple[PortSpec, ...]:
    """``tcp/22,tcp/https,udp/53,icmp,icmp/8,gre`` → grids, in the order written."""
    out: list[PortSpec] = []
    for item in (t.strip().lower() for t in text.split(",")):
        if not item:
            continue
        proto, _, arg = item.partition("/")
        if proto in ("tcp", "udp"):
            port = NAMED_PORTS.get(arg) if not arg.isdigit() else int(arg)
            if port is None or not 1 <= port <= 65535:
                raise CliError(f"--ports {item}: expected {proto}/PORT (1-65535 or a service name)")
            out.append(PortSpec(proto, port=port))
        elif proto == "icmp":
            if arg and (not arg.isdigit() or int(arg) > 255):
                raise CliError(f"--ports {item}: expected icmp or icmp/TYPE (0-255)")
            out.append(PortSpec(proto, icmp_type=int(arg) if arg else None))
        elif proto == "gre" and not arg:
            out.append(PortSpec(proto))
        else:
            raise CliError(f"--ports {item}: expected tcp/PORT, udp/PORT, icmp[/TYPE] or gre")
    if not out:
        raise CliError("--ports: nothing to test")
    return tuple(dict.fromkeys(out))


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "matrix",
        parents=parents,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="expected connectivity between pods (rows: from, columns: to), one grid per port",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    p.add_argument(
        "--ports",
        default=DEFAULT_PORTS,
        help=f"grids to compute, comma-separated (default {DEFAULT_PORTS})",
    )
    p.add_argument("--family", choices=[f.value for f in IPFamily], default=IPFamily.IPV4.value)
    p.add_argument("-A", "--all-namespaces", action="store_true", help="pods of every namespace")
    p.add_argument(
        "--ip",
        action="append",
        default=[],
        metavar="IP",
        help="an extra endpoint outside the pods (repeatable)",
    )
    p.set_defaults(run=run)


@dataclass(frozen=True)
class Peer:
    label: str
    ip: IPAddress


def peers(app: App, family: IPFamily, all_namespaces: bool, ips: list[str]) -> list[Peer]:
    snap = app.snapshot()
    namespace = None if all_namespaces else snap.namespace
    out: list[Peer] = []
    skipped: list[str] = []
    for pod in snap.pods_in(namespace):
        if pod.host_network or pod.phase in FINISHED_PHASES:
            continue
        ip = next(
            (a for a in map(ipaddress.ip_address, pod.ips) if a.version == family.version), None
        )
        if ip is None:
            skipped.append(pod.name)
            continue
        out.append(Peer(pod.name if namespace else key_text(pod.key), ip))
    if skipped:
        app.note(f"note: no {family.value} address, left out: {', '.join(skipped)}")
    for text in ips:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise CliError(f"--ip {text}: not an IP address") from None
        if ip.version != family.version:
            raise CliError(f"--ip {text}: not an {family.value} address (--family {family.value})")
        out.append(Peer(str(ip), ip))
    if not out:
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        raise CliError(f"no pods with an {family.value} address in {where}")
    return out


def grid(app: App, spec: PortSpec, pool: list[Peer]) -> dict[str, Any]:
    view = app.snapshot().view
    rows: list[str] = []
    cells: list[dict[str, Any]] = []
    for src in pool:
        row = ""
        for dst in pool:
            packet = Packet.make(str(src.ip), str(dst.ip), spec.proto, spec.port, spec.icmp_type)
            trace = view.trace(packet)
            d = trace.deciding
            allowed = trace.allowed
            rule = d.rule.id if d is not None and d.rule is not None else None
            if d is None:
                why: str | None = "self (loopback)" if src.ip == dst.ip else "not filtered"
            else:
                why = "default deny" if d.rule is None else None
            row += "." if allowed else "X"
            cells.append(
                {"from": src.label, "to": dst.label, "allowed": allowed, "rule": rule, "note": why}
            )
        rows.append(row)
    return {"port": str(spec), "rows": rows, "cells": cells}


def render(app: App, family: IPFamily, pool: list[Peer], grids: list[dict[str, Any]]) -> str:
    style = app.style
    out = []
    for g in grids:
        out.append(
            f"{style.bold(g['port'])} ({family.value}; rows: from, columns: to; "
            f". allowed, X denied)\n"
        )
        headers = ["", *(p.label for p in pool)]
        body = [
            [src.label, *(style.verdict(c == ".", c) for c in row)]
            for src, row in zip(pool, g["rows"], strict=True)
        ]
        out.append(table(headers, body, style, indent="  ") + "\n")
    return "".join(out)


def run(app: App, args: argparse.Namespace) -> int:
    specs = parse_ports(args.ports)
    family = IPFamily(args.family)
    pool = peers(app, family, args.all_namespaces, args.ip)
    grids = [grid(app, s, pool) for s in specs]
    if app.machine:
        app.emit(
            {
                "family": family.value,
                "peers": [{"name": p.label, "ip": str(p.ip)} for p in pool],
                "grids": grids,
            }
        )
    else:
        app.write(render(app, family, pool, grids))
    return EXIT_OK
