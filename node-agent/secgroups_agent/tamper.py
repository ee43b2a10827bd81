"""Notice at once when another process changes our table (a hand ``nft flush``, a tool).

A ``flush table inet secgroups`` leaves base chains without rules: their policy is
``accept``, so until the table is rewritten every packet passes. The periodic drift
check (``drift.py``, every ``--drift-period`` seconds) would find it; this monitor finds
it within milliseconds, so the table is restored well within a second
(docs/failure-modes.md, "Our table is tampered with").

:class:`TableMonitor` joins the nf_tables netlink multicast group (``NFNLGRP_NFTABLES``:
what ``nft monitor`` reads) in the agent's network namespace. The kernel sends one message
per changed object of every committed transaction, then ``NFT_MSG_NEWGEN`` with the id
of the process that committed it. A transaction that touched our table and was committed
by a process other than ours (:attr:`TableMonitor.own`: the libnftables worker; with the
``nft`` CLI backend, any commit made while the agent itself is applying) calls
``on_foreign``; the sync loop then rewrites the table (``SyncLoop.tampered``). Lost
messages (the socket overflowed) call ``on_lost``: the loop runs a drift check at once.

The wire format is parsed here (:func:`parse`), pure and unit-tested with made-up
messages; ``tests/netns`` checks it against the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15  # enum nf_tables_msg_types: ... DELSETELEM 14, NEWGEN 15, GETGEN 16
NFTA_GEN_PROC_PID = 2
NFTA_GEN_PROC_NAME = 3
NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 2, 3, 4
FAMILIES = {"inet": 1, "ip": 2, "ip6": 10}
_NLMSG = struct.Struct("=IHHII")  # length, type, flags, seq, port id
_NFGEN = struct.Struct("=BBH")  # family, version, resource id (big endian)
_NLA = struct.Struct("=HH")  # length, type
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER


@dataclass(frozen=True)
class Event:
    """One nf_tables notification: a change of an object of ``table`` (``family``), or the
    end of a transaction (``gen``) with the committing process."""

    gen: bool
    family: int = 0
    table: str | None = None
    pid: int | None = None
    process: str | None = None


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    off = 0
    while off + _NLA.size <= len(data):
        length, typ = _NLA.unpack_from(data, off)
        if length < _NLA.size or off + length > len(data):
            return
        yield typ & _NLA_TYPE_MASK, data[off + _NLA.size : off + length]
        off += (length + 3) & ~3


def parse(data: bytes) -> list[Event]:
    """The nf_tables events in one netlink datagram (others are skipped)."""
    out: list[Event] = []
    off = 0
    while off + _NLMSG.size <= len(data):
        length, typ, _flags, _seq, _port = _NLMSG.unpack_from(data, off)
        if length < _NLMSG.size or off + length > len(data):
            break
        body = data[off + _NLMSG.size : off + length]
        off += (length + 3) & ~3
        if typ >> 8 != NFNL_SUBSYS_NFTABLES or len(body) < _NFGEN.size:
            continue
        family = body[0]
        attrs = dict(_attrs(body[_NFGEN.size :]))
        if typ & 0xFF == NFT_MSG_NEWGEN:
            raw_pid = attrs.get(NFTA_GEN_PROC_PID)
            pid = struct.unpack(">I", raw_pid)[0] if raw_pid and len(raw_pid) == 4 else None
            name = attrs.get(NFTA_GEN_PROC_NAME)
            process = name.split(b"\0", 1)[0].decode(errors="replace") if name else None
            out.append(Event(True, family, None, pid, process))
        else:
            # Attribute 1 names the table in every per-object message (NFTA_TABLE_NAME,
            # NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE, NFTA_SET_ELEM_LIST_TABLE, …).
            raw = attrs.get(1)
            table = raw.split(b"\0", 1)[0].decode(errors="replace") if raw else None
            out.append(Event(False, family, table))
    return out


@dataclass
class Verdict:
    """What one committed transaction was, for the monitor's caller."""

    touched: bool  # it changed our table
    pid: int | None
    process: str | None


class Batches:
    """Groups events into transactions: changes of our table until the next NEWGEN."""

    def __init__(self, family: str, table: str) -> None:
        self.family = FAMILIES[family]
        self.table = table
        self._touched = False

    def feed(self, events: list[Event]) -> list[Verdict]:
        out: list[Verdict] = []
        for e in events:
            if e.gen:
                out.append(Verdict(self._touched, e.pid, e.process))
                self._touched = False
            elif e.table == self.table and e.family == self.family:
                self._touched = True
        return out


class TableMonitor:
    """Watches commits in this network namespace (see the module docstring)."""

    def __init__(
        self,
        family: str,
        table: str,
        *,
        own: Callable[[int | None], bool],
        on_foreign: Callable[[str], None],
        on_lost: Callable[[], None],
    ) -> None:
        self.own = own
        self.on_foreign = on_foreign
        self.on_lost = on_lost
        self.batches = Batches(family, table)
        self.foreign = 0  # transactions of other processes that changed our table
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        sock.bind((0, 0))
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        with contextlib.suppress(OSError):  # a deeper buffer: fewer overflows in bursts
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        sock.setblocking(False)
        self._sock, self._loop = sock, loop
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # messages lost: we cannot tell whose
                    self.on_lost()
                    continue
                return
            if not data:
                return
            self.handle(data)

    def handle(self, data: bytes) -> None:
        for v in self.batches.feed(parse(data)):
            if v.touched and not self.own(v.pid):
                self.foreign += 1
                self.on_foreign(f"committed by {v.process or '?'} (pid {v.pid})")

    def stop(self) -> None:
        if self._sock is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        self._sock = None
