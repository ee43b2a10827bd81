"""Drift detection: is our table still what we applied? (Someone flushed or edited it.)

The sync loop calls :meth:`DriftChecker.check` on a timer, between syncs, with the
state it last committed. The check is cheap by construction — never a full listing
of 120k elements:

1. one **terse** listing (``nft -j -t list ruleset``: no elements): every chain must
   exist with its declaration and its number of rules, every set and map with its
   declaration, every ct timeout object; no chain, set or map of ours may be extra
   (old ct timeouts are kept on purpose, ``secgroups.nft.transactions``);
2. rule **content**: the first check after a commit records a digest of each chain's
   rules as the kernel lists them (handles left out); later checks compare with it,
   so an edited rule is caught even when the counts match;
3. **elements**: the pod sets and maps (O(pods)) are listed in full and their element
   counts compared; of the address sets (up to 6,000 elements each) one per check, in
   turn.

Any difference is drift; the loop repairs it with a full resync.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from secgroups.nft.objects import Chain, Map, Table
from secgroups.nft.sealing import SEAL
from secgroups.nft.statements import RefKind
from secgroups.nft.transactions import Inventory
from secgroups_agent.nftables import NftBackend
from secgroups_agent.planning import TableState


@dataclass(frozen=True)
class Observed:
    """The terse listing, digested."""

    inventory: Inventory
    rules: Mapping[str, int]  # chain -> rule count
    digests: Mapping[str, str]  # chain -> digest of its rules' expressions


def observe(doc: Mapping[str, Any], family: str, table: str) -> Observed:
    inv = Inventory.from_json(doc, Table(family, table))  # type: ignore[arg-type]
    exprs: dict[str, list[Any]] = {}
    for item in doc.get("nftables", ()):
        rule = item.get("rule")
        if isinstance(rule, dict) and rule.get("table") == table and rule.get("family") == family:
            exprs.setdefault(str(rule.get("chain")), []).append(rule.get("expr"))
    rules = {name: len(exprs.get(name, ())) for name in inv.chains}
    digests = {
        name: hashlib.blake2b(
            json.dumps(exprs.get(name, []), sort_keys=True).encode(), digest_size=12
        ).hexdigest()
        for name in inv.chains
    }
    return Observed(inv, rules, digests)


def element_count(doc: Mapping[str, Any]) -> int | None:
    """Elements of the one set or map in ``nft -j list set|map`` output."""
    for item in doc.get("nftables", ()):
        for kind in ("set", "map"):
            obj = item.get(kind)
            if isinstance(obj, dict):
                return len(obj.get("elem", ()))
    return None


def compare_structure(expected: TableState, seen: Observed) -> list[str]:
    """Differences between the committed structure and the terse listing."""
    out: list[str] = []
    want_chains = {c.name: c for c in expected.chains}
    for name, chain in sorted(want_chains.items()):
        decl = seen.inventory.chains.get(name)
        if decl is None:
            out.append(f"chain {name} is missing")
        elif decl != chain.decl():
            out.append(f"chain {name} is declared {decl}, want {chain.decl()}")
        elif seen.rules.get(name, 0) != len(chain.rules):
            out.append(f"chain {name} has {seen.rules.get(name, 0)} rules, want {len(chain.rules)}")
    out += [f"unexpected chain {n}" for n in sorted(set(seen.inventory.chains) - set(want_chains))]
    want_sets = {s.name: s for s in expected.sets}
    for name, obj in sorted(want_sets.items()):
        decl = seen.inventory.sets.get(name)
        if decl is None:
            out.append(f"{obj.keyword} {name} is missing")
        elif decl != obj.decl():
            out.append(f"{obj.keyword} {name} is declared {decl}, want {obj.decl()}")
    out += [f"unexpected set {n}" for n in sorted(set(seen.inventory.sets) - set(want_sets))]
    out += [
        f"ct timeout {t.name} is missing"
        for t in expected.ct_timeouts
        if t.name not in seen.inventory.ct_timeouts
    ]
    return out


@dataclass
class DriftChecker:
    """Compares the kernel's table with the committed :class:`TableState`."""

    backend: NftBackend
    family: str = "inet"
    table: str = "secgroups"
    _baseline: dict[str, str] | None = None
    _baseline_of: tuple[Chain, ...] = ()
    _turn: int = 0
    checks: int = field(default=0)

    def invalidate(self) -> None:
        """Forget the rule digests (after a full resync re-created every rule)."""
        self._baseline = None
        self._baseline_of = ()

    def check(self, expected: TableState, *, timeout: float = 10.0) -> list[str]:
        """Differences found (empty: no drift). Raises NftError if listing fails."""
        self.checks += 1
        # The whole ruleset, terse: much cheaper than `list table` (see syncing._inventory).
        doc = self.backend.list_json("ruleset", terse=True, timeout=timeout)
        if doc is None or not any(
            (t := item.get("table"))
            and t.get("name") == self.table
            and t.get("family") == self.family
            for item in doc.get("nftables", ())
        ):
            return [f"table {self.family} {self.table} is missing"]
        seen = observe(doc, self.family, self.table)
        problems = compare_structure(expected, seen)
        if problems:
            return problems
        chains = tuple(expected.chains)
        if (
            self._baseline is None
            or len(chains) != len(self._baseline_of)
            or any(a is not b for a, b in zip(chains, self._baseline_of, strict=True))
        ):
            # First look since the rules last changed: what the kernel shows is the baseline.
            self._baseline, self._baseline_of = dict(seen.digests), chains
        else:
            problems += [
                f"rules of chain {name} changed"
                for name, digest in sorted(seen.digests.items())
                if self._baseline.get(name) != digest
            ]
        sizes = expected.set_sizes()
        twins = sorted(expected.twins)
        small = sorted(n for n in expected.containers if n != SEAL)  # the seal comes and goes
        to_check = small + ([twins[self._turn % len(twins)]] if twins else [])
        self._turn += 1
        for name in to_check:
            obj = expected.objects[(RefKind.SET, name)]
            kind = "map" if isinstance(obj, Map) else "set"
            listing = self.backend.list_json(
                f"{kind} {self.family} {self.table} {name}", timeout=timeout
            )
            n = None if listing is None else element_count(listing)
            if n != sizes.get(name, 0):
                problems.append(f"{kind} {name} has {n} elements, want {sizes.get(name, 0)}")
        return problems
