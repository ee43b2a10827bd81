"""The kinds of the ``secgroups.dev`` API: plural resource names and scope, one table.

``crdgen`` writes the CRDs from it; the operator, the node agent and the CLI build their
client resources from it, so a plural is spelled in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from secgroups.compiled import (
    COMPILED_GROUP_KIND,
    COMPILED_NODE_KIND,
    COMPILED_SET_KIND,
    NODE_REPORT_KIND,
)


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    namespaced: bool


KINDS: dict[str, Kind] = {
    k.kind: k
    for k in (
        Kind("SecurityGroup", "securitygroups", True),
        Kind("SecurityGroupRule", "securitygrouprules", True),
        Kind("IPAddressGroup", "ipaddressgroups", True),
        Kind(COMPILED_GROUP_KIND, "compiledsecuritygroups", False),
        Kind(COMPILED_SET_KIND, "compiledaddresssets", False),
        Kind(COMPILED_NODE_KIND, "compilednodepolicies", False),
        Kind(NODE_REPORT_KIND, "nodeagentreports", False),
    )
}


def plural(kind: str) -> str:
    """The resource name of ``kind`` (``SecurityGroupRule`` → ``securitygrouprules``)."""
    return KINDS[kind].plural
