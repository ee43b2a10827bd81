"""kind-config.yaml, the kind helpers and the images' locks agree with each other and with the
rest of the repository (no Docker, no root): the cluster's address plan stays inside the
project's range and out of the netns lab's, every address it uses passes the nodes' egress
guard, and the image locks pin what pyproject.toml asks for (docs/kind.md, docs/images.md).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from secgroups_lab import underlay

ROOT = Path(__file__).resolve().parents[2]
PROJECT_RANGE = ipaddress.IPv4Network("100.64.0.0/10")
RFC1918 = [ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]


def _kind_config() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def _guard_inside4() -> list[ipaddress.IPv4Network]:
    """IPv4 destinations the nodes' egress guard lets through (hack/kind/ksg-egress-guard.nft)."""
    text = (ROOT / "hack" / "kind" / "ksg-egress-guard.nft").read_text()
    m = re.search(r"set inside4 \{.*?elements = \{([^}]*)\}", text, re.S)
    assert m, "no inside4 set in the guard"
    return [ipaddress.IPv4Network(e.strip()) for e in m.group(1).split(",")]


def _docker_ranges() -> list[ipaddress.IPv4Network]:
    """docker0, the docker pools (hack/docker.sh) and the `kind` network (hack/kind.sh)."""
    nets = []
    for script, names in (("docker.sh", ("DOCKER_BIP", "DOCKER_POOL")), ("kind.sh", ("KIND_NET",))):
        text = (ROOT / "hack" / script).read_text()
        for name in names:
            m = re.search(rf"^{name}=(\S+)$", text, re.M)
            assert m, f"{name} not in hack/{script}"
            nets.append(ipaddress.IPv4Network(m.group(1), strict=False))
    return nets


def test_kind_config_has_one_control_plane_and_two_workers() -> None:
    roles = [n["role"] for n in _kind_config()["nodes"]]
    assert roles == ["control-plane", "worker", "worker"]


def test_kind_address_plan_is_ours_and_disjoint() -> None:
    net = _kind_config()["networking"]
    pods = ipaddress.IPv4Network(net["podSubnet"])
    services = ipaddress.IPv4Network(net["serviceSubnet"])
    lab = ipaddress.IPv4Network(underlay.LAB_V4_SUPERNET)
    plan = [pods, services, *_docker_ranges()]
    for a in plan:
        assert a.subnet_of(PROJECT_RANGE), a
        assert not a.overlaps(lab), (a, "overlaps the netns lab's blackholed range")
        assert not any(a.overlaps(r) for r in RFC1918), a
    for i, a in enumerate(plan):
        for b in plan[i + 1 :]:
            assert not a.overlaps(b), (a, b)


def test_every_cluster_address_passes_the_egress_guard() -> None:
    """A range outside the guard's set would be rejected inside the nodes: pods, Services and
    nodes could not talk."""
    net = _kind_config()["networking"]
    inside = _guard_inside4()
    for a in [ipaddress.IPv4Network(net["podSubnet"]), ipaddress.IPv4Network(net["serviceSubnet"])]:
        assert any(a.subnet_of(g) for g in inside), a
    for a in _docker_ranges():
        assert any(a.subnet_of(g) for g in inside), a
    assert not any(g.overlaps(ipaddress.IPv4Network(underlay.LAB_V4_SUPERNET)) for g in inside)


def test_kube_proxy_mode_is_nftables() -> None:
    assert _kind_config()["networking"]["kubeProxyMode"] == "nftables"


def _extra_requirements(extra: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = canonicalize_name(project["name"])

    def expand(e: str) -> list[Requirement]:
        out = []
        for spec in project["optional-dependencies"][e]:
            req = Requirement(spec)
            if canonicalize_name(req.name) == name:  # kube-secgroups[kube]
                out += [r for sub in sorted(req.extras) for r in expand(sub)]
            else:
                out.append(req)
        return out

    return [Requirement(s) for s in project["dependencies"]] + expand(extra)


def _lock(name: str) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", (ROOT / "images" / name).read_text(), re.M)
    return {canonicalize_name(n): v for n, v in pins}


@pytest.mark.parametrize("extra", ["operator", "agent"])
def test_image_lock_pins_what_pyproject_asks_for(extra: str) -> None:
    """After a dependency change in pyproject.toml, images/lock.sh must be run again."""
    lock = _lock(f"{extra}.lock")
    for req in _extra_requirements(extra):
        version = lock.get(canonicalize_name(req.name))
        assert version, f"{req.name} is not in images/{extra}.lock: run images/lock.sh"
        assert req.specifier.contains(version, prereleases=True), (
            f"images/{extra}.lock pins {req.name}=={version}, pyproject.toml asks {req}:"
            " run images/lock.sh"
        )


def test_image_locks_carry_hashes() -> None:
    for name in ("operator.lock", "agent.lock", "build.lock"):
        text = (ROOT / "images" / name).read_text()
        pins = re.findall(r"^\S+==\S+ \\$", text, re.M)
        assert pins, name
        # every pin is followed by at least one hash line
        blocks = re.split(r"^(?=\S+==)", text, flags=re.M)[1:]
        assert len(blocks) == len(pins)
        assert all("--hash=sha256:" in b for b in blocks), name
