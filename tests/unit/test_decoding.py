"""secgroups.decoding: a manifest as the API server decodes it before validating, offline.

Each behaviour here was measured on kube-apiserver v1.36.3 (the cluster tier's
``test_differential.py`` keeps checking it on thousands of generated manifests); these
tests pin the rules themselves, and that no generated manifest, however broken, makes
the offline check fail in any other way than a validation error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from pydantic import ValidationError
from tests.manifeststrategies import labelled_manifests

from secgroups import decoding, models
from secgroups.membership import Scope
from secgroups_cli.errors import CliError
from secgroups_cli.manifests import Document
from secgroups_cli.sources import build_snapshot


def rule(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": models.API_VERSION,
        "kind": "SecurityGroupRule",
        "metadata": {"name": "r"},
        "spec": {"securityGroup": "web", "direction": "Ingress", "protocol": "TCP", **spec},
    }


def group(spec: Any = None, **meta: Any) -> dict[str, Any]:
    doc = {"apiVersion": models.API_VERSION, "kind": "SecurityGroup", "metadata": {"name": "g"}}
    doc["metadata"].update(meta)
    if spec is not None:
        doc["spec"] = spec
    return doc


def test_a_null_with_a_default_takes_the_default() -> None:
    parsed = decoding.parse_manifest(rule(action=None, priority=None, ipFamily=None))
    assert isinstance(parsed, models.SecurityGroupRule)
    assert (parsed.spec.action, parsed.spec.priority, parsed.spec.ip_family) == (
        models.Action.ALLOW,
        1,
        models.IPFamily.IPV4,
    )
    assert decoding.decode(group({"sequence": None}))["spec"] == {"sequence": 100}


def test_a_null_without_a_default_is_dropped() -> None:
    doc = rule(ports=None, remote=None, protocol="ICMP", icmp={"type": 3, "code": None})
    assert decoding.decode(doc)["spec"] == {
        "securityGroup": "web",
        "direction": "Ingress",
        "protocol": "ICMP",
        "icmp": {"type": 3},
    }
    selector = {"podSelector": {"matchLabels": {"tier": None}}}
    assert decoding.decode(group(selector))["spec"]["podSelector"]["matchLabels"] == {}


def test_a_null_on_a_required_field_leaves_it_missing() -> None:
    with pytest.raises(ValidationError, match=r"spec\.direction\n  Field required"):
        decoding.parse_manifest(rule(direction=None))


def test_null_metadata_strings_are_empty_strings() -> None:
    meta = decoding.decode(group(labels={"a": None}, annotations={"b": None}, finalizers=[None]))
    assert meta["metadata"] == {
        "name": "g",
        "labels": {"a": ""},
        "annotations": {"b": ""},
        "finalizers": [""],
    }
    with pytest.raises(ValidationError, match="name part must be non-empty"):
        decoding.parse_manifest(group(finalizers=[None]))


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        pytest.param({**rule(), "extra": 1}, "extra", id="root"),
        pytest.param(rule(security_group="web"), "spec.security_group", id="python-name"),
        pytest.param(rule(remote={"cidr": "192.0.2.1", "cdir": "x"}), "spec.remote.cdir",
                     id="nested"),
        pytest.param(group(label={"a": "b"}), "metadata.label", id="metadata"),
        pytest.param({**group(), "status": {"members": 1}}, "status.members", id="status"),
        pytest.param(rule(extra=None), "spec.extra", id="null-unknown"),
    ],
)  # fmt: skip
def test_unknown_fields_are_rejected_anywhere(doc: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as info:
        decoding.parse_manifest(doc)
    assert [".".join(map(str, e["loc"])) for e in info.value.errors()] == [where]
    assert info.value.errors()[0]["type"] == "extra_forbidden"


def test_a_status_is_ignored_but_for_its_field_names() -> None:
    doc = {**group(), "status": {"memberCount": "many", "conditions": "none"}}
    assert "status" not in decoding.decode(doc)
    assert decoding.parse_manifest(doc).status is None


@pytest.mark.parametrize(
    ("value", "accepted"),
    [(5, True), (5.0, True), (-0.0, False), ("5", False), (True, False), (5.5, False)],
)
def test_integers_are_json_integers(value: Any, accepted: bool) -> None:
    doc = rule(priority=value)
    if accepted:
        assert decoding.parse_manifest(doc).spec.priority == 5  # type: ignore[union-attr]
    else:
        with pytest.raises(ValidationError, match=r"spec\.priority"):
            decoding.parse_manifest(doc)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        pytest.param({"name": "Web"}, "a lowercase RFC 1123 subdomain", id="upper-case"),
        pytest.param({"name": "a" * 254}, "must be no more than 253 characters", id="254"),
        pytest.param({"name": "g", "namespace": "Demo"}, "a lowercase RFC 1123 label",
                     id="namespace"),
        pytest.param({"name": "g", "labels": {"a/b/c": "x"}}, "a valid label key", id="label-key"),
        pytest.param({"name": "g", "labels": {"a": "x" * 64}}, "no more than 63", id="label-value"),
        pytest.param({"name": "g", "annotations": {"a": "x" * 262_144}}, "Too long",
                     id="annotations-size"),
        pytest.param({"name": "g", "finalizers": ["orphan", "foregroundDeletion"]},
                     "cannot be both set", id="finalizers"),
    ],
)  # fmt: skip
def test_metadata_is_checked_as_the_api_server_does(meta: dict[str, Any], message: str) -> None:
    doc = rule()
    doc["metadata"] = meta
    with pytest.raises(ValidationError, match=message):
        decoding.parse_manifest(doc)


def test_rule_and_address_group_names_may_have_dots_group_names_not() -> None:
    doc = rule()
    doc["metadata"]["name"] = "web.allow-ssh"
    decoding.parse_manifest(doc)
    with pytest.raises(ValidationError, match="security group names must be DNS labels"):
        decoding.parse_manifest(group(name="web.v2"))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labelled_manifests())
@example(  # the CLI took an empty list for "no namespace" and filled in its own
    (
        ("wrong-type",),
        {
            "apiVersion": "secgroups.dev/v1alpha1",
            "kind": "SecurityGroupRule",
            "metadata": {"name": "web", "namespace": []},
            "spec": {"securityGroup": "web", "direction": "Ingress", "protocol": "TCP"},
        },
    )
)
def test_any_generated_manifest_is_accepted_or_rejected_cleanly(
    labelled: tuple[tuple[str, ...], dict[str, Any]],
) -> None:
    """No manifest makes the offline check fail other than with a validation error, and
    the CLI turns every one into an answer or an ``error:`` (never a traceback)."""
    _, doc = labelled
    doc = json.loads(json.dumps(doc))  # what a file would hold
    try:
        decoding.parse_manifest(doc)
        parsed = True
    except ValueError:  # ValidationError included
        parsed = False
    try:
        build_snapshot(
            [Document(doc, "<generated>", None, 1)], namespace="demo", online=False, scope=Scope()
        )
        cli = True
    except CliError:
        cli = False
    assert parsed == cli
