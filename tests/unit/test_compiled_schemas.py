"""The compiled objects have real schemas: the models (which the agent parses with) and the
CRDs generated from them refuse malformed objects, with bounds above what the operator
writes. ``tests/cluster/test_admission_apiserver.py`` sends the same objects to a real
API server."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from tests.corecases import compile_facts, facts, ipag, ns, pod, rule, sg

from secgroups import compiled, crdgen
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


# Malformed compiled objects: (model, spec, why). The same list is sent to the API server
# in the cluster tier.
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


@pytest.mark.parametrize(("model", "spec"), [pytest.param(m, s, id=why) for m, s, why in MALFORMED])
def test_the_models_refuse_malformed_compiled_objects(
    model: type[Any], spec: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(spec)


def test_what_the_compiler_writes_passes_its_own_schema() -> None:
    state = facts(
        ns(),
        sg("web", selector={"app": "web"}),
        sg("db"),
        pod("w1", "10.0.0.1", "fd00::1", labels={"app": "web"}),
        pod("d1", "10.0.0.2", groups="db"),
        pod("x1", "10.0.0.3"),
        ipag("office", "192.0.2.0/24", "198.51.100.1-198.51.100.9"),
        rule("db-from-web", "db", protocol="TCP", ports="5432,6432", remote_sg="web"),
        rule("db-from-office", "db", remote_ipag="office"),
        rule("web-out", "web", "Egress", cidr="203.0.113.0/24"),
        nodes=("n1",),
    )
    policy = compile_facts(state).policy
    for spec in [*policy.groups.values(), *policy.sets.values(), *policy.nodes.values()]:
        data = spec.model_dump(by_alias=True, mode="json")
        assert type(spec).model_validate(data) == spec


def _schema(kind: str) -> dict[str, Any]:
    resource = next(r for r in crdgen.RESOURCES if r.kind == kind)
    return crdgen.resource_schema(resource.model)["properties"]["spec"]


def test_the_crds_carry_the_bounds() -> None:
    group = _schema(compiled.COMPILED_GROUP_KIND)
    assert group["properties"]["ingress"]["maxItems"] == compiled.MAX_RULES_PER_DIRECTION
    remote = group["properties"]["ingress"]["items"]["properties"]["remote"]
    assert remote["x-kubernetes-validations"][0]["message"] == compiled.MSG_REMOTE_KIND
    sets = _schema(compiled.COMPILED_SET_KIND)["properties"]
    assert sets["ipv4"]["items"]["format"] == "cidr"
    assert sets["ipv6"]["maxItems"] == compiled.MAX_SET_CIDRS
    node = _schema(compiled.COMPILED_NODE_KIND)["properties"]
    assert node["pods"]["maxItems"] == compiled.MAX_PODS_PER_NODE
    assert node["pods"]["items"]["properties"]["ips"]["maxItems"] == 2
    assert node["requires"]["additionalProperties"]["minimum"] == 0


def test_rules_are_selectable_by_group_and_by_remote() -> None:
    """The webhook lists one group's rules, or those naming one remote (field selectors)."""
    resource = next(r for r in crdgen.RESOURCES if r.kind == "SecurityGroupRule")
    version = crdgen.crd(resource)["spec"]["versions"][0]
    assert version["selectableFields"] == [
        {"jsonPath": ".spec.securityGroup"},
        {"jsonPath": ".spec.remote.securityGroup.name"},
        {"jsonPath": ".spec.remote.ipAddressGroup.name"},
    ]
