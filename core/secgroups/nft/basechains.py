"""The static part of the ruleset: base chains, shared per-path chains, ct timeout objects.

Role: everything in ``table inet secgroups`` that does not depend on the policy
(``docs/nftables.md``, "Hooks and priorities", "Static objects"): the anti-spoofing
chains in ``prerouting`` at ``raw`` (every routed pod interface, managed or not); the
policy gates on ``forward``/``input``/``output`` that send local pod traffic (matched by
pod IP) to ``pod_egress``/``pod_ingress``; those two shared chains (conntrack states,
the epoch fast path, the reply-path tombstone, the TCP non-SYN guard, the ``ct timeout``
stamp, the dispatch verdict maps); the ND/MLD allowances; the fail-closed placeholder of
pods whose policy is pending (``pending4/6``, docs/cni.md); and the ``ct timeout``
objects of S-CT-3. The per-policy part (group and group-list chains, sets and map
elements) is ``rendering``'s.

Neighbours: ``rendering`` (the only caller), ``names`` (static names), ``statements``
and ``objects`` (what is built).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from secgroups.nft import names
from secgroups.nft.epochs import MARK_TOMBSTONE
from secgroups.nft.names import fam
from secgroups.nft.objects import BaseSpec, Chain, CtTimeout, Hook, Priority, TableObject
from secgroups.nft.statements import (
    ACCEPT,
    DROP,
    AddrField,
    AddrMatch,
    Counter,
    CtDir,
    CtDirectionMatch,
    CtMarkMatch,
    CtState,
    CtStateMatch,
    CtTimeoutSet,
    DaddrMarkInSet,
    Family,
    HopLimit,
    Icmpv6TypeIn,
    Iface,
    IfaceInSet,
    IfaceSaddrInSet,
    L4Proto,
    MetaL4proto,
    MetaNfproto,
    Part,
    PortMatch,
    Rule,
    SetRef,
    TcpNotSyn,
    VmapLookup,
    goto,
    jump,
)
from secgroups.ports import PortRange

FAMILIES: tuple[Family, Family] = (4, 6)

ND_FROM_POD_LINK = ("nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit")
MLD_FROM_POD = ("mld-listener-report", "mld-listener-done", "mld2-listener-report")
ND_FROM_NODE = (
    "mld-listener-query",
    "nd-router-advert",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "nd-redirect",
)


def _rule(*parts: Part, comment: str | None = None) -> Rule:
    return Rule(parts, comment)


def _state(*states: CtState, negate: bool = False) -> CtStateMatch:
    return CtStateMatch(frozenset(states), negate)


def _base(
    name: str,
    hook: Hook,
    priority: Priority,
    rules: Iterable[Rule],
    policy: Literal["accept", "drop"] = "accept",
) -> Chain:
    return Chain(name, tuple(rules), BaseSpec(hook, priority, policy))


# The forward chains drop by policy and accept what is not a local pod's by a rule: a table
# whose rules someone flushed (`nft flush table`) forwards nothing until the agent has
# rewritten it (docs/failure-modes.md, "Our table is tampered with"), instead of
# forwarding everything.
NOT_A_POD = "not a local pod's packet"


def static_objects(
    allow_node_to_pod: bool,
    tcp_timeouts: tuple[tuple[str, int], ...],
    udp_timeouts: tuple[tuple[str, int], ...],
) -> Iterable[TableObject]:
    """Base chains, the shared per-path chains and the ct timeout objects (docs/nftables.md)."""
    timeouts = {
        (proto, f): CtTimeout(names.ct_timeout(proto, f, policy), proto, f, policy)
        for proto, policy in ((L4Proto.TCP, tcp_timeouts), (L4Proto.UDP, udp_timeouts))
        for f in FAMILIES
    }
    yield from timeouts.values()
    pods = {f: SetRef(fam("pods", f)) for f in FAMILIES}
    ip4, ip6 = AddrField.SADDR, AddrField.DADDR
    new_non_syn = _rule(
        _state(CtState.NEW), TcpNotSyn(), DROP, comment="no TCP mid-stream pickup (S-CT-2)"
    )

    yield Chain(
        names.CT_TIMEOUTS,
        tuple(
            _rule(MetaNfproto(f), MetaL4proto(proto), CtTimeoutSet(obj.name))
            for (proto, f), obj in timeouts.items()
        ),
    )
    yield _base(
        names.PRE_ANTISPOOF,
        Hook.PREROUTING,
        Priority("raw"),  # before conntrack (-200): spoofed packets never create entries
        [
            # Every routed pod interface of the node, managed or not (the agent's host
            # routes): its packets carry its own addresses (docs/nftables.md, "Anti-spoofing").
            _rule(IfaceInSet(Iface.IIF, SetRef(names.POD_IFACES)), goto(names.POD_ANTISPOOF)),
            # A local pod's address arriving anywhere else: an interface the agent has not
            # seen yet, the uplink.
            *(
                _rule(
                    AddrMatch(f, ip4, SetRef(fam(names.POD_ADDRS, f))),
                    Counter(),
                    DROP,
                    comment="a local pod's address from another interface",
                )
                for f in FAMILIES
            ),
        ],
    )
    yield Chain(
        names.POD_ANTISPOOF,
        (
            *(_rule(IfaceSaddrInSet(f, SetRef(fam("pod_src", f))), ACCEPT) for f in FAMILIES),
            _rule(  # a DHCP client before it has an address (the placeholder lets it pass)
                AddrMatch(4, ip4, ipaddress.ip_network("0.0.0.0/32")),
                PortMatch(L4Proto.UDP, PortRange(DHCP_SERVER_PORT[4], DHCP_SERVER_PORT[4])),
                ACCEPT,
            ),
            _rule(AddrMatch(6, ip4, ipaddress.ip_network("::/128")), jump(names.ND_FROM_POD)),
            _rule(AddrMatch(6, ip4, ipaddress.ip_network("fe80::/10")), jump(names.ND_FROM_POD)),
            _rule(Counter(), DROP, comment="spoofed source address"),
        ),
    )
    yield Chain(
        names.ND_FROM_POD,  # link-local / unspecified sources: ND and MLD only, never RA/redirect
        (
            _rule(Icmpv6TypeIn(ND_FROM_POD_LINK), HopLimit(255), ACCEPT),
            _rule(Icmpv6TypeIn(MLD_FROM_POD), ACCEPT),
            _rule(  # DHCPv6 client messages (from a link-local address)
                PortMatch(L4Proto.UDP, PortRange(DHCP_SERVER_PORT[6], DHCP_SERVER_PORT[6])),
                ACCEPT,
            ),
            _rule(DROP),
        ),
    )
    gate_eg = [_rule(AddrMatch(f, ip4, pods[f]), goto(names.POD_EGRESS)) for f in FAMILIES]
    gate_in = [_rule(AddrMatch(f, ip6, pods[f]), goto(names.POD_INGRESS)) for f in FAMILIES]
    pending = _pending_rules()
    yield _base(
        names.EGRESS_FWD,
        Hook.FORWARD,
        Priority("filter", 10),
        [*pending.fwd_from, *gate_eg, _rule(ACCEPT, comment=NOT_A_POD)],
        policy="drop",
    )
    yield _base(
        names.EGRESS_INPUT,
        Hook.INPUT,
        Priority("filter", 10),
        [
            # ND/MLD to the node are untracked and must pass first
            # (docs/nftables.md#neighbour-discovery-is-untracked).
            _rule(
                AddrMatch(6, ip4, pods[6]), Icmpv6TypeIn(ND_FROM_POD_LINK + MLD_FROM_POD), ACCEPT
            ),
            *pending.to_node(allow_node_to_pod),
            *gate_eg,
        ],
    )
    yield Chain(
        names.POD_EGRESS,
        (
            # The pod's packets on an inbound flow that the agent's post-commit sweep found
            # denied (S-CT-2): cut before the established accept. Only the reply direction:
            # the remote's packets are re-checked by the pod's rules (epochs), so a flow
            # allowed again resumes, re-stamped, at the remote's next packet.
            _rule(
                CtDirectionMatch(CtDir.REPLY),
                CtMarkMatch(MARK_TOMBSTONE),
                DROP,
                comment="revoked inbound flow: replies from the pod (S-CT-2)",
            ),
            _rule(_state(CtState.ESTABLISHED, CtState.RELATED), ACCEPT),  # S-CT-1, S-X-3
            _rule(_state(CtState.INVALID), DROP),
            new_non_syn,
            _rule(_state(CtState.NEW), jump(names.CT_TIMEOUTS)),
            *(_rule(VmapLookup(f, ip4, SetRef(fam("eg_disp", f)))) for f in FAMILIES),
            _rule(DROP),
        ),
    )
    yield _base(
        names.INGRESS_FWD,
        Hook.FORWARD,
        Priority("filter", 20),
        [*pending.fwd_to, *gate_in, _rule(ACCEPT, comment=NOT_A_POD)],
        policy="drop",
    )
    if allow_node_to_pod:
        # Pending pods too: the node is not held back by a placeholder (kubelet probes).
        node_to_pod = [
            _rule(AddrMatch(f, ip6, pods[f]), ACCEPT, comment="node to local pod allowed")
            for f in FAMILIES
        ]
    else:
        node_to_pod = [
            _rule(AddrMatch(6, ip6, pods[6]), Icmpv6TypeIn(ND_FROM_NODE), ACCEPT),
            *pending.from_node,
            *gate_in,
        ]
    yield _base(names.INGRESS_OUTPUT, Hook.OUTPUT, Priority("filter", 20), node_to_pod)
    yield Chain(
        names.POD_INGRESS,
        (
            _rule(_state(CtState.RELATED), ACCEPT),  # ICMP errors of known flows (S-X-3)
            _rule(_state(CtState.ESTABLISHED), CtDirectionMatch(CtDir.REPLY), ACCEPT),
            *(
                _rule(
                    _state(CtState.ESTABLISHED),
                    DaddrMarkInSet(f, SetRef(fam("in_valid", f))),
                    ACCEPT,
                )
                for f in FAMILIES
            ),
            _rule(_state(CtState.INVALID), DROP),
            new_non_syn,
            _rule(_state(CtState.NEW), jump(names.CT_TIMEOUTS)),
            # NEW, or established with a stale epoch: (re-)check against the pod's rules.
            *(_rule(VmapLookup(f, ip6, SetRef(fam("in_disp", f)))) for f in FAMILIES),
            _rule(DROP),
        ),
    )


PENDING_COMMENT = "policy pending: fail-closed placeholder (docs/cni.md)"
DHCP_SERVER_PORT = {4: 67, 6: 547}
DHCP_CLIENT_PORT = {4: 68, 6: 546}


@dataclass(frozen=True)
class _Pending:
    """The placeholder's rules, by where they go (docs/cni.md, "The placeholder").

    A pending IP belongs to a pod whose CNI ADD the agent answered but whose own policy
    is not in force yet (or whose IP the node object still gives to another pod UID):
    nothing is forwarded to or from it, whatever the conntrack state (an entry of the
    IP's previous pod must not carry the new pod's packets); towards the node only ND,
    MLD and DHCP pass, and replies on the node's own connections when the node may
    reach its pods (kubelet probes). These rules come before the policy gates, so a
    pending IP that a stale node object still lists in ``pods4/6`` stays closed.
    """

    fwd_from: tuple[Rule, ...]
    fwd_to: tuple[Rule, ...]
    from_node: tuple[Rule, ...]
    node_replies: tuple[Rule, ...]
    to_node_base: tuple[Rule, ...]
    to_node_drop: tuple[Rule, ...]

    def to_node(self, allow_node_to_pod: bool) -> tuple[Rule, ...]:
        replies = self.node_replies if allow_node_to_pod else ()
        return (*self.to_node_base, *replies, *self.to_node_drop)


def _pending_rules() -> _Pending:
    sets = {f: SetRef(fam(names.PENDING, f)) for f in FAMILIES}
    src, dst = AddrField.SADDR, AddrField.DADDR

    def drop(f: Family, field_: AddrField) -> Rule:
        return _rule(AddrMatch(f, field_, sets[f]), DROP, comment=PENDING_COMMENT)

    def dhcp(f: Family, field_: AddrField, port: int) -> Rule:
        return _rule(
            AddrMatch(f, field_, sets[f]), PortMatch(L4Proto.UDP, PortRange(port, port)), ACCEPT
        )

    return _Pending(
        fwd_from=tuple(drop(f, src) for f in FAMILIES),
        fwd_to=tuple(drop(f, dst) for f in FAMILIES),
        from_node=(
            _rule(AddrMatch(6, dst, sets[6]), Icmpv6TypeIn(ND_FROM_NODE), ACCEPT),
            *(dhcp(f, dst, DHCP_CLIENT_PORT[f]) for f in FAMILIES),
            *(drop(f, dst) for f in FAMILIES),
        ),
        node_replies=tuple(
            _rule(AddrMatch(f, src, sets[f]), CtDirectionMatch(CtDir.REPLY), ACCEPT)
            for f in FAMILIES
        ),
        to_node_base=(
            _rule(
                AddrMatch(6, src, sets[6]), Icmpv6TypeIn(ND_FROM_POD_LINK + MLD_FROM_POD), ACCEPT
            ),
            *(dhcp(f, src, DHCP_SERVER_PORT[f]) for f in FAMILIES),
        ),
        to_node_drop=tuple(drop(f, src) for f in FAMILIES),
    )
