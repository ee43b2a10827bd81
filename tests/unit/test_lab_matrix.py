"""The connectivity-matrix rendering and the probe wire format (no root needed)."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from secgroups_lab.matrix import LEGEND, Case, MatrixResult, Mismatch, cases
from secgroups_lab.probes import ProbeResult
from secgroups_lab.probewire import (
    FORGED,
    QUERY,
    REPLY,
    checksum,
    forged_packet,
    gre_packet,
    gre_payload,
    message,
    normalize_ip,
    parse_message,
)

OK = ProbeResult(True, "", 0.3)
DROP = ProbeResult(False, "timeout", 2000.0)


def _result() -> MatrixResult:
    c = Case("tcp", 80, 4)
    expected = {(0, 1, 0): True, (1, 0, 0): False}
    observed = {(0, 1, 0): OK, (1, 0, 0): OK}
    r = MatrixResult(["ns/a", "ns/b"], ["ns/a", "ns/b"], [c], expected, observed, 0.5)
    r.mismatches.append(Mismatch("ns/b", "ns/a", c, False, OK))
    return r


def test_cases_cover_protocols_ports_and_families() -> None:
    labels = [c.label for c in cases(ports=(22, 80))]
    assert labels == [
        "tcp/22 IPv4", "tcp/80 IPv4", "udp/22 IPv4", "udp/80 IPv4", "icmp IPv4", "gre IPv4",
        "tcp/22 IPv6", "tcp/80 IPv6", "udp/22 IPv6", "udp/80 IPv6", "icmp IPv6", "gre IPv6",
    ]  # fmt: skip


def test_grids_side_by_side_with_diff() -> None:
    text = _result().render()
    # The legend comes first, once; then a blank line and the grids.
    assert text.splitlines()[:3] == [*LEGEND.splitlines(), ""]
    assert text.count(LEGEND) == 1
    assert "Rows are sources, columns destinations" in LEGEND and ". allowed" in LEGEND
    assert text.splitlines()[3:8] == [
        "== tcp/80 IPv4: 1 mismatch ==",
        "         expected   observed   diff",
        "         1 2        1 2        1 2",
        "1 ns/a   - .        - .        - .",
        "2 ns/b   X -        . -        ! -",
    ]
    assert "columns: 1=ns/a, 2=ns/b" in text
    assert "ns/b -> ns/a tcp/80 IPv4: expected denied, observed allowed" in text


def test_assert_matches_fails_with_the_grids() -> None:
    with pytest.raises(AssertionError, match=r"(?s)tcp/80 IPv4: 1 mismatch.*! -"):
        _result().assert_matches()


def test_messages_round_trip_and_reject_garbage() -> None:
    for kind in (QUERY, REPLY, FORGED):
        assert parse_message(message(kind, "abc123") + b"\n") == (kind, "abc123")
    for junk in (b"", b"hello", b"Q", b"Q ", b"X abc", b"Q a b", b"Q \xff"):
        assert parse_message(junk) is None


def test_gre_framing() -> None:
    pkt = gre_packet(b"Q t1")
    assert pkt[:4] == b"\x00\x00\x88\xb5" and gre_payload(pkt) == b"Q t1"
    keyed = struct.pack("!HHI", 0x2000, 0x88B5, 7) + b"R t2"
    assert gre_payload(keyed) == b"R t2"
    assert gre_payload(struct.pack("!HH", 0, 0x0800) + b"Q t") is None


@pytest.mark.parametrize(
    ("src", "dst"), [("100.64.1.99", "100.64.250.10"), ("fd64:5ec:0:1::63", "fd64:5ec:0:fa::a")]
)
@pytest.mark.parametrize("proto", ["udp", "icmp"])
def test_forged_packets_carry_the_forged_source_and_valid_checksums(
    src: str, dst: str, proto: str
) -> None:
    pkt = forged_packet(proto, src, dst, 53, b"F tok")
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if len(s) == 4:
        assert pkt[12:16] == s and pkt[16:20] == d
        l4, pseudo_proto, body = pkt[9], pkt[9], pkt[20:]
        pseudo = s + d + struct.pack("!BBH", 0, pseudo_proto, len(body))
        if l4 == 1:  # ICMPv4: no pseudo-header
            pseudo = b""
    else:
        assert pkt[8:24] == s and pkt[24:40] == d
        body = pkt[40:]
        pseudo = s + d + struct.pack("!IxxxB", len(body), pkt[6])
    assert body.endswith(b"F tok")
    assert checksum(pseudo + body) == 0


def test_normalize_ip() -> None:
    assert normalize_ip("::ffff:100.64.1.2") == "100.64.1.2"
    assert normalize_ip("fe80::1%eth0") == "fe80::1"
    assert normalize_ip("FD64:5EC:0:1:0::2") == "fd64:5ec:0:1::2"
