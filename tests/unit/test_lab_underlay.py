"""Which host routes the lab treats as conflicts (secgroups_lab.underlay.conflicting_routes):
the pure part of the address plan's check (docs/lab.md, "Address plan")."""

from __future__ import annotations

import ipaddress

import pytest

from secgroups_lab import underlay


def route(dst: str, dev: str = "eth9", **extra: str) -> dict[str, object]:
    return {"dst": dst, "dev": dev, **extra}


def test_the_lab_blocks_are_narrower_than_the_shared_range() -> None:
    v4 = ipaddress.ip_network(underlay.LAB_V4_SUPERNET)
    assert v4 == ipaddress.ip_network("100.64.0.0/12")
    assert v4.subnet_of(ipaddress.ip_network("100.64.0.0/10"))
    # kind's block (docs/lab.md) does not overlap.
    assert not v4.overlaps(ipaddress.ip_network("100.88.0.0/13"))
    assert ipaddress.ip_network(underlay.ROOT_LINK_BLOCK).subnet_of(v4)


@pytest.mark.parametrize(
    "routes",
    [
        [route("default", gateway="192.0.2.1")],  # what the blackholes are for
        [route("100.88.0.0/24", "docker0"), route("100.88.0.1", "docker0", type="local")],
        [route("100.120.0.0/16", "tailscale0"), route("100.80.0.0/13", "wg0")],
        [
            {"type": "blackhole", "dst": "100.64.0.0/12"},
            {"type": "blackhole", "dst": "fd64:5ec::/48"},
            {"type": "blackhole", "dst": "100.64.0.0/10"},  # an older lab's
            {"type": "unreachable", "dst": "100.64.5.0/24"},
        ],
        # control planes' root veths, of this lab or another one, and their local routes
        [
            route("100.64.255.0/30", "ksg-cp"),
            route("100.64.255.1", "ksg-cp", type="local", table="local"),
        ],
        [route("fd00::/64"), route("fe80::/64"), route("::/0")],
    ],
    ids=[
        "default",
        "docker-in-kind-block",
        "vpn-outside-block",
        "own-blackholes",
        "cp-veths",
        "v6-other",
    ],
)
def test_routes_that_are_not_conflicts(routes: list[dict[str, object]]) -> None:
    assert underlay.conflicting_routes(routes) == []


@pytest.mark.parametrize(
    ("r", "shown"),
    [
        (route("100.70.0.0/16", "tailscale0"), "100.70.0.0/16 dev tailscale0"),
        (route("100.64.0.0/10", "ts0", table="52"), "100.64.0.0/10 dev ts0 table 52"),
        (
            route("100.64.7.9", "eth9", type="local", table="local"),
            "100.64.7.9 dev eth9 table local",
        ),
        (route("100.64.255.0/30", "eth9"), "100.64.255.0/30 dev eth9"),  # not a -cp link
        (route("100.64.1.0/24", "ksg-cp"), "100.64.1.0/24 dev ksg-cp"),  # not an API /30
        (route("fd64:5ec:0:1::/64", "x"), "fd64:5ec:0:1::/64 dev x"),
        (route("fc00::/7", "vpn0"), "fc00::/7 dev vpn0"),
    ],
)
def test_routes_that_conflict(r: dict[str, object], shown: str) -> None:
    assert underlay.conflicting_routes([r, route("default")]) == [shown]


def test_only_lab_addresses_may_be_assigned() -> None:
    underlay.check_lab_address("100.79.1.1/24")
    underlay.check_lab_address("fd64:5ec:0:fe::1/64")
    for bad in ("100.80.0.1", "100.88.0.1", "10.0.0.1", "fd00::1"):
        with pytest.raises(ValueError):
            underlay.check_lab_address(bad)
