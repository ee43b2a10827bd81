"""The nf_tables generation id of the calling thread's network namespace (tests only).

Every committed nf_tables transaction in a namespace raises its generation id
(``NFT_MSG_GETGEN`` answers it as ``NFTA_GEN_ID``). A listing taken between two reads of
an unchanged id saw one generation; a listing that a commit to the same table crossed may
be torn: nft 1.0.6 then repeats rules, handles and all, or mixes two generations' set
elements (docs/nftables.md, "Listing a table while it changes"). Tests that sample a
table under concurrent commits bracket each listing with two :meth:`Generations.read` and keep only
the whole ones.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Callable

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES, NFT_MSG_GETGEN, NFTA_GEN_ID = 10, 16, 1
NLM_F_REQUEST, NLMSG_ERROR = 0x1, 2
_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_GEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id


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
        body = _GEN.pack(socket.AF_UNSPEC, 0, 0)
        msg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN
        self._sock.send(
            _HDR.pack(_HDR.size + len(body), msg_type, NLM_F_REQUEST, self._seq, 0) + body
        )
        data = self._sock.recv(65536)
        length, kind, _flags, _seq, _pid = _HDR.unpack_from(data)
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, _HDR.size)
            raise OSError(-code, "NFT_MSG_GETGEN refused")
        offset = _HDR.size + _GEN.size
        while offset + 4 <= length:
            size, attr = struct.unpack_from("=HH", data, offset)
            if attr & 0x3FFF == NFTA_GEN_ID:
                return int(struct.unpack_from("!I", data, offset + 4)[0])
            offset += (size + 3) & ~3
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
