"""The probe daemon: one per lab host (pod, outside host, optionally a node), run inside that
host's network namespace as ``python -m secgroups_lab.probed``.

It serves TCP and UDP echo on a list of ports (IPv4 and IPv6), answers GRE probes on raw
sockets (IP protocol 47) and records every probe it receives; the kernel answers ICMP echo.
On request it probes other hosts (TCP, UDP, ICMP, GRE; many in parallel), keeps long-lived
flows open and exchanges one message on them when asked, from either end, and sends packets
with a forged source address. It is controlled over a unix socket (one JSON request and one
JSON answer per connection) by :class:`secgroups_lab.probes.ProbeClient`; the message shapes
are in :mod:`secgroups_lab.probewire`. Standard library only, so that it starts fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import itertools
import json
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secgroups_lab.probewire import (
    DEFAULT_PORTS,
    FORGED,
    ICMP6_FILTER,
    IP_PKTINFO,
    QUERY,
    REPLY,
    family_of,
    forged_packet,
    gre_packet,
    gre_payload,
    icmp_echo,
    message,
    new_token,
    normalize_ip,
    parse_message,
    pktinfo_cmsg,
    pktinfo_dst,
    set_freebind,
)

log = logging.getLogger("probed")

# Datagram probes are re-sent after these delays (seconds) until the deadline: a first
# packet can be lost while a neighbour entry resolves. All copies carry the same token.
RESEND_DELAYS = (0.2, 0.4, 0.8, 1.6, 3.2)
MAX_PARALLEL = 512
SEEN_LIMIT = 50_000


class ProbeFailedError(Exception):
    """An exchange did not complete; the message is the reason shown to the user."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ProbeFailedError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return {
            errno.ECONNREFUSED: "refused",
            errno.EHOSTUNREACH: "host unreachable",
            errno.ENETUNREACH: "network unreachable",
            errno.EPERM: "send not permitted (EPERM)",
            errno.ECONNRESET: "reset",
        }.get(exc.errno, name)
    return f"{type(exc).__name__}: {exc}"


@dataclass
class Channel:
    """Something probe messages travel on; remembers the tokens it is waiting for, so that an
    error on it (a reset, an ICMP error on a connected socket) fails those exchanges."""

    daemon: Daemon
    pending: set[str] = field(default_factory=set)
    closed: str | None = None

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def fail_pending(self, exc: BaseException) -> None:
        for token in list(self.pending):
            self.daemon.fail(token, exc)

    def close(self) -> None:
        self.closed = self.closed or "closed"


@dataclass
class TcpChannel(Channel):
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    server: bool = False
    peer: tuple[str, int] = ("", 0)
    local: tuple[str, int] = ("", 0)
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        assert self.writer is not None
        sock = self.writer.get_extra_info("socket")
        if sock is not None:  # one small message each way: never wait for Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = self.writer.get_extra_info("peername")
        local = self.writer.get_extra_info("sockname")
        self.peer = (normalize_ip(peer[0]), int(peer[1]))
        self.local = (normalize_ip(local[0]), int(local[1]))
        self.task = asyncio.get_running_loop().create_task(self._run())

    def send(self, data: bytes) -> None:
        if self.closed or self.writer is None:
            raise ProbeFailedError(f"connection {self.closed or 'closed'}")
        self.writer.write(data + b"\n")

    async def _run(self) -> None:
        assert self.reader is not None and self.writer is not None
        key = (self.peer[0], self.peer[1], self.local[1])
        if self.server:
            self.daemon.accepted[key] = self
        try:
            while True:
                try:
                    line = await self.reader.readline()
                except ValueError:  # a line longer than the stream limit: drop it
                    continue
                if not line:
                    self.closed = "closed by peer"
                    break
                msg = parse_message(line)
                if msg is None:
                    if self.server:  # plain echo for other clients (nc, socat)
                        self.writer.write(line)
                    continue
                kind, token = msg
                if kind == QUERY:
                    self.daemon.record(
                        "tcp", kind, token, self.peer[0], self.local[0], self.local[1]
                    )
                    self.writer.write(message(REPLY, token) + b"\n")
                elif kind == REPLY:
                    self.daemon.resolve(token, self.peer[0])
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.closed = _reason(exc)
        finally:
            self.closed = self.closed or "closed"
            self.fail_pending(ProbeFailedError(f"connection {self.closed}"))
            if self.server and self.daemon.accepted.get(key) is self:
                del self.daemon.accepted[key]
            self.writer.close()

    def close(self) -> None:
        super().close()
        if self.writer is not None:
            self.writer.close()
        if self.task is not None:
            self.task.cancel()


@dataclass
class DgramChannel(Channel):
    """A UDP socket (a listening echo socket, or a connected client socket), an ICMP ping
    socket, or a raw GRE or ICMP socket; they differ in how a packet is parsed and answered."""

    sock: socket.socket | None = None
    kind: str = "udp"  # udp | icmp | gre | sniff
    connected: bool = False
    port: int = 0

    def start(self) -> None:
        assert self.sock is not None
        self.sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        super().close()
        if self.sock is not None and self.sock.fileno() >= 0:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()

    def send(self, data: bytes) -> None:
        # Connected datagram channels only; the others use send_to.
        assert self.sock is not None
        if self.closed:
            raise ProbeFailedError(f"socket {self.closed}")
        if self.kind == "icmp":
            v6 = self.sock.family == socket.AF_INET6
            self.daemon.icmp_seq = (self.daemon.icmp_seq + 1) & 0xFFFF
            # The kernel fills in the identifier (the socket's "port") and the checksum.
            self.sock.send(icmp_echo(0, self.daemon.icmp_seq, data, v6=v6))
        else:
            self.sock.send(data)

    def send_to(self, data: bytes, dst: str, port: int, local: str | None) -> None:
        assert self.sock is not None
        cmsgs = [pktinfo_cmsg(local)] if local else []
        if self.kind == "gre":
            data = gre_packet(data)
            port = 0
        self.sock.sendmsg([data], cmsgs, 0, (dst, port))

    def _readable(self) -> None:
        assert self.sock is not None
        for _ in range(256):  # bounded, so one busy socket cannot starve the loop
            try:
                data, anc, _flags, addr = self.sock.recvmsg(65535, 512)
            except BlockingIOError:
                return
            except OSError as exc:  # an ICMP error reported on a connected socket
                self.fail_pending(exc)
                continue
            try:
                self._packet(data, anc, addr)
            except OSError as exc:
                log.warning("%s: cannot answer %s: %s", self.kind, addr, exc)
            except (ValueError, IndexError) as exc:  # a truncated or foreign packet
                log.warning("%s: ignored a malformed packet from %s: %s", self.kind, addr, exc)

    def _packet(self, data: bytes, anc: list[tuple[int, int, bytes]], addr: Any) -> None:
        d = self.daemon
        v6 = self.sock is not None and self.sock.family == socket.AF_INET6
        if self.kind in ("gre", "sniff") and not v6:
            # IPv4 raw sockets receive the IP header.
            ihl = (data[0] & 0x0F) * 4
            src = str(ipaddress.IPv4Address(data[12:16]))
            dst: str | None = str(ipaddress.IPv4Address(data[16:20]))
            data = data[ihl:]
        else:
            src = normalize_ip(addr[0])
            dst = pktinfo_dst(anc)
        if self.kind == "icmp":
            if len(data) >= 8 and data[0] in (0, 129):
                msg = parse_message(data[8:])
                if msg is not None and msg[0] == QUERY:
                    d.resolve(msg[1], src)
            return
        if self.kind == "sniff":  # echo requests only: the kernel answers them
            if len(data) >= 8 and data[0] in (8, 128):
                msg = parse_message(data[8:])
                if msg is not None and msg[0] in (QUERY, FORGED):
                    d.record("icmp", msg[0], msg[1], src, dst or "", 0)
            return
        if self.kind == "gre":
            payload = gre_payload(data)
            if payload is None:
                return
            data = payload
        msg = parse_message(data)
        if msg is None:
            if self.kind == "udp" and not self.connected:  # plain echo for other clients
                self.sock_reply(data, src, addr, dst)
            return
        kind, token = msg
        if kind == REPLY:
            d.resolve(token, src)
            return
        d.record(self.kind, kind, token, src, dst or "", self.port)
        if kind == QUERY:
            reply = message(REPLY, token)
            if self.kind == "gre":
                self.send_to(reply, src, 0, dst)
            elif self.connected:
                self.send(reply)
            else:
                self.sock_reply(reply, src, addr, dst)

    def sock_reply(self, data: bytes, src: str, addr: Any, local: str | None) -> None:
        assert self.sock is not None
        cmsgs = [pktinfo_cmsg(local)] if local else []
        self.sock.sendmsg([data], cmsgs, 0, addr)


@dataclass
class Flow:
    id: str
    proto: str
    dst: str
    dport: int
    src: str
    sport: int
    channel: Channel | None  # None for GRE, which uses the shared raw socket


class Daemon:
    def __init__(self, name: str, ports: list[int], control: Path, parent_pid: int) -> None:
        self.name = name
        self.ports = ports
        self.control = control
        self.parent_pid = parent_pid
        self.waiters: dict[str, asyncio.Future[str]] = {}
        self.accepted: dict[tuple[str, int, int], TcpChannel] = {}
        self.flows: dict[str, Flow] = {}
        self.udp: dict[tuple[int, int], DgramChannel] = {}
        self.gre: dict[int, DgramChannel] = {}
        self.seen: deque[dict[str, Any]] = deque(maxlen=SEEN_LIMIT)
        self.served: list[str] = []
        self.icmp_seq = 0
        self.flow_ids = itertools.count(1)
        self.sem = asyncio.Semaphore(MAX_PARALLEL)
        self.stopping = asyncio.Event()
        self.channels: list[Channel] = []

    # ------------------------------------------------------------------ bookkeeping
    def record(self, proto: str, kind: bytes, token: str, src: str, dst: str, port: int) -> None:
        self.seen.append(
            {
                "proto": proto,
                "kind": kind.decode(),
                "token": token,
                "src": src,
                "dst": normalize_ip(dst) if dst else "",
                "port": port,
                "time": time.time(),
            }
        )

    def resolve(self, token: str, src: str) -> None:
        fut = self.waiters.get(token)
        if fut is not None and not fut.done():
            fut.set_result(src)

    def fail(self, token: str, exc: BaseException) -> None:
        fut = self.waiters.get(token)
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    async def exchange(
        self, channel: Channel | None, send: Callable[[bytes], None], timeout: float, resend: bool
    ) -> dict[str, Any]:
        """Send ``Q <token>`` with ``send`` and wait for ``R <token>`` until ``timeout``."""
        token = new_token()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        self.waiters[token] = fut
        if channel is not None:
            channel.pending.add(token)
        start = time.perf_counter()
        deadline = start + timeout
        delays = iter(RESEND_DELAYS if resend else ())
        try:
            while True:
                try:
                    send(message(QUERY, token))
                except (OSError, ProbeFailedError) as exc:
                    if not fut.done():
                        fut.set_exception(exc)
                wait = deadline - time.perf_counter()
                wait = min(wait, next(delays, wait))
                if wait > 0:
                    await asyncio.wait({fut}, timeout=wait)
                if fut.done():
                    error = fut.exception()
                    if error is not None:
                        return _fail(_reason(error), start)
                    return {
                        "ok": True,
                        "reason": "",
                        "latency_ms": _ms(start),
                        "peer": fut.result(),
                    }
                if time.perf_counter() >= deadline:
                    return _fail("timeout", start)
        finally:
            self.waiters.pop(token, None)
            if channel is not None:
                channel.pending.discard(token)

    # ------------------------------------------------------------------ serving
    async def start(self) -> None:
        for family, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            fam = "ipv6" if family == socket.AF_INET6 else "ipv4"
            for port in self.ports:
                try:
                    await self._serve_tcp(family, any_addr, port)
                    self.served.append(f"tcp/{port}/{fam}")
                except OSError as exc:
                    log.warning("cannot serve tcp/%s %s: %s", port, fam, exc)
                try:
                    self._serve_udp(family, any_addr, port)
                    self.served.append(f"udp/{port}/{fam}")
                except OSError as exc:
                    log.warning("cannot serve udp/%s %s: %s", port, fam, exc)
            try:
                self._raw(family, "gre")
                self.served.append(f"gre/{fam}")
                self._raw(family, "sniff")
            except OSError as exc:
                log.warning("cannot open raw sockets (%s): %s", fam, exc)
        with contextlib.suppress(FileNotFoundError):
            self.control.unlink()
        server = await asyncio.start_unix_server(
            self._control, path=str(self.control), limit=1 << 24
        )
        self.channels.append(Channel(self))  # placeholder so close() is uniform
        self._control_server = server
        log.info("ready: %s serving %s", self.name, " ".join(self.served))

    async def _serve_tcp(self, family: int, any_addr: str, port: int) -> None:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        set_freebind(sock)
        sock.bind((any_addr, port))
        sock.listen(1024)
        sock.setblocking(False)

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            ch = TcpChannel(self, reader=reader, writer=writer, server=True)
            ch.start()

        await asyncio.start_server(accepted, sock=sock, limit=1 << 20)

    def _serve_udp(self, family: int, any_addr: str, port: int) -> None:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._pktinfo(sock)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((any_addr, port))
        ch = DgramChannel(self, sock=sock, kind="udp", port=port)
        ch.start()
        self.udp[(family, port)] = ch

    def _raw(self, family: int, kind: str) -> None:
        if kind == "gre":
            proto = socket.IPPROTO_GRE
        else:
            proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
        sock = socket.socket(family, socket.SOCK_RAW, proto)
        self._pktinfo(sock)
        if kind == "sniff" and family == socket.AF_INET6:
            # ICMP6_FILTER: block every type but echo request (128), so ND is not copied here.
            words = [0xFFFFFFFF] * 8
            words[128 >> 5] &= ~(1 << (128 & 31))
            sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *words))
        ch = DgramChannel(self, sock=sock, kind=kind)
        ch.start()
        self.channels.append(ch)
        if kind == "gre":
            self.gre[family] = ch

    @staticmethod
    def _pktinfo(sock: socket.socket) -> None:
        # Receive each datagram's destination and answer from it (the outside host owns a
        # whole prefix through a local route); FREEBIND lets IPv6 send from such an address.
        set_freebind(sock)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)

    # ------------------------------------------------------------------ probing
    async def probe(self, req: dict[str, Any]) -> dict[str, Any]:
        async with self.sem:
            proto = str(req["proto"])
            dst = str(req["dst"])
            port = int(req.get("port", 0))
            timeout = float(req.get("timeout", 2.0))
            src = req.get("src")
            start = time.perf_counter()
            try:
                if proto == "tcp":
                    ch = await self._tcp_connect(dst, port, src, timeout)
                    try:
                        remaining = max(0.0, timeout - (time.perf_counter() - start))
                        res = await self.exchange(ch, ch.send, remaining, resend=False)
                    finally:
                        ch.close()
                elif proto == "udp":
                    dch = self._dgram_connect("udp", dst, port, src)
                    try:
                        res = await self.exchange(dch, dch.send, timeout, resend=True)
                    finally:
                        dch.close()
                elif proto == "icmp":
                    dch = self._dgram_connect("icmp", dst, 0, src)
                    try:
                        res = await self.exchange(dch, dch.send, timeout, resend=True)
                    finally:
                        dch.close()
                elif proto == "gre":
                    gre = self.gre[family_of(dst)]
                    res = await self.exchange(
                        None,
                        lambda data: gre.send_to(data, dst, 0, src),
                        timeout,
                        resend=True,
                    )
                else:
                    raise ProbeFailedError(f"unknown protocol {proto!r}")
            except (OSError, ProbeFailedError, KeyError) as exc:
                return _fail(_reason(exc), start)
            res["latency_ms"] = _ms(start)
            return res

    async def _tcp_connect(
        self, dst: str, port: int, src: str | None, timeout: float
    ) -> TcpChannel:
        family = family_of(dst)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if src:
                set_freebind(sock)
                sock.bind((src, 0))
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(loop.sock_connect(sock, (dst, port)), timeout)
            except TimeoutError:
                raise ProbeFailedError("timeout (no SYN-ACK)") from None
            reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        except BaseException:
            sock.close()
            raise
        ch = TcpChannel(self, reader=reader, writer=writer)
        ch.start()
        return ch

    def _dgram_connect(self, kind: str, dst: str, port: int, src: str | None) -> DgramChannel:
        family = family_of(dst)
        if kind == "icmp":
            proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
            sock = socket.socket(family, socket.SOCK_DGRAM, proto)  # a ping socket
        else:
            sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if src:
                set_freebind(sock)
                sock.bind((src, 0))
            sock.connect((dst, port))
        except BaseException:
            sock.close()
            raise
        ch = DgramChannel(self, sock=sock, kind=kind, connected=True, port=port)
        ch.start()
        return ch

    # ------------------------------------------------------------------ flows
    async def flow_open(self, req: dict[str, Any]) -> dict[str, Any]:
        proto = str(req["proto"])
        dst = str(req["dst"])
        port = int(req.get("port", 0))
        timeout = float(req.get("timeout", 2.0))
        src = req.get("src")
        start = time.perf_counter()
        channel: Channel | None = None
        try:
            if proto == "tcp":
                tch = await self._tcp_connect(dst, port, src, timeout)
                channel = tch
                local = tch.local
                remaining = max(0.0, timeout - (time.perf_counter() - start))
                res = await self.exchange(tch, tch.send, remaining, resend=False)
            elif proto in ("udp", "icmp"):
                dch = self._dgram_connect(proto, dst, port, src)
                channel = dch
                assert dch.sock is not None
                name = dch.sock.getsockname()
                local = (normalize_ip(name[0]), int(name[1]))
                res = await self.exchange(dch, dch.send, timeout, resend=True)
            elif proto == "gre":
                gre = self.gre[family_of(dst)]
                local = (src or _source_for(dst), 0)
                res = await self.exchange(
                    None, lambda data: gre.send_to(data, dst, 0, src), timeout, resend=True
                )
            else:
                raise ProbeFailedError(f"unknown protocol {proto!r}")
        except (OSError, ProbeFailedError, KeyError) as exc:
            if channel is not None:
                channel.close()
            return _fail(_reason(exc), start)
        if not res["ok"]:
            if channel is not None:
                channel.close()
            return res
        flow = Flow(
            id=f"{proto}-{next(self.flow_ids)}",
            proto=proto,
            dst=normalize_ip(dst),
            dport=port,
            src=local[0],
            sport=local[1],
            channel=channel,
        )
        self.flows[flow.id] = flow
        res["handle"] = {
            "id": flow.id,
            "proto": proto,
            "src": flow.src,
            "sport": flow.sport,
            "dst": flow.dst,
            "dport": port,
        }
        log.info("flow %s open %s:%s -> %s:%s", flow.id, flow.src, flow.sport, flow.dst, port)
        return res

    async def flow_check(self, req: dict[str, Any]) -> dict[str, Any]:
        flow = self.flows.get(str(req["id"]))
        timeout = float(req.get("timeout", 2.0))
        if flow is None:
            raise ValueError(f"no flow {req['id']} (closed, or opened by another daemon)")
        if flow.channel is None:
            gre = self.gre[family_of(flow.dst)]
            src = flow.src
            return await self.exchange(
                None, lambda data: gre.send_to(data, flow.dst, 0, src), timeout, resend=True
            )
        ch = flow.channel
        return await self.exchange(ch, ch.send, timeout, resend=flow.proto != "tcp")

    async def flow_check_peer(self, req: dict[str, Any]) -> dict[str, Any]:
        """The server end speaks first on a flow some client opened to this host."""
        proto = str(req["proto"])
        peer = normalize_ip(str(req["peer"]))
        peer_port = int(req.get("peer_port", 0))
        local = normalize_ip(str(req["local"]))
        local_port = int(req.get("local_port", 0))
        timeout = float(req.get("timeout", 2.0))
        start = time.perf_counter()
        if proto == "tcp":
            tch = self.accepted.get((peer, peer_port, local_port))
            if tch is None:
                return _fail(f"no accepted connection from {peer}:{peer_port}", start)
            return await self.exchange(tch, tch.send, timeout, resend=False)
        if proto == "udp":
            uch = self.udp.get((family_of(peer), local_port))
            if uch is None:
                return _fail(f"not serving udp/{local_port}", start)
            return await self.exchange(
                uch, lambda data: uch.send_to(data, peer, peer_port, local), timeout, resend=True
            )
        if proto == "gre":
            gre = self.gre[family_of(peer)]
            return await self.exchange(
                None, lambda data: gre.send_to(data, peer, 0, local), timeout, resend=True
            )
        return _fail(f"the server end cannot start a {proto} exchange", start)

    def flow_close(self, req: dict[str, Any]) -> dict[str, Any]:
        flow = self.flows.pop(str(req["id"]), None)
        if flow is None:
            raise ValueError(f"no flow {req['id']} (closed, or opened by another daemon)")
        if flow.channel is not None:
            flow.channel.close()
        log.info("flow %s closed", flow.id)
        return {"ok": True, "reason": ""}

    # ------------------------------------------------------------------ forging
    def forge(self, req: dict[str, Any]) -> dict[str, Any]:
        proto = str(req["proto"])
        src = str(req["src"])
        dst = str(req["dst"])
        port = int(req.get("port", 0))
        token = str(req.get("token") or new_token())
        packet = forged_packet(proto, src, dst, port, message(FORGED, token))
        family = family_of(dst)
        try:
            with socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
                # IPPROTO_RAW implies "header included" for IPv4 and IPv6 alike.
                sent = sock.sendto(packet, (dst, 0))
        except OSError as exc:
            return {"ok": False, "reason": _reason(exc), "token": token, "sent": 0}
        log.info("forged %s %s -> %s:%s token %s", proto, src, dst, port, token)
        return {"ok": True, "reason": "", "token": token, "sent": sent}

    # ------------------------------------------------------------------ control socket
    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            req = json.loads(line)
            resp = await self.dispatch(req)
        except Exception as exc:
            log.exception("control request failed")
            resp = {"error": f"{type(exc).__name__}: {exc}"}
        try:
            writer.write(json.dumps(resp).encode() + b"\n")
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def dispatch(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "ping":
            return {"ok": True, "name": self.name, "pid": os.getpid()}
        if op == "info":
            return {
                "ok": True,
                "name": self.name,
                "pid": os.getpid(),
                "ports": self.ports,
                "served": self.served,
                "flows": sorted(self.flows),
                "accepted": [list(k) for k in sorted(self.accepted)],
            }
        if op == "probe":
            return await self.probe(req)
        if op == "probe_many":
            results = await asyncio.gather(*(self.probe(p) for p in req["probes"]))
            return {"ok": True, "results": list(results)}
        if op == "flow_open":
            return await self.flow_open(req)
        if op == "flow_check":
            return await self.flow_check(req)
        if op == "flow_check_peer":
            return await self.flow_check_peer(req)
        if op == "flow_close":
            return self.flow_close(req)
        if op == "forge":
            return self.forge(req)
        if op == "seen":
            token = req.get("token")
            return {"ok": True, "seen": [s for s in self.seen if token in (None, s["token"])]}
        if op == "clear_seen":
            self.seen.clear()
            return {"ok": True}
        if op == "shutdown":
            self.stopping.set()
            return {"ok": True}
        raise ValueError(f"unknown op {op!r}")

    async def watch_parent(self) -> None:
        while not self.stopping.is_set():
            if self.parent_pid and os.getppid() != self.parent_pid:
                log.info("parent %s is gone; exiting", self.parent_pid)
                self.stopping.set()
                return
            with contextlib.suppress(TimeoutError):
                # not wait_for: it can swallow a cancel, and the task never ends
                async with asyncio.timeout(1.0):
                    await self.stopping.wait()

    async def run(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        watcher = loop.create_task(self.watch_parent())
        await self.stopping.wait()
        watcher.cancel()
        self._control_server.close()
        with contextlib.suppress(FileNotFoundError):
            self.control.unlink()
        log.info("stopped")


def _source_for(dst: str) -> str:
    """The source address the kernel would pick towards ``dst`` (a connected UDP socket)."""
    with socket.socket(family_of(dst), socket.SOCK_DGRAM) as s:
        s.connect((dst, 9))
        return normalize_ip(s.getsockname()[0])


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


def _fail(reason: str, start: float) -> dict[str, Any]:
    return {"ok": False, "reason": reason, "latency_ms": _ms(start)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m secgroups_lab.probed", description=__doc__)
    p.add_argument("--name", required=True, help="host name, for logs")
    p.add_argument("--control", required=True, type=Path, help="unix socket path")
    p.add_argument("--log", type=Path, help="log file (default: stderr)")
    p.add_argument(
        "--ports",
        default=",".join(map(str, DEFAULT_PORTS)),
        help="comma-separated TCP and UDP echo ports",
    )
    p.add_argument(
        "--parent-pid", type=int, default=0, help="exit when this process is no longer the parent"
    )
    args = p.parse_args(argv)
    logging.basicConfig(
        filename=args.log,
        level=logging.INFO,
        format="%(asctime)s.%(msecs)03d %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    ports = [int(x) for x in str(args.ports).split(",") if x]
    daemon = Daemon(args.name, ports, args.control, args.parent_pid)
    try:
        asyncio.run(daemon.run())
    except Exception:
        log.exception("probe daemon failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
