"""Re-check live inbound flows of a pod against a new policy (S-CT-2): which still pass.

Role: the decision behind the agent's post-commit conntrack sweep (``docs/agent.md``,
"Conntrack"; ``docs/nftables.md``, "Epochs"). When a pod's ingress epoch is raised, the
kernel re-checks each of its inbound flows at the *remote's* next packet; the sweep
re-judges the same flows at once, so that what the *pod* sends on a denied flow is cut
too. This module says, for conntrack entries already known to be inbound flows of one
pod, whether the pod's ingress rules still allow them — exactly as the kernel's re-check
would judge the remote's next packet:

* the remote is the entry's original source (before any SNAT on this node), the pod's
  address its reply source (after DNAT, so Service traffic is judged at the pod);
* TCP/UDP: the port is the reply *source* port (the pod's port, after DNAT);
* ICMP/ICMPv6: the type and code of the original direction (echo request 8 / 128);
* other protocols (GRE, SCTP, …): the protocol number alone;
* only the pod's ingress (its groups in sequence, S-X-1/2): an established flow passed
  the remote's egress when it started, and the re-check in ``pod_ingress`` consults only
  the receiver's rules.

Pure: no conntrack, no I/O. Neighbours: ``evaluating`` (the reference evaluator it asks),
the agent's ``sweeping`` (reads conntrack, applies the verdicts as marks).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from secgroups.addresses import IPAddress
from secgroups.compiled import CompiledPod, CompiledPolicy
from secgroups.evaluating import ICMP, ICMPV6, TCP, UDP, DirectionVerdict, Evaluator, Packet
from secgroups.models import Direction


@dataclass(frozen=True)
class InboundFlow:
    """One live inbound flow of a pod, as its conntrack entry describes it."""

    remote: IPAddress  # the original source
    pod_ip: IPAddress  # the reply source
    proto: int
    pod_port: int | None = None  # the reply source port (TCP/UDP)
    icmp_type: int | None = None  # of the original direction (ICMP/ICMPv6)
    icmp_code: int | None = None

    def __post_init__(self) -> None:
        if self.remote.version != self.pod_ip.version:
            raise ValueError(f"{self.remote} and {self.pod_ip} are of different families")

    @classmethod
    def make(
        cls,
        remote: str,
        pod_ip: str,
        proto: int,
        pod_port: int | None = None,
        icmp_type: int | None = None,
        icmp_code: int | None = None,
    ) -> InboundFlow:
        return cls(
            ipaddress.ip_address(remote),
            ipaddress.ip_address(pod_ip),
            proto,
            pod_port,
            icmp_type,
            icmp_code,
        )

    def packet(self) -> Packet:
        """The remote's next packet as the pod's ingress rules see it."""
        ported = self.proto in (TCP, UDP)
        icmp = self.proto in (ICMP, ICMPV6)
        return Packet(
            self.remote,
            self.pod_ip,
            self.proto,
            self.pod_port if ported else None,
            self.icmp_type if icmp else None,
            self.icmp_code if icmp else None,
        )


def ingress_verdicts(
    policy: CompiledPolicy,
    pod: CompiledPod,
    flows: Iterable[InboundFlow],
    *,
    evaluator: Evaluator | None = None,
) -> list[DirectionVerdict]:
    """``pod``'s ingress verdict on each of ``flows`` under ``policy`` (in order).

    ``policy`` needs the pod's groups and the sets their rules use (a node slice will do);
    a missing group is skipped and a missing set matches nothing, as everywhere. Pass
    ``evaluator`` (over the same ``policy``) to share its caches across calls.
    """
    ev = evaluator if evaluator is not None else Evaluator(policy)
    if ev.policy is not policy:
        raise ValueError("the evaluator must be over the same policy")
    return [ev.decide(pod, Direction.INGRESS, flow.packet()) for flow in flows]


def still_allowed(
    policy: CompiledPolicy,
    pod: CompiledPod,
    flows: Iterable[InboundFlow],
    *,
    evaluator: Evaluator | None = None,
) -> list[bool]:
    """Whether ``pod``'s ingress still allows each of ``flows`` under ``policy`` (S-CT-2)."""
    return [v.allowed for v in ingress_verdicts(policy, pod, flows, evaluator=evaluator)]
