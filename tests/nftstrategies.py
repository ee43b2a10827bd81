"""Hypothesis strategies of compiled policies for the nft renderer's tests (unit and netns).

Built directly from compiled objects (not through the compiler) to reach shapes the
compiler makes rarely: multi-CIDR remotes, ICMP codes, groups and sets that are
referenced but missing, member sets whose IPs collapse into wider CIDRs. Rules are
weighted towards matching, and :func:`aimed_packets` builds packets that target one
rule (its protocol, a port at the edges of its spans, an address of its remote), so
that both verdicts and every rule shape are common. :func:`policy_changes` makes the
small edits an agent sees between two syncs (epoch bump, pod added or removed, rule
removed, member changed, group order changed).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from hypothesis import strategies as st
from tests import nftcases as nc

from secgroups.compiled import CompiledAddressSetSpec, CompiledPolicy, CompiledRemote, RemoteKind
from secgroups.evaluating import Packet
from secgroups.models import Action, Direction, IPFamily, Protocol
from secgroups.nft.dispatch import Limits
from secgroups.nft.rendering import RenderOptions

POD_V4 = [f"100.64.0.{i}" for i in range(1, 9)]
POD_V6 = [f"fd64:5ec::{i}" for i in range(1, 9)]
OUT_V4 = ["192.0.2.1", "192.0.2.200", "198.51.100.7"]
OUT_V6 = ["2001:db8::1", "2001:db8::ff"]
CIDRS = {
    4: ["100.64.0.0/30", "100.64.0.5/32", "192.0.2.0/24", "198.51.100.7/32", "0.0.0.0/0"],
    6: ["fd64:5ec::/126", "fd64:5ec::7/128", "2001:db8::/64", "::/0"],
}
# Overlapping spans (24-26 / 25-27, 8000-8080 / 8042-8100) cut the port space of a group
# into pieces that several rules cover (secgroups.nft.dispatch).
PORT_SPANS = [
    (22, 22),
    (24, 26),
    (25, 27),
    (53, 53),
    (80, 80),
    (443, 443),
    (8000, 8080),
    (8042, 8100),
]
DPORTS = (22, 23, 24, 25, 26, 27, 28, 53, 80, 443, 7999, 8000, 8041, 8042, 8080, 8081, 8100, 8101)
GROUPS = [nc.naming.compiled_group_name("x", n) for n in ("a", "b", "c")]
SETS = ["sg.x.a", "sg.x.b", "ipag.x.o", "ipag.x.missing"]


@st.composite
def compiled_rules(draw: st.DrawFn, rid: int) -> nc.CompiledRule:
    family = draw(st.sampled_from((IPFamily.IPV4, IPFamily.IPV6)))
    v = family.version
    # Weighted towards rules that match, so that both verdicts are common.
    protocol = draw(st.sampled_from([Protocol.ALL, Protocol.TCP, Protocol.UDP, *Protocol]))
    kind = draw(st.sampled_from([RemoteKind.ANY, RemoteKind.ANY, *RemoteKind]))
    remote = CompiledRemote(kind=RemoteKind.ANY)
    if kind is RemoteKind.CIDR:
        cidrs = draw(st.lists(st.sampled_from(CIDRS[v]), min_size=0, max_size=2, unique=True))
        remote = nc.cidr(*cidrs)
    elif kind is RemoteKind.SET:
        remote = nc.ref(draw(st.sampled_from(SETS)))
    ports: list[tuple[int, int]] = []
    if protocol in (Protocol.TCP, Protocol.UDP) and draw(st.integers(0, 2)):
        ports = draw(st.lists(st.sampled_from(PORT_SPANS), min_size=1, max_size=3, unique=True))
    icmp_type = icmp_code = None
    if protocol is Protocol.ICMP:
        icmp_type = draw(st.sampled_from((None, 0, 8, 128, 129)))
        icmp_code = draw(st.sampled_from((None, 0, 1)))
    return nc.rule(
        f"x/r{rid}",
        draw(st.sampled_from(list(Direction))),
        protocol,
        ports,
        remote,
        action=draw(st.sampled_from((Action.ALLOW, Action.ALLOW, Action.DENY))),
        priority=draw(st.sampled_from((1, 2, 50))),
        family=family,
        icmp_type=icmp_type,
        icmp_code=icmp_code,
    )


def _collapse(ips: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    nets = [ipaddress.ip_network(ip) for ip in ips]
    v4 = ipaddress.collapse_addresses(n for n in nets if n.version == 4)
    v6 = ipaddress.collapse_addresses(n for n in nets if n.version == 6)
    return tuple(map(str, v4)), tuple(map(str, v6))


@st.composite
def direct_policies(draw: st.DrawFn) -> CompiledPolicy:
    n_rules = draw(st.integers(0, 14))
    rules = [draw(compiled_rules(i)) for i in range(n_rules)]
    groups = []
    for key, name in zip(GROUPS, "abc", strict=True):
        mine = [r for r in rules if draw(st.booleans())]
        groups.append((key, nc.group("x", name, mine)[1]))
    sets: list[tuple[str, CompiledAddressSetSpec]] = []
    for key in SETS[:3]:
        members = draw(
            st.lists(st.sampled_from(POD_V4 + POD_V6 + OUT_V4 + OUT_V6), max_size=6, unique=True)
        )
        v4, v6 = _collapse(members)
        make = nc.sg_set if key.startswith("sg.") else nc.ipag_set
        sets.append(make("x", key.split(".")[-1], v4, v6))
    sets = [(k, s) for (k, s), want in zip(sets, SETS[:3], strict=True) if k == want]
    addrs = draw(st.permutations(list(zip(POD_V4, POD_V6, strict=True))))
    pods = []
    for i in range(draw(st.integers(1, 6))):
        v4, v6 = addrs[i]
        ips = draw(st.sampled_from(((v4,), (v6,), (v4, v6))))
        chosen = draw(st.lists(st.sampled_from([*GROUPS, "sg.x.ghost"]), max_size=3, unique=True))
        node = "n1" if i < 4 else "n2"
        pods.append((node, nc.pod("x", f"p{i}", ips, chosen, epoch=draw(st.integers(0, 2)))))
    by_node = {n: [p for nn, p in pods if nn == n] for n in ("n1", "n2")}
    one = nc.policy(groups, sets, by_node["n1"], node="n1")
    two = nc.policy(groups, sets, by_node["n2"], node="n2")
    return one.model_copy(update={"nodes": {**one.nodes, **two.nodes}})


@st.composite
def direct_packets(draw: st.DrawFn) -> Packet:
    v6 = draw(st.booleans())
    pool = (POD_V6 + OUT_V6) if v6 else (POD_V4 + OUT_V4)
    src = draw(st.sampled_from(pool))
    dst = draw(st.sampled_from([a for a in pool if a != src]))
    proto = draw(st.sampled_from(("tcp", "udp", "icmp", "gre", "132")))
    dport = draw(st.sampled_from(DPORTS)) if proto in ("tcp", "udp") else None
    icmp_type = draw(st.sampled_from((0, 8, 128, 129))) if proto == "icmp" else None
    icmp_code = draw(st.sampled_from((0, 1))) if proto == "icmp" else None
    return Packet.make(src, dst, proto, dport, icmp_type, icmp_code)


@st.composite
def aimed_packets(draw: st.DrawFn, policy: CompiledPolicy) -> Packet:
    """A packet built to match one of the policy's rules (protocol, port, remote), if any."""
    rules = [r for g in policy.groups.values() for r in (*g.ingress, *g.egress)]
    if not rules:
        return draw(direct_packets())
    rule = draw(st.sampled_from(rules))
    v6 = rule.family is IPFamily.IPV6
    pool = (POD_V6 + OUT_V6) if v6 else (POD_V4 + OUT_V4)
    local = [ip for pod in policy.nodes["n1"].pods for ip in pod.ips if (":" in ip) == v6]
    remote_pool = list(pool)
    if rule.remote.kind is RemoteKind.CIDR and rule.remote.cidrs:
        net = ipaddress.ip_network(rule.remote.cidrs[0])
        remote_pool = [a for a in pool if ipaddress.ip_address(a) in net] or remote_pool
    elif rule.remote.kind is RemoteKind.SET and rule.remote.set in policy.sets:
        members = policy.sets[rule.remote.set].networks(rule.family)
        remote_pool = [
            a for a in pool if any(ipaddress.ip_address(a) in n for n in members)
        ] or remote_pool
    remote = draw(st.sampled_from(remote_pool))
    pod = draw(st.sampled_from([a for a in (local or pool) if a != remote] or pool))
    src, dst = (remote, pod) if rule.direction is Direction.INGRESS else (pod, remote)
    if src == dst:
        return draw(direct_packets())
    name = {Protocol.TCP: "tcp", Protocol.UDP: "udp", Protocol.ICMP: "icmp", Protocol.GRE: "gre"}
    proto = name.get(rule.protocol) or draw(st.sampled_from(("tcp", "udp", "icmp", "gre", "132")))
    dport = None
    if proto in ("tcp", "udp"):
        if rule.ports:
            span = draw(st.sampled_from(rule.ports))
            dport = draw(st.sampled_from((span.lo, span.hi, (span.lo + span.hi) // 2, span.hi + 1)))
        else:  # often a port of another rule: a port-less rule must be seen there too
            edges = {e for r in rules for p in r.ports for e in (p.lo, p.hi, p.hi + 1)}
            dport = draw(st.sampled_from(sorted(edges.union(DPORTS))))
    icmp_type = icmp_code = None
    if proto == "icmp":
        icmp_type = (
            draw(st.sampled_from((rule.icmp_type, 8, 128))) if rule.icmp_type is not None else 8
        )
        icmp_code = draw(st.sampled_from((rule.icmp_code, 0))) if rule.icmp_code is not None else 0
        icmp_type = 128 if (v6 and icmp_type == 8) else icmp_type
    return Packet.make(src, dst, proto, dport, icmp_type, icmp_code)


def node_pods(policy: CompiledPolicy, node: str = "n1") -> list[nc.CompiledPod]:
    return list(policy.nodes[node].pods) if node in policy.nodes else []


def _with_node_pods(policy: CompiledPolicy, pods: Sequence[nc.CompiledPod]) -> CompiledPolicy:
    spec = policy.nodes["n1"].model_copy(
        update={"pods": tuple(sorted(pods, key=lambda p: (p.namespace, p.name)))}
    )
    return policy.model_copy(update={"nodes": {**policy.nodes, "n1": spec}})


@st.composite
def policy_change(draw: st.DrawFn, policy: CompiledPolicy) -> CompiledPolicy:
    """One edit an agent sees between two syncs of node ``n1``."""
    pods = node_pods(policy)
    kind = draw(
        st.sampled_from(
            (
                "epoch",
                "remove-pod",
                "add-pod",
                "remove-rule",
                "add-rule",
                "members",
                "reorder",
                "drop-set",
            )
        )
    )
    if kind == "epoch" and pods:
        i = draw(st.integers(0, len(pods) - 1))
        pods[i] = pods[i].model_copy(update={"epoch": pods[i].epoch + 1})
        return _with_node_pods(policy, pods)
    if kind == "remove-pod" and pods:
        pods.pop(draw(st.integers(0, len(pods) - 1)))
        return _with_node_pods(policy, pods)
    if kind == "add-pod":
        used = {ip for spec in policy.nodes.values() for p in spec.pods for ip in p.ips}
        free = [
            (a, b) for a, b in zip(POD_V4, POD_V6, strict=True) if a not in used and b not in used
        ]
        if free:
            v4, v6 = draw(st.sampled_from(free))
            groups = draw(st.lists(st.sampled_from(GROUPS), max_size=3, unique=True))
            pods.append(nc.pod("x", f"new-{v4.rsplit('.', 1)[1]}", (v4, v6), groups))
            return _with_node_pods(policy, pods)
    if kind in ("remove-rule", "add-rule"):
        key = draw(st.sampled_from(GROUPS))
        group = policy.groups[key]
        rules = [*group.ingress, *group.egress]
        if kind == "remove-rule" and rules:
            rules.pop(draw(st.integers(0, len(rules) - 1)))
        else:
            rules.append(draw(compiled_rules(100 + len(rules))))
        new = nc.group(group.group.namespace, group.group.name, rules)[1]
        return policy.model_copy(update={"groups": {**policy.groups, key: new}})
    if kind == "members":
        key = draw(st.sampled_from(SETS[:3]))
        members = draw(
            st.lists(st.sampled_from(POD_V4 + POD_V6 + OUT_V4 + OUT_V6), max_size=6, unique=True)
        )
        v4, v6 = _collapse(members)
        spec = policy.sets.get(key)
        if spec is not None:
            new_set = spec.model_copy(update={"ipv4": v4, "ipv6": v6})
            return policy.model_copy(update={"sets": {**policy.sets, key: new_set}})
    if kind == "reorder" and pods:
        i = draw(st.integers(0, len(pods) - 1))
        pods[i] = pods[i].model_copy(
            update={"groups": tuple(draw(st.permutations(pods[i].groups)))}
        )
        return _with_node_pods(policy, pods)
    if kind == "drop-set" and policy.sets:
        key = draw(st.sampled_from(sorted(policy.sets)))
        return policy.model_copy(
            update={"sets": {k: v for k, v in policy.sets.items() if k != key}}
        )
    return policy


@st.composite
def policy_pairs(draw: st.DrawFn) -> tuple[CompiledPolicy, CompiledPolicy]:
    """(old, new): a few edits apart, or two unrelated policies over the same name pools."""
    old = draw(direct_policies())
    if draw(st.integers(0, 3)) == 0:
        return old, draw(direct_policies())
    new = old
    for _ in range(draw(st.integers(1, 4))):
        new = draw(policy_change(new))
    return old, new


def render_options() -> st.SearchStrategy[RenderOptions]:
    """Node knobs, and the group-chain layout: linear, the default dispatch limits, or
    dispatched wherever possible (so a pair of options switches between layouts)."""
    layouts = st.sampled_from((None, Limits(), Limits(min_rules=1, max_growth=1e9)))
    return st.builds(
        RenderOptions, allow_node_to_pod=st.booleans(), counters=st.booleans(), dispatch=layouts
    )
