"""Whole listings of a table that other threads are changing (tests only).

A listing that a commit to the same table crossed may be torn: nft 1.0.6 then repeats
rules, handles and all, or mixes two generations' set elements (docs/nftables.md, "Listing
a table while it changes"). Every committed nf_tables transaction raises the namespace's
generation id (``NFT_MSG_GETGEN`` answers it as ``NFTA_GEN_ID``), so a listing taken
between two reads of an unchanged id is almost always whole — not always: the kernel
raises the id before the new generation takes effect, and 1 listing in ~300 kept that way
still repeated rules (``tests/netns/test_nft_listing.py``). :func:`whole_listing` keeps a
listing only if the id held **and** no rule handle repeats (a table never holds two rules
with one handle in a chain).

The netlink framing is the agent's conntrack codec's (``secgroups_agent.ctnetlink``).
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Callable

from secgroups_agent.ctnetlink import (
    _NFGENMSG,
    _NLMSGHDR,
    NETLINK_NETFILTER,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    _attrs,
)

NFNL_SUBSYS_NFTABLES, NFT_MSG_GETGEN, NFTA_GEN_ID = 10, 16, 1


class Generations:
    """Reads the generation id over one netlink socket, opened in the namespace of the
    thread that makes it. One socket for many reads: closing a netfilter netlink socket
    takes the nf_tables commit mutex (the kernel releases the tables the socket owned), so
    a socket per read slowed concurrent commits (1,000 flips: 6 s became 14 s)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._seq = 0

    def __enter__(self) -> Generations:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def read(self) -> int:
        """One ``NFT_MSG_GETGEN`` round trip (~20 µs). Raises OSError if the kernel refuses."""
        self._seq += 1
        body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, 0)
        msg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN
        self._sock.send(
            _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST, self._seq, 0) + body
        )
        data = memoryview(self._sock.recv(65536))
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data)
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, _NLMSGHDR.size)
            raise OSError(-code, "NFT_MSG_GETGEN refused")
        for attr, start, _end in _attrs(data, _NLMSGHDR.size + _NFGENMSG.size, length):
            if attr == NFTA_GEN_ID:
                return int(struct.unpack_from("!I", data, start)[0])
        raise OSError("NFT_MSG_GETGEN answered without NFTA_GEN_ID")


def repeats_a_rule(out: bytes) -> bool:
    """A JSON listing that shows a rule of some chain twice (same handle): torn."""
    seen: set[tuple[str, str, int]] = set()
    for item in json.loads(out).get("nftables", ()):
        rule = item.get("rule")
        if rule is not None:
            key = (rule["table"], rule["chain"], rule["handle"])
            if key in seen:
                return True
            seen.add(key)
    return False


def whole_listing(
    gen: Generations, list_once: Callable[[], tuple[int, bytes, bytes]]
) -> tuple[int, bytes, bytes] | None:
    """``list_once()`` (nft's rc, JSON out, err) if the listing is whole, else None."""
    before = gen.read()
    rc, out, err = list_once()
    if gen.read() != before or (rc == 0 and repeats_a_rule(out)):
        return None
    return rc, out, err
