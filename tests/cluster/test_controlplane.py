"""The lab control plane: reachable from the root netns and from node netns, controllers run,
CRDs apply, and teardown leaves nothing behind."""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from secgroups_lab import binaries, controlplane, underlay
from secgroups_lab._cmd import in_netns, ip, run

pytestmark = pytest.mark.cluster


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)


@pytest.fixture
def node_netns(control_plane: controlplane.ControlPlane) -> Iterator[str]:
    """A node-like netns plugged into the lab underlay (100.64.254.10/24), removed after."""
    name = f"{control_plane.prefix}-tn{uuid.uuid4().hex[:4]}"
    underlay.create_netns(name)
    try:
        underlay.attach(control_plane.prefix, name, "eth0", ["100.64.254.10/24"])
        yield name
    finally:
        underlay.delete_netns(name)


def test_apiserver_answers_from_root_netns(
    control_plane: controlplane.ControlPlane, lab_binaries: binaries.Binaries
) -> None:
    assert control_plane.client.status("/readyz") == 200
    version = control_plane.client.get_json("/version")
    assert version["gitVersion"] == lab_binaries.kubernetes_version
    out = control_plane.kubectl("get", "--raw", "/readyz").stdout
    assert out.strip() == "ok"
    assert control_plane.addresses.root_url in control_plane.kubeconfig.read_text()


def test_apiserver_answers_from_node_netns(
    control_plane: controlplane.ControlPlane, lab_binaries: binaries.Binaries, node_netns: str
) -> None:
    cmd = [str(lab_binaries.kubectl), "--kubeconfig", str(control_plane.node_kubeconfig)]
    proc = run(in_netns(node_netns, [*cmd, "get", "--raw", "/readyz"]), check=False)
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok"), proc.stderr
    # A node netns has no route to the root-side /30: only the underlay is reachable.
    assert "100.64.255." not in ip("route", "show", netns=node_netns)


def test_kubernetes_service_points_at_the_underlay_address(
    control_plane: controlplane.ControlPlane,
) -> None:
    svc = control_plane.client.get_json("/api/v1/namespaces/default/services/kubernetes")
    assert svc["spec"]["clusterIP"] == controlplane.KUBERNETES_SERVICE_IP

    def endpoint_addresses() -> list[str]:
        path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes"
        if control_plane.client.status(path) != 200:
            return []
        eps = control_plane.client.get_json(path)
        return [a for e in eps.get("endpoints") or [] for a in e["addresses"]]

    wait_until("EndpointSlice kubernetes", lambda: bool(endpoint_addresses()))
    assert endpoint_addresses() == [controlplane.UNDERLAY_ADDRESS]


def test_default_serviceaccount_exists(control_plane: controlplane.ControlPlane) -> None:
    sa = control_plane.client.get_json("/api/v1/namespaces/default/serviceaccounts/default")
    assert sa["metadata"]["name"] == "default"


def test_namespace_deletion_finalizes(control_plane: controlplane.ControlPlane) -> None:
    ns = f"lab-ns-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", ns)
    # The serviceaccount controller fills it; the namespace controller must empty it.
    wait_until(
        "default ServiceAccount in the new namespace",
        lambda: (
            control_plane.client.status(f"/api/v1/namespaces/{ns}/serviceaccounts/default") == 200
        ),
    )
    control_plane.kubectl("create", "configmap", "x", "-n", ns, "--from-literal=a=b")
    control_plane.kubectl("delete", "namespace", ns, "--wait=false")
    wait_until(
        f"namespace {ns} gone",
        lambda: control_plane.client.status(f"/api/v1/namespaces/{ns}") == 404,
    )


def test_garbage_collector_deletes_dependents(control_plane: controlplane.ControlPlane) -> None:
    name = f"gc-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "configmap", name, "-n", "default")
    owner = control_plane.client.get_json(f"/api/v1/namespaces/default/configmaps/{name}")
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{name}-child",
            "namespace": "default",
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": name,
                    "uid": owner["metadata"]["uid"],
                }
            ],
        },
    }
    control_plane.kubectl("create", "-f", "-", input_text=json.dumps(child))
    control_plane.kubectl("delete", "configmap", name, "-n", "default", "--wait=false")
    wait_until(
        "dependent ConfigMap collected",
        lambda: (
            control_plane.client.status(f"/api/v1/namespaces/default/configmaps/{name}-child")
            == 404
        ),
    )


CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.labtest.kube-secgroups.invalid
spec:
  group: labtest.kube-secgroups.invalid
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                size: {type: integer}
"""


def test_apply_manifests_waits_for_established(
    control_plane: controlplane.ControlPlane, tmp_path: Path
) -> None:
    manifest = tmp_path / "crd.yaml"
    manifest.write_text(CRD)
    try:
        names = control_plane.apply_manifests([manifest])
        assert names == ["widgets.labtest.kube-secgroups.invalid"]
        # Established means the new API is served right away.
        widget = {
            "apiVersion": "labtest.kube-secgroups.invalid/v1",
            "kind": "Widget",
            "metadata": {"name": "w1", "namespace": "default"},
            "spec": {"size": 3},
        }
        control_plane.kubectl("create", "-f", "-", input_text=json.dumps(widget))
        got = control_plane.client.get_json(
            "/apis/labtest.kube-secgroups.invalid/v1/namespaces/default/widgets/w1"
        )
        assert got["spec"] == {"size": 3}
        # Applying again is a no-op, not an error.
        assert control_plane.apply_manifests([manifest]) == names
    finally:
        control_plane.kubectl("delete", "-f", str(manifest), "--ignore-not-found", "--wait=true")


@pytest.mark.parametrize(
    ("family", "probe", "supernet"),
    [
        (socket.AF_INET, "100.64.77.7", underlay.LAB_V4_SUPERNET),
        (socket.AF_INET6, "fd64:5ec:0:77::7", underlay.LAB_V6_SUPERNET),
    ],
)
def test_unassigned_lab_address_is_blackholed_in_root_netns(
    control_plane: controlplane.ControlPlane, family: int, probe: str, supernet: str
) -> None:
    assert supernet in underlay.blackholes_present()
    fam = "-6" if family == socket.AF_INET6 else "-4"
    route = run(["ip", fam, "route", "get", probe], check=False)
    # The kernel refuses the lookup (blackhole), or names the blackhole; never a device route.
    assert "Invalid argument" in route.stderr or "blackhole" in route.stdout, route
    assert " dev " not in route.stdout
    with socket.socket(family, socket.SOCK_DGRAM) as s, pytest.raises(OSError) as err:
        s.connect((probe, 9))
        s.send(b"must not leave the machine")
    assert err.value.errno in {errno.EINVAL, errno.ENETUNREACH, errno.EHOSTUNREACH}
    # The control plane's /30 is more specific than the blackhole and still works.
    assert control_plane.client.status("/readyz") == 200


def leftovers(prefix: str, workdir: Path, slot: int) -> list[str]:
    """What a stopped control plane ``prefix`` would have left behind."""
    found = [f"netns {n}" for n in underlay.netns_list() if n.startswith(f"{prefix}-")]
    link = controlplane.root_link(prefix)
    if underlay.link_exists(link):
        found.append(f"link {link}")
    found += [f"process {p} {n}" for p, n in controlplane.find_daemons(workdir).items()]
    a = controlplane.addresses(slot)
    net = str(ipaddress.ip_interface(f"{a.root_side}/{a.root_prefixlen}").network)
    found += [f"route {r}" for r in ip("-4", "route", "show").splitlines() if r.startswith(net)]
    if workdir.exists():
        found.append(f"workdir {workdir}")
    return found


@pytest.mark.slow
def test_second_control_plane_starts_beside_and_stops_clean(
    control_plane: controlplane.ControlPlane, lab_binaries: binaries.Binaries
) -> None:
    prefix = f"{control_plane.prefix}2"
    second = controlplane.ControlPlane(prefix, bins=lab_binaries)
    with second:
        assert second.addresses.slot != control_plane.addresses.slot
        assert second.client.status("/readyz") == 200
        assert control_plane.client.status("/readyz") == 200
        slot, workdir = second.addresses.slot, second.workdir
    assert leftovers(prefix, workdir, slot) == []
    # The first lab is untouched, its blackholes included.
    assert control_plane.client.status("/readyz") == 200
    assert underlay.blackholes_present() == [underlay.LAB_V4_SUPERNET, underlay.LAB_V6_SUPERNET]


@pytest.mark.slow
def test_cli_up_then_down_removes_an_orphaned_control_plane(
    control_plane: controlplane.ControlPlane,
) -> None:
    """``up`` exits and leaves the daemons orphaned, as after a SIGKILLed runner; ``down``
    must find and remove everything by name."""
    prefix = f"{control_plane.prefix}3"
    workdir = controlplane.default_workdir(prefix)
    py = [sys.executable, "-m", "secgroups_lab.controlplane"]
    try:
        up = subprocess.run([*py, "up", "--prefix", prefix], capture_output=True, text=True,
                            timeout=180, check=False)  # fmt: skip
        assert up.returncode == 0, up.stderr
        state = json.loads((workdir / "state.json").read_text())
        assert set(state["pids"]) == set(controlplane.DAEMONS)
        st = subprocess.run([*py, "status", "--prefix", prefix], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
        assert st.returncode == 0, st.stdout + st.stderr
        assert json.loads(st.stdout)["readyz"] == 200
    finally:
        down = subprocess.run([*py, "down", "--prefix", prefix], capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert leftovers(prefix, workdir, state["slot"]) == []
    assert control_plane.client.status("/readyz") == 200


def test_failed_start_reports_the_log_and_leaves_nothing(
    control_plane: controlplane.ControlPlane,
    lab_binaries: binaries.Binaries,
    capfd: pytest.CaptureFixture[str],
) -> None:
    prefix = f"{control_plane.prefix}4"
    broken = controlplane.ControlPlane(
        prefix, bins=lab_binaries, apiserver_args=["--no-such-flag"], ready_timeout=60
    )
    with pytest.raises(controlplane.ControlPlaneError, match="kube-apiserver"):
        broken.start()
    err = capfd.readouterr().err
    assert "last lines of" in err
    assert "unknown flag: --no-such-flag" in err
    assert leftovers(prefix, broken.workdir, broken.addresses.slot) == []


def test_repository_crds_are_established(
    control_plane: controlplane.ControlPlane, crds_installed: list[str]
) -> None:
    """Every CRD in crds/ is accepted by a real API server (schema, CEL cost budget)."""
    assert crds_installed
    for name in crds_installed:
        crd = control_plane.client.get_json(
            f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
        )
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", (name, conditions)
