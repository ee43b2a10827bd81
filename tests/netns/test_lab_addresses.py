"""The lab's address plan on a host with routes of its own (docs/lab.md, "Address plan").

The lab owns 100.64.0.0/12 and fd64:5ec::/48, not all of 100.64.0.0/10: a host route in
the rest of that range (a Docker bridge, a VPN) does not disturb the lab, and the lab's
root-netns guarantees still hold beside it. A host route that overlaps the lab's blocks
makes the lab refuse to start, with a message that names the route, before it changes
anything. The refusing lab runs with a scratch network namespace as its "host", so the
route that provokes it never touches the real root netns (other labs may be running).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.labchecks import assert_root_cannot_reach, root_route_kind

from secgroups_lab import underlay
from secgroups_lab._cmd import in_netns, ip, run
from secgroups_lab.matrix import cases, run_matrix
from secgroups_lab.network import Lab, cleanup_leftovers, netns_unavailable

_why = netns_unavailable()
if _why:
    pytest.skip(_why, allow_module_level=True)

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
# Inside 100.64.0.0/10 (the old lab range) but outside the lab's 100.64.0.0/12 and kind's
# 100.88.0.0/13: an address a VPN could use on a developer's machine.
HOST_NET = "100.120.77.0/24"
HOST_ADDR = "100.120.77.1/24"


def link_pair(name: str, netns: str | None = None) -> None:
    """A veth pair ``name``/``name``p with both ends up (kernels without the dummy
    driver have veth), in ``netns`` or the root netns."""
    ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p", netns=netns)
    ip("link", "set", name, "up", netns=netns)
    ip("link", "set", f"{name}p", "up", netns=netns)


@pytest.fixture
def host_route() -> Iterator[str]:
    """An interface in the root netns with ``HOST_NET`` (a route of the host's own),
    removed afterwards."""
    dev = f"ksgtd{os.getpid() % 100000}"
    link_pair(dev)
    try:
        ip("addr", "add", HOST_ADDR, "dev", dev)
        yield dev
    finally:
        ip("link", "del", dev, check=False)


def test_a_host_route_in_the_old_range_does_not_disturb_the_lab(host_route: str) -> None:
    prefix = "ksgta"
    cleanup_leftovers(prefix)
    assert underlay.conflicting_routes(underlay.host_routes()) == []
    with Lab(prefix, nodes=2) as lab:
        pods = lab.add_pods([(1, "x", "a"), (2, "x", "b")])
        # The lab works: every pod and the outside reach each other, both families.
        run_matrix(lab.endpoints(), cases(protos=("tcp", "icmp"), ports=(80,))).assert_matches()
        # Its root-netns guarantees hold beside the host's route ...
        assert_root_cannot_reach(lab, pods)
        # ... and the host's route still works: not taken by the lab's blackhole.
        assert f"dev {host_route}" in root_route_kind("100.120.77.9")
    assert f"dev {host_route}" in root_route_kind("100.120.77.9")


@pytest.fixture
def scratch_host() -> Iterator[str]:
    """A network namespace that plays the host: the refusing lab runs inside it."""
    ns = f"ksgtscratch{os.getpid() % 10000}"
    underlay.create_netns(ns)
    try:
        link_pair("d0", ns)
        yield ns
    finally:
        underlay.delete_netns(ns)


@pytest.mark.parametrize(
    ("route", "shown"),
    [
        ("100.79.77.0/24", "100.79.77.0/24 dev d0"),  # inside the lab's IPv4 block
        ("100.64.0.0/10", "100.64.0.0/10 dev d0"),  # around it (a VPN's whole range)
        ("fd64:5ec:0:99::/64", "fd64:5ec:0:99::/64 dev d0"),  # inside the lab's ULA
    ],
    ids=["inside-v4", "around-v4", "inside-v6"],
)
def test_a_host_route_overlapping_the_lab_block_makes_the_lab_refuse(
    scratch_host: str, route: str, shown: str
) -> None:
    family = "-6" if ":" in route else "-4"
    run(["ip", "-n", scratch_host, family, "route", "add", route, "dev", "d0"])
    prefix = "ksgtr"
    # The demo, as `make demo` runs it, with the scratch netns as its host.
    demo = subprocess.run(
        in_netns(scratch_host, [sys.executable, "-m", "secgroups_lab.main", "demo", "up",
                                "--prefix", prefix]),
        capture_output=True, text=True, timeout=120, check=False, cwd=REPO,
    )  # fmt: skip
    assert demo.returncode == 1, demo.stderr
    assert "Traceback" not in demo.stderr
    lines = [line for line in demo.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), demo.stderr
    assert f"this host already routes {shown}" in lines[0]
    assert underlay.LAB_V4_SUPERNET in lines[0] and "Nothing was started" in lines[0]
    # The network part of the lab refuses the same way.
    net = subprocess.run(
        in_netns(scratch_host, [sys.executable, "-c",
                                f"from secgroups_lab.network import Lab; Lab({prefix!r}).up()"]),
        capture_output=True, text=True, timeout=120, check=False, cwd=REPO,
    )  # fmt: skip
    assert net.returncode != 0
    assert "HostRouteConflictError: this host already routes" in net.stderr
    # Nothing was made: no namespace, no blackhole in the host, no files. (Other labs may
    # come and go meanwhile: only this prefix's names are looked at.)
    assert [n for n in underlay.netns_list() if n.startswith(f"{prefix}-")] == []
    for fam in ("-4", "-6"):
        routes = run(["ip", "-n", scratch_host, fam, "route", "show", "type", "blackhole"])
        assert routes.stdout.strip() == ""
    assert not (Path("/run/kube-secgroups-lab") / prefix).exists()
    assert not (Path("/run/kube-secgroups-lab") / f"{prefix}-net").exists()
