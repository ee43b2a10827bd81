"""Two kernel facts the agent relies on, and how a test may sample a table that changes.

In one throwaway network namespace, with bare nft (libnftables in-process) and real packets:

* **A set emptied and refilled in one transaction never misses a member.** That is what a
  full resync does to every set and map (``transactions.full_transaction``: ``flush set``,
  then every element again). Datagrams to an address that every version of the set holds
  stream through an ``output`` chain while the set and the chain's rules are flushed and
  re-added, hundreds of times: every datagram must be counted by the rule that matches
  members, none by the one that matches non-members, none by neither.
* **Commits to another table do not tear a listing of ours.** The drift checker lists our
  table (``drift.py``) and only skips listings that overlapped the agent's own writes;
  other programs (kube-proxy, a CNI) commit to their own tables at any time.
* **A listing that a commit to the same table crossed can be torn.** nft 1.0.6 then
  repeats rules, handles and all, or mixes two generations' elements — an artefact of the
  listing, not of the kernel's table (the first test). Tests that sample a table while it
  is being changed (``test_atomicity.py``) keep only :func:`tests.nftgen.whole_listing`'s
  listings: the generation id unchanged across the listing, no rule handle repeated. The
  last test checks that every listing so kept holds exactly the table's rules (the id
  alone let 1 torn listing in ~300 through: the kernel raises it before the new
  generation takes effect).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.agent_harness import in_netns
from tests.nftgen import Generations, repeats_a_rule, whole_listing

from secgroups_agent.nftables import OUTPUT_JSON, OUTPUT_TERSE


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs the ip command"
    try:
        from secgroups_agent.nftworker import LibNftables

        LibNftables()
    except OSError as exc:
        return f"needs libnftables.so.1: {exc}"
    return None


pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable())),
]

TARGET = "fd64:5ec:fe:1::9"  # a neighbour on the veth that nobody answers for
MEMBERS = 200  # elements of the set besides TARGET
COMMITS = 300
TIMEOUT = 120.0


@pytest.fixture
def netns() -> Iterator[str]:
    """A namespace with a veth pair whose one end has a route and a static neighbour."""
    ns = f"sglist{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        for cmd in (
            "link add d0 type veth peer name d1",
            "link set lo up",
            "link set d0 up",
            "link set d1 up",
            "-6 addr add fd64:5ec:fe:1::1/64 dev d0 nodad",
            f"-6 neigh replace {TARGET} lladdr 02:00:00:00:00:09 dev d0 nud permanent",
        ):
            subprocess.run(["ip", "-n", ns, *cmd.split()], check=True, timeout=30)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30)


def _nft() -> Any:
    from secgroups_agent.nftworker import LibNftables

    return LibNftables()


def _apply(nft: Any, text: str) -> None:
    rc, _out, err = nft.run(text.encode(), 0)
    assert rc == 0, err.decode(errors="replace")


def _members(n: int) -> str:
    """TARGET and MEMBERS others, the others different for odd and even ``n``."""
    return ", ".join([TARGET, *(f"fd64:5ec:fe:{2 + n % 2}::{i:x}" for i in range(1, MEMBERS + 1))])


def _rules() -> str:
    return (
        f"add rule inet sgl out ip6 daddr {TARGET} ip6 daddr != @s counter name miss\n"
        f"add rule inet sgl out ip6 daddr {TARGET} ip6 daddr @s counter name hit\n"
    )


def _background(ns: str, fn: Callable[[], int], into: list[int]) -> threading.Thread:
    t = threading.Thread(target=lambda: into.append(in_netns(ns, fn, timeout=TIMEOUT)))
    t.start()
    return t


@contextlib.contextmanager
def _committing(ns: str, text: str) -> Iterator[list[int]]:
    """Another thread applies ``text`` in a loop, 2 ms apart, while the body runs; the list
    it yields holds the number of commits once the body is done."""
    stop = threading.Event()
    commits: list[int] = []

    def loop() -> int:
        nft, n = _nft(), 0
        while not stop.is_set():
            _apply(nft, text)
            n += 1
            time.sleep(0.002)
        return n

    writer = _background(ns, loop, commits)
    try:
        yield commits
    finally:
        stop.set()
        writer.join(TIMEOUT)


def test_a_set_and_rules_flushed_and_refilled_in_one_transaction_never_miss(netns: str) -> None:
    def setup() -> None:
        _apply(
            _nft(),
            "add table inet sgl\nadd counter inet sgl miss\nadd counter inet sgl hit\n"
            f"add set inet sgl s {{ type ipv6_addr; elements = {{ {_members(0)} }} }}\n"
            "add chain inet sgl out { type filter hook output priority 0; policy accept; }\n"
            + _rules(),
        )

    in_netns(netns, setup)
    stop = threading.Event()
    sent: list[int] = []
    failed: list[int] = []

    def send() -> int:
        """Datagrams sent; the failed sends go to ``failed`` (ENOBUFS from the queue after
        the output hook counted the datagram, or refused before it)."""
        n = 0
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            while not stop.is_set():
                try:
                    sock.sendto(b"x", (TARGET, 9))
                    n += 1
                except OSError:
                    failed.append(1)
        return n

    def refill() -> int:
        nft = _nft()
        for i in range(1, COMMITS + 1):  # what a full resync does to a set and a chain
            _apply(
                nft,
                f"flush set inet sgl s\nadd element inet sgl s {{ {_members(i)} }}\n"
                f"flush chain inet sgl out\n{_rules()}",
            )
        return COMMITS

    sender = _background(netns, send, sent)
    try:
        assert in_netns(netns, refill, timeout=TIMEOUT) == COMMITS
    finally:
        stop.set()
        sender.join(TIMEOUT)

    def counters() -> dict[str, int]:
        rc, out, _ = _nft().run(b"list counters table inet sgl", OUTPUT_JSON)
        assert rc == 0
        return {
            item["counter"]["name"]: item["counter"]["packets"]
            for item in json.loads(out)["nftables"]
            if "counter" in item
        }

    got = in_netns(netns, counters)
    assert sent and sent[0] > 1000, f"only {sent} datagrams sent"
    hit, miss = got["hit"], got["miss"]
    assert miss == 0 and sent[0] <= hit <= sent[0] + len(failed), (
        f"{sent[0]} datagrams (and {len(failed)} failed sends) to a member of every version "
        f"of the set during {COMMITS} refills: {hit} matched it, {miss} missed it"
    )


OURS = "".join(
    f"add chain inet ours c{c}\n"
    + "".join(f"add rule inet ours c{c} udp dport {1000 + r} drop\n" for r in range(3))
    for c in range(30)
)


def _rule_handles(out: bytes, table: str) -> list[tuple[str, int]]:
    return [
        (item["rule"]["chain"], item["rule"]["handle"])
        for item in json.loads(out)["nftables"]
        if "rule" in item and item["rule"]["table"] == table
    ]


def test_commits_to_another_table_do_not_tear_a_listing_of_ours(netns: str) -> None:
    in_netns(netns, lambda: _apply(_nft(), f"add table inet ours\n{OURS}add table ip theirs\n"))
    theirs = "flush table ip theirs\nadd chain ip theirs c\nadd rule ip theirs c drop\n"

    def listings() -> list[int]:
        nft, counts = _nft(), []
        for _ in range(300):
            rc, out, err = nft.run(b"list ruleset", OUTPUT_JSON | OUTPUT_TERSE)
            assert rc == 0, err
            handles = _rule_handles(out, "ours")
            counts.append(len(handles) if len(set(handles)) == len(handles) else -len(handles))
        return counts

    with _committing(netns, theirs) as commits:
        counts = in_netns(netns, listings, timeout=TIMEOUT)
    assert commits and commits[0] >= 50, f"the other table saw only {commits} commits"
    wrong = [n for n in counts if n != 90]  # negative: a rule repeated
    assert wrong == [], f"{len(wrong)} of {len(counts)} listings of our 90 rules torn: {wrong[:10]}"


def test_a_whole_listing_holds_exactly_the_tables_rules(netns: str) -> None:
    in_netns(netns, lambda: _apply(_nft(), f"add table inet ours\n{OURS}"))
    ours = f"flush table inet ours\n{OURS}"  # our own table refilled, as a full resync does

    def listings() -> tuple[int, int, int, int, list[str]]:
        nft, whole, moved, repeated, raw, bad = _nft(), 0, 0, 0, 0, []
        with Generations() as gen:
            while whole < 300:
                listing = whole_listing(gen, lambda: nft.run(b"list table inet ours", OUTPUT_JSON))
                if listing is None:
                    moved += 1
                    continue
                rc, out, err = listing
                assert rc == 0, err
                whole += 1
                handles = _rule_handles(out, "ours")
                if len(handles) != 90 or len(set(handles)) != 90:
                    bad.append(f"{len(handles)} rules, {len(set(handles))} distinct")
            # The method is needed: some raw listings are torn (rules repeated). Raw
            # listings until one is (2-11 here on a quiet machine): 300 were too few once,
            # when CI ran beside a benchmark and fewer commits crossed a listing.
            while raw < 3000 and not repeated:
                rc, out, err = nft.run(b"list table inet ours", OUTPUT_JSON)
                raw += 1
                repeated += rc == 0 and repeats_a_rule(out)
        return whole, moved, repeated, raw, bad

    with _committing(netns, ours):
        whole, moved, repeated, raw, bad = in_netns(netns, listings, timeout=TIMEOUT)
    assert bad == [], f"{len(bad)} of {whole} whole listings were torn: {bad[:5]}"
    assert moved > 0 and repeated > 0, (
        f"{moved} listings overlapped a commit, none of {raw} raw listings repeated a "
        "rule: the test showed nothing"
    )
