"""What the probe daemon and its client agree on: message shapes and hand-built packets.

Imported by the daemon (:mod:`secgroups_lab.probed`, which must start fast: standard library
only) and by the client (:mod:`secgroups_lab.probes`).

On every channel (TCP line, UDP datagram, GRE payload, ICMP echo payload) a probe message is
``<kind> <token>``: ``Q`` asks the peer to answer ``R <token>``, ``R`` is that answer and ``F``
marks a forged-source packet that is only recorded. Whoever receives ``Q`` answers it, so
either end of a long-lived flow can speak first; ``R`` is never answered, so two daemons
never loop.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import struct

DEFAULT_PORTS: tuple[int, ...] = (22, 80, 443, 3306, 5432, 8080)
PROTOS: tuple[str, ...] = ("tcp", "udp", "icmp", "gre")

QUERY = b"Q"
REPLY = b"R"
FORGED = b"F"

# GRE protocol type of our payloads: 0x88B5 is the IEEE 802 "local experimental" EtherType.
GRE_PROTO = 0x88B5
IPPROTO_GRE = 47
IPPROTO_UDP = 17
IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58

# Linux socket option numbers the Python 3.11 socket module does not export.
IP_PKTINFO = 8
IP_FREEBIND = 15
IPV6_FREEBIND = 78
ICMP6_FILTER = 1


def new_token() -> str:
    """A random 16-hex-digit token that identifies one exchange."""
    return secrets.token_hex(8)


def message(kind: bytes, token: str) -> bytes:
    return kind + b" " + token.encode()


def parse_message(data: bytes) -> tuple[bytes, str] | None:
    """``(kind, token)`` of a probe message (trailing whitespace ignored), else None."""
    data = data.strip()
    if len(data) < 3 or data[1:2] != b" " or data[:1] not in (QUERY, REPLY, FORGED):
        return None
    try:
        token = data[2:].decode("ascii")
    except UnicodeDecodeError:
        return None
    if not token or not token.isalnum():
        return None
    return data[:1], token


def family_of(addr: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def gre_packet(payload: bytes) -> bytes:
    """A GRE header without options (RFC 2784) carrying ``payload``."""
    return struct.pack("!HH", 0, GRE_PROTO) + payload


def gre_payload(packet: bytes) -> bytes | None:
    """The payload of one of our GRE packets (header options skipped), else None."""
    if len(packet) < 4:
        return None
    flags, proto = struct.unpack("!HH", packet[:4])
    if proto != GRE_PROTO:
        return None
    offset = 4
    offset += 4 if flags & 0x8000 else 0  # checksum + reserved
    offset += 4 if flags & 0x2000 else 0  # key
    offset += 4 if flags & 0x1000 else 0  # sequence number
    return packet[offset:]


def icmp_echo(ident: int, seq: int, payload: bytes, *, v6: bool) -> bytes:
    """An ICMP(v6) echo request. The v4 checksum is filled in; for v6 it depends on the
    pseudo-header, so callers that build the IPv6 header compute it (see forged_packet)."""
    icmp_type = 128 if v6 else 8
    header = struct.pack("!BBHHH", icmp_type, 0, 0, ident, seq)
    if v6:
        return header + payload
    csum = checksum(header + payload)
    return struct.pack("!BBHHH", icmp_type, 0, csum, ident, seq) + payload


def _ipv4_header(src: str, dst: str, proto: int, payload_len: int) -> bytes:
    # With IP_HDRINCL the kernel fills in the checksum and, when 0, the identification.
    return struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + payload_len,
        0,
        0x4000,  # DF
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )


def _ipv6_header(src: str, dst: str, proto: int, payload_len: int) -> bytes:
    return struct.pack(
        "!IHBB16s16s",
        6 << 28,
        payload_len,
        proto,
        64,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    )


def _pseudo_header(src: str, dst: str, proto: int, length: int) -> bytes:
    s = ipaddress.ip_address(src).packed
    d = ipaddress.ip_address(dst).packed
    if len(s) == 4:
        return s + d + struct.pack("!BBH", 0, proto, length)
    return s + d + struct.pack("!IxxxB", length, proto)


def forged_packet(proto: str, src: str, dst: str, port: int, payload: bytes) -> bytes:
    """A whole IP packet (header included) from ``src`` to ``dst``: UDP to ``port`` (source
    port 40000 + a little) or an ICMP(v6) echo request, for a raw socket with header included."""
    v6 = ipaddress.ip_address(dst).version == 6
    if proto == "udp":
        length = 8 + len(payload)
        sport = 40000 + secrets.randbelow(1000)
        header = struct.pack("!HHHH", sport, port, length, 0)
        csum = checksum(_pseudo_header(src, dst, IPPROTO_UDP, length) + header + payload)
        body = struct.pack("!HHHH", sport, port, length, csum or 0xFFFF) + payload
        l4 = IPPROTO_UDP
    elif proto == "icmp":
        ident = secrets.randbelow(0xFFFF)
        body = icmp_echo(ident, 1, payload, v6=v6)
        if v6:
            csum = checksum(_pseudo_header(src, dst, IPPROTO_ICMPV6, len(body)) + body)
            body = body[:2] + struct.pack("!H", csum) + body[4:]
        l4 = IPPROTO_ICMPV6 if v6 else IPPROTO_ICMP
    else:
        raise ValueError(f"forged probes are udp or icmp, not {proto!r}")
    if v6:
        return _ipv6_header(src, dst, l4, len(body)) + body
    return _ipv4_header(src, dst, l4, len(body)) + body


def set_freebind(sock: socket.socket) -> None:
    """Let ``sock`` bind to or send from an address that is only covered by a local route
    (the outside host's prefixes). IPv6 raw sockets need the IPv6-level option."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)


def pktinfo_cmsg(local: str) -> tuple[int, int, bytes]:
    """A control message that makes a datagram or raw socket send from ``local``."""
    addr = ipaddress.ip_address(local)
    if addr.version == 6:
        return (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, struct.pack("=16sI", addr.packed, 0))
    return (socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=I4s4s", 0, addr.packed, b"\0" * 4))


def pktinfo_dst(ancdata: list[tuple[int, int, bytes]]) -> str | None:
    """The destination address of a received datagram, from its PKTINFO control message."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            return str(ipaddress.IPv4Address(data[8:12]))
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 16:
            return str(ipaddress.IPv6Address(data[:16]))
    return None


def normalize_ip(addr: str) -> str:
    """The canonical text of an address (strips a v4-mapped prefix and a ``%scope``)."""
    a = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return str(a.ipv4_mapped)
    return str(a)
