"""The compiled objects have real schemas: the models (which the agent parses with) and the
CRDs generated from them refuse malformed objects, with bounds above what the operator
writes. ``tests/cluster/test_compiled_schemas_apiserver.py`` sends the same objects to a
real API server."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from tests.compiledcases import MALFORMED
from tests.corecases import compile_facts, facts, ipag, ns, pod, rule, sg

from secgroups import compiled, crdgen


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
    spec: dict[str, Any] = crdgen.resource_schema(resource.model)["properties"]["spec"]
    return spec


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
