"""Property: the tracer over the rendered ruleset agrees with the reference evaluator.

For random compiled policies (from the real compiler over random clusters, and built
directly to reach shapes the compiler makes rarely: multi-CIDR remotes, ICMP codes,
missing groups and sets, collapsed member CIDRs) and random packets, on every node:

* new connections (S-X-1, S-X-2): same-node pod→pod checks the sender's egress AND
  the receiver's ingress; remote→pod the ingress; pod→remote the egress; node→pod
  follows ``allow_node_to_pod``; the deciding rule is the same on both sides;
* established inbound flows with a stale epoch (S-CT-2) are re-checked: the verdict is
  the evaluator's ingress verdict, and an allowed flow is re-stamped with the current
  epoch; established outbound flows pass whatever the rules say (S-CT-1).

Example counts stay modest: the unit tier must stay fast.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests import nftcases as nc
from tests import strategies as sgst

from secgroups.compiled import CompiledAddressSetSpec, CompiledPolicy, CompiledRemote, RemoteKind
from secgroups.compiling import compile_policy
from secgroups.evaluating import Evaluator, Packet
from secgroups.models import Action, Direction, IPFamily, Protocol
from secgroups.nft import names
from secgroups.nft.epochs import epoch_mark
from secgroups.nft.rendering import RenderOptions, render
from secgroups.nft.tracing import Trace, TracePacket, Tracer

PROFILE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NO_MATCH = "no rule matched (S-X-2)"
NODE_IPS = {4: "100.64.255.1", 6: "fd64:5ec:ff::1"}


def _expected_rule(verdict: object) -> str:
    rule = getattr(verdict, "rule", None)
    return NO_MATCH if rule is None else str(rule.id)


def check_node(
    policy: CompiledPolicy,
    node: str,
    packets: Sequence[Packet],
    *,
    allow_node_to_pod: bool = True,
    established: bool = False,
) -> int:
    """Trace ``packets`` on ``node`` and compare with the evaluator; return how many were local."""
    spec = policy.nodes[node]
    local = {ipaddress.ip_address(ip): pod for pod in spec.pods for ip in pod.ips}
    ifaces = {str(ip): f"veth{i}" for i, ip in enumerate(sorted(local, key=str))}
    options = RenderOptions(allow_node_to_pod=allow_node_to_pod)
    tracer = Tracer(render(policy, node, ifaces, options))
    evaluator = Evaluator(policy, allow_node_to_pod=allow_node_to_pod)
    checked = 0
    for packet in packets:
        src_local, dst_local = packet.src in local, packet.dst in local
        if packet.from_node is not None and (packet.from_node != node or not dst_local):
            continue
        if not (src_local or dst_local):
            continue
        checked += 1
        want = evaluator.evaluate(packet)
        tp = TracePacket(
            packet.src,
            packet.dst,
            packet.proto,
            packet.dport,
            packet.icmp_type,
            packet.icmp_code,
            iif=None if packet.from_node else ifaces.get(str(packet.src), nc.UPLINK),
            oif=ifaces.get(str(packet.dst), nc.UPLINK),
            ct_state="established" if established else "new",
            ct_mark=0,
        )
        got = tracer.trace(tp)
        context = f"{packet} on {node}: {want.explain()}\n{got.explain()}"
        if established:
            _check_established(got, want, dst_local, local, context)
            continue
        allowed = all(
            v.allowed
            for v, here in ((want.egress, src_local), (want.ingress, dst_local))
            if v is not None and here
        )
        assert (got.verdict == "accept") == allowed, context
        if packet.from_node is None and src_local:
            assert got.decided_by(names.EGRESS_FWD) == _expected_rule(want.egress), context
        ingress_chain = names.INGRESS_OUTPUT if packet.from_node else names.INGRESS_FWD
        reached = got.base(ingress_chain) is not None
        if dst_local and reached and not (packet.from_node and allow_node_to_pod):
            assert got.decided_by(ingress_chain) == _expected_rule(want.ingress), context
    return checked


def _check_established(
    got: Trace, want: object, dst_local: bool, local: dict, context: str
) -> None:  # type: ignore[type-arg]
    ingress = getattr(want, "ingress", None)
    if not dst_local or ingress is None:
        assert got.verdict == "accept", context  # S-CT-1: outbound flows are never cut
        return
    assert (got.verdict == "accept") == ingress.allowed, context  # S-CT-2: re-checked
    pod = local[got.packet.dst]
    if ingress.allowed and ingress.rule is not None:
        assert got.ct_mark == epoch_mark(pod.uid, pod.epoch), context


def _from_node(packet: Packet, node: str) -> Packet:
    src = ipaddress.ip_address(NODE_IPS[packet.src.version])
    return Packet(
        src, packet.dst, packet.proto, packet.dport, packet.icmp_type, packet.icmp_code, node
    )


# ----------------------------------------------------------------------------- real compiler


@PROFILE
@given(st.data())
def test_tracer_agrees_with_the_evaluator_on_compiled_clusters(data: st.DataObject) -> None:
    facts = data.draw(sgst.cluster_facts())
    policy = compile_policy(facts).policy
    raw = data.draw(st.lists(sgst.packets(facts), min_size=1, max_size=12))
    packets = [Packet.make(*p) for p in raw]
    for node in policy.nodes:
        check_node(policy, node, packets)
        check_node(policy, node, [_from_node(p, node) for p in packets], allow_node_to_pod=False)
        check_node(policy, node, packets, established=True)


# ----------------------------------------------------------------------------- direct objects

POD_V4 = [f"100.64.0.{i}" for i in range(1, 9)]
POD_V6 = [f"fd64:5ec::{i}" for i in range(1, 9)]
OUT_V4 = ["192.0.2.1", "192.0.2.200", "198.51.100.7"]
OUT_V6 = ["2001:db8::1", "2001:db8::ff"]
CIDRS = {
    4: ["100.64.0.0/30", "100.64.0.5/32", "192.0.2.0/24", "198.51.100.7/32", "0.0.0.0/0"],
    6: ["fd64:5ec::/126", "fd64:5ec::7/128", "2001:db8::/64", "::/0"],
}
PORT_SPANS = [(22, 22), (25, 27), (53, 53), (80, 80), (443, 443), (8000, 8080)]
DPORTS = (22, 24, 25, 26, 27, 28, 53, 80, 443, 7999, 8000, 8042, 8080, 8081)  # span edges
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
        else:
            dport = draw(st.sampled_from(DPORTS))
    icmp_type = icmp_code = None
    if proto == "icmp":
        icmp_type = (
            draw(st.sampled_from((rule.icmp_type, 8, 128))) if rule.icmp_type is not None else 8
        )
        icmp_code = draw(st.sampled_from((rule.icmp_code, 0))) if rule.icmp_code is not None else 0
        icmp_type = 128 if (v6 and icmp_type == 8) else icmp_type
    return Packet.make(src, dst, proto, dport, icmp_type, icmp_code)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(direct_policies(), st.data(), st.booleans())
def test_tracer_agrees_with_the_evaluator_on_direct_compiled_objects(
    policy: CompiledPolicy, data: st.DataObject, allow_node_to_pod: bool
) -> None:
    packets = data.draw(st.lists(direct_packets(), min_size=2, max_size=8))
    packets += data.draw(st.lists(aimed_packets(policy), min_size=4, max_size=12))
    check_node(policy, "n1", packets)
    from_node = [_from_node(p, "n1") for p in packets]
    check_node(policy, "n1", from_node, allow_node_to_pod=allow_node_to_pod)
    check_node(policy, "n1", packets, established=True)
