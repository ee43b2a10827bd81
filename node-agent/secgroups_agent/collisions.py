"""One owner per nft name: the planner's claims on the names of our table.

nft object names end in a 128-bit digest of the identity a user chose (a group's or a
set's namespace/name, a port list, an ordered group list: ``secgroups.nft.names``), so
two different objects never get one name in practice. If they ever did (a digest
collision, a bug), putting both under one name would let one tenant's rules, members
or ports replace another's: an earlier planner merged them silently. So every object
the planner puts in the table is **claimed** for its owner first, and a claim on a name
that another owner holds is refused:

* owners: ``static`` (the fixed objects), ``group <key>`` (a group's chains, its
  dispatch sub-chains and maps), ``address set <key>`` (a set's twins, claimed by each
  group that uses it), ``port set <ports>`` (port sets are named by their content, so
  equal lists share one), ``group list <groups>`` (the chains of an ordered list);
* whoever held a name in the last committed table keeps it while it still wants it; the
  rest claim in a fixed order (groups by key, then lists), so the outcome does not depend
  on the order of events;
* a claim is all or nothing per claimant: a group with one refused name is refused
  whole (none of its objects enter the table), and so is a group list;
* the planner isolates the pods of a refused group or list (it gives them no group: the
  empty list's chain drops everything) and reports each refusal (status, log, metric);
  nothing of the holder changes.

A group that cannot be rendered at all (``RenderError``, e.g. two of its own dispatch
objects under one name) is refused the same way instead of failing the whole node.

Neighbours: :mod:`~secgroups_agent.planning` (the only caller), ``secgroups.nft.names``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from secgroups.nft.statements import RefKind

Key = tuple[RefKind, str]
STATIC = "static"


def group_owner(key: str) -> str:
    return f"group {key}"


def set_owner(key: str) -> str:
    return f"address set {key}"


def ports_owner(ports: str) -> str:
    return f"port set {ports}"


def list_owner(groups: Sequence[str]) -> str:
    return "group list [" + ", ".join(groups) + "]"


@dataclass(frozen=True)
class Refusal:
    """``claimant`` was refused: ``name`` is held by ``holder`` (or it failed to render)."""

    claimant: str
    name: str = ""
    holder: str = ""
    error: str = ""

    def text(self) -> str:
        if self.error:
            return f"{self.claimant} refused: {self.error}"
        return f"{self.claimant} refused: nft name {self.name} is held by {self.holder}"


@dataclass
class Claims:
    """Who holds which name, claimant by claimant (all or nothing per claimant)."""

    owners: dict[Key, str] = field(default_factory=dict)

    def claim(self, claimant: str, wants: Iterable[tuple[Key, str]]) -> Refusal | None:
        """Give ``claimant`` every ``(name, owner)`` it wants, or nothing and a refusal."""
        batch: dict[Key, str] = {}
        for key, owner in wants:
            have = self.owners.get(key) or batch.get(key)
            if have is not None and have != owner:
                return Refusal(claimant, key[1], have)
            batch[key] = owner
        self.owners.update(batch)
        return None


def reserve(claims: Claims, held: Mapping[Key, str], wanted: Iterable[tuple[Key, str]]) -> None:
    """Names the last committed table gave to an owner that still wants them stay its own."""
    still = {(k, o) for k, o in wanted}
    for key, owner in held.items():
        if (key, owner) in still and key not in claims.owners:
            claims.owners[key] = owner
