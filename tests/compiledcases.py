"""Malformed compiled objects, for the models (unit tier) and the API server (cluster tier).

Each entry is (model, spec, why): the spec is refused by the model the agent parses with
and by the CRD generated from it.
"""

from __future__ import annotations

from typing import Any

from secgroups.compiled import CompiledAddressSetSpec, CompiledGroupSpec, CompiledNodeSpec

GROUP_RULE: dict[str, Any] = {
    "id": "demo/r",
    "direction": "Ingress",
    "action": "Allow",
    "priority": 1,
    "family": "IPv4",
    "protocol": "TCP",
    "remote": {"kind": "Any"},
}


def _group(**rule: Any) -> dict[str, Any]:
    return {"group": {"namespace": "demo", "name": "web"}, "ingress": [{**GROUP_RULE, **rule}]}


MALFORMED: list[tuple[type[Any], dict[str, Any], str]] = [
    (CompiledGroupSpec, _group(remote={"kind": "Set"}), "Set remote without a set name"),
    (
        CompiledGroupSpec,
        _group(remote={"kind": "Any", "cidrs": ["192.0.2.0/24"]}),
        "Any remote with CIDRs",
    ),
    (
        CompiledGroupSpec,
        _group(remote={"kind": "CIDR", "cidrs": ["192.0.2.0/24"], "set": "x"}),
        "CIDR remote with a set",
    ),
    (CompiledGroupSpec, _group(priority=0), "priority 0"),
    (CompiledGroupSpec, _group(protocol="SCTP"), "unknown protocol"),
    (CompiledGroupSpec, _group(ports=[{"lo": 0, "hi": 80}]), "port 0"),
    (
        CompiledGroupSpec,
        {"group": {"namespace": "Demo", "name": "web"}},
        "namespace not a DNS label",
    ),
    (
        CompiledAddressSetSpec,
        {
            "sourceKind": "SecurityGroup",
            "source": {"namespace": "demo", "name": "web"},
            "ipv4": ["300.1.2.3/32"],
        },
        "not an IPv4 CIDR",
    ),
    (
        CompiledAddressSetSpec,
        {
            "sourceKind": "SecurityGroup",
            "source": {"namespace": "demo", "name": "web"},
            "ipv6": ["192.0.2.1/32"],
        },
        "IPv4 in the IPv6 list",
    ),
    (
        CompiledAddressSetSpec,
        {
            "sourceKind": "IPAddressGroup",
            "source": {"namespace": "demo", "name": "office"},
            "ipv4": ["192.0.2.1/33"],
        },
        "prefix too long",
    ),
    (
        CompiledNodeSpec,
        {
            "node": "n1",
            "pods": [{"namespace": "demo", "name": "p", "uid": "u", "ips": ["nope"], "groups": []}],
        },
        "pod IP that is no IP",
    ),
    (
        CompiledNodeSpec,
        {
            "node": "n1",
            "pods": [
                {
                    "namespace": "demo",
                    "name": "p",
                    "uid": "u",
                    "ips": ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
                    "groups": [],
                }
            ],
        },
        "three pod IPs",
    ),
    (
        CompiledNodeSpec,
        {
            "node": "n1",
            "pods": [
                {"namespace": "demo", "name": "p", "uid": "u", "ips": [], "groups": [], "epoch": -1}
            ],
        },
        "negative epoch",
    ),
    (CompiledNodeSpec, {"node": "n1", "requires": {"group/x": -2}}, "negative generation"),
]
