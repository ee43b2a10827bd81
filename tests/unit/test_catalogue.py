"""The manifest catalogue, offline: ``decoding.parse_manifest`` (the API server's decoding,
then the pydantic models — what ``kubectl secgroups lint -f`` uses) accepts
``tests/data/valid`` and rejects every ``tests/data/invalid`` manifest with the message
the API server gives too.

Each invalid file starts with ``# expect: <substring>`` lines (all must appear in the
error) and, rarely, ``# expect-offline: <substring>`` lines that replace them here when
pydantic and the API server cannot share text. ``tests/cluster/test_crds_apiserver.py``
sends the same files to a real kube-apiserver (S-M-2, S-M-3, S-M-4, S-O-3).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from secgroups import decoding, models

DATA = Path(__file__).resolve().parents[1] / "data"
INVALID = sorted((DATA / "invalid").glob("*.yaml"))
VALID = sorted((DATA / "valid").glob("*.yaml"))


def headers(path: Path, key: str) -> list[str]:
    """Values of the leading ``# key: value`` comment lines of ``path``."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        name, sep, value = line[1:].strip().partition(":")
        if sep and name.strip() == key:
            out.append(value.strip())
    return out


def offline_expectations(path: Path) -> list[str]:
    return headers(path, "expect-offline") or headers(path, "expect")


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(doc, dict), f"{path.name}: one manifest (a mapping) per file"
    return doc


def test_catalogue_is_big_enough() -> None:
    assert len(INVALID) >= 40
    assert len(VALID) >= 15


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_manifest_has_expectation(path: Path) -> None:
    assert headers(path, "expect"), f"{path.name} needs a '# expect: <substring>' header"


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_models_reject_invalid_manifest(path: Path) -> None:
    with pytest.raises(ValidationError) as info:
        decoding.parse_manifest(load(path))
    text = str(info.value)
    for expected in offline_expectations(path):
        assert expected in text, f"{path.name}: {expected!r} not in:\n{text}"


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_models_accept_valid_manifest(path: Path) -> None:
    resource = decoding.parse_manifest(load(path))
    assert resource.metadata.name == load(path)["metadata"]["name"]


def test_valid_manifests_can_live_in_one_namespace() -> None:
    """The cluster test creates them all in one namespace: (kind, name) must be unique."""
    keys = Counter((load(p)["kind"], load(p)["metadata"]["name"]) for p in VALID)
    assert [k for k, n in keys.items() if n > 1] == []


def test_catalogue_covers_the_spec_examples() -> None:
    """Sg-A/Sg-B and rules A01, A02, B01, B02 of the spec's 'Security Group Examples'."""
    names = {p.stem for p in VALID}
    assert {"sg-a", "sg-b", "a01", "a02", "b01", "b02"} <= names


def test_valid_catalogue_covers_every_port_form_and_remote_kind() -> None:
    """S-M-3 port forms, S-O-3 names, S-M-4 remote kinds, both families, every protocol."""
    specs = [load(p)["spec"] for p in VALID if load(p)["kind"] == "SecurityGroupRule"]
    ports = [str(s["ports"]) for s in specs if "ports" in s]
    assert any(p.isdigit() for p in ports), "a single port"
    assert any("-" in p and "," not in p for p in ports), "a range"
    assert any("," in p and "-" not in p for p in ports), "an inconsecutive list"
    assert any("," in p and "-" in p for p in ports), "a mixed list"
    assert any(any(c.isalpha() for c in p) for p in ports), "a named port"
    remotes = {k for s in specs for k in s.get("remote") or {}}
    assert remotes == {"cidr", "securityGroup", "ipAddressGroup"}
    assert any("remote" not in s for s in specs), "no remote = any address"
    assert {s["protocol"] for s in specs} == {p.value for p in models.Protocol}
    assert {s.get("ipFamily") or "IPv4" for s in specs} == {"IPv4", "IPv6"}
    assert any("icmp" in s and "code" in s["icmp"] for s in specs)
    assert any("icmp" in s and "code" not in s["icmp"] for s in specs)


# Issue 11: each way the offline answer once differed from the API server's, by file.
DECODING_CLASSES = {
    "leading-zero prefix lengths": [
        "invalid/sgr-cidr-prefix-leading-zero",
        "invalid/sgr-cidr-prefix-00",
        "invalid/ipag-prefix-leading-zero",
    ],
    "no coercion of strings and booleans to integers": [
        "invalid/sgr-priority-string",
        "invalid/sgr-priority-bool",
        "invalid/sgr-priority-fraction",
        "invalid/sg-sequence-string",
        "invalid/sgr-icmp-type-string",
        "invalid/sgr-icmp-code-bool",
        "valid/sgr-priority-integral-float",
    ],
    "nulls pruned or defaulted": [
        "valid/sgr-action-null",
        "valid/sgr-optional-nulls",
        "valid/sg-selector-nulls",
        "valid/sg-status-ignored",
        "invalid/sgr-direction-null",
    ],
    "metadata as the API server checks it": [
        "invalid/sgr-name-not-subdomain",
        "invalid/sgr-name-too-long",
        "invalid/ipag-name-unicode",
        "invalid/sg-label-bad-key",
        "valid/sgr-name-subdomain",
    ],
    "unknown fields anywhere": [
        "invalid/sgr-field-snake-case",
        "invalid/sg-metadata-unknown-field",
        "invalid/sg-status-unknown-field",
    ],
}


@pytest.mark.parametrize("cls", sorted(DECODING_CLASSES))
def test_catalogue_has_an_entry_for_each_decoding_class(cls: str) -> None:
    have = {f"{p.parent.name}/{p.stem}" for p in (*VALID, *INVALID)}
    assert set(DECODING_CLASSES[cls]) <= have
