"""The tamper monitor's wire parsing and batching (``secgroups_agent.tamper``), on messages
built here the way the kernel lays them out (nlmsghdr, nfgenmsg, attributes). The real
kernel's messages are checked in ``tests/netns/test_agent_faults.py``."""

from __future__ import annotations

import struct

from secgroups_agent.tamper import (
    NFT_MSG_NEWGEN,
    NFTA_GEN_PROC_NAME,
    NFTA_GEN_PROC_PID,
    Event,
    TableMonitor,
    parse,
)

NEWRULE, DELRULE, DELTABLE, NEWSETELEM = 6, 8, 2, 12
INET, IP = 1, 2


def attr(typ: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), typ) + payload
    return raw + b"\0" * (-len(raw) % 4)


def message(cmd: int, family: int, *attrs: bytes) -> bytes:
    body = struct.pack("=BBH", family, 0, 0) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), (10 << 8) | cmd, 0, 0, 0) + body


def change(cmd: int, table: str, family: int = INET) -> bytes:
    return message(cmd, family, attr(1, table.encode() + b"\0"), attr(2, b"chain\0"))


def gen(pid: int, name: str) -> bytes:
    return message(
        NFT_MSG_NEWGEN,
        0,
        attr(1, struct.pack(">I", 77)),
        attr(NFTA_GEN_PROC_PID, struct.pack(">I", pid)),
        attr(NFTA_GEN_PROC_NAME, name.encode() + b"\0"),
    )


def test_parse_reads_tables_and_the_committing_process() -> None:
    data = change(DELRULE, "secgroups") + change(NEWRULE, "other", IP) + gen(4242, "nft")
    assert parse(data) == [
        Event(False, INET, "secgroups"),
        Event(False, IP, "other"),
        Event(True, 0, None, 4242, "nft"),
    ]


def test_parse_skips_other_subsystems_and_truncated_input() -> None:
    foreign = struct.pack("=IHHII", 20, (1 << 8) | 0, 0, 0, 0) + b"\0" * 4  # ctnetlink
    data = foreign + change(DELTABLE, "secgroups")
    assert parse(data) == [Event(False, INET, "secgroups")]
    assert parse(data[:-3]) == []  # a message cut short is dropped, never misread
    assert parse(b"\x01\x02") == []


def run_monitor(own_pid: int, *datagrams: bytes) -> list[str]:
    seen: list[str] = []
    lost: list[bool] = []
    monitor = TableMonitor(
        "inet",
        "secgroups",
        own=lambda pid: pid == own_pid,
        on_foreign=seen.append,
        on_lost=lambda: lost.append(True),
    )
    for d in datagrams:
        monitor.handle(d)
    assert monitor.foreign == len(seen)
    return seen


def test_a_foreign_commit_touching_our_table_is_reported() -> None:
    assert run_monitor(10, change(DELRULE, "secgroups") + gen(99, "nft")) == [
        "committed by nft (pid 99)"
    ]


def test_our_own_commits_and_other_tables_are_not() -> None:
    assert run_monitor(10, change(NEWSETELEM, "secgroups") + gen(10, "python3")) == []
    assert run_monitor(10, change(NEWRULE, "kube-proxy") + gen(99, "kube-proxy")) == []
    assert run_monitor(10, change(NEWRULE, "secgroups", IP) + gen(99, "iptables-nft")) == []


def test_a_transaction_split_over_datagrams_is_one_batch() -> None:
    """The kernel may deliver one transaction's messages in several reads; the batch ends
    at NEWGEN, and the next transaction starts clean."""
    seen = run_monitor(
        10,
        change(DELRULE, "secgroups"),
        change(DELRULE, "secgroups") + gen(99, "nft"),
        change(NEWRULE, "kube-proxy") + gen(98, "kube-proxy"),
    )
    assert seen == ["committed by nft (pid 99)"]
