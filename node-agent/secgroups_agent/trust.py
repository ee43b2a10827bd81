"""Who wrote a compiled object: the agent enforces only what the operator wrote.

The agent turns ``CompiledNodePolicy``, ``CompiledSecurityGroup`` and
``CompiledAddressSet`` objects into the node's firewall. Whoever can write them decides
what every pod may send and receive, so only the operator should (docs/failure-modes.md,
"Trust"). Three layers, from strongest to weakest:

1. **RBAC** (the chart): only the operator's service account may create, update, patch
   or delete compiled objects; the agents may read them and write their own node
   object's status only (an admission policy of the chart holds each agent to its node);
   no aggregated role grants them to users.
2. **Admission**: a ValidatingAdmissionPolicy that refuses writes to compiled objects by
   anyone but the operator's service account, cluster admins included, so that a broad
   role given by mistake does not open the firewall (docs/failure-modes.md, "Trust", has
   it; the chart does not ship it yet).
3. **The agent checks the writer** (this module): server-side apply records, for every
   field, the *field manager* that set it (``metadata.managedFields``). An object whose
   ``spec`` has any field managed by another manager than the operator's (a
   ``kubectl edit``, ``kubectl apply``, ``kubectl patch``, another controller), or that
   carries no managedFields at all, is **refused**: the agent keeps the last version it
   accepted and reports the refusal (status ``UntrustedWriter``, log, metric).

What the third layer is not: a field manager is a name the client chooses, so anyone
who may write the object can claim to be ``secgroups-operator``. It catches mistakes and
ordinary tools, and makes them visible; against someone who already holds write access
to compiled objects, layers 1 and 2 are the boundary. The API server offers nothing
stronger per object (no authenticated writer identity is stored), and signing the
objects would move the question to who can read the signing key (every agent, for a
shared key) and add key rotation to the product; not taken.

Neighbours: ``sources`` (its reflectors call :func:`writer_problem` on every object they
receive), ``main`` (``--trusted-writers``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

OPERATOR_MANAGERS = ("secgroups-operator",)


def _touches_spec(fields: Any) -> bool:
    return isinstance(fields, Mapping) and "f:spec" in fields


def writer_problem(obj: Mapping[str, Any], trusted: Iterable[str]) -> str | None:
    """Why ``obj`` was not written by a trusted manager (None: it was).

    Every managedFields entry that owns a field under ``spec`` must name a trusted
    manager, and one must; entries of subresources (the agent's ``status``) and entries
    that own only metadata (labels) do not matter. No managedFields: not trusted."""
    allowed = set(trusted)
    entries = (obj.get("metadata") or {}).get("managedFields")
    if not isinstance(entries, list) or not entries:
        return "no managedFields: the writer is unknown"
    writers: list[str] = []
    vouched = False
    for entry in entries:
        if not isinstance(entry, Mapping) or entry.get("subresource"):
            continue
        if not _touches_spec(entry.get("fieldsV1")):
            continue
        if entry.get("manager") in allowed:
            vouched = True
        else:
            writers.append(f"{entry.get('manager')} ({entry.get('operation')})")
    if writers:
        return "spec written by " + ", ".join(sorted(set(writers)))
    if not vouched:
        return "no trusted manager owns the spec"
    return None
