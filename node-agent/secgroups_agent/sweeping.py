"""The post-commit conntrack sweep: cut the pod's side of inbound flows a re-check denies.

S-CT-2 says a re-checked pod's denied inbound flows are interrupted. The epochs
(docs/architecture.md#existing-connections-epochs) re-check each flow in the kernel at the
*remote's* next packet, but the pod's own packets on the flow are replies, accepted
whatever the flow's mark: a one-way UDP stream from the pod would keep reaching a revoked
client (docs/nftables.md, "Epochs"). So after every commit that changed a pod's mark — its
epoch raised on the node object, or a re-check counter of one of its groups or of a set they
name inbound raised on that group or set object (``secgroups.nft.epochs.pod_mark``) — the
agent sweeps that pod's flows:

1. the entries still carrying one of the pod's **old** marks (a kernel-side mark filter:
   an inbound flow of the pod is stamped with the pod's mark, so little else is read;
   one dump for the old marks of every pod the sweep re-checks, because each dump walks
   the kernel's whole table: ``conntrack.dump_filters``);
2. each is judged by the pod's ingress under the committed policy
   (:func:`secgroups.rechecking.still_allowed`: remote = original source, port = reply
   source port) — exactly what the kernel's re-check of the remote's next packet decides;
3. allowed → the entry gets the pod's **new** mark (its fast path works again at once, and
   a later sweep that filters by the then-old mark finds it); denied → the **tombstone**
   (``MARK_TOMBSTONE``, never an epoch mark), whose replies ``pod_egress`` drops.

Nothing is deleted (a deleted live entry can come back with its direction flipped,
docs/nftables.md#a-deleted-tcp-entry-comes-back-with-its-direction-flipped), and only the
reply direction is cut by the tombstone: the remote's packets still go through the
re-check, so a flow the policy allows again resumes, re-stamped by the kernel, and an
evaluator that disagreed with the kernel would only delay the pod's packets until the
remote's next one. An entry that carries the mark but whose reply source is not one of the
pod's IPs is left alone (not an inbound flow of the pod as we understand it). Outbound
flows are never stamped, so never read (S-CT-1).

Old marks come from the previous commit (pod UID → mark); at the agent's first commit,
from the ``in_epoch*`` maps the kernel still holds (epochs raised while the agent was
down). What a sweep could not finish — an error, or a policy change waiting — stays
pending and is retried, judged then against the policy committed then.

Neighbours: ``conntrack`` (the port: dump by mark, set marks), ``syncing`` (when),
``secgroups.rechecking`` (the decision), ``secgroups.nft.epochs`` (the marks).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from secgroups.compiled import (
    CompiledAddressSetSpec,
    CompiledGroupSpec,
    CompiledNodeSpec,
    CompiledPod,
    CompiledPolicy,
)
from secgroups.evaluating import Evaluator
from secgroups.nft.epochs import MARK_TOMBSTONE, MARK_UNSTAMPED, pod_mark
from secgroups.rechecking import InboundFlow, still_allowed
from secgroups_agent.conntrack import ConntrackPort, CtFlow
from secgroups_agent.sources import Snapshot

Stale = Mapping[str, Set[int]]  # pod UID -> old marks whose flows are still to sweep


def pod_marks(
    node: CompiledNodeSpec,
    groups: Mapping[str, CompiledGroupSpec],
    sets: Mapping[str, CompiledAddressSetSpec],
) -> dict[str, int]:
    """Pod UID → its current mark under the node's ``groups`` and ``sets`` (what
    ``in_epoch*`` holds for its IPs: ``epochs.pod_mark``)."""
    return {p.uid: pod_mark(p, groups, sets) for p in node.pods}


def stale_marks(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, set[int]]:
    """Pods whose mark changed between two commits, with their old mark (pods that came or
    went are not in it: a new pod has no old flows, a gone pod's entries are deleted)."""
    return {
        uid: {old}
        for uid, old in before.items()
        if uid in after and after[uid] != old and old not in (MARK_UNSTAMPED, MARK_TOMBSTONE)
    }


def kernel_stale_marks(
    kernel: Mapping[str, int], node: CompiledNodeSpec, marks: Mapping[str, int]
) -> dict[str, set[int]]:
    """Before the first commit: the marks the kernel's ``in_epoch*`` maps hold (IP → mark)
    that differ from the mark about to replace them, per pod UID."""
    out: dict[str, set[int]] = {}
    for pod in node.pods:
        for ip in pod.ips:
            try:
                held = kernel.get(str(ipaddress.ip_address(ip)))
            except ValueError:
                continue
            if held is not None and held not in (marks[pod.uid], MARK_UNSTAMPED, MARK_TOMBSTONE):
                out.setdefault(pod.uid, set()).add(held)
    return out


def epoch_elements(doc: Mapping[str, Any] | None) -> dict[str, int]:
    """IP → mark from ``nft -j list map inet secgroups in_epoch4`` (``elem: [[ip, mark]]``);
    anything else in the listing is ignored."""
    out: dict[str, int] = {}
    for item in (doc or {}).get("nftables", ()):
        body = item.get("map") if isinstance(item, dict) else None
        if not isinstance(body, dict) or body.get("map") != "mark":
            continue
        for elem in body.get("elem", ()):
            if isinstance(elem, list) and len(elem) == 2 and isinstance(elem[1], int):
                try:
                    out[str(ipaddress.ip_address(elem[0]))] = elem[1]
                except ValueError:
                    continue
    return out


def decide(
    policy: CompiledPolicy,
    pod: CompiledPod,
    flows: list[CtFlow],
    new_mark: int,
    evaluator: Evaluator,
) -> tuple[list[tuple[CtFlow, int]], int]:
    """The new mark of each of ``pod``'s inbound ``flows`` (its new epoch mark if its
    ingress still allows the flow, else the tombstone), and how many were left alone
    because their reply source is not one of the pod's IPs."""
    ips = set()
    for ip in pod.ips:
        try:
            ips.add(ipaddress.ip_address(ip))
        except ValueError:
            continue
    updates: list[tuple[CtFlow, int]] = []
    foreign = 0
    # Flows of one client to one port share a verdict (a stream of short UDP flows from
    # one host differs only in source ports): judge each distinct key once.
    verdicts: dict[tuple[object, ...], bool] = {}
    for flow in flows:
        key: tuple[object, ...] = (
            flow.orig_src,
            flow.reply_src,
            flow.proto,
            flow.reply_sport,
            flow.icmp_type,
            flow.icmp_code,
        )
        ok = verdicts.get(key)
        if ok is None:
            try:
                inbound = InboundFlow.make(
                    flow.orig_src,
                    flow.reply_src,
                    flow.proto,
                    flow.reply_sport,
                    flow.icmp_type,
                    flow.icmp_code,
                )
            except ValueError:
                foreign += 1
                continue
            if inbound.pod_ip not in ips:
                foreign += 1
                continue
            (ok,) = still_allowed(policy, pod, [inbound], evaluator=evaluator)
            verdicts[key] = ok
        updates.append((flow, new_mark if ok else MARK_TOMBSTONE))
    return updates, foreign


@dataclass
class SweepResult:
    """What one sweep did; ``remaining`` is what it left for later (an error, or a stop)."""

    kept: int = 0  # re-stamped with the pod's current mark
    cut: int = 0  # tombstoned
    foreign: int = 0  # carried a swept mark but are not the pod's inbound flows
    gone: int = 0  # ended between the dump and the mark update
    remaining: dict[str, set[int]] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    @property
    def touched(self) -> int:
        return self.kept + self.cut


class Sweeper:
    """Runs sweeps through a :class:`~secgroups_agent.conntrack.ConntrackPort`."""

    def __init__(
        self,
        conntrack: ConntrackPort,
        *,
        batch: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conntrack = conntrack
        self.batch = max(1, batch)
        self.clock = clock

    def sweep(
        self,
        snap: Snapshot,
        stale: Stale,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> SweepResult:
        """Sweep the flows of ``stale`` (pod UID → old marks) against ``snap``, the state
        just committed. ``should_stop`` (a policy change is waiting) is asked between
        batches once some progress was made: what is left stays in ``remaining`` (its
        entries still carry the old mark, so the next sweep finds exactly them). A failed
        conntrack call leaves its mark in ``remaining`` and the error in ``error``; the
        other pods are still swept."""
        started = self.clock()
        result = SweepResult()
        pods = {p.uid: p for p in snap.node.pods}
        policy = snap.policy()
        evaluator = Evaluator(policy)
        todo: list[tuple[CompiledPod, int, int]] = []  # (pod, old mark, new mark)
        for uid in sorted(stale):
            pod = pods.get(uid)
            if pod is None:
                continue  # gone: its IPs' entries are deleted (conntrack.delete_ips)
            new_mark = pod_mark(pod, snap.groups, snap.sets)
            todo += [
                (pod, old, new_mark)
                for old in sorted(stale[uid])
                if old not in (new_mark, MARK_UNSTAMPED, MARK_TOMBSTONE)
            ]
        if not todo:
            result.seconds = self.clock() - started
            return result
        try:
            # One dump for every old mark: each dump walks the whole kernel table.
            found = self.conntrack.dump_marks({old for _, old, _ in todo})
        except Exception as exc:  # netlink errors, a bug: retried later
            for pod, old, _ in todo:
                result.remaining.setdefault(pod.uid, set()).add(old)
            result.error = f"reading conntrack entries by mark: {exc}"
            result.seconds = self.clock() - started
            return result
        progressed = False
        for pod, old, new_mark in todo:
            if progressed and should_stop():
                result.remaining.setdefault(pod.uid, set()).add(old)
                continue
            try:
                flows = found.get(old, [])
                done = self._one(policy, pod, flows, new_mark, evaluator, result, should_stop)
            except Exception as exc:  # netlink errors, a bug: retried later
                result.remaining.setdefault(pod.uid, set()).add(old)
                result.error = f"sweeping {pod.namespace}/{pod.name} ({old:#010x}): {exc}"
                continue
            progressed = True
            if not done:
                result.remaining.setdefault(pod.uid, set()).add(old)
        result.seconds = self.clock() - started
        return result

    def _one(
        self,
        policy: CompiledPolicy,
        pod: CompiledPod,
        flows: list[CtFlow],
        new_mark: int,
        evaluator: Evaluator,
        result: SweepResult,
        should_stop: Callable[[], bool],
    ) -> bool:
        """Sweep the ``flows`` of one old mark of one pod; False if it stopped before the
        end."""
        updates, foreign = decide(policy, pod, flows, new_mark, evaluator)
        result.foreign += foreign
        for i in range(0, len(updates), self.batch):
            if i and should_stop():
                return False
            chunk = updates[i : i + self.batch]
            for (_, mark), found in zip(chunk, self.conntrack.set_marks(chunk), strict=True):
                if not found:
                    result.gone += 1
                elif mark == MARK_TOMBSTONE:
                    result.cut += 1
                else:
                    result.kept += 1
        return True
