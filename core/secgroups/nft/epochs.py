"""Ingress epoch marks: the ``ct mark`` stamp that ties an inbound flow to a pod's policy version.

Role: map (pod UID, epoch, re-check counters) to the 32-bit value the renderer puts into
``in_epoch*`` and ``in_valid*`` (docs/nftables.md#epochs-re-checking-inbound-flows-s-ct-2).
The operator raises what must be re-checked (S-CT-2): a pod's epoch
(``CompiledPod.epoch``, on its node object), or — for all members of a group at once, in
one write — the group's counter (``CompiledGroupSpec.recheck``), or a set's counter
(``CompiledAddressSetSpec.recheck``) for every pod whose groups name the set in an inbound
rule. The new mark makes ``{pod IP . ct mark}`` miss the fast path, so each established
inbound flow goes back through the pod's rules at its next packet. A counter travels in
the object whose change it re-checks (a set's members, a group's rules), so an agent
applies both at once.

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
from collections.abc import Iterable, Mapping

from secgroups import naming
from secgroups.compiled import CompiledAddressSetSpec, CompiledGroupSpec, CompiledPod

MARK_UNSTAMPED = 0
MARK_TOMBSTONE = 0xFFFFFFFF


def epoch_mark(pod_uid: str, epoch: int, rechecks: Iterable[tuple[str, int]] = ()) -> int:
    """The ``ct mark`` stamp of ``pod_uid`` at ``epoch`` and the re-check counters
    ``rechecks`` (``(name, counter)``, counters > 0 only): stable, in 1..0xfffffffe. With
    no counter it is the mark of the pod's epoch alone, as before counters existed."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    text = f"{pod_uid}\x00{epoch}" + "".join(f"\x00{name}={n}" for name, n in rechecks)
    digest = hashlib.blake2b(text.encode(), digest_size=8, person=b"secgroups-epoch").digest()
    return int.from_bytes(digest, "big") % (MARK_TOMBSTONE - 1) + 1


def recheck_counters(
    groups: Iterable[str],
    compiled_groups: Mapping[str, CompiledGroupSpec],
    sets: Mapping[str, CompiledAddressSetSpec],
) -> tuple[tuple[str, int], ...]:
    """The re-check counters a pod in ``groups`` carries in its mark: each group's own
    (``group/<name>``), then those of the address sets its groups name in inbound rules
    (``set/<name>``, sorted); counters at 0, and objects absent, leave no trace."""
    out: list[tuple[str, int]] = []
    named: set[str] = set()
    for g in groups:
        spec = compiled_groups.get(g)
        if spec is None:
            continue
        if spec.recheck:
            out.append((naming.group_ref(g), spec.recheck))
        named.update(r.remote.set for r in spec.ingress if r.remote.set is not None)
    for name in sorted(named):
        s = sets.get(name)
        if s is not None and s.recheck:
            out.append((naming.set_ref(name), s.recheck))
    return tuple(out)


def pod_mark(
    pod: CompiledPod,
    groups: Mapping[str, CompiledGroupSpec],
    sets: Mapping[str, CompiledAddressSetSpec],
) -> int:
    """The mark of ``pod`` under the compiled ``groups`` and ``sets`` its node uses: its
    epoch and the re-check counters of its groups and of the sets they name inbound."""
    return epoch_mark(pod.uid, pod.epoch, recheck_counters(pod.groups, groups, sets))
