"""The CRDs on a real kube-apiserver: it installs them, and it enforces them.

Every ``tests/data/valid`` manifest is accepted and every ``tests/data/invalid`` one is
rejected with each of its ``# expect:`` substrings (server-side dry-run, kubectl's strict
field validation), so the API server and the pydantic models (``tests/unit/
test_catalogue.py``) agree on S-M-2, S-M-3, S-M-4 and S-O-3. Also: defaults, printer
columns, ``kubectl explain`` text, the status subresource, watches and finalizers.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from secgroups import crdgen, models
from secgroups_lab import controlplane

pytestmark = pytest.mark.cluster

DATA = Path(__file__).resolve().parents[1] / "data"
INVALID = sorted((DATA / "invalid").glob("*.yaml"))
VALID = sorted((DATA / "valid").glob("*.yaml"))
API = f"/apis/{models.GROUP}/{models.VERSION}"

ControlPlane = controlplane.ControlPlane


def expectations(path: Path) -> list[str]:
    """The ``# expect: <substring>`` header values (the API server's side of the contract)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line[1:].strip().partition(":")
        if sep and key.strip() == "expect":
            out.append(value.strip())
    return out


def wait_until(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)


def kubectl_json(cp: ControlPlane, *args: str) -> Any:
    return json.loads(cp.kubectl(*args, "-o", "json", timeout=30).stdout)


@pytest.fixture(scope="module")
def namespace(control_plane: ControlPlane, crds_installed: list[str]) -> Iterator[str]:
    """A fresh namespace with the CRDs installed; deleted (without waiting) afterwards."""
    name = f"crds-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", name, timeout=30)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False, timeout=30)


# ----------------------------------------------------------------------------- installation


def test_every_crd_installs_and_becomes_established(
    control_plane: ControlPlane, crds_installed: list[str]
) -> None:
    assert sorted(crds_installed) == sorted(r.crd_name for r in crdgen.RESOURCES)
    for name in crds_installed:
        crd = kubectl_json(control_plane, "get", "customresourcedefinition", name)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True", name
        assert conditions["NamesAccepted"] == "True", name


def test_short_names_and_categories_are_served(
    control_plane: ControlPlane, crds_installed: list[str]
) -> None:
    out = control_plane.kubectl(
        "api-resources", f"--api-group={models.GROUP}", "-o", "wide", timeout=30
    ).stdout
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    for resource in crdgen.RESOURCES:
        row = rows[resource.plural]
        assert ",".join(resource.short_names) in row
        assert resource.category in row
        assert ("true" if resource.namespaced else "false") in row.split()


# ----------------------------------------------------------------------------- the catalogue


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_api_server_accepts_valid_manifest(
    control_plane: ControlPlane, namespace: str, path: Path
) -> None:
    proc = control_plane.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False, timeout=30
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_api_server_rejects_invalid_manifest(
    control_plane: ControlPlane, namespace: str, path: Path
) -> None:
    """The API server itself rejects the manifest, saying what pydantic says (docs/api.md)."""
    proc = control_plane.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False, timeout=30
    )
    assert proc.returncode != 0, f"{path.name} was accepted"
    for expected in expectations(path):
        assert expected in proc.stderr, f"{expected!r} not in:\n{proc.stderr}"


def test_largest_ip_address_group_fits_the_cel_budget(
    control_plane: ControlPlane, namespace: str
) -> None:
    """5000 full-length IPv6 ranges (maxItems) pass the per-request CEL runtime budget."""
    entries = [f"2001:db8:0:{i:x}::-2001:db8:0:{i:x}:ffff:ffff:ffff:ffff" for i in range(5000)]
    doc = {
        "apiVersion": models.API_VERSION,
        "kind": "IPAddressGroup",
        "metadata": {"name": "largest", "namespace": namespace},
        "spec": {"ipFamily": "IPv6", "addresses": entries},
    }
    proc = control_plane.kubectl(
        "create", "--dry-run=server", "-f", "-", input_text=json.dumps(doc), check=False
    )
    assert proc.returncode == 0, proc.stderr[:2000]


# ----------------------------------------------------------------------------- stored objects


@pytest.fixture(scope="module")
def created(control_plane: ControlPlane, namespace: str) -> str:
    """Every valid manifest created for real in ``namespace``."""
    args = [a for p in VALID for a in ("-f", str(p))]
    control_plane.kubectl("create", "-n", namespace, *args, timeout=60)
    return namespace


def test_defaults_are_stored(control_plane: ControlPlane, created: str) -> None:
    """S-M-2: action Allow, priority 1, type IPv4 when not written; sequence 100 on groups."""
    rule = kubectl_json(control_plane, "get", "sgr", "a-egress-all", "-n", created)["spec"]
    assert (rule["action"], rule["priority"], rule["ipFamily"]) == ("Allow", 1, "IPv4")
    assert "ports" not in rule and "remote" not in rule
    group = kubectl_json(control_plane, "get", "sg", "sg-a", "-n", created)["spec"]
    assert group["sequence"] == 100
    # A group written without any spec still gets one, with its defaults.
    bare = kubectl_json(control_plane, "get", "sg", "default", "-n", created)["spec"]
    assert bare == {"description": "", "sequence": 100}


def test_stored_objects_parse_with_the_models(control_plane: ControlPlane, created: str) -> None:
    """What the API server stores (defaults included) is valid input for the operator."""
    listed = kubectl_json(control_plane, "get", "sg,sgr,ipag", "-n", created)
    kinds = sorted(type(models.parse_resource(item)).__name__ for item in listed["items"])
    assert len(kinds) == len(VALID)
    assert set(kinds) == {"SecurityGroup", "SecurityGroupRule", "IPAddressGroup"}


def test_category_lists_every_user_kind(control_plane: ControlPlane, created: str) -> None:
    out = control_plane.kubectl("get", "secgroups", "-n", created, "-o", "name").stdout.split()
    assert len(out) == len(VALID)


def table(out: str) -> list[dict[str, str]]:
    """Rows of a kubectl table, cut at the header's column starts (empty cells stay empty)."""
    header, *rows = out.splitlines()
    names = header.split()
    starts = [header.index(f" {n}") + 1 if i else 0 for i, n in enumerate(names)]
    bounds = [*starts[1:], None]
    return [
        {n: row[a:b].strip() for n, a, b in zip(names, starts, bounds, strict=True)} for row in rows
    ]


def test_rule_printer_columns(control_plane: ControlPlane, created: str) -> None:
    out = control_plane.kubectl("get", "sgr", "a01", "b01", "-n", created, "-o", "wide").stdout
    rows = table(out)
    assert list(rows[0]) == [
        "NAME",
        "GROUP",
        "DIRECTION",
        "ACTION",
        "PRIORITY",
        "TYPE",
        "PROTOCOL",
        "PORTS",
        "CIDR",
        "REMOTESG",
        "REMOTEIPAG",
        "AGE",
    ]
    a01, b01 = ({k: v for k, v in r.items() if k != "AGE"} for r in rows)
    assert a01 == {
        "NAME": "a01",
        "GROUP": "sg-a",
        "DIRECTION": "Ingress",
        "ACTION": "Allow",
        "PRIORITY": "1",
        "TYPE": "IPv4",
        "PROTOCOL": "TCP",
        "PORTS": "22",
        "CIDR": "172.16.0.0/24",
        "REMOTESG": "",
        "REMOTEIPAG": "",
    }
    assert (b01["PORTS"], b01["CIDR"], b01["REMOTESG"]) == ("ssh", "", "sg-a")
    udp = table(
        control_plane.kubectl("get", "sgr", "dns-to-resolvers", "-n", created, "-o", "wide").stdout
    )[0]
    assert (udp["DIRECTION"], udp["PROTOCOL"], udp["REMOTEIPAG"]) == ("Egress", "UDP", "resolvers")


def test_group_and_address_group_printer_columns(control_plane: ControlPlane, created: str) -> None:
    header = control_plane.kubectl("get", "sg", "-n", created).stdout.splitlines()[0]
    assert header.split() == ["NAME", "SEQUENCE", "MEMBERS", "READY", "REALIZED", "AGE"]
    wide = control_plane.kubectl("get", "sg", "-n", created, "-o", "wide").stdout
    assert "GENERATION" in wide.splitlines()[0].split()
    header = control_plane.kubectl("get", "ipag", "-n", created, "-o", "wide").stdout
    assert header.splitlines()[0].split() == ["NAME", "FAMILY", "AGE", "DESCRIPTION"]


# ----------------------------------------------------------------------------- explain


@pytest.mark.parametrize(
    ("field", "text"),
    [
        pytest.param(
            "securitygrouprules.spec.ports", "Destination ports, TCP and UDP only", id="ports"
        ),
        pytest.param("securitygrouprules.spec.priority", "1 (matched first)", id="priority"),
        pytest.param("sgr.spec.remote", "Source (ingress) or destination (egress)", id="remote"),
        pytest.param("sg.spec.podSelector", "Pods of this namespace that join", id="selector"),
        pytest.param("ipag.spec.addresses", "ranges (192.0.2.1-192.0.2.9)", id="addresses"),
    ],
)
def test_kubectl_explain_shows_the_model_descriptions(
    control_plane: ControlPlane, crds_installed: list[str], field: str, text: str
) -> None:
    out = control_plane.kubectl("explain", field, timeout=30).stdout
    assert text in " ".join(out.split())


# ----------------------------------------------------------------------------- subresources


def _group(namespace: str, name: str, **meta: Any) -> str:
    doc = {
        "apiVersion": models.API_VERSION,
        "kind": "SecurityGroup",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": {"description": "lifecycle test", "sequence": 7},
    }
    return json.dumps(doc)


def test_status_subresource_writes_status_only(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    cp.kubectl("create", "-f", "-", input_text=_group(namespace, "status-demo"))
    before = kubectl_json(cp, "get", "sg", "status-demo", "-n", namespace)
    status = {
        "observedGeneration": before["metadata"]["generation"],
        "memberCount": 3,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Compiled",
                "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
    }
    patch = {"status": status, "spec": {"sequence": 9}}
    cp.kubectl(
        "patch", "sg", "status-demo", "-n", namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps(patch),
    )  # fmt: skip
    after = kubectl_json(cp, "get", "sg", "status-demo", "-n", namespace)
    assert after["status"]["memberCount"] == 3
    assert after["spec"] == before["spec"], "the status subresource must not change spec"
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    row = cp.kubectl("get", "sg", "status-demo", "-n", namespace).stdout.splitlines()[1].split()
    assert row[:4] == ["status-demo", "7", "3", "True"]
    # ...and the main resource ignores status.
    cp.kubectl(
        "patch", "sg", "status-demo", "-n", namespace, "--type=merge",
        "-p", json.dumps({"status": {"memberCount": 99}}),
    )  # fmt: skip
    assert (
        kubectl_json(cp, "get", "sg", "status-demo", "-n", namespace)["status"] == (after["status"])
    )


def test_status_is_validated_too(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl("create", "-f", "-", input_text=_group(namespace, "status-bad"))
    bad = {"status": {"conditions": [{"type": "Ready", "status": "Maybe"}]}}
    proc = control_plane.kubectl(
        "patch", "sg", "status-bad", "-n", namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps(bad), check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "status.conditions[0].status" in proc.stderr
    assert "status.conditions[0].reason: Required value" in proc.stderr


def test_node_agent_report_is_its_own_small_object(
    control_plane: ControlPlane, crds_installed: list[str]
) -> None:
    """What an agent applied goes into its NodeAgentReport, validated by the schema and
    shown by ``kubectl get``; the node object has no status to write any more."""
    name = f"node-{uuid.uuid4().hex[:6]}"
    node = {
        "apiVersion": models.API_VERSION,
        "kind": "CompiledNodePolicy",
        "metadata": {"name": name},
        "spec": {"node": name},
    }
    report = {
        "apiVersion": models.API_VERSION,
        "kind": "NodeAgentReport",
        "metadata": {"name": name},
        "status": {"appliedGeneration": 1, "pods": 2, "rules": 10},
    }
    cp = control_plane
    with_status = {**node, "status": {"appliedGeneration": 1}}
    refused = cp.kubectl("create", "-f", "-", input_text=json.dumps(with_status), check=False)
    assert refused.returncode != 0 and 'unknown field "status"' in refused.stderr
    cp.kubectl("create", "-f", "-", input_text=json.dumps(node))
    try:
        cp.kubectl("apply", "--server-side", "-f", "-", input_text=json.dumps(report))
        got = kubectl_json(cp, "get", "nodeagentreport", name)
        assert got["status"] == {"appliedGeneration": 1, "pods": 2, "rules": 10, "setElements": 0}
        table = cp.kubectl("get", "nar", name).stdout.split()
        assert table[:6] == ["NAME", "APPLIED", "PODS", "RULES", "ERROR", "AGE"]
        assert table[6:10] == [name, "1", "2", "10"]
        bad = {**report, "status": {"appliedGeneration": -1}}
        refused = cp.kubectl(
            "apply", "--server-side", "-f", "-", input_text=json.dumps(bad), check=False
        )
        assert refused.returncode != 0 and "appliedGeneration" in refused.stderr
    finally:
        cp.kubectl("delete", "cnp,nar", name, "--wait=false", check=False)


# ----------------------------------------------------------------------------- watch, finalizers


def _watch_events(
    cp: ControlPlane, namespace: str, resource_version: str, until: str, timeout: float = 15.0
) -> list[tuple[str, dict[str, Any]]]:
    """Events of securitygroups in ``namespace`` after ``resource_version``, up to ``until``."""
    client = cp.client
    conn = http.client.HTTPSConnection(
        client.host, client.port, context=client.ctx, timeout=timeout
    )
    path = (
        f"{API}/namespaces/{namespace}/securitygroups?watch=1&allowWatchBookmarks=false"
        f"&resourceVersion={resource_version}&timeoutSeconds={int(timeout)}"
    )
    events: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()[:300]
        while time.monotonic() < deadline:
            line = resp.readline()
            if not line:
                break
            event = json.loads(line)
            events.append((event["type"], event["object"]))
            if event["type"] == until:
                break
    finally:
        conn.close()
    return events


def test_watch_sees_create_update_and_delete(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    # The raw list (kubectl's client-side List has no resourceVersion).
    listed = cp.client.get_json(f"{API}/namespaces/{namespace}/securitygroups")
    start = listed["metadata"]["resourceVersion"]
    cp.kubectl("create", "-f", "-", input_text=_group(namespace, "watched"))
    cp.kubectl(
        "patch", "sg", "watched", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"sequence": 8}}),
    )  # fmt: skip
    cp.kubectl("delete", "sg", "watched", "-n", namespace, "--timeout=20s")
    events = [
        (kind, obj["spec"]["sequence"])
        for kind, obj in _watch_events(cp, namespace, start, until="DELETED")
        if obj["metadata"]["name"] == "watched"
    ]
    assert events == [("ADDED", 7), ("MODIFIED", 8), ("DELETED", 8)]


def test_finalizer_blocks_deletion_until_removed(
    control_plane: ControlPlane, namespace: str
) -> None:
    cp = control_plane
    finalizer = f"{models.GROUP}/test-finalizer"
    cp.kubectl("create", "-f", "-", input_text=_group(namespace, "held", finalizers=[finalizer]))
    cp.kubectl("delete", "sg", "held", "-n", namespace, "--wait=false")
    time.sleep(0.5)  # give a (wrong) deletion time to happen before asserting it did not
    held = kubectl_json(cp, "get", "sg", "held", "-n", namespace)
    assert held["metadata"]["deletionTimestamp"]
    assert held["metadata"]["finalizers"] == [finalizer]
    cp.kubectl(
        "patch", "sg", "held", "-n", namespace, "--type=json",
        "-p", json.dumps([{"op": "remove", "path": "/metadata/finalizers"}]),
    )  # fmt: skip

    def gone() -> bool:
        proc = cp.kubectl("get", "sg", "held", "-n", namespace, check=False, timeout=10)
        return proc.returncode != 0 and "NotFound" in proc.stderr

    wait_until("the group is deleted once its finalizer is removed", gone)


def test_catalogue_manifests_are_single_documents() -> None:
    """A guard for the tests above: one manifest per file (a file = one test id)."""
    for path in [*VALID, *INVALID]:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
        assert len(docs) == 1, path.name
