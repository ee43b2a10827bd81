"""Compiler benchmark: full compile and one-event incremental recompiles of a large cluster.

Run: ``python bench/compile.py [--repeat N] [--scale F]``. A script, not a test:
it prints a table (case, median time of N runs, goal, ratio to the goal) and never
fails on time. The synthetic cluster is what a big tenant looks like: 10,000 pods
on 100 nodes in 50 namespaces, 1,000 security groups (20 per namespace, 10 chosen
by labels, 10 by annotation), 20,000 rules (20 per group: CIDRs, remote groups of
the same and other namespaces, IP address groups, every port form, both families,
Allow and Deny), 250 IP address groups; pods are dual-stack and in 3-5 groups.
Goals (docs/performance.md): full compile ≤ 2 s, one-rule incremental ≤ 20 ms,
on the project's 2-core machine.
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from secgroups.compiling import compile_policy
from secgroups.facts import ClusterFacts, NamespaceFacts, PodFacts
from secgroups.incremental import Changes, IncrementalCompiler, Kind
from secgroups.models import (
    ENFORCE_LABEL,
    IPAddressGroup,
    SecurityGroup,
    SecurityGroupRule,
)

PORTS = ("22", "80-82", "443", "22,25,27", "8000-8080,9090", "https", "5432", "53")


def synthetic_cluster(
    *,
    namespaces: int = 50,
    pods_per_ns: int = 200,
    groups_per_ns: int = 20,
    rules_per_group: int = 20,
    ipags_per_ns: int = 5,
    nodes: int = 100,
    seed: int = 1,
) -> ClusterFacts:
    """A deterministic large cluster (see the module docstring)."""
    rnd = random.Random(seed)
    ns_names = [f"ns-{i:02d}" for i in range(namespaces)]
    node_names = [f"node-{i:03d}" for i in range(nodes)]
    nss = [NamespaceFacts(name=n, labels={ENFORCE_LABEL: "true"}) for n in ns_names]
    selected = groups_per_ns // 2
    pods: list[PodFacts] = []
    groups: list[SecurityGroup] = []
    rules: list[SecurityGroupRule] = []
    ipags: list[IPAddressGroup] = []
    for n, ns in enumerate(ns_names):
        for p in range(pods_per_ns):
            k = n * pods_per_ns + p
            annotated = [f"g{rnd.randrange(selected, groups_per_ns):02d}" for _ in range(2)]
            pods.append(
                PodFacts(
                    namespace=ns,
                    name=f"pod-{p:04d}",
                    uid=f"uid-{k}",
                    node=node_names[rnd.randrange(nodes)],
                    ips=(f"10.{k >> 16 & 255}.{k >> 8 & 255}.{k & 255}", f"fd00::{k:x}"),
                    labels={"app": f"a{p % (selected - 3)}", "tier": f"t{p % 3}"},
                    groups_annotation=",".join(annotated),
                )
            )
        for g in range(groups_per_ns):
            # The first groups select by app, three by tier, the rest only by annotation.
            selector: dict[str, dict[str, str]] | None = None
            if g < selected - 3:
                selector = {"matchLabels": {"app": f"a{g}"}}
            elif g < selected:
                selector = {"matchLabels": {"tier": f"t{g - selected + 3}"}}
            groups.append(
                SecurityGroup.model_validate(
                    {
                        "metadata": {"name": f"g{g:02d}", "namespace": ns},
                        "spec": {"sequence": 100 + g, "podSelector": selector},
                    }
                )
            )
            for r in range(rules_per_group):
                rules.append(_rule(rnd, ns, f"g{g:02d}", r, ns_names, groups_per_ns, ipags_per_ns))
        for a in range(ipags_per_ns):
            v6 = a % 2 == 1
            entries = [
                f"fd{a:02x}:{i:x}::/64" if v6 else f"192.{n}.{a}.{i * 4}/30"
                for i in range(rnd.randrange(5, 40))
            ]
            ipags.append(
                IPAddressGroup.model_validate(
                    {
                        "metadata": {"name": f"ipag{a}", "namespace": ns},
                        "spec": {"ipFamily": "IPv6" if v6 else "IPv4", "addresses": entries},
                    }
                )
            )
    return ClusterFacts(
        namespaces=tuple(nss),
        nodes=tuple(node_names),
        pods=tuple(pods),
        groups=tuple(groups),
        rules=tuple(rules),
        address_groups=tuple(ipags),
    )


def _rule(
    rnd: random.Random,
    ns: str,
    group: str,
    r: int,
    ns_names: list[str],
    groups_per_ns: int,
    ipags_per_ns: int,
) -> SecurityGroupRule:
    v6 = r % 4 == 3
    spec: dict[str, object] = {
        "securityGroup": group,
        "direction": "Ingress" if r % 3 else "Egress",
        "action": "Deny" if r % 7 == 0 else "Allow",
        "priority": rnd.randrange(1, 101),
        "ipFamily": "IPv6" if v6 else "IPv4",
        "protocol": rnd.choice(("TCP", "TCP", "UDP", "ICMP", "All")),
    }
    if spec["protocol"] in ("TCP", "UDP"):
        spec["ports"] = rnd.choice(PORTS)
    kind = r % 5
    if kind in (0, 1):  # a remote group, of this namespace or another one
        other = rnd.choice(ns_names) if kind == 1 else None
        spec["remote"] = {
            "securityGroup": {"name": f"g{rnd.randrange(groups_per_ns):02d}", "namespace": other}
        }
    elif kind == 2:
        spec["remote"] = {"ipAddressGroup": {"name": f"ipag{rnd.randrange(ipags_per_ns)}"}}
    elif kind == 3:
        spec["remote"] = {"cidr": "2001:db8::/48" if v6 else f"203.0.113.{r * 8 % 256}/29"}
    # kind 4: no remote = any address of the family
    return SecurityGroupRule.model_validate(
        {"metadata": {"name": f"{group}-r{r:02d}", "namespace": ns}, "spec": spec}
    )


# ----------------------------------------------------------------------------- measuring

FULL_GOAL = 2.0
INCREMENTAL_GOAL = 0.020


@dataclass
class Result:
    case: str
    samples: list[float]
    goal: float | None
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:9.2f} ms" if seconds < 0.1 else f"{seconds * 1000:9.0f} ms"


def _pairs(
    inc: IncrementalCompiler,
    repeat: int,
    forward: Callable[[int], Changes],
    backward: Callable[[int], Changes],
) -> tuple[list[float], list[float], int]:
    """Time ``forward(i)`` then ``backward(i)`` (which undoes it) ``repeat`` times."""
    there, back, written = [], [], 0
    for i in range(repeat):
        t0 = time.perf_counter()
        changes = forward(i)
        there.append(time.perf_counter() - t0)
        written = len(changes)
        back.append(_time(functools.partial(backward, i)))
    return there, back, written


def run(facts: ClusterFacts, repeat: int) -> list[Result]:
    results: list[Result] = []
    # The first compile of a process also fills the parse caches (pod IPs, address
    # group entries, remotes, port texts): an operator pays it once, at start.
    cold = [_time(lambda: compile_policy(facts))]
    results.append(Result("full compile, first in process", cold, FULL_GOAL, "cold caches"))
    full = [_time(lambda: compile_policy(facts)) for _ in range(max(3, repeat // 4))]
    results.append(Result("full compile", full, FULL_GOAL))
    inc = IncrementalCompiler(facts)
    build = [_time(lambda: IncrementalCompiler(facts))]
    results.append(Result("incremental: initial build", build, None))
    assert inc.policy == compile_policy(facts).policy, "incremental and full disagree"

    ns, group = facts.namespaces[min(7, len(facts.namespaces) - 1)].name, "g03"

    def bench_rule(i: int, remote: dict[str, object]) -> SecurityGroupRule:
        spec = {
            "securityGroup": group,
            "direction": "Ingress",
            "protocol": "TCP",
            "ports": str(1000 + i),
            "remote": remote,
        }
        return SecurityGroupRule.model_validate(
            {"metadata": {"name": f"bench-{i}", "namespace": ns}, "spec": spec}
        )

    new_rule = [bench_rule(i, {"cidr": f"198.51.100.{i % 256}/32"}) for i in range(repeat)]
    add, delete, written = _pairs(
        inc,
        repeat,
        lambda i: inc.upsert(new_rule[i]),
        lambda i: inc.delete(Kind.SECURITY_GROUP_RULE, f"bench-{i}", ns),
    )
    results.append(Result("incremental: rule added", add, INCREMENTAL_GOAL, f"{written} object(s)"))
    results.append(Result("incremental: rule deleted", delete, INCREMENTAL_GOAL))

    # A remote group this group did not use yet: a new set, and every node with a member.
    # A remote nobody used yet: a new (empty) set, added to every node of the group.
    far: dict[str, object] = {"ipAddressGroup": {"name": "not-yet-created"}}
    remote_rule = [bench_rule(i, far) for i in range(repeat)]
    add, _, written = _pairs(
        inc,
        repeat,
        lambda i: inc.upsert(remote_rule[i]),
        lambda i: inc.delete(Kind.SECURITY_GROUP_RULE, f"bench-{i}", ns),
    )
    results.append(
        Result("incremental: rule with a new remote", add, INCREMENTAL_GOAL, f"{written} objects")
    )

    existing = next(r for r in facts.rules if r.metadata.namespace == ns and r.spec.priority < 100)
    bumped = existing.model_copy(
        update={"spec": existing.spec.model_copy(update={"priority": existing.spec.priority + 1})}
    )
    modify, _, written = _pairs(
        inc, repeat, lambda i: inc.upsert(bumped), lambda i: inc.upsert(existing)
    )
    results.append(Result("incremental: rule priority changed", modify, INCREMENTAL_GOAL))

    template = next(p for p in facts.pods if p.namespace == ns)
    new_pods = [
        template.model_copy(
            update={"name": f"bench-pod-{i}", "uid": f"bench-{i}", "ips": (f"10.200.0.{i % 250}",)}
        )
        for i in range(repeat)
    ]
    add, delete, written = _pairs(
        inc,
        repeat,
        lambda i: inc.upsert(new_pods[i]),
        lambda i: inc.delete(Kind.POD, f"bench-pod-{i}", ns),
    )
    results.append(Result("incremental: pod added", add, None, f"{written} objects"))
    results.append(Result("incremental: pod deleted", delete, None))

    office = next(a for a in facts.address_groups if a.metadata.namespace == ns)
    grown = office.model_copy(
        update={
            "spec": office.spec.model_copy(
                update={"addresses": (*office.spec.addresses, "203.0.113.200")}
            )
        }
    )
    edit, _, written = _pairs(
        inc, repeat, lambda i: inc.upsert(grown), lambda i: inc.upsert(office)
    )
    results.append(Result("incremental: address group edited", edit, None, f"{written} object(s)"))

    sel_group = next(
        g for g in facts.groups if g.metadata.namespace == ns and g.spec.pod_selector is not None
    )
    moved = sel_group.model_copy(
        update={"spec": sel_group.spec.model_copy(update={"pod_selector": None})}
    )
    edit, _, written = _pairs(
        inc, max(3, repeat // 4), lambda i: inc.upsert(moved), lambda i: inc.upsert(sel_group)
    )
    results.append(Result("incremental: selector removed", edit, None, f"{written} objects"))
    assert inc.policy == compile_policy(inc.facts(), inc.options).policy, "drifted"
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=21, help="runs per incremental case")
    parser.add_argument("--scale", type=float, default=1.0, help="namespaces × scale")
    args = parser.parse_args()
    namespaces = max(2, round(50 * args.scale))
    t0 = time.perf_counter()
    facts = synthetic_cluster(namespaces=namespaces)
    built = time.perf_counter() - t0
    policy = compile_policy(facts).policy
    print(
        f"cluster: {len(facts.pods)} pods, {len(facts.groups)} groups, {len(facts.rules)} rules, "
        f"{len(facts.address_groups)} address groups, {len(facts.nodes)} nodes, "
        f"{len(facts.namespaces)} namespaces (built in {built:.1f} s)"
    )
    print(
        f"compiled: {len(policy.groups)} groups, {len(policy.sets)} sets, "
        f"{len(policy.nodes)} nodes\n"
    )
    results = run(facts, args.repeat)
    print(f"{'case':40} {'median':>12} {'goal':>12} {'ratio':>7}  n   note")
    for r in results:
        goal = _ms(r.goal) if r.goal else f"{'—':>12}"
        ratio = f"{r.median / r.goal:7.2f}" if r.goal else f"{'':7}"
        print(f"{r.case:40} {_ms(r.median)} {goal} {ratio} {len(r.samples):3}   {r.note}")
    full = next(r for r in results if r.case == "full compile").median
    one_rule = next(r for r in results if r.case == "incremental: rule added").median
    print(f"\nfull / incremental (one rule added), measured side by side: {full / one_rule:,.0f}x")


if __name__ == "__main__":
    main()
