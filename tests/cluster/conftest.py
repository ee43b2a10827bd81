"""Fixtures for the cluster tier: one lab control plane per test session.

* Skipped (one line) when not root or when ``ip``/``nsenter``/``openssl``/``curl`` are missing.
* The pinned binaries are built once, before the first test runs (outside any test's timeout),
  if a ``cluster`` test was collected. A failed build skips the tests on a developer machine
  but fails them in CI (``CI`` set): CI runs as root and must build them.
* ``KSG_TEST_PREFIX`` (default ``ksgt``) names the test lab, so a demo lab (``ksg``) can run
  beside it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from secgroups_lab import binaries, controlplane
from secgroups_lab.cluster import LabCluster

REPO = Path(__file__).resolve().parents[2]
CRDS_DIR = REPO / "crds"
TEST_PREFIX = os.environ.get("KSG_TEST_PREFIX", "ksgt")

# The error of the build attempted before the tests ran, if it failed.
_BUILD_ERROR: dict[str, str] = {}


def _environment_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "cluster tests need root (network namespaces)"
    missing = [t for t in ("ip", "nsenter", "openssl", "curl") if shutil.which(t) is None]
    if missing:
        return f"cluster tests need {', '.join(missing)} on PATH"
    return None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build missing binaries before the tests run, so no test timeout covers a cold build."""
    wanted = any(item.get_closest_marker("cluster") for item in session.items)
    if (
        not wanted
        or _environment_skip_reason()
        or not binaries.paths().missing(binaries.CONTROL_PLANE)
    ):
        return
    capman = session.config.pluginmanager.getplugin("capturemanager")
    try:
        if capman is not None:
            with capman.global_and_fixture_disabled():
                binaries.ensure(binaries.CONTROL_PLANE)
        else:
            binaries.ensure(binaries.CONTROL_PLANE)
    except binaries.BinaryMissingError as exc:
        _BUILD_ERROR["error"] = str(exc)


@pytest.fixture(scope="session")
def lab_binaries() -> binaries.Binaries:
    reason = _environment_skip_reason()
    if reason:
        pytest.skip(reason)
    try:
        if "error" in _BUILD_ERROR:
            raise binaries.BinaryMissingError(_BUILD_ERROR["error"])
        return binaries.ensure(binaries.CONTROL_PLANE)
    except binaries.BinaryMissingError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"control-plane binaries unavailable: {exc}")


@pytest.fixture(scope="session")
def control_plane(lab_binaries: binaries.Binaries) -> Iterator[controlplane.ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager, ready (default SA exists)."""
    cp = controlplane.ControlPlane(TEST_PREFIX, bins=lab_binaries)
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def crds_installed(control_plane: controlplane.ControlPlane) -> list[str]:
    """Every ``crds/*.yaml`` of the repository, applied and Established; their names."""
    files = sorted(CRDS_DIR.glob("*.yaml"))
    if not files:
        pytest.skip(f"no CRDs in {CRDS_DIR} yet")
    return control_plane.apply_manifests(files)


@pytest.fixture(scope="session")
def lab_cluster(
    control_plane: controlplane.ControlPlane, crds_installed: list[str]
) -> Iterator[LabCluster]:
    """The whole lab on the session's control plane: 3 nodes served by the simulated
    kubelet, the operator, and a node agent in every node netns."""
    lab = LabCluster(prefix=TEST_PREFIX, nodes=3, cp=control_plane)
    lab.up()
    try:
        yield lab
    finally:
        lab.down()
