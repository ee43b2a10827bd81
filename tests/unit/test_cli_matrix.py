"""kubectl secgroups matrix: netpol-style grids of the expected connectivity, offline."""

from __future__ import annotations

import pytest
from clirun import offline

# The spec's example: Sg-A (a1, a2, jump by label) talk among themselves and SSH into
# Sg-B (b1, b2, jump by annotation); Sg-B talks among itself; c1 is alone in the
# default group; 172.16.0.9 is in A01's office subnet.
TCP_22 = [
    "a1          .   .   .   .   X   .     .",
    "a2          .   .   .   .   X   .     .",
    "b1          X   X   .   .   X   .     .",
    "b2          X   X   .   .   X   .     .",
    "c1          X   X   X   X   .   X     .",
    "jump        .   .   .   .   X   .     .",
    "172.16.0.9  .   .   X   X   X   .     .",
]


def test_tcp_22_grid() -> None:
    r = offline("matrix", "--ports", "tcp/22", "--ip", "172.16.0.9")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0] == "tcp/22 (IPv4; rows: from, columns: to; . allowed, X denied)"
    assert lines[1].split() == ["a1", "a2", "b1", "b2", "c1", "jump", "172.16.0.9"]
    assert [line.strip() for line in lines[2:9]] == TCP_22


def test_one_grid_per_port_in_the_order_given() -> None:
    doc = offline("matrix", "--ports", "udp/53,tcp/ssh,icmp", "-o", "json").json()
    assert [g["port"] for g in doc["grids"]] == ["udp/53", "tcp/22", "icmp"]
    assert [p["name"] for p in doc["peers"]] == ["a1", "a2", "b1", "b2", "c1", "jump"]
    udp = doc["grids"][0]["rows"]
    assert udp == ["..XXX.", "..XXX.", "XX..X.", "XX..X.", "XXXX.X", "....X."]
    cell = next(c for c in doc["grids"][1]["cells"] if (c["from"], c["to"]) == ("a1", "b1"))
    assert cell == {"from": "a1", "to": "b1", "allowed": True, "rule": "demo/b01", "note": None}
    cell = next(c for c in doc["grids"][1]["cells"] if (c["from"], c["to"]) == ("b1", "a1"))
    assert cell["allowed"] is False and cell["note"] == "default deny"


def test_ipv6_grid_leaves_out_pods_without_an_ipv6_address() -> None:
    r = offline("matrix", "--family", "IPv6", "--ports", "tcp/22", "-o", "json")
    assert r.code == 0
    assert [p["name"] for p in r.json()["peers"]] == ["a1", "a2", "b1"]
    assert r.json()["grids"][0]["rows"] == ["..X", "..X", "XX."]
    assert "note: no IPv6 address, left out: b2, c1, jump" in r.err


def test_all_namespaces_labels_pods_by_namespace() -> None:
    doc = offline("matrix", "-A", "--ports", "icmp", "-o", "json").json()
    names = [p["name"] for p in doc["peers"]]
    assert names[-1] == "legacy/old" and names[0] == "demo/a1"
    old_row = doc["grids"][0]["rows"][-1]
    assert old_row == "XXXXXX."  # legacy/old is not filtered itself, but every demo pod is


@pytest.mark.parametrize(
    ("ports", "message"),
    [
        ("tcp", "--ports tcp: expected tcp/PORT (1-65535 or a service name)"),
        ("tcp/70000", "--ports tcp/70000: expected tcp/PORT (1-65535 or a service name)"),
        ("sctp/1", "--ports sctp/1: expected tcp/PORT, udp/PORT, icmp[/TYPE] or gre"),
        (",", "--ports: nothing to test"),
    ],
)
def test_bad_ports(ports: str, message: str) -> None:
    r = offline("matrix", "--ports", ports)
    assert (r.code, r.err) == (2, f"error: {message}\n")
