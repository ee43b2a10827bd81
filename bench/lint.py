"""Lint benchmark: ``kubectl secgroups lint -f`` of one security group with many rules.

Run: ``python bench/lint.py [--sizes 1000,10000] [--repeat N] [--seed S] [--pairwise]``.
A script, not a test: it prints a table (rules; the core's ``lint`` on parsed facts; the
whole command on a YAML file; shadowed rules found; goal), each time as wall-clock and
CPU seconds (on a loaded machine the CPU time is the fairer figure), and never fails on
time. ``--pairwise`` adds the shadow analysis as it was before issue 11 — every rule
against every earlier one — on the same group, for comparison (minutes at 10,000).

The group is what a big, untidy group looks like: rules of both directions and
families, every protocol, single ports, ranges and lists, ICMP types with and without
codes, CIDRs from /8 to host routes (IPv4 and IPv6), the world, remote groups and
address groups, priorities 1-100, a fifth of them Deny — and, as in real groups, some
rules repeated or covered by a broader earlier one (the shadow analysis must find
them, and must not compare every pair to do so: that was quadratic, issue 11).

Goal (docs/performance.md): 10,000 rules in one group linted in under 10 s, end to end,
on the project's 2-core machine.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from secgroups.analysis import group_rules
from secgroups.facts import ClusterFacts, NamespaceFacts
from secgroups.linting import Code, lint
from secgroups.models import ENFORCE_LABEL, IPAddressGroup, SecurityGroup, SecurityGroupRule
from secgroups.shadowing import covers

GOAL_SECONDS = 10.0
GOAL_RULES = 10_000
NAMESPACE = "bench"
GROUP = "big"
PORTS = ("22", "80", "443", "80-89", "1000-2000", "22,25,27", "8000-8080,9090", "https", "5432")


def rule_specs(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """``n`` rule manifests of one group (see the module docstring)."""
    rnd = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        if out and rnd.random() < 0.05:  # a repeat of an earlier rule, or a narrower copy
            spec = dict(rnd.choice(out)["spec"])
            spec["priority"] = min(100, spec["priority"] + rnd.randint(0, 3))
        else:
            spec = _random_spec(rnd)
        out.append(
            {
                "apiVersion": "secgroups.dev/v1alpha1",
                "kind": "SecurityGroupRule",
                "metadata": {"name": f"r{i:05d}", "namespace": NAMESPACE},
                "spec": spec,
            }
        )
    return out


def _random_spec(rnd: random.Random) -> dict[str, Any]:
    v6 = rnd.random() < 0.3
    spec: dict[str, Any] = {
        "securityGroup": GROUP,
        "direction": rnd.choice(("Ingress", "Egress")),
        "action": "Deny" if rnd.random() < 0.2 else "Allow",
        "priority": rnd.randint(1, 100),
        "ipFamily": "IPv6" if v6 else "IPv4",
    }
    proto = rnd.choices(("TCP", "UDP", "ICMP", "GRE", "All"), (55, 20, 15, 5, 5))[0]
    spec["protocol"] = proto
    if proto in ("TCP", "UDP") and rnd.random() < 0.9:
        spec["ports"] = rnd.choice(PORTS) if rnd.random() < 0.3 else str(rnd.randint(1, 65535))
    if proto == "ICMP" and rnd.random() < 0.7:
        icmp = {"type": rnd.choice((128, 129, 1, 2)) if v6 else rnd.choice((0, 3, 8, 11))}
        if rnd.random() < 0.4:
            icmp["code"] = rnd.randint(0, 4)
        spec["icmp"] = icmp
    # The world (no remote, or /0) only for a port or an ICMP type, as in real groups: a
    # whole protocol open to the world would shadow most of what follows.
    narrow = "ports" in spec or "icmp" in spec
    kind = rnd.random()
    if kind < 0.75 or (kind >= 0.95 and not narrow):
        spec["remote"] = {"cidr": _cidr(rnd, v6)}
    elif kind < 0.85:
        spec["remote"] = {"securityGroup": {"name": f"peer-{rnd.randrange(20)}"}}
    elif kind < 0.95:
        spec["remote"] = {"ipAddressGroup": {"name": f"ipag-{rnd.randrange(10)}"}}
    elif kind < 0.97:
        spec["remote"] = {"cidr": "::/0" if v6 else "0.0.0.0/0"}
    return spec  # else: no remote, any address


def _cidr(rnd: random.Random, v6: bool) -> str:
    if v6:
        length = rnd.choice((48, 56, 64, 96, 128))
        words = [0x2001, *(rnd.randrange(1 << 16) for _ in range(7))]
        text = ":".join(f"{w:x}" for w in words)
        return f"{text}/{length}"
    length = rnd.choice((16, 20, 24, 28, 32))
    return f"{rnd.randrange(1, 224)}.{rnd.randrange(256)}.{rnd.randrange(256)}.0/{length}"


def manifests(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """The group, its peers and address groups, a Namespace, and ``n`` rules."""
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": NAMESPACE, "labels": {ENFORCE_LABEL: "true"}},
        },
        _group(GROUP),
        *(_group(f"peer-{i}") for i in range(20)),
        *(
            {
                "apiVersion": "secgroups.dev/v1alpha1",
                "kind": "IPAddressGroup",
                "metadata": {"name": f"ipag-{i}", "namespace": NAMESPACE},
                "spec": {"addresses": [f"192.0.2.{i}", f"198.51.100.0/{24 + i % 8}"]},
            }
            for i in range(10)
        ),
    ]
    last = [  # deny the rest: a common last rule, shadowing nothing
        {
            "apiVersion": "secgroups.dev/v1alpha1",
            "kind": "SecurityGroupRule",
            "metadata": {"name": f"deny-rest-{d.lower()}-{f.lower()}", "namespace": NAMESPACE},
            "spec": {
                "securityGroup": GROUP,
                "direction": d,
                "action": "Deny",
                "priority": 100,
                "ipFamily": f,
                "protocol": "All",
            },
        }
        for d in ("Ingress", "Egress")
        for f in ("IPv4", "IPv6")
    ]
    return docs + rule_specs(n - len(last), seed) + last


def _group(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "secgroups.dev/v1alpha1",
        "kind": "SecurityGroup",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"podSelector": {"matchLabels": {"app": name}}},
    }


def facts_of(docs: list[dict[str, Any]]) -> ClusterFacts:
    kinds = {"SecurityGroup": [], "SecurityGroupRule": [], "IPAddressGroup": []}  # type: dict[str, list[Any]]
    models = {
        "SecurityGroup": SecurityGroup,
        "SecurityGroupRule": SecurityGroupRule,
        "IPAddressGroup": IPAddressGroup,
    }
    namespaces = []
    for d in docs:
        if d["kind"] == "Namespace":
            namespaces.append(
                NamespaceFacts(name=d["metadata"]["name"], labels=d["metadata"]["labels"])
            )
        else:
            kinds[d["kind"]].append(models[d["kind"]].model_validate(d))
    return ClusterFacts(
        namespaces=tuple(namespaces),
        groups=tuple(kinds["SecurityGroup"]),
        rules=tuple(kinds["SecurityGroupRule"]),
        address_groups=tuple(kinds["IPAddressGroup"]),
    )


@dataclass(frozen=True)
class Time:
    wall: float
    cpu: float

    def __str__(self) -> str:
        return f"{self.wall:7.2f} s ({self.cpu:6.2f} s CPU)"


def timed(fn: Callable[[], Any], repeat: int) -> tuple[Time, Any]:
    """Median wall-clock and CPU time of ``repeat`` runs, and the last result."""
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return Time(statistics.median(walls), statistics.median(cpus)), result


def pairwise_shadowed(facts: ClusterFacts) -> int:
    """The shadow analysis before issue 11: each rule against every earlier rule."""
    ordered = group_rules(r for r in facts.rules if r.spec.security_group == GROUP)
    count = 0
    for direction in {r.direction for r in ordered}:
        rules = [r for r in ordered if r.direction is direction]
        for j, later in enumerate(rules):
            if any(covers(earlier, later) for earlier in rules[:j]):
                count += 1
    return count


@dataclass(frozen=True)
class Row:
    rules: int
    core: Time
    command: Time
    shadowed: int
    exit_code: int
    pairwise: Time | None = None


def measure(n: int, repeat: int, seed: int, tmp: Path, pairwise: bool) -> Row:
    from secgroups_cli.main import main

    docs = manifests(n, seed)
    facts = facts_of(docs)
    core, findings = timed(lambda: lint(facts), repeat)
    shadowed = sum(f.code is Code.SHADOWED for f in findings)
    path = tmp / f"group-{n}.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False), encoding="utf-8")

    def command() -> int:
        out, err = io.StringIO(), io.StringIO()
        return main(["lint", "-f", str(path), "-o", "json"], stdout=out, stderr=err)

    cmd, code = timed(command, repeat)
    old = None
    if pairwise:
        old, count = timed(lambda: pairwise_shadowed(facts), 1)
        assert count == shadowed, f"pairwise found {count} shadowed rules, the index {shadowed}"
    return Row(n, core, cmd, shadowed, code, old)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--sizes", default="1000,10000", help="rules per group, comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (median shown)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--pairwise", action="store_true", help="also time the pre-issue-11 pairwise analysis"
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    head = f"{'rules':>6}  {'lint, core':<24}  {'lint -f FILE, command':<24}  {'shadowed':>8}  goal"
    if args.pairwise:
        head += f"  {'shadow analysis, pairwise (before)':<24}"
    print(head)
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            row = measure(n, args.repeat, args.seed, Path(tmp), args.pairwise)
            goal = f"< {GOAL_SECONDS:.0f} s" if n == GOAL_RULES else ""
            line = f"{row.rules:>6}  {row.core!s:<24}  {row.command!s:<24}  {row.shadowed:>8}  "
            line += f"{goal:<6}"
            if row.pairwise is not None:
                line += f"  {row.pairwise!s:<24}"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
