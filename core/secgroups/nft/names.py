"""Names of the nft objects the renderer makes: readable text plus a long digest.

Role: one place that decides how a compiled group, address set, port list or group
list is called in ``table inet secgroups``. Names are ``<prefix>_<readable>_<digest>``
(plus ``_in``/``_eg`` or ``_4``/``_6``): the readable part is the object's
namespace/name squeezed to ``[a-z0-9_]`` and cut to :data:`READABLE`; the digest (of
the full identity, never of the squeezed text) keeps names unique, so two objects
whose readable parts collide still differ.

The digest is :data:`DIGEST_HEX` hex digits (128 bits) of BLAKE2b: users choose the
identities (namespaces, names, port lists), and a 32-bit digest could be searched
offline for a name that collides with another tenant's (about 2^32 hashes: minutes on
one core). 128 bits make a collision impossible in practice, and the agent's planner
still refuses an object whose name another object holds (docs/nftables.md, "Names").
Everything stays within :data:`statements.NAME_PATTERN` (128 characters; the kernel
takes 255). ``ct timeout`` names keep 8 hex digits: their content is the agent's own
configuration, not user input.

Neighbours: ``secgroups.naming`` (``short_hash``), ``rendering`` (the only caller),
the agent's planner (which checks that no two objects claim one name).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from secgroups.models import Direction
from secgroups.naming import short_hash
from secgroups.nft.statements import Family, L4Proto, check_name
from secgroups.ports import PortRange

READABLE = 24
DIGEST_HEX = 32  # 128 bits

# Static objects (docs/nftables.md, "Static objects"). `ingress`/`egress` are nft keywords (netdev
# hooks), so the shared policy chains are `pod_ingress`/`pod_egress`.
POD_IFACES = "pod_ifaces"
POD_ADDRS = "pod_addrs"  # pod_addrs4 / pod_addrs6: every routed pod address on the node
POD_ANTISPOOF = "pod_antispoof"
POD_EGRESS = "pod_egress"
POD_INGRESS = "pod_ingress"
ND_FROM_POD = "nd_from_pod"
CT_TIMEOUTS = "ct_timeouts"
PRE_ANTISPOOF = "pre_antispoof"
EGRESS_FWD = "egress_fwd"
EGRESS_INPUT = "egress_input"
INGRESS_FWD = "ingress_fwd"
INGRESS_OUTPUT = "ingress_output"
# The fail-closed placeholder (docs/cni.md): pod IPs the CNI plugin announced whose own
# policy is not in force yet (`pending4` / `pending6`).
PENDING = "pending"


def fam(base: str, family: Family) -> str:
    """The IPv4 or IPv6 twin of a family-neutral name: ``pods`` → ``pods4`` / ``pods6``."""
    return f"{base}{family}"


def _squeeze(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:READABLE].rstrip("_") or "x"


def digest(identity: str) -> str:
    """The :data:`DIGEST_HEX`-digit digest that ends a name (a seam for collision tests)."""
    return short_hash(identity, DIGEST_HEX)


def _direction(direction: Direction) -> str:
    return "in" if direction is Direction.INGRESS else "eg"


def group_chain(group: str, namespace: str, name: str, direction: Direction) -> str:
    """``g_<ns>_<name>_<hash>_in|eg``: the shared chain of one group's rules in one direction."""
    return check_name(
        f"g_{_squeeze(f'{namespace}_{name}')}_{digest(group)}_{_direction(direction)}"
    )


def group_list_chain(groups: Sequence[str], readable: Sequence[str], direction: Direction) -> str:
    """``gl_<names>_<hash>_in|eg``: jumps to each group of an ordered list, then drops."""
    ident = digest("\n".join(groups))
    return check_name(f"gl_{_squeeze('_'.join(readable))}_{ident}_{_direction(direction)}")


def address_set(set_key: str, namespace: str, name: str, is_group: bool, family: Family) -> str:
    """``rg_…_4`` (members of a remote security group) or ``ag_…_4`` (an IP address group)."""
    prefix = "rg" if is_group else "ag"
    return check_name(f"{prefix}_{_squeeze(f'{namespace}_{name}')}_{digest(set_key)}_{family}")


def port_set(ranges: Sequence[PortRange]) -> str:
    """``ps_22_25_27_<hash>``: a deduplicated list of destination ports and ranges."""
    text = ",".join(str(r) for r in ranges)
    readable = _squeeze("_".join(str(r).replace("-", "to") for r in ranges))
    return check_name(f"ps_{readable}_{digest(text)}")


def ct_timeout(protocol: L4Proto, family: Family, policy: Sequence[tuple[str, int]]) -> str:
    """``tcp4_<hash of the policy>``: content-addressed, since nft cannot update one in place."""
    text = ",".join(f"{k}={v}" for k, v in policy)
    return check_name(f"{protocol}{family}_{short_hash(text)}")
