"""The seal: a digest of our table's content, kept in the table itself.

Role: lets a restarted agent **adopt** the table it finds instead of rewriting it
(docs/nftables.md, "The seal"; docs/failure-modes.md). The set ``agent_seal`` (type
``ipv6_addr``: nft's only 128-bit key type; its one element is not an address but the
128-bit digest the agent computed for the whole table) holds, when sealed, the digest of
everything else in the table:

* a full transaction writes the seal in the same transaction as the content
  (:func:`seal_text` appended to it): the seal and the content change together;
* any other transaction empties the seal first, in the same transaction
  (:func:`unseal_text`), and the agent seals again once it is idle: a crash in between
  leaves an unsealed table, which the next agent rewrites;
* a starting agent compares the seal with the digest of the table it wants
  (:func:`read_seal`); equal, and the table's structure checks out, it adopts the table
  as is: no transaction, no rewrite.

The seal says what the agent meant to write, not what the kernel holds: a hand edit
that leaves it in place is caught by the structure check at adoption and by drift
detection afterwards, not by the seal.

Neighbours: ``basechains`` (declares the set), the agent's planner (computes the
digest) and sync loop (writes and reads the seal).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from secgroups.nft.elements import DataType, element
from secgroups.nft.objects import Set, Table, block

SEAL = "agent_seal"
DIGEST_HEX = 32  # 128 bits
_HEX = re.compile(r"[0-9a-f]{32}")


def seal_set(digest: str | None = None) -> Set:
    """The declaration every table holds: empty, or sealed with ``digest``."""
    if digest is None:
        return Set(SEAL, (DataType.IPV6_ADDR,))
    if not _HEX.fullmatch(digest):
        raise ValueError(f"a seal is {DIGEST_HEX} lower-case hex digits, not {digest!r}")
    address = ipaddress.IPv6Address(int(digest, 16))
    return Set(SEAL, (DataType.IPV6_ADDR,), elements=(element(address),))


def seal_text(table: Table, digest: str) -> str:
    """Seal the table with ``digest`` (replacing any seal): nft text to append to a
    transaction."""
    return unseal_text(table) + block(table, [seal_set(digest)])


def unseal_text(table: Table) -> str:
    """Empty the seal: nft text to put in a transaction that changes the table."""
    return f"flush set {table} {SEAL}\n"


def read_seal(doc: Mapping[str, Any] | None) -> str | None:
    """The digest in ``nft -j list set <table> agent_seal`` output; None if unsealed,
    missing or not one well-formed element."""
    if doc is None:
        return None
    for item in doc.get("nftables", ()):
        obj = item.get("set") if isinstance(item, dict) else None
        if isinstance(obj, dict) and obj.get("name") == SEAL:
            elems = obj.get("elem") or []
            if len(elems) != 1 or not isinstance(elems[0], str):
                return None
            try:
                value = int(ipaddress.IPv6Address(elems[0]))
            except ValueError:
                return None
            return f"{value:0{DIGEST_HEX}x}"
    return None
