"""Ingress epoch marks: the ``ct mark`` stamp that ties an inbound flow to a pod's policy version.

Role: map (pod UID, epoch) to the 32-bit value the renderer puts into ``in_epoch*`` and
``in_valid*`` (docs/nftables.md#epochs-re-checking-inbound-flows-s-ct-2). The operator
raises a pod's epoch (``CompiledPod.epoch``) when its inbound connections must be
re-checked (S-CT-2); the new mark makes ``{pod IP . ct mark}`` miss the fast path, so each
established inbound flow goes back through the pod's rules at its next packet.

The mark is a hash, not a counter, so that no state is needed to avoid reuse:
an agent restart computes the same marks (nothing is re-checked needlessly), and a
new pod (new UID) that inherits an IP gets marks unrelated to the old pod's live
entries. Two reserved values are never produced: 0 (unstamped entries, e.g. flows
that predate the agent, or node-originated ones) and 0xffffffff (the tombstone of
the agent's sweep, docs/agent.md#conntrack). A collision needs the same pod IP and two
epochs hashing equal: probability 2**-32 per bump, and its only effect is one flow kept on the
fast path until the next bump.

Neighbours: ``rendering`` (writes the marks), the agent (filters conntrack by mark).
"""

from __future__ import annotations

import hashlib

MARK_UNSTAMPED = 0
MARK_TOMBSTONE = 0xFFFFFFFF


def epoch_mark(pod_uid: str, epoch: int) -> int:
    """The ``ct mark`` stamp of ``pod_uid`` at ``epoch``: stable, in 1..0xfffffffe."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    digest = hashlib.blake2b(
        f"{pod_uid}\x00{epoch}".encode(), digest_size=8, person=b"secgroups-epoch"
    ).digest()
    return int.from_bytes(digest, "big") % (MARK_TOMBSTONE - 1) + 1
