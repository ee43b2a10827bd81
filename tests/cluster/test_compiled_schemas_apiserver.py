"""The compiled objects' schemas on the real API server: malformed groups and sets are
refused (server-side dry run), what the compiler writes is accepted. The same malformed
list is refused by the models in the unit tier (``tests/unit/test_compiled_schemas.py``).
Node objects are the exception: their spec is open to the API server (docs/api.md), so
the malformed ones are accepted there and refused by the agent's model only."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError
from tests.compiledcases import MALFORMED
from tests.corecases import compile_facts, facts, ipag, ns, pod, rule, sg

from secgroups import compiled
from secgroups.models import API_VERSION
from secgroups_lab import controlplane

pytestmark = pytest.mark.cluster

KIND_OF: dict[type[Any], str] = {
    compiled.CompiledGroupSpec: compiled.COMPILED_GROUP_KIND,
    compiled.CompiledAddressSetSpec: compiled.COMPILED_SET_KIND,
    compiled.CompiledNodeSpec: compiled.COMPILED_NODE_KIND,
}


def dry_run_create(cp: controlplane.ControlPlane, kind: str, name: str, spec: Any) -> Any:
    body = {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}
    return cp.kubectl(
        "create", "--dry-run=server", "-f", "-", input_text=json.dumps(body), check=False
    )


@pytest.mark.parametrize(
    ("model", "spec"),
    [pytest.param(m, s, id=why) for m, s, why in MALFORMED if m is not compiled.CompiledNodeSpec],
)
def test_the_api_server_refuses_malformed_compiled_objects(
    control_plane: controlplane.ControlPlane,
    crds_installed: list[str],
    model: type[Any],
    spec: dict[str, Any],
) -> None:
    out = dry_run_create(control_plane, KIND_OF[model], "malformed", spec)
    assert out.returncode != 0, f"accepted: {spec}"
    assert "is invalid" in out.stderr or "Invalid value" in out.stderr, out.stderr


@pytest.mark.parametrize(
    "spec",
    [pytest.param(s, id=why) for m, s, why in MALFORMED if m is compiled.CompiledNodeSpec],
)
def test_malformed_node_objects_pass_the_api_server_and_not_the_agents_model(
    control_plane: controlplane.ControlPlane, crds_installed: list[str], spec: dict[str, Any]
) -> None:
    out = dry_run_create(control_plane, compiled.COMPILED_NODE_KIND, "malformed", spec)
    assert out.returncode == 0, out.stderr
    with pytest.raises(ValidationError):
        compiled.CompiledNodeSpec.model_validate(spec)


def test_the_api_server_accepts_what_the_compiler_writes(
    control_plane: controlplane.ControlPlane, crds_installed: list[str]
) -> None:
    state = facts(
        ns(),
        sg("web", selector={"app": "web"}),
        sg("db"),
        pod("w1", "10.0.0.1", "fd00::1", labels={"app": "web"}),
        pod("d1", "10.0.0.2", groups="db"),
        rule("db-from-web", "db", protocol="TCP", ports="5432,6432", remote_sg="web"),
        rule("web-out", "web", "Egress", cidr="203.0.113.0/24"),
        ipag("office", "192.0.2.0/24", "198.51.100.1-198.51.100.9"),
        rule("db-from-office", "db", remote_ipag="office"),
        nodes=("n1",),
    )
    policy = compile_facts(state).policy
    objects = [
        *((compiled.COMPILED_GROUP_KIND, n, s) for n, s in policy.groups.items()),
        *((compiled.COMPILED_SET_KIND, n, s) for n, s in policy.sets.items()),
        *((compiled.COMPILED_NODE_KIND, n, s) for n, s in policy.nodes.items()),
    ]
    assert sorted(kind for kind, _, _ in objects) == sorted(
        [
            *[compiled.COMPILED_GROUP_KIND] * 2,
            *[compiled.COMPILED_SET_KIND] * 2,
            compiled.COMPILED_NODE_KIND,
        ]
    )
    for kind, name, spec in objects:
        data = spec.model_dump(by_alias=True, mode="json", exclude_defaults=True)
        out = dry_run_create(control_plane, kind, name, data)
        assert out.returncode == 0, f"{kind} {name}: {out.stderr}"
