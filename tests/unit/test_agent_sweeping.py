"""The post-commit conntrack sweep (``secgroups_agent.sweeping``) with the fake conntrack:
which entries it reads, which mark each gets, what it leaves for later.

The scenario is ``tests/agentcases.py``'s ``web_http_revoked``: web-and-db after web's
``shop/http`` rule was deleted and web-1's epoch raised 2 → 3 (S-CT-2 row 4). web-1's
inbound flows carry its epoch-2 mark; ssh from the office is still allowed, http from the
outside is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from tests import agentcases as ac
from tests import nftcases as nc

from secgroups import naming
from secgroups.evaluating import ICMP, TCP, UDP
from secgroups.nft.epochs import MARK_TOMBSTONE, epoch_mark
from secgroups_agent.conntrack import (
    ENTRIES_PER_WALK,
    CtFlow,
    FakeConntrack,
    dump_filters,
    table_entries,
)
from secgroups_agent.sources import Snapshot, slice_policy
from secgroups_agent.sweeping import (
    Sweeper,
    epoch_elements,
    kernel_stale_marks,
    pod_marks,
    stale_marks,
)

WEB1, WEB1_6 = nc.WEB1
WEB2, DB1 = nc.WEB2[0], nc.DB1[0]
OLD1, NEW1 = epoch_mark("uid-shop-web-1", 2), epoch_mark("uid-shop-web-1", 3)
MARK_WEB2 = epoch_mark("uid-shop-web-2", 0)
OFFICE_HOST, OUTSIDE = "203.0.113.9", "192.0.2.99"


SNAP: Snapshot = slice_policy(ac.web_http_revoked(), nc.NODE, 2)


def inbound(
    remote: str, pod_ip: str, proto: int, port: int | None, mark: int, sport: int = 40000
) -> CtFlow:
    """An inbound flow remote → pod as conntrack holds it (no NAT)."""
    icmp = proto == ICMP
    return CtFlow(
        family=4 if ":" not in pod_ip else 6,
        proto=proto,
        orig_src=remote,
        orig_dst=pod_ip,
        reply_src=pod_ip,
        reply_dst=remote,
        orig_sport=None if icmp else sport,
        orig_dport=None if icmp else port,
        reply_sport=None if icmp else port,
        icmp_id=sport if icmp else None,
        icmp_type=8 if icmp else None,
        icmp_code=0 if icmp else None,
        mark=mark,
    )


SSH = inbound(OFFICE_HOST, WEB1, TCP, 22, OLD1)
HTTP = inbound(OUTSIDE, WEB1, TCP, 80, OLD1)
HTTP6 = inbound("2001:db8::1", WEB1_6, TCP, 80, OLD1)  # shop/http6 stays
PING = inbound(OUTSIDE, WEB1, ICMP, None, OLD1, sport=7)
UDP_IN = inbound(OUTSIDE, WEB1, UDP, 8080, OLD1)  # never allowed (TCP rules only)
OTHER_POD = inbound(OUTSIDE, WEB2, TCP, 80, MARK_WEB2)  # web-2: not re-checked
OUTBOUND = CtFlow(4, TCP, WEB1, OUTSIDE, OUTSIDE, WEB1, 41000, 443, 443)  # mark 0


def marks(ct: FakeConntrack) -> dict[tuple[object, ...], int]:
    return {f.identity(): f.mark for f in ct.flows}


def mark_of(ct: FakeConntrack, flow: CtFlow) -> int:
    return marks(ct)[flow.identity()]


# ----------------------------------------------------------------------------- decisions
def test_allowed_flows_get_the_new_mark_denied_ones_the_tombstone() -> None:
    """S-CT-2: judged by the pod's ingress under the committed policy."""
    ct = FakeConntrack(flows=[SSH, HTTP, HTTP6, PING, UDP_IN, OTHER_POD, OUTBOUND])
    result = Sweeper(ct).sweep(SNAP, {"uid-shop-web-1": {OLD1}})
    assert ct.dumped_marks == [OLD1]  # one kernel-side filter, nothing else read
    assert mark_of(ct, SSH) == NEW1
    assert mark_of(ct, HTTP6) == NEW1
    assert mark_of(ct, PING) == NEW1
    assert mark_of(ct, HTTP) == MARK_TOMBSTONE
    assert mark_of(ct, UDP_IN) == MARK_TOMBSTONE
    assert (result.kept, result.cut, result.gone, result.foreign) == (3, 2, 0, 0)
    assert result.remaining == {} and result.error is None


def test_other_pods_and_outbound_flows_are_untouched() -> None:
    """S-CT-1: outbound flows carry no epoch mark, so a sweep never reads them; a pod whose
    epoch was not raised is not swept even if its flows are now denied."""
    ct = FakeConntrack(flows=[HTTP, OTHER_POD, OUTBOUND])
    Sweeper(ct).sweep(SNAP, {"uid-shop-web-1": {OLD1}})
    assert mark_of(ct, OTHER_POD) == MARK_WEB2
    assert mark_of(ct, OUTBOUND) == 0
    assert [f.identity() for f, _ in ct.marked] == [HTTP.identity()]


def test_service_traffic_is_judged_at_the_pods_port() -> None:
    """DNAT: the client asked a VIP on 443, the pod answers from 22 (reply source port):
    the pod's rules see port 22 (ssh from the office: allowed)."""
    vip = CtFlow(4, TCP, OFFICE_HOST, "10.96.0.10", WEB1, OFFICE_HOST, 40001, 443, 22, mark=OLD1)
    ct = FakeConntrack(flows=[vip])
    Sweeper(ct).sweep(SNAP, {"uid-shop-web-1": {OLD1}})
    assert mark_of(ct, vip) == NEW1


def test_an_entry_whose_reply_source_is_not_the_pod_is_left_alone() -> None:
    odd = CtFlow(4, TCP, WEB1, OUTSIDE, OUTSIDE, WEB1, 42000, 80, 80, mark=OLD1)
    ct = FakeConntrack(flows=[odd, HTTP])
    result = Sweeper(ct).sweep(SNAP, {"uid-shop-web-1": {OLD1}})
    assert mark_of(ct, odd) == OLD1
    assert (result.foreign, result.cut) == (1, 1)


def test_an_entry_that_ended_meanwhile_is_counted_gone() -> None:
    ct = FakeConntrack(flows=[SSH, HTTP], vanish={HTTP.identity()})
    result = Sweeper(ct).sweep(SNAP, {"uid-shop-web-1": {OLD1}})
    assert (result.kept, result.cut, result.gone) == (1, 0, 1)
    assert result.error is None and result.remaining == {}


def test_a_gone_pod_and_current_or_reserved_marks_are_not_swept() -> None:
    ct = FakeConntrack(flows=[SSH])
    result = Sweeper(ct).sweep(
        SNAP, {"uid-gone": {OLD1}, "uid-shop-web-1": {NEW1, 0, MARK_TOMBSTONE}}
    )
    assert ct.dumped_marks == [] and result.remaining == {}


def test_every_old_mark_of_a_pod_is_swept() -> None:
    """Two bumps before a sweep could finish: flows of both old marks are re-checked."""
    older = epoch_mark("uid-shop-web-1", 1)
    old_ssh = inbound(OFFICE_HOST, WEB1, TCP, 22, older, sport=40100)
    ct = FakeConntrack(flows=[old_ssh, HTTP])
    Sweeper(ct).sweep(SNAP, {"uid-shop-web-1": {older, OLD1}})
    assert sorted(ct.dumped_marks) == sorted([older, OLD1])
    assert (mark_of(ct, old_ssh), mark_of(ct, HTTP)) == (NEW1, MARK_TOMBSTONE)


# ----------------------------------------------------------------------------- failures, stops
def test_one_dump_reads_the_old_marks_of_every_re_checked_pod() -> None:
    """Each dump walks the whole kernel table: a sweep of two pods reads once."""
    web2_old = epoch_mark("uid-shop-web-2", 7)
    web2_flow = inbound(OFFICE_HOST, WEB2, TCP, 22, web2_old)
    ct = FakeConntrack(flows=[SSH, web2_flow])
    result = Sweeper(ct).sweep(SNAP, {"uid-shop-web-1": {OLD1}, "uid-shop-web-2": {web2_old}})
    assert ct.dumps == 1 and sorted(ct.dumped_marks) == sorted([OLD1, web2_old])
    assert result.error is None and result.remaining == {}
    assert (mark_of(ct, SSH), mark_of(ct, web2_flow)) == (NEW1, MARK_WEB2)


def test_a_failed_dump_is_left_for_later() -> None:
    web2_old = epoch_mark("uid-shop-web-2", 7)
    web2_flow = inbound(OFFICE_HOST, WEB2, TCP, 22, web2_old)
    ct = FakeConntrack(flows=[SSH, web2_flow], fail_next=[RuntimeError("netlink said no")])
    stale = {"uid-shop-web-1": {OLD1}, "uid-shop-web-2": {web2_old}}
    result = Sweeper(ct).sweep(SNAP, stale)
    assert result.remaining == stale
    assert result.error is not None and "netlink said no" in result.error
    assert (mark_of(ct, SSH), mark_of(ct, web2_flow)) == (OLD1, web2_old)  # untouched
    again = Sweeper(ct).sweep(SNAP, result.remaining)
    assert again.error is None and again.remaining == {}
    assert (mark_of(ct, SSH), mark_of(ct, web2_flow)) == (NEW1, MARK_WEB2)


class _FailingMarks(FakeConntrack):
    """Refuses to re-mark the flows of one pod IP."""

    def set_marks(self, updates: Sequence[tuple[CtFlow, int]]) -> list[bool]:
        if any(f.reply_src == WEB1 for f, _ in updates):
            raise RuntimeError("netlink said no")
        return super().set_marks(updates)


def test_a_failed_update_is_left_for_later_and_other_pods_are_swept() -> None:
    web2_old = epoch_mark("uid-shop-web-2", 7)
    web2_flow = inbound(OFFICE_HOST, WEB2, TCP, 22, web2_old)
    ct = _FailingMarks(flows=[SSH, web2_flow])
    result = Sweeper(ct).sweep(SNAP, {"uid-shop-web-1": {OLD1}, "uid-shop-web-2": {web2_old}})
    assert result.remaining == {"uid-shop-web-1": {OLD1}}
    assert result.error is not None and "netlink said no" in result.error
    assert mark_of(ct, SSH) == OLD1  # untouched: retried later
    assert mark_of(ct, web2_flow) == MARK_WEB2  # web-2 swept to its current mark


def test_a_waiting_change_stops_the_sweep_after_some_progress() -> None:
    """A policy change is waiting: the sweep stops between batches (never before its first
    one); the rest still carries the old mark, and the next sweep finishes it."""
    flows = [inbound(OUTSIDE, WEB1, TCP, 80, OLD1, sport=50000 + i) for i in range(5)]
    ct = FakeConntrack(flows=list(flows))
    first = Sweeper(ct, batch=2).sweep(SNAP, {"uid-shop-web-1": {OLD1}}, lambda: True)
    assert first.cut == 2 and first.remaining == {"uid-shop-web-1": {OLD1}}
    assert sum(f.mark == OLD1 for f in ct.flows) == 3
    second = Sweeper(ct, batch=2).sweep(SNAP, first.remaining)
    assert second.cut == 3 and second.remaining == {}
    assert all(f.mark == MARK_TOMBSTONE for f in ct.flows)


def test_a_stop_request_defers_the_next_pods() -> None:
    web2_old = epoch_mark("uid-shop-web-2", 7)
    ct = FakeConntrack(flows=[SSH, inbound(OFFICE_HOST, WEB2, TCP, 22, web2_old)])
    result = Sweeper(ct).sweep(
        SNAP, {"uid-shop-web-1": {OLD1}, "uid-shop-web-2": {web2_old}}, lambda: True
    )
    assert result.kept == 1 and result.remaining == {"uid-shop-web-2": {web2_old}}


def test_kept_flows_get_the_mark_with_the_raised_counters() -> None:
    """web's re-check counter raised (web-1's epoch as before): the kept flows get the mark
    the table now holds for web-1 — its epoch and web's counter — not the epoch-only one."""
    web = naming.compiled_group_name("shop", "web")
    raised = slice_policy(ac.with_group(ac.web_http_revoked(), web, recheck=1), nc.NODE, 3)
    ct = FakeConntrack(flows=[SSH, HTTP])
    Sweeper(ct).sweep(raised, {"uid-shop-web-1": {OLD1}})
    with_counter = epoch_mark("uid-shop-web-1", 3, [(f"group/{web}", 1)])
    assert with_counter != NEW1
    assert mark_of(ct, SSH) == with_counter and mark_of(ct, HTTP) == MARK_TOMBSTONE


# ----------------------------------------------------------------------------- old marks
def test_stale_marks_between_two_commits() -> None:
    was = slice_policy(nc.web_and_db().policy, nc.NODE)
    before = pod_marks(was.node, was.groups, was.sets)
    after = pod_marks(SNAP.node, SNAP.groups, SNAP.sets)
    assert after["uid-shop-web-1"] == NEW1
    assert stale_marks(before, after) == {"uid-shop-web-1": {OLD1}}
    assert stale_marks(after, after) == {}
    assert stale_marks({"uid-gone": 5}, after) == {}


def test_a_raised_counter_makes_the_marks_of_the_pods_it_rechecks_stale() -> None:
    """db's counter (db-1), then the counter of web's member set, which db names inbound
    (db-1 again); the pods outside db keep their marks."""
    before = pod_marks(SNAP.node, SNAP.groups, SNAP.sets)
    db = naming.compiled_group_name("shop", "db")
    for policy in (
        ac.with_group(ac.web_http_revoked(), db, recheck=1),
        ac.with_set(ac.web_http_revoked(), naming.sg_set_name("shop", "web"), recheck=1),
    ):
        snap = slice_policy(policy, nc.NODE, 3)
        after = pod_marks(snap.node, snap.groups, snap.sets)
        assert stale_marks(before, after) == {"uid-shop-db-1": {before["uid-shop-db-1"]}}


def test_kernel_stale_marks_at_the_first_commit() -> None:
    """The agent (re)started: the kernel's in_epoch maps hold the marks before it."""
    kernel = {WEB1: OLD1, WEB1_6: OLD1, WEB2: MARK_WEB2, DB1: MARK_TOMBSTONE, "100.64.9.9": 5}
    node = SNAP.node
    marks = pod_marks(node, SNAP.groups, SNAP.sets)
    assert kernel_stale_marks(kernel, node, marks) == {"uid-shop-web-1": {OLD1}}


@pytest.mark.parametrize(
    ("doc", "want"),
    [
        pytest.param(None, {}, id="no-table"),
        pytest.param(
            {
                "nftables": [
                    {"metainfo": {}},
                    {"map": {"name": "in_epoch6", "map": "mark", "elem": [["fd00::0:1", 5]]}},
                ]
            },
            {"fd00::1": 5},
            id="listing",
        ),
        pytest.param(
            {"nftables": [{"map": {"map": "verdict", "elem": [["1.2.3.4", {"goto": {}}]]}}]},
            {},
            id="not-a-mark-map",
        ),
        pytest.param(
            {"nftables": [{"map": {"map": "mark", "elem": [["nonsense", 5], "1.2.3.4 : 0x5"]}}]},
            {},
            id="malformed-elements-ignored",
        ),
    ],
)
def test_epoch_elements(doc: dict[str, object] | None, want: dict[str, int]) -> None:
    assert epoch_elements(doc) == want


# ----------------------------------------------------------------------------- dump filters
def _matches(filters: list[tuple[int, int]], mark: int) -> bool:
    return any(mark & mask == value for value, mask in filters)


def test_one_mark_is_one_exact_dump() -> None:
    assert dump_filters([0x1234], 10**6) == [(0x1234, 0xFFFFFFFF)]
    assert dump_filters([], 0) == []


def test_marks_sharing_bits_are_read_in_one_walk_that_finds_each() -> None:
    marks = [0xABCD0001, 0xABCD0102, 0xABCD0004]
    filters = dump_filters(marks, entries=50_000)
    assert len(filters) == 1
    _, mask = filters[0]
    assert all(_matches(filters, m) for m in marks)
    assert mask.bit_count() >= 16  # the other entries are mostly filtered in the kernel
    assert not _matches(filters, 0x12340001)


def test_a_walk_per_mark_when_one_walk_would_read_too_many_entries() -> None:
    marks = [0x00000001, 0xFFFFFFFE]  # no bit shared: one walk would read every entry
    assert len(dump_filters(marks, entries=ENTRIES_PER_WALK // 2)) == 1
    exact = dump_filters(marks, entries=ENTRIES_PER_WALK * 10)
    assert exact == [(m, 0xFFFFFFFF) for m in marks]
    assert dump_filters(marks, entries=None) == exact  # the table's size unknown


def test_the_tables_size_is_read_from_proc(tmp_path: Path) -> None:
    count = tmp_path / "nf_conntrack_count"
    count.write_text("1234\n")
    assert table_entries(str(count)) == 1234
    assert table_entries(str(tmp_path / "missing")) is None


def test_an_empty_namespace_table_is_not_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    """No entry in the namespace (``nf_conntrack_count`` 0): nothing to read or delete, and
    no dump walks the kernel's whole table for it."""
    from secgroups_agent import conntrack

    def no_socket(*_: object, **__: object) -> None:
        raise AssertionError("a netlink socket was opened")

    monkeypatch.setattr(conntrack, "table_entries", lambda: 0)
    monkeypatch.setattr(conntrack, "CtNetlink", no_socket)
    port = conntrack.NetlinkConntrack()
    assert port.dump_marks([OLD1, NEW1]) == {OLD1: [], NEW1: []}
    assert port.dump_marks([]) == {}
    assert port.delete_ips(["100.64.1.2"]) == 0
    with pytest.raises(ValueError, match="mark 0"):
        port.dump_marks([0])
