"""The conntrack port: forget the flows of deleted pods' IPs; read and re-mark flows by mark.

docs/nftables.md#a-pods-inbound-flows-in-conntrack: when a pod goes away, its IPs may be reused,
so the entries whose original source or reply source is one of its IPs are deleted
(the pod was either the originator or the responder; ``orig-dst`` would miss Service
traffic, whose original destination is the VIP — Calico felix PR #1500 made the same
choice). The TCP non-SYN guard in the ruleset makes deletion flip-safe.

The post-commit sweep (:mod:`~secgroups_agent.sweeping`) needs two more operations: every
entry that carries one ``ct mark`` (a re-checked pod's old epoch), and setting the mark of
given entries (the pod's new epoch, or the tombstone). Entries are never deleted for
that: deleting a live flow's entry invites a direction flip
(docs/nftables.md#a-deleted-tcp-entry-comes-back-with-its-direction-flipped).

The sync loop calls this only after the nft transaction that removed the pod committed,
so no new entry for the IP can be accepted by a stale rule afterwards.

:class:`NetlinkConntrack` uses pyroute2's ``NFCTSocket`` with kernel-side filters only
(the pitfalls of docs/nftables.md#conntrack-over-netlink-filters-pitfalls-speed, each
handled here):

* one socket per family — IPv6 needs ``NFCTSocket(nfgen_family=AF_INET6)`` (pyroute2 #701);
* ``CTA_FILTER`` tuple filters (kernel ≥ 5.8) for orig-src and reply-src, two dumps per
  IP — used when the namespace's table is large: every dump walks the kernel's whole
  hash (~10 ms), so while reading every entry of the namespace costs less than those
  walks (:data:`ENTRIES_PER_WALK`), :meth:`NetlinkConntrack.delete_ips` reads them in one
  walk through :mod:`~secgroups_agent.ctnetlink` and deletes the matches there;
* deletion by the entry's own tuple *and zone* (``Conntrack.delete`` drops the zone);
* the tuple is rebuilt from the raw attributes, because ``NFCTAttrTuple.from_netlink``
  keeps ports only for TCP/UDP, so GRE/SCTP entries could not be deleted by tuple;
* ``flush(mark=None)`` would flush the whole table: :meth:`flush_mark` refuses that.

The sweep's two operations go through :mod:`~secgroups_agent.ctnetlink` instead (pyroute2
costs ~1.4 ms per entry read and re-marked; the sweep touches every inbound flow of a
re-checked pod): dumps filtered by mark in the kernel (every kernel), one
``AF_UNSPEC`` walk for both families — one walk for all the old marks of a sweep when
their shared bits filter out enough (:func:`dump_filters`) —, and mark updates by
original tuple and zone, each in its family, batched; :meth:`dump_marks` refuses mark 0
(no filter: every entry).

:class:`FakeConntrack` records calls for unit tests.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from secgroups_agent.ctnetlink import CtNetlink, tuple_attr

MARK_MASK = 0xFFFFFFFF


@dataclass(frozen=True)
class CtFlow:
    """One conntrack entry: its original tuple (what identifies it, with its zone), the
    reply tuple's source, and its mark. Addresses are canonical text."""

    family: int  # 4 or 6
    proto: int
    orig_src: str
    orig_dst: str
    reply_src: str
    reply_dst: str
    orig_sport: int | None = None  # TCP/UDP ports; GRE keys and SCTP/DCCP ports too
    orig_dport: int | None = None
    reply_sport: int | None = None
    icmp_id: int | None = None  # ICMP/ICMPv6, original direction
    icmp_type: int | None = None
    icmp_code: int | None = None
    zone: int = 0
    mark: int = 0

    def identity(self) -> tuple[object, ...]:
        """What the kernel finds the entry by: the original tuple and the zone."""
        return (
            self.family,
            self.proto,
            self.orig_src,
            self.orig_dst,
            self.orig_sport,
            self.orig_dport,
            self.icmp_id,
            self.icmp_type,
            self.icmp_code,
            self.zone,
        )


class ConntrackPort(Protocol):
    """Deletes conntrack entries in the current network namespace."""

    def delete_ips(self, ips: Iterable[str]) -> int:
        """Delete every entry with orig-src or reply-src in ``ips``; return how many."""
        ...

    def flush_mark(self, mark: int, mask: int = 0xFFFFFFFF) -> None:
        """Delete every entry with ``ct mark & mask == mark`` (one kernel-side pass)."""
        ...

    def dump_marks(self, marks: Collection[int]) -> dict[int, list[CtFlow]]:
        """Every entry (IPv4 and IPv6) whose ``ct mark`` is one of ``marks``, by mark
        (kernel-side filters: :func:`dump_filters`)."""
        ...

    def set_marks(self, updates: Sequence[tuple[CtFlow, int]]) -> list[bool]:
        """Set the ``ct mark`` of each entry; per update, whether the entry still existed."""
        ...


class ConntrackError(RuntimeError):
    reason = "ConntrackFailed"


# A dump walks every bucket of the kernel's conntrack hash (shared by all network
# namespaces), whatever it returns: 9.8 ms with 262,144 buckets (a 24 GiB machine's
# default), even with no entry in the namespace. Each entry it returns costs ~13 µs more
# (2,000 entries: 35.6 ms). So a walk that returns up to this many entries costs less
# than one more walk (docs/agent.md, "Conntrack").
ENTRIES_PER_WALK = 750


def one_walk_pays(entries_read: float | None, walks_saved: int) -> bool:
    """Whether one walk that reads ``entries_read`` entries (None: not known, many) costs
    less than the ``walks_saved`` more walks it replaces."""
    return entries_read is not None and entries_read <= walks_saved * ENTRIES_PER_WALK


def dump_filters(marks: Collection[int], entries: int | None) -> list[tuple[int, int]]:
    """The (mark, mask) kernel filters that find every entry carrying one of ``marks``
    (non-zero) in the fewest walks: one dump filtered by the bits all of them share, when
    the entries of the table it lets through (``entries`` × 2^-shared bits; the table's
    size unknown: many) cost less than a walk per mark; else one exact dump per mark."""
    ordered = sorted(set(marks))
    if len(ordered) <= 1:
        return [(m, MARK_MASK) for m in ordered]
    first = ordered[0]
    differ = 0
    for m in ordered[1:]:
        differ |= m ^ first
    mask = MARK_MASK & ~differ
    through = None if entries is None else entries / (1 << mask.bit_count())
    if one_walk_pays(through, len(ordered) - 1):
        return [(first & mask, mask)]
    return [(m, MARK_MASK) for m in ordered]


def table_entries(path: str = "/proc/sys/net/netfilter/nf_conntrack_count") -> int | None:
    """How many conntrack entries this network namespace holds (None: not known)."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _family(ip: str) -> int:
    return socket.AF_INET if ipaddress.ip_address(ip).version == 4 else socket.AF_INET6


def _key(nla: Any) -> tuple[Any, ...]:
    """A hashable identity of a parsed tuple attribute (to deduplicate the two dumps)."""
    ip = nla.get_attr("CTA_TUPLE_IP")
    proto = nla.get_attr("CTA_TUPLE_PROTO")
    return (
        tuple(sorted((str(k), str(v)) for k, v in ip["attrs"])) if ip is not None else (),
        tuple(sorted((str(k), str(v)) for k, v in proto["attrs"])) if proto is not None else (),
    )


def _tuple_from_raw(family: int, nla: Any) -> Any:
    """An ``NFCTAttrTuple`` with every address, protocol, port/key and ICMP field present."""
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    ip = nla.get_attr("CTA_TUPLE_IP")
    proto = nla.get_attr("CTA_TUPLE_PROTO")
    v = "V4" if family == socket.AF_INET else "V6"
    icmp = "ICMP" if family == socket.AF_INET else "ICMPV6"
    return NFCTAttrTuple(
        family=family,
        saddr=ip.get_attr(f"CTA_IP_{v}_SRC"),
        daddr=ip.get_attr(f"CTA_IP_{v}_DST"),
        proto=proto.get_attr("CTA_PROTO_NUM"),
        # GRE keys, SCTP/DCCP ports travel in the same attributes as TCP/UDP ports.
        sport=proto.get_attr("CTA_PROTO_SRC_PORT"),
        dport=proto.get_attr("CTA_PROTO_DST_PORT"),
        icmp_id=proto.get_attr(f"CTA_PROTO_{icmp}_ID"),
        icmp_type=proto.get_attr(f"CTA_PROTO_{icmp}_TYPE"),
        icmp_code=proto.get_attr(f"CTA_PROTO_{icmp}_CODE"),
    )


class NetlinkConntrack:
    """pyroute2 NFCTSocket, one per family, opened per call (calls are rare: pod deletes,
    sweeps after epoch bumps)."""

    def __init__(self, batch: int = 256) -> None:
        self._lock = threading.Lock()
        self.batch = batch  # mark updates per sendmsg (ctnetlink)

    def delete_ips(self, ips: Iterable[str]) -> int:
        wanted = sorted({str(ipaddress.ip_address(ip)) for ip in ips})
        if not wanted:
            return 0
        # Two tuple-filtered dumps per IP, each a walk of the kernel's whole table, or
        # one walk that reads every entry of the namespace: the cheaper.
        entries = table_entries()
        if entries == 0:
            return 0  # the namespace holds no entry: no walk
        if one_walk_pays(entries, 2 * len(wanted) - 1):
            with self._lock:
                try:
                    return self._delete_in_one_walk(set(wanted))
                except ValueError:
                    pass  # an entry whose tuple the codec cannot rebuild: pyroute2 can
                except OSError as exc:
                    raise ConntrackError(f"deleting conntrack entries failed: {exc}") from exc
        return self._delete_by_filters(wanted)

    def _delete_in_one_walk(self, ips: set[str]) -> int:
        with CtNetlink(self.batch) as nl:
            flows = [f for f in nl.dump_mark(0, 0) if f.orig_src in ips or f.reply_src in ips]
            for f in flows:
                tuple_attr(f)  # every tuple can be rebuilt (ValueError) before any delete
            return sum(nl.delete(flows))

    def _delete_by_filters(self, ips: Iterable[str]) -> int:
        from pyroute2.netlink.exceptions import NetlinkError
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple, NFCTSocket

        by_family: dict[int, list[str]] = {}
        for ip in ips:
            by_family.setdefault(_family(ip), []).append(str(ipaddress.ip_address(ip)))
        deleted = 0
        with self._lock:
            for family, addrs in sorted(by_family.items()):
                sock = NFCTSocket(nfgen_family=family)
                try:
                    for addr in addrs:
                        found: dict[tuple[Any, ...], tuple[Any, int | None]] = {}
                        for filt in ("tuple_orig", "tuple_reply"):
                            kwargs = {filt: NFCTAttrTuple(family=family, saddr=addr)}
                            for msg in sock.dump(**kwargs):
                                orig = msg.get_attr("CTA_TUPLE_ORIG")
                                if orig is not None:
                                    found[_key(orig)] = (orig, msg.get_attr("CTA_ZONE"))
                        for orig, zone in found.values():
                            args: dict[str, Any] = {"tuple_orig": _tuple_from_raw(family, orig)}
                            if zone:
                                args["zone"] = zone
                            try:
                                sock.entry("del", **args)
                                deleted += 1
                            except NetlinkError as exc:
                                if exc.code != errno.ENOENT:  # gone already: fine
                                    raise ConntrackError(
                                        f"deleting a conntrack entry of {addr}: {exc}"
                                    ) from exc
                except NetlinkError as exc:
                    raise ConntrackError(f"conntrack dump failed: {exc}") from exc
                finally:
                    sock.close()
        return deleted

    def flush_mark(self, mark: int, mask: int = 0xFFFFFFFF) -> None:
        from pyroute2.netlink.exceptions import NetlinkError
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTSocket

        if not mark or not mask:
            # NFCTSocket.flush() without a mark flushes the whole table.
            raise ValueError("refusing a conntrack flush without a non-zero mark and mask")
        with self._lock:
            sock = NFCTSocket(nfgen_family=socket.AF_UNSPEC)
            try:
                sock.flush(mark=mark, mark_mask=mask)
            except NetlinkError as exc:
                raise ConntrackError(f"conntrack flush by mark {mark:#x} failed: {exc}") from exc
            finally:
                sock.close()

    def dump_marks(self, marks: Collection[int]) -> dict[int, list[CtFlow]]:
        wanted = set(marks)
        if 0 in wanted:
            raise ValueError("refusing a conntrack dump by mark 0 (it would read every entry)")
        out: dict[int, list[CtFlow]] = {m: [] for m in wanted}
        if not wanted:
            return out
        entries = table_entries()
        if entries == 0:
            return out  # the namespace holds no entry: no walk
        with self._lock:
            try:
                with CtNetlink() as nl:
                    for value, mask in dump_filters(wanted, entries):
                        for f in nl.dump_mark(value, mask):
                            if f.mark in out:
                                out[f.mark].append(f)
            except OSError as exc:
                raise ConntrackError(f"conntrack dump by mark failed: {exc}") from exc
        return out

    def set_marks(self, updates: Sequence[tuple[CtFlow, int]]) -> list[bool]:
        for _, mark in updates:
            if not 0 <= mark <= MARK_MASK:
                raise ValueError(f"ct mark {mark} is not a 32-bit value")
        with self._lock:
            try:
                with CtNetlink(self.batch) as nl:
                    return nl.set_marks(updates)
            except OSError as exc:
                raise ConntrackError(f"setting conntrack marks failed: {exc}") from exc


@dataclass
class FakeConntrack:
    """Records what was asked. ``entries`` maps IPs to how many entries they have (for
    :meth:`delete_ips`); ``flows`` is a small conntrack table for the mark operations
    (deleting an IP removes its flows too). ``fail_next`` errors are raised by the next
    calls of any operation; ``vanish`` holds identities of flows that end between a dump
    and the next :meth:`set_marks` (they are removed from ``flows`` then)."""

    entries: dict[str, int] = field(default_factory=dict)
    flows: list[CtFlow] = field(default_factory=list)
    deleted_ips: list[str] = field(default_factory=list)
    flushed_marks: list[int] = field(default_factory=list)
    dumped_marks: list[int] = field(default_factory=list)
    dumps: int = 0  # calls of dump_marks
    marked: list[tuple[CtFlow, int]] = field(default_factory=list)
    fail_next: list[Exception] = field(default_factory=list)
    vanish: set[tuple[object, ...]] = field(default_factory=set)

    def _fail(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)

    def delete_ips(self, ips: Iterable[str]) -> int:
        self._fail()
        n = 0
        for ip in ips:
            self.deleted_ips.append(ip)
            n += self.entries.pop(ip, 0)
            self.flows = [f for f in self.flows if ip not in (f.orig_src, f.reply_src)]
        return n

    def flush_mark(self, mark: int, mask: int = 0xFFFFFFFF) -> None:
        self._fail()
        self.flushed_marks.append(mark)
        self.flows = [f for f in self.flows if f.mark & mask != mark]

    def dump_marks(self, marks: Collection[int]) -> dict[int, list[CtFlow]]:
        wanted = sorted(set(marks))
        if 0 in wanted:
            raise ValueError("refusing a conntrack dump by mark 0")
        self._fail()
        self.dumps += 1
        self.dumped_marks.extend(wanted)
        return {m: [f for f in self.flows if f.mark == m] for m in wanted}

    def set_marks(self, updates: Sequence[tuple[CtFlow, int]]) -> list[bool]:
        self._fail()
        if self.vanish:
            self.flows = [f for f in self.flows if f.identity() not in self.vanish]
            self.vanish = set()
        index = {f.identity(): i for i, f in enumerate(self.flows)}
        done = []
        for flow, mark in updates:
            i = index.get(flow.identity())
            done.append(i is not None)
            if i is not None:
                self.flows[i] = replace(self.flows[i], mark=mark)
                self.marked.append((flow, mark))
        return done
