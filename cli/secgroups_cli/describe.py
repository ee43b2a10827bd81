"""How core objects are written for people (tables) and machines (JSON/YAML dictionaries).

Shared by ``explain``, ``trace`` and ``matrix`` so a rule reads the same everywhere:
ports as numbers (service names already resolved by the compiler), ICMP type/code,
remotes resolved to what they match now.
"""

from __future__ import annotations

from typing import Any

from secgroups.analysis import EffectiveRule, RemoteType, ResolvedRemote, rule_name
from secgroups.compiled import CompiledRule
from secgroups.membership import GroupKey
from secgroups.models import Protocol


def key_text(key: GroupKey | tuple[str, str]) -> str:
    return f"{key[0]}/{key[1]}"


def short_key(key: GroupKey, namespace: str) -> str:
    """``name`` when in ``namespace``, else ``namespace/name``."""
    return key[1] if key[0] == namespace else key_text(key)


def ports_text(rule: CompiledRule) -> str:
    """Destination ports as numbers (``22``, ``443,8443``, ``80-82``), ``all`` or ``-``."""
    if rule.protocol in (Protocol.TCP, Protocol.UDP):
        return ",".join(str(p) for p in rule.ports) or "all"
    if rule.protocol is Protocol.ALL:
        return "all"
    if rule.protocol is Protocol.ICMP:
        if rule.icmp_type is None:
            return "all types"
        code = f" code {rule.icmp_code}" if rule.icmp_code is not None else ""
        return f"type {rule.icmp_type}{code}"
    return "-"


def protocol_text(rule: CompiledRule) -> str:
    if rule.protocol is Protocol.ICMP and rule.family.value == "IPv6":
        return "ICMPv6"
    return rule.protocol.value


MAX_NAMES = 5
# A group the operator holds (secgroups.analysis): what explain and trace add to the reason.
HELD_NOTE = (
    "the operator holds this group: skipped here, as agents skip a group never published "
    "(one published before keeps its last version in the cluster)"
)


def remote_text(remote: ResolvedRemote, namespace: str) -> str:
    """A remote for a table cell: a group with its members by name when there are few."""
    if remote.type is not RemoteType.SECURITY_GROUP or remote.ref is None or not remote.exists:
        return str(remote)
    ref = short_key(remote.ref, namespace)
    members = [short_key(m, namespace) for m in remote.members]
    if not members:
        return f"group {ref} (no members)"
    if len(members) > MAX_NAMES:
        return f"group {ref} ({len(members)} members)"
    return f"group {ref}: {', '.join(members)}"


def remote_dict(remote: ResolvedRemote) -> dict[str, Any]:
    out: dict[str, Any] = {"type": remote.type.value, "text": str(remote)}
    if remote.ref is not None:
        out["ref"] = key_text(remote.ref)
        out["exists"] = remote.exists
    out["networks"] = list(remote.networks)
    if remote.type.value == "securityGroup":
        out["members"] = [key_text(m) for m in remote.members]
    if remote.type.value == "ipAddressGroup":
        out["entries"] = list(remote.entries)
    return out


def rule_dict(rule: CompiledRule) -> dict[str, Any]:
    """The fields of a compiled rule, camelCase, ports as ``{"lo", "hi"}`` numbers."""
    return {
        "id": rule.id,
        "name": rule_name(rule),
        "direction": rule.direction.value,
        "priority": rule.priority,
        "action": rule.action.value,
        "family": rule.family.value,
        "protocol": rule.protocol.value,
        "ports": [{"lo": p.lo, "hi": p.hi} for p in rule.ports],
        "icmpType": rule.icmp_type,
        "icmpCode": rule.icmp_code,
        "description": rule.description,
    }


def effective_rule_dict(rule: EffectiveRule, origin: str | None) -> dict[str, Any]:
    out = {
        "index": rule.index,
        "group": key_text(rule.group),
        "groupPosition": rule.group_position,
        **rule_dict(rule.rule),
        "remote": remote_dict(rule.remote),
    }
    if origin:
        out["source"] = origin
    return out
