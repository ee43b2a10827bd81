"""Property: the tracer over the rendered ruleset agrees with the reference evaluator.

For random compiled policies (from the real compiler over random clusters, and built
directly to reach shapes the compiler makes rarely: multi-CIDR remotes, ICMP codes,
missing groups and sets, collapsed member CIDRs) and random packets, on every node:

* new connections (S-X-1, S-X-2): same-node pod→pod checks the sender's egress AND
  the receiver's ingress; remote→pod the ingress; pod→remote the egress; node→pod
  follows ``allow_node_to_pod``; the deciding rule is the same on both sides;
* established inbound flows with a stale epoch (S-CT-2) are re-checked: the verdict is
  the evaluator's ingress verdict, and an allowed flow is re-stamped with the current
  epoch; established outbound flows pass whatever the rules say (S-CT-1);
* flows the agent's sweep tombstoned (S-CT-2, ``MARK_TOMBSTONE``): the remote's packets are
  re-checked exactly like stale ones (a flow allowed again resumes, re-stamped), and every
  reply from a local pod is dropped;
* the agent's sweep decision (``rechecking.still_allowed``) on an established inbound flow
  is the kernel's re-check verdict.

Every check runs on two renderings of the node: group chains as linear lists, and
dispatched by protocol and port wherever possible (``secgroups.nft.dispatch`` with
``min_rules=1``: every run of specific rules goes through interval verdict maps and
sub-chains), so both layouts must give the evaluator's verdict and deciding rule.

Example counts stay modest: the unit tier must stay fast.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests import nftcases as nc
from tests import nftstrategies as nst
from tests import strategies as sgst

from secgroups.compiled import CompiledPolicy
from secgroups.compiling import compile_policy
from secgroups.evaluating import Evaluator, Packet
from secgroups.nft import names
from secgroups.nft.dispatch import Limits
from secgroups.nft.epochs import MARK_TOMBSTONE, pod_mark
from secgroups.nft.rendering import RenderOptions, render
from secgroups.nft.tracing import Trace, TracePacket, Tracer
from secgroups.rechecking import InboundFlow, still_allowed

LAYOUTS = (None, Limits(min_rules=1, max_growth=1e9))  # linear; dispatched wherever it can
PROFILE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NO_MATCH = "no rule matched (S-X-2)"
TOMBSTONE_RULE = "revoked inbound flow: replies from the pod (S-CT-2)"
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
    tombstoned: bool = False,
) -> int:
    """Trace ``packets`` on ``node`` in both layouts and compare with the evaluator; return
    how many traces were checked (local packets times layouts)."""
    spec = policy.nodes[node]
    local = {ipaddress.ip_address(ip): pod for pod in spec.pods for ip in pod.ips}
    ifaces = {str(ip): f"veth{i}" for i, ip in enumerate(sorted(local, key=str))}
    tracers = [
        Tracer(render(policy, node, ifaces, RenderOptions(allow_node_to_pod, dispatch=layout)))
        for layout in LAYOUTS
    ]
    evaluator = Evaluator(policy, allow_node_to_pod=allow_node_to_pod)
    checked = 0
    for packet, tracer in ((p, t) for p in packets for t in tracers):
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
            ct_mark=MARK_TOMBSTONE if tombstoned else 0,
        )
        got = tracer.trace(tp)
        context = f"{packet} on {node}: {want.explain()}\n{got.explain()}"
        if established:
            _check_established(got, want, dst_local, local, policy, context)
            if dst_local and packet.from_node is None:
                # The agent's sweep decides as the kernel's re-check does (rechecking.py).
                flow = InboundFlow(
                    packet.src,
                    packet.dst,
                    packet.proto,
                    packet.dport,
                    packet.icmp_type,
                    packet.icmp_code,
                )
                swept = still_allowed(policy, local[packet.dst], [flow], evaluator=evaluator)
                assert swept == [got.verdict == "accept"], context
            if tombstoned and dst_local and packet.from_node is None:
                reply = tracer.trace(
                    replace(
                        tp,
                        src=packet.dst,
                        dst=packet.src,
                        iif=tp.oif,
                        oif=tp.iif,
                        ct_direction="reply",
                        icmp_type=None,
                        dport=None,
                    )
                )
                assert reply.verdict == "drop", f"{context}\n{reply.explain()}"
                assert reply.decided_by(names.EGRESS_FWD) == TOMBSTONE_RULE, reply.explain()
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
    got: Trace, want: object, dst_local: bool, local: dict, policy: CompiledPolicy, context: str
) -> None:  # type: ignore[type-arg]
    ingress = getattr(want, "ingress", None)
    if not dst_local or ingress is None:
        assert got.verdict == "accept", context  # S-CT-1: outbound flows are never cut
        return
    assert (got.verdict == "accept") == ingress.allowed, context  # S-CT-2: re-checked
    pod = local[got.packet.dst]
    if ingress.allowed and ingress.rule is not None:
        assert got.ct_mark == pod_mark(pod, policy.groups, policy.sets), context


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
        check_node(policy, node, packets, established=True, tombstoned=True)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nst.direct_policies(), st.data(), st.booleans())
def test_tracer_agrees_with_the_evaluator_on_direct_compiled_objects(
    policy: CompiledPolicy, data: st.DataObject, allow_node_to_pod: bool
) -> None:
    packets = data.draw(st.lists(nst.direct_packets(), min_size=2, max_size=8))
    packets += data.draw(st.lists(nst.aimed_packets(policy), min_size=4, max_size=12))
    check_node(policy, "n1", packets)
    from_node = [_from_node(p, "n1") for p in packets]
    check_node(policy, "n1", from_node, allow_node_to_pod=allow_node_to_pod)
    check_node(policy, "n1", packets, established=True)
    check_node(policy, "n1", packets, established=True, tombstoned=True)
