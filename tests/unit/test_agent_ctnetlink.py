"""The sweep's ctnetlink codec (``secgroups_agent.ctnetlink``) without a kernel: messages
as the kernel writes them are parsed into ``CtFlow``s, and the tuples it writes carry every
field the protocol's tuple has. The real kernel is in
``tests/netns/test_agent_netns.py::test_the_conntrack_port_reads_and_marks_entries_by_mark``."""

from __future__ import annotations

import socket
import struct

import pytest

from secgroups_agent import ctnetlink as nl
from secgroups_agent.conntrack import CtFlow


def _tuple(kind: int, family: int, src: str, dst: str, proto: list[bytes]) -> bytes:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    s, d = (1, 2) if family == 4 else (3, 4)
    return nl._nest(
        kind,
        nl._nest(
            nl.CTA_TUPLE_IP,
            nl._attr(s, socket.inet_pton(af, src)),
            nl._attr(d, socket.inet_pton(af, dst)),
        ),
        nl._nest(nl.CTA_TUPLE_PROTO, *proto),
    )


def _ports(proto: int, sport: int, dport: int) -> list[bytes]:
    return [
        nl._attr(nl.CTA_PROTO_NUM, bytes([proto])),
        nl._attr(nl.CTA_PROTO_SRC_PORT, struct.pack("!H", sport)),
        nl._attr(nl.CTA_PROTO_DST_PORT, struct.pack("!H", dport)),
    ]


def _entry(family: int, *attrs: bytes) -> memoryview:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    return memoryview(struct.pack("=BBH", af, 0, 0) + b"".join(attrs))


def _parse(body: memoryview) -> CtFlow | None:
    return nl.parse_entry(body, 0, len(body))


def test_a_dumped_tcp_entry_behind_dnat() -> None:
    """Service traffic: the original destination is the VIP, the reply source the pod."""
    body = _entry(
        4,
        _tuple(nl.CTA_TUPLE_ORIG, 4, "192.0.2.9", "10.96.0.10", _ports(6, 40000, 443)),
        _tuple(nl.CTA_TUPLE_REPLY, 4, "100.64.1.2", "192.0.2.9", _ports(6, 8443, 40000)),
        nl._attr(nl.CTA_MARK, struct.pack("!I", 0xDEADBEEF)),
        nl._attr(nl.CTA_ZONE, struct.pack("!H", 7)),
        nl._attr(3, struct.pack("!I", 0x8)),  # CTA_STATUS: ignored
    )
    assert _parse(body) == CtFlow(
        4, 6, "192.0.2.9", "10.96.0.10", "100.64.1.2", "192.0.2.9", 40000, 443, 8443,
        zone=7, mark=0xDEADBEEF,
    )  # fmt: skip


def test_a_dumped_icmpv6_entry() -> None:
    icmp = [
        nl._attr(nl.CTA_PROTO_NUM, bytes([58])),
        nl._attr(nl.CTA_PROTO_ICMPV6[0], struct.pack("!H", 9)),
        nl._attr(nl.CTA_PROTO_ICMPV6[1], bytes([128])),
        nl._attr(nl.CTA_PROTO_ICMPV6[2], bytes([0])),
    ]
    body = _entry(
        6,
        _tuple(nl.CTA_TUPLE_ORIG, 6, "2001:db8::1", "fd64:5ec:0:1::2", icmp),
        _tuple(nl.CTA_TUPLE_REPLY, 6, "fd64:5ec:0:1::2", "2001:db8::1", icmp),
        nl._attr(nl.CTA_MARK, struct.pack("!I", 5)),
    )
    flow = _parse(body)
    assert flow is not None
    assert (flow.family, flow.proto, flow.reply_src) == (6, 58, "fd64:5ec:0:1::2")
    assert (flow.icmp_id, flow.icmp_type, flow.icmp_code, flow.orig_sport) == (9, 128, 0, None)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_entry(4), id="no-tuples"),
        pytest.param(
            _entry(4, _tuple(nl.CTA_TUPLE_ORIG, 4, "192.0.2.9", "10.0.0.1", _ports(6, 1, 2))),
            id="no-reply-tuple",
        ),
        pytest.param(memoryview(struct.pack("=BBH", 7, 0, 0)), id="another-family"),
    ],
)
def test_incomplete_entries_are_skipped(body: memoryview) -> None:
    assert _parse(body) is None


def test_a_truncated_attribute_ends_the_parse() -> None:
    whole = _tuple(nl.CTA_TUPLE_ORIG, 4, "192.0.2.9", "10.0.0.1", _ports(6, 1, 2))
    body = _entry(4, whole[:-3])
    assert _parse(body) is None


@pytest.mark.parametrize(
    ("flow", "fields"),
    [
        pytest.param(
            CtFlow(4, 6, "192.0.2.9", "10.0.0.1", "10.0.0.1", "192.0.2.9", 40000, 80, 80),
            {1: 6, 2: 40000, 3: 80},
            id="tcp",
        ),
        pytest.param(
            CtFlow(4, 47, "192.0.2.9", "10.0.0.1", "10.0.0.1", "192.0.2.9", 0, 0, 0),
            {1: 47, 2: 0, 3: 0},
            id="gre-keys",
        ),
        pytest.param(
            CtFlow(
                4,
                1,
                "192.0.2.9",
                "10.0.0.1",
                "10.0.0.1",
                "192.0.2.9",
                None,
                None,
                None,
                icmp_id=7,
                icmp_type=8,
                icmp_code=0,
            ),
            {1: 1, 4: 7, 5: 8, 6: 0},
            id="icmp",
        ),
        pytest.param(
            CtFlow(6, 50, "2001:db8::1", "fd00::2", "fd00::2", "2001:db8::1"),
            {1: 50},
            id="esp-no-ports",
        ),
    ],
)
def test_written_tuples_carry_the_protocols_fields(flow: CtFlow, fields: dict[int, int]) -> None:
    raw = memoryview(nl.tuple_attr(flow))
    ((kind, s, e),) = list(nl._attrs(raw, 0, len(raw)))
    assert kind == nl.CTA_TUPLE_ORIG
    got: dict[int, int] = {}
    addrs = []
    for k, a, b in nl._attrs(raw, s, e):
        for kk, aa, bb in nl._attrs(raw, a, b):
            if k == nl.CTA_TUPLE_IP:
                addrs.append(nl._ntop(raw[aa:bb]))
            else:
                got[kk] = int.from_bytes(raw[aa:bb], "big")
    assert got == fields
    assert addrs == [flow.orig_src, flow.orig_dst]
    parsed = _parse(
        memoryview(
            struct.pack("=BBH", socket.AF_INET if flow.family == 4 else socket.AF_INET6, 0, 0)
            + bytes(raw)
            + _tuple(nl.CTA_TUPLE_REPLY, flow.family, flow.reply_src, flow.reply_dst, [
                nl._attr(nl.CTA_PROTO_NUM, bytes([flow.proto]))
            ])
        )
    )  # fmt: skip
    assert parsed is not None and parsed.identity() == flow.identity()


@pytest.mark.parametrize(
    "flow",
    [
        pytest.param(CtFlow(4, 6, "192.0.2.9", "10.0.0.1", "10.0.0.1", "192.0.2.9"), id="tcp"),
        pytest.param(
            CtFlow(4, 1, "192.0.2.9", "10.0.0.1", "10.0.0.1", "192.0.2.9", icmp_id=1), id="icmp"
        ),
    ],
)
def test_a_tuple_missing_a_field_is_refused(flow: CtFlow) -> None:
    with pytest.raises(ValueError, match="needs"):
        nl.tuple_attr(flow)
