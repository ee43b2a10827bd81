"""A packet that crosses a commit: rules pinned to the old generation, lookups in the new one.

The kernel fact behind ``secgroups.nft.transactions.staged_diff`` (docs/nftables.md,
"Transactions: nothing new in the switch"), shown with bare nft in three throwaway network
namespaces — client → node (our table, in ``forward``) → pod — while UDP datagrams stream
through the node:

* a base chain gates the pod's address into a chain that ends in a verdict map keyed by the
  pod's address, then ``drop`` (our ``pod_ingress``); the element names the pod's chain,
  which accepts UDP/80 and drops the rest (our group-list chain). UDP/3306 is denied and
  UDP/80 allowed under every version of the table;
* a flip re-points the element to a new chain with the same rules and deletes the old one.

``nft_do_chain`` reads the generation once, when the packet enters the base chain, and runs
every chain's rules of that generation; a set or map lookup reads the generation current
at the lookup. A packet that enters before a commit and reaches the map after it takes the
new element into a chain that, if the same transaction created it, has no rules in the old
generation: the packet falls off its end. Through ``goto`` that ends the base chain with
its ``accept`` policy — **a denied datagram is delivered**; through ``jump`` it returns to
the ``drop`` — **an allowed datagram is lost**. With the new chain created one transaction
ahead (``staged``), both generations hold its rules: nothing leaks, nothing is lost.

The race window is a packet's trip from the base chain to the map, so the test widens it
with filler rules (no-match) in front of the map, then flips until the shape shows its
failure (or a time budget ends). Remove the ``goto``/``jump`` cases when the kernel pins
lookups to the packet's generation (they would fail, saying so).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

PREFIX = "sggen"
POD6, CLIENT6 = "fd64:5ec:ff:2::2", "fd64:5ec:ff:1::2"
DENIED, ALLOWED = 3306, 80
FILLERS = 400  # no-match rules between the gate and the map: a wider window
MAX_FLIPS = 8_000
BUDGET = 25.0  # seconds of flipping per case at most
TIMEOUT = 30.0


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs the {tool} command"
    try:
        ctypes.CDLL("libnftables.so.1")
    except OSError:
        return "needs libnftables.so.1 (apt-get install libnftables1)"
    return None


pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable())),
]

_libc = ctypes.CDLL(None, use_errno=True)


def _enter(ns: str) -> None:
    """Move the calling thread into network namespace ``ns`` (sockets it makes stay there)."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, 0) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
    finally:
        os.close(fd)


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=TIMEOUT)


@dataclass(frozen=True)
class Path3:
    client: str
    node: str
    pod: str


@pytest.fixture(scope="module")
def path() -> Iterator[Path3]:
    """client — node — pod, IPv6 on veths, the node forwarding."""
    tag = uuid.uuid4().hex[:5]
    p = Path3(f"{PREFIX}{tag}c", f"{PREFIX}{tag}n", f"{PREFIX}{tag}p")
    made: list[str] = []
    try:
        for ns in (p.client, p.node, p.pod):
            _sh("ip", "netns", "add", ns)
            made.append(ns)
        for ns, here, there in ((p.client, "c0", "n0"), (p.pod, "p0", "n1")):
            _sh("ip", "link", "add", here, "netns", ns, "type", "veth", "peer", "name", there,
                "netns", p.node)  # fmt: skip
        plan = [
            (p.client, "c0", "fd64:5ec:ff:1::2/64"),
            (p.node, "n0", "fd64:5ec:ff:1::1/64"),
            (p.node, "n1", "fd64:5ec:ff:2::1/64"),
            (p.pod, "p0", "fd64:5ec:ff:2::2/64"),
        ]
        for ns, dev, addr in plan:
            _sh("ip", "-n", ns, "-6", "addr", "add", addr, "dev", dev, "nodad")
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _sh("ip", "-n", p.client, "-6", "route", "add", "default", "via", "fd64:5ec:ff:1::1")
        _sh("ip", "-n", p.pod, "-6", "route", "add", "default", "via", "fd64:5ec:ff:2::1")
        _sh("ip", "netns", "exec", p.node, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        yield p
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=TIMEOUT)


# ----------------------------------------------------------------------------- the table
def _chain(name: str) -> str:
    return (
        f"add chain inet gen {name}\n"
        f"add rule inet gen {name} udp dport {ALLOWED} accept\n"
        f"add rule inet gen {name} drop\n"
    )


def _base(verb: str) -> str:
    fillers = "".join(
        f"add rule inet gen pod_in ip6 saddr fd00::{i:x} drop\n" for i in range(FILLERS)
    )
    return (
        "add table inet gen\n"
        f"add set inet gen pods6 {{ type ipv6_addr; elements = {{ {POD6} }}; }}\n"
        "add map inet gen disp6 { type ipv6_addr : verdict; }\n"
        "add chain inet gen gate { type filter hook forward priority 0; policy accept; }\n"
        "add chain inet gen pod_in\n"
        "add rule inet gen gate ip6 daddr @pods6 goto pod_in\n"
        + fillers
        + "add rule inet gen pod_in ip6 daddr vmap @disp6\n"
        "add rule inet gen pod_in drop\n"
        + _chain("c0")
        + f"add element inet gen disp6 {{ {POD6} : {verb} c0 }}\n"
    )


def _switch(verb: str, old: str, new: str) -> str:
    return (
        f"delete element inet gen disp6 {{ {POD6} }}\n"
        f"add element inet gen disp6 {{ {POD6} : {verb} {new} }}\n"
        f"flush chain inet gen {old}\n"
        f"delete chain inet gen {old}\n"
    )


# ----------------------------------------------------------------------------- traffic
@dataclass
class Counts:
    sent: dict[int, int] = field(default_factory=lambda: {DENIED: 0, ALLOWED: 0})
    got: dict[int, int] = field(default_factory=lambda: {DENIED: 0, ALLOWED: 0})

    def text(self) -> str:
        return (
            f"denied udp/{DENIED}: {self.got[DENIED]} of {self.sent[DENIED]} delivered; "
            f"allowed udp/{ALLOWED}: {self.sent[ALLOWED] - self.got[ALLOWED]} of "
            f"{self.sent[ALLOWED]} lost"
        )


class Stream:
    """Numbered datagrams client → pod on both ports; the pod side counts what arrives."""

    def __init__(self, path: Path3) -> None:
        self.counts = Counts()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        ready = threading.Event()
        self._rx: dict[int, socket.socket] = {}
        self._tx: socket.socket | None = None

        def make() -> None:
            try:
                _enter(path.pod)
                for port in (DENIED, ALLOWED):
                    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                    s.setsockopt(socket.SOL_SOCKET, 33, 1 << 25)  # SO_RCVBUFFORCE: lose nothing
                    s.bind((POD6, port))
                    s.settimeout(0.05)
                    self._rx[port] = s
                _enter(path.client)
                self._tx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            except BaseException as exc:  # reported by the caller
                self.errors.append(exc)
            finally:
                ready.set()

        t = threading.Thread(target=make, daemon=True)
        t.start()
        ready.wait(TIMEOUT)
        t.join(TIMEOUT)
        if self.errors:
            raise self.errors[0]
        self._threads = [
            threading.Thread(target=self._receive, args=(port,), daemon=True)
            for port in (DENIED, ALLOWED)
        ]
        for th in self._threads:
            th.start()

    def _receive(self, port: int) -> None:
        s = self._rx[port]
        while not self.stop.is_set():
            try:
                s.recv(64)
            except TimeoutError:
                continue
            self.counts.got[port] += 1

    def send_round(self) -> None:
        assert self._tx is not None
        for port in (DENIED, ALLOWED):
            try:
                self._tx.sendto(b"x", (POD6, port))
            except OSError:  # ENOBUFS and the like: not sent, not counted
                continue
            self.counts.sent[port] += 1

    def settle(self) -> None:
        """Wait until every datagram that will arrive has arrived."""
        deadline = time.monotonic() + 5
        last = -1
        while time.monotonic() < deadline:
            now = sum(self.counts.got.values())
            if now == last:
                break
            last = now
            time.sleep(0.3)

    def close(self) -> None:
        self.stop.set()
        for th in self._threads:
            th.join(TIMEOUT)
        for s in [*self._rx.values(), *([self._tx] if self._tx else [])]:
            s.close()


def _flip_under_traffic(path: Path3, shape: str, stop_on_failure: bool) -> tuple[int, Counts]:
    """Flip the pod's chain up to MAX_FLIPS times (or BUDGET s) while the client streams."""
    from secgroups_agent.nftworker import LibNftables  # libnftables in this process

    verb = "jump" if shape == "jump" else "goto"
    stream = Stream(path)
    done = threading.Event()
    flips = [0]
    errors: list[BaseException] = []

    def flipper() -> None:
        try:
            _enter(path.node)
            nft = LibNftables()

            def apply(text: str) -> None:
                rc, _, err = nft.run(text.encode(), 0)
                if rc != 0:
                    raise AssertionError(f"nft: {err.decode(errors='replace')}\n{text[:400]}")

            apply("add table inet gen\ndelete table inet gen\n")
            apply(_base(verb))
            ready.set()
            go.wait(TIMEOUT)
            deadline = time.monotonic() + BUDGET
            for i in range(1, MAX_FLIPS + 1):
                old, new = f"c{i - 1}", f"c{i}"
                if shape == "staged":
                    apply(_chain(new))
                    apply(_switch(verb, old, new))
                else:  # the new chain is created by the switch itself
                    apply(_chain(new) + _switch(verb, old, new))
                flips[0] = i
                if time.monotonic() > deadline or (stop_on_failure and failed.is_set()):
                    break
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            done.set()

    ready, go, failed = threading.Event(), threading.Event(), threading.Event()
    t = threading.Thread(target=flipper, daemon=True)
    t.start()
    try:
        assert ready.wait(TIMEOUT), errors or "the table did not load"
        # Warm-up: the neighbours resolved and the path works before the count starts.
        deadline = time.monotonic() + TIMEOUT
        while stream.counts.got[ALLOWED] == 0:
            assert time.monotonic() < deadline, "no allowed datagram arrives"
            stream.send_round()
            time.sleep(0.05)
        stream.settle()
        stream.counts = Counts()
        go.set()
        rounds = 0
        while not done.is_set():
            stream.send_round()
            rounds += 1
            if rounds % 64 == 0:
                time.sleep(0.0005)  # let the receivers drain
                if stream.counts.got[DENIED]:
                    failed.set()
        stream.settle()
        c = stream.counts
    finally:
        done.wait(TIMEOUT + BUDGET)
        stream.close()
    if errors:
        raise errors[0]
    return flips[0], c


# ----------------------------------------------------------------------------- the tests
def test_a_goto_into_a_chain_the_switch_created_accepts_packets_in_flight(path: Path3) -> None:
    flips, c = _flip_under_traffic(path, "goto", stop_on_failure=True)
    print(f"goto, new chain in the switch: {flips} flips; {c.text()}")
    assert c.got[DENIED] > 0, (
        f"no denied datagram crossed a commit into an empty chain in {flips} flips ({c.text()}): "
        "has the kernel started pinning lookups to the packet's generation? Then the staging "
        "in transactions.staged_diff is no longer needed for this (docs/nftables.md)"
    )


def test_a_jump_into_a_chain_the_switch_created_drops_packets_in_flight(path: Path3) -> None:
    flips, c = _flip_under_traffic(path, "jump", stop_on_failure=False)
    print(f"jump, new chain in the switch: {flips} flips; {c.text()}")
    assert c.got[DENIED] == 0, c.text()
    assert c.got[ALLOWED] < c.sent[ALLOWED], (
        f"no allowed datagram was lost in {flips} flips ({c.text()}): has the kernel started "
        "pinning lookups to the packet's generation? (docs/nftables.md)"
    )


def test_a_chain_created_one_transaction_ahead_neither_leaks_nor_drops(path: Path3) -> None:
    flips, c = _flip_under_traffic(path, "staged", stop_on_failure=False)
    print(f"staged: {flips} flips; {c.text()}")
    assert c.got[DENIED] == 0, c.text()
    assert c.got[ALLOWED] == c.sent[ALLOWED], c.text()
