"""The CRDs in ``crds/`` are generated from the models and are valid structural schemas.

Drift: the committed files equal ``crdgen.generate()`` byte for byte. Documentation: every
property has a description (it becomes ``kubectl explain`` text). Structure: only keywords
the API server understands, a type on every node, envelope fields owned by the server.
``tests/cluster/test_crds_apiserver.py`` installs the same files on a real API server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from secgroups import compiled, crdgen, models, ports

REPO = Path(__file__).resolve().parents[2]
CRDS_DIR = REPO / "crds"
IDS = [r.kind for r in crdgen.RESOURCES]


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node below ``node`` (itself included) with a readable path."""
    yield path or ".", node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def schema_of(resource: crdgen.Resource) -> dict[str, Any]:
    return crdgen.resource_schema(resource.model)


# ----------------------------------------------------------------------------- drift


def test_committed_crds_match_the_models() -> None:
    """Regenerate with `python -m secgroups.crdgen --write crds/` when this fails."""
    diffs = crdgen.drift(CRDS_DIR, crdgen.generate())
    assert diffs == [], "crds/ drifted from the models:\n" + "".join(diffs)


def test_generation_is_deterministic() -> None:
    assert crdgen.generate() == crdgen.generate()


def test_committed_files_parse_back_to_the_generated_objects() -> None:
    for resource in crdgen.RESOURCES:
        text = (CRDS_DIR / resource.filename).read_text(encoding="utf-8")
        assert yaml.safe_load(text) == crdgen.crd(resource)


def test_check_mode_fails_with_a_diff_on_drift(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert crdgen.main(["--write", str(tmp_path)]) == 0
    assert crdgen.main(["--check", str(tmp_path)]) == 0
    target = tmp_path / crdgen.RESOURCES[0].filename
    target.write_text(target.read_text().replace("maxLength: 255", "maxLength: 256"))
    capsys.readouterr()
    assert crdgen.main(["--check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    removed = [ln for ln in out.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    added = [ln for ln in out.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    assert any("maxLength: 256" in ln for ln in removed)
    assert any("maxLength: 255" in ln for ln in added)


def test_check_mode_flags_a_crd_that_is_no_longer_generated(tmp_path: Path) -> None:
    crdgen.main(["--write", str(tmp_path)])
    (tmp_path / f"{models.GROUP}_oldthings.yaml").write_text("kind: CustomResourceDefinition\n")
    assert crdgen.main(["--check", str(tmp_path)]) == 1
    crdgen.main(["--write", str(tmp_path)])
    assert not (tmp_path / f"{models.GROUP}_oldthings.yaml").exists()


# ----------------------------------------------------------------------------- descriptions


@pytest.mark.parametrize("resource", crdgen.RESOURCES, ids=IDS)
def test_every_property_has_a_description(resource: crdgen.Resource) -> None:
    """Descriptions are `kubectl explain` text; only metadata (owned by the server) has none."""
    missing = [
        path
        for path, node in walk(schema_of(resource))
        if path not in (".", ".metadata") and not path.endswith(("[]", "{}"))
        if not node.get("description", "").strip()
    ]
    assert missing == []


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize("resource", crdgen.RESOURCES, ids=IDS)
def test_schema_is_structural(resource: crdgen.Resource) -> None:
    problems = []
    for path, node in walk(schema_of(resource)):
        if "type" not in node:
            problems.append(f"{path}: no type")
        unknown = set(node) - crdgen.KEYWORDS
        if unknown:
            problems.append(f"{path}: keywords {sorted(unknown)}")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties and additionalProperties")
        if "default" in node and node["default"] is None:
            problems.append(f"{path}: default null")
        if "required" in node and not set(node["required"]) <= set(node.get("properties", {})):
            problems.append(f"{path}: required names a missing property")
    assert problems == []


@pytest.mark.parametrize("resource", crdgen.RESOURCES, ids=IDS)
def test_envelope_is_owned_by_the_api_server(resource: crdgen.Resource) -> None:
    props = schema_of(resource)["properties"]
    assert props["metadata"] == {"type": "object"}
    assert props["apiVersion"]["type"] == props["kind"]["type"] == "string"
    assert "enum" not in props["apiVersion"] and "enum" not in props["kind"]
    assert "metadata" not in schema_of(resource).get("required", [])


def test_rules_require_a_spec_and_groups_default_it() -> None:
    by_kind = {r.kind: schema_of(r) for r in crdgen.RESOURCES}
    assert by_kind["SecurityGroupRule"]["required"] == ["spec"]
    assert "default" not in by_kind["SecurityGroupRule"]["properties"]["spec"]
    for kind in ("SecurityGroup", "IPAddressGroup"):
        assert "required" not in by_kind[kind]
        # so that the API server stores the spec's defaults, as the model would parse them
        assert by_kind[kind]["properties"]["spec"]["default"] == {}


def test_optional_fields_are_not_required_and_defaults_survive() -> None:
    """anyOf [X, null] becomes X and leaves `required`; defaults reach the API server (S-M-2)."""
    spec = schema_of(crdgen.RESOURCES[1])["properties"]["spec"]
    assert spec["required"] == ["securityGroup", "direction", "protocol"]
    props = spec["properties"]
    assert props["priority"] == {
        "type": "integer",
        "default": 1,
        "minimum": 1,
        "maximum": 100,
        "description": props["priority"]["description"],
    }
    assert props["action"]["default"] == "Allow" and props["action"]["enum"] == ["Allow", "Deny"]
    assert props["ipFamily"]["default"] == "IPv4"
    assert props["remote"]["type"] == "object" and "default" not in props["remote"]
    assert props["ports"]["maxLength"] == ports.PORTS_MAX_LENGTH


def test_cel_rules_pass_through_with_the_python_messages() -> None:
    """Every CEL message is one of the messages the Python validators raise."""
    python_messages = {
        v
        for module in (models, ports, compiled)
        for k, v in vars(module).items()
        if k.startswith("MSG_") and isinstance(v, str)
    }
    seen = []
    for resource in crdgen.RESOURCES:
        for path, node in walk(schema_of(resource)):
            for rule in node.get("x-kubernetes-validations", []):
                seen.append(rule["message"])
                assert rule["message"] in python_messages, f"{resource.kind} {path}"
    # SG name 1, selector 2, ports 4, rule spec 3, remote 1, cidr 1, addresses 2; compiled:
    # remote kind 2 (ingress, egress), pod IP 1.
    assert len(seen) == 17


def test_ip_address_entries_are_a_bounded_set() -> None:
    """CEL cost: the list has maxItems and its strings maxLength (the estimate must pass)."""
    addresses = schema_of(crdgen.RESOURCES[2])["properties"]["spec"]["properties"]["addresses"]
    assert addresses["x-kubernetes-list-type"] == "set"
    assert addresses["maxItems"] == 5000
    assert addresses["items"]["maxLength"] == 90


def test_conditions_are_maps_keyed_by_type() -> None:
    for resource in crdgen.RESOURCES[:3]:
        status = schema_of(resource)["properties"]["status"]
        conditions = status["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_unions_and_unknown_keywords_are_refused() -> None:
    with pytest.raises(crdgen.SchemaError, match="unions"):
        crdgen.structural({"anyOf": [{"type": "string"}, {"type": "integer"}]}, {})
    with pytest.raises(crdgen.SchemaError, match="oneOf"):
        crdgen.structural({"type": "string", "oneOf": []}, {})
    with pytest.raises(crdgen.SchemaError, match="needs a type"):
        crdgen.structural({"description": "x"}, {})


# ----------------------------------------------------------------------------- names and columns


def test_names_scopes_and_categories() -> None:
    got = {
        c["spec"]["names"]["kind"]: (
            c["metadata"]["name"],
            c["spec"]["scope"],
            tuple(c["spec"]["names"]["shortNames"]),
            tuple(c["spec"]["names"]["categories"]),
            "subresources" in c["spec"]["versions"][0],
        )
        for c in map(crdgen.crd, crdgen.RESOURCES)
    }
    assert got == {
        "SecurityGroup": (
            "securitygroups.secgroups.dev",
            "Namespaced",
            ("sg",),
            ("secgroups",),
            True,
        ),
        "SecurityGroupRule": (
            "securitygrouprules.secgroups.dev",
            "Namespaced",
            ("sgr",),
            ("secgroups",),
            True,
        ),
        "IPAddressGroup": (
            "ipaddressgroups.secgroups.dev",
            "Namespaced",
            ("ipag",),
            ("secgroups",),
            True,
        ),
        "CompiledSecurityGroup": (
            "compiledsecuritygroups.secgroups.dev",
            "Cluster",
            ("csg",),
            ("secgroups-internal",),
            False,
        ),
        "CompiledAddressSet": (
            "compiledaddresssets.secgroups.dev",
            "Cluster",
            ("cas",),
            ("secgroups-internal",),
            False,
        ),
        "CompiledNodePolicy": (
            "compilednodepolicies.secgroups.dev",
            "Cluster",
            ("cnp",),
            ("secgroups-internal",),
            False,
        ),
        "NodeAgentReport": (
            "nodeagentreports.secgroups.dev",
            "Cluster",
            ("nar",),
            ("secgroups-internal",),
            False,
        ),
    }


def test_one_served_storage_version_each() -> None:
    for crd in map(crdgen.crd, crdgen.RESOURCES):
        versions = crd["spec"]["versions"]
        assert [(v["name"], v["served"], v["storage"]) for v in versions] == [
            ("v1alpha1", True, True)
        ]


@pytest.mark.parametrize(
    ("kind", "columns"),
    [
        pytest.param(
            "SecurityGroup",
            ["Sequence", "Members", "Ready", "Realized", "Generation", "Age"],
            id="sg",
        ),
        pytest.param(
            "SecurityGroupRule",
            [
                "Group",
                "Direction",
                "Action",
                "Priority",
                "Type",
                "Protocol",
                "Ports",
                "CIDR",
                "RemoteSG",
                "RemoteIPAG",
                "Age",
            ],
            id="sgr",
        ),
        pytest.param("IPAddressGroup", ["Family", "Age", "Description"], id="ipag"),
    ],
)
def test_printer_columns(kind: str, columns: list[str]) -> None:
    (resource,) = [r for r in crdgen.RESOURCES if r.kind == kind]
    got = crdgen.crd(resource)["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in got] == columns
    wide = {c["name"] for c in got if c.get("priority")}
    assert wide == {
        "SecurityGroup": {"Generation"},
        "SecurityGroupRule": {"RemoteIPAG"},
        "IPAddressGroup": {"Description"},
    }.get(kind, set())


@pytest.mark.parametrize("resource", crdgen.RESOURCES[:3], ids=IDS[:3])
def test_api_docs_list_every_spec_field(resource: crdgen.Resource) -> None:
    """docs/api.md has a row for every user-facing spec field (it is written by hand)."""
    doc = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    section = doc.split(f"## {resource.kind} (")[1].split("\n## ")[0]
    spec = schema_of(resource)["properties"]["spec"]
    missing = [
        f"spec{path}"
        for path, _ in walk(spec)
        if path != "." and not path.endswith(("{}", "[]")) and f"`spec{path}`" not in section
    ]
    assert missing == []
