"""The reference evaluator: compiled policy + a new connection's first packet → verdict.

This is the oracle every other part is checked against: the nft tracer, real
probes in the lab, and the CLI's ``trace``/``matrix``. It implements

* S-X-1 — a pod's groups in sequence order; in a group, rules in compiled order
  (priority, Deny before Allow); the first matching rule decides;
* S-X-2 — no match means deny; a connection between two managed pods needs the
  sender's egress AND the receiver's ingress;
* S-X-3 is about replies: only a connection's first packet is judged here.

Addresses that belong to no managed pod (outside hosts, hostNetwork pods, nodes)
are unrestricted on their own side. Traffic from a node to its own pods is allowed
when ``allow_node_to_pod`` is set (the default, as for kubelet probes).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cached_property

from secgroups.addresses import IPAddress, IPNetwork
from secgroups.compiled import (
    CompiledGroupSpec,
    CompiledPod,
    CompiledPolicy,
    CompiledRule,
    ObjectKey,
    RemoteKind,
)
from secgroups.models import Action, Direction, IPFamily, Protocol

TCP, UDP, ICMP, ICMPV6, GRE = 6, 17, 1, 58, 47
PROTO_NAMES = {TCP: "tcp", UDP: "udp", ICMP: "icmp", ICMPV6: "icmpv6", GRE: "gre"}


@dataclass(frozen=True)
class Packet:
    """The first packet of a connection. ``proto`` is the IP protocol number."""

    src: IPAddress
    dst: IPAddress
    proto: int
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    # The node the packet comes from, when it is sent by a node itself (not a pod).
    from_node: str | None = None

    @classmethod
    def make(
        cls,
        src: str,
        dst: str,
        proto: str,
        dport: int | None = None,
        icmp_type: int | None = None,
        icmp_code: int | None = None,
    ) -> Packet:
        """Build from text: ``proto`` is tcp, udp, icmp (ICMPv6 on IPv6), gre or a number.

        ICMP without a type defaults to echo request (8, or 128 on IPv6), code 0.
        """
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        if s.version != d.version:
            raise ValueError(f"source {src} and destination {dst} are of different families")
        name = proto.lower()
        number = {"tcp": TCP, "udp": UDP, "gre": GRE}.get(name)
        if name in ("icmp", "icmpv6", "ping"):
            number = ICMPV6 if s.version == 6 else ICMP
            if icmp_type is None:
                icmp_type = 128 if s.version == 6 else 8
            if icmp_code is None:
                icmp_code = 0
        if number is None:
            number = int(proto)
        return cls(s, d, number, dport, icmp_type, icmp_code)

    @property
    def family(self) -> IPFamily:
        return IPFamily.IPV4 if self.src.version == 4 else IPFamily.IPV6

    def __str__(self) -> str:
        name = PROTO_NAMES.get(self.proto, str(self.proto))
        port = f":{self.dport}" if self.dport is not None else ""
        icmp = f" type {self.icmp_type}" if self.icmp_type is not None else ""
        return f"{name} {self.src} -> {self.dst}{port}{icmp}"


@dataclass(frozen=True)
class DirectionVerdict:
    """One side's decision: which pod, which group and rule decided (rule None = default deny)."""

    direction: Direction
    pod: ObjectKey
    allowed: bool
    group: ObjectKey | None = None
    rule: CompiledRule | None = None
    note: str = ""

    def explain(self) -> str:
        side = "egress of" if self.direction is Direction.EGRESS else "ingress of"
        if self.note:
            return f"{side} {self.pod}: {self.note}"
        if self.rule is None:
            return f"{side} {self.pod}: no rule matched: default deny (S-X-2)"
        verdict = "allowed" if self.allowed else "denied"
        return f"{side} {self.pod}: {verdict} by rule {self.rule.id} of group {self.group}"


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    egress: DirectionVerdict | None
    ingress: DirectionVerdict | None

    def explain(self) -> str:
        parts = [v.explain() for v in (self.egress, self.ingress) if v is not None]
        if not parts:
            return "neither end is a managed pod: not filtered"
        return "; ".join(parts)


class Evaluator:
    """Evaluates packets against one compiled policy; caches parsed networks and pod IPs."""

    def __init__(self, policy: CompiledPolicy, *, allow_node_to_pod: bool = True) -> None:
        self.policy = policy
        self.allow_node_to_pod = allow_node_to_pod
        self._nets: dict[tuple[str, int], tuple[IPNetwork, ...]] = {}

    @cached_property
    def pods_by_ip(self) -> dict[IPAddress, tuple[str, CompiledPod]]:
        out: dict[IPAddress, tuple[str, CompiledPod]] = {}
        for node, spec in sorted(self.policy.nodes.items()):
            for pod in spec.pods:
                for ip in pod.ips:
                    out[ipaddress.ip_address(ip)] = (node, pod)
        return out

    def pod_at(self, ip: IPAddress) -> tuple[str, CompiledPod] | None:
        return self.pods_by_ip.get(ip)

    def evaluate(self, packet: Packet) -> Verdict:
        src = self.pod_at(packet.src)
        dst = self.pod_at(packet.dst)
        egress = self._decide(src[1], Direction.EGRESS, packet) if src else None
        ingress: DirectionVerdict | None = None
        if dst is not None:
            node, pod = dst
            if self.allow_node_to_pod and packet.from_node == node:
                ingress = DirectionVerdict(
                    Direction.INGRESS, pod.key, True, note="from its own node: always allowed"
                )
            else:
                ingress = self._decide(pod, Direction.INGRESS, packet)
        allowed = all(v.allowed for v in (egress, ingress) if v is not None)
        return Verdict(allowed, egress, ingress)

    def decide(self, pod: CompiledPod, direction: Direction, packet: Packet) -> DirectionVerdict:
        """``pod``'s own verdict in ``direction`` on ``packet`` (its groups only, S-X-1/2): the
        other end's rules and the node → pod allowance are not consulted."""
        return self._decide(pod, direction, packet)

    def _decide(self, pod: CompiledPod, direction: Direction, packet: Packet) -> DirectionVerdict:
        for group_name in pod.groups:
            group = self.policy.groups.get(group_name)
            if group is None:
                continue
            rule = self.first_match(group, direction, packet)
            if rule is not None:
                return DirectionVerdict(
                    direction, pod.key, rule.action is Action.ALLOW, group.group, rule
                )
        return DirectionVerdict(direction, pod.key, False)

    def first_match(
        self, group: CompiledGroupSpec, direction: Direction, packet: Packet
    ) -> CompiledRule | None:
        """The first rule of ``group`` in ``direction`` that matches ``packet`` (S-X-1)."""
        remote_ip = packet.src if direction is Direction.INGRESS else packet.dst
        for rule in group.rules(direction):
            if self.rule_matches(rule, packet, remote_ip):
                return rule
        return None

    def rule_matches(self, rule: CompiledRule, packet: Packet, remote_ip: IPAddress) -> bool:
        if rule.family is not packet.family:
            return False
        if not _protocol_matches(rule, packet):
            return False
        return self._remote_matches(rule, remote_ip)

    def _remote_matches(self, rule: CompiledRule, ip: IPAddress) -> bool:
        remote = rule.remote
        if remote.kind is RemoteKind.ANY:
            return True
        if remote.kind is RemoteKind.CIDR:
            return any(
                ip in n
                for n in self._networks(
                    ("cidr:" + ",".join(remote.cidrs), ip.version), remote.cidrs
                )
            )
        spec = self.policy.sets.get(remote.set or "")
        if spec is None:
            return False
        items = spec.ipv4 if ip.version == 4 else spec.ipv6
        return any(ip in n for n in self._networks((remote.set or "", ip.version), items))

    def _networks(self, key: tuple[str, int], cidrs: tuple[str, ...]) -> tuple[IPNetwork, ...]:
        nets = self._nets.get(key)
        if nets is None:
            nets = tuple(n for n in (ipaddress.ip_network(c) for c in cidrs) if n.version == key[1])
            self._nets[key] = nets
        return nets


def _protocol_matches(rule: CompiledRule, packet: Packet) -> bool:
    proto = rule.protocol
    if proto is Protocol.ALL:
        return True
    if proto is Protocol.TCP or proto is Protocol.UDP:
        if packet.proto != (TCP if proto is Protocol.TCP else UDP):
            return False
        if not rule.ports:
            return True
        return packet.dport is not None and any(packet.dport in span for span in rule.ports)
    if proto is Protocol.ICMP:
        if packet.proto != (ICMPV6 if packet.family is IPFamily.IPV6 else ICMP):
            return False
        if rule.icmp_type is not None and packet.icmp_type != rule.icmp_type:
            return False
        return rule.icmp_code is None or packet.icmp_code == rule.icmp_code
    return packet.proto == GRE  # Protocol.GRE


def evaluate(policy: CompiledPolicy, packet: Packet, *, allow_node_to_pod: bool = True) -> Verdict:
    """One-shot convenience over :class:`Evaluator`."""
    return Evaluator(policy, allow_node_to_pod=allow_node_to_pod).evaluate(packet)
