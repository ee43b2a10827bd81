"""Policy changes are atomic: 1,000 flips between two policies under a continuous probe.

Pod ``a1`` on node 1 flips between P1 and P2 while the outside host sends a steady
stream of UDP datagrams to it, each carrying a token, and a1's probe daemon records
every token it receives (``ProbeClient.forge`` / ``seen``). The datagrams are never
answered, so conntrack keeps every one of them NEW and each is judged by the rules in
force at that instant. Traffic classes (checked against the evaluator first):

* UDP/80 over IPv4 and IPv6 — allowed by both policies: **none may be lost**
  (a table missing, empty or half-applied mid-flip would drop some);
* UDP/3306 over IPv4 and IPv6 — denied by both: **none may arrive** (a table
  missing or flushed mid-flip would let some through);
* UDP/22 (only P1 allows) and UDP/443 (only P2 allows) — some arrive, some do not:
  proof that the flips took effect while the probe ran.

Meanwhile a sampler lists ``table inet secgroups`` (JSON, in-process libnftables in the
node netns) as fast as it can: the table must exist in every listing, hold exactly P1's
or P2's number of rules, and a1's dispatch element must point at a chain with rules. A
listing that a flip's commit crossed can be torn by nft itself (1.0.6 repeats rules,
handles and all: docs/nftables.md, "Listing a table while it changes"), so only whole
listings are judged (``tests.nftgen.whole_listing``: the namespace's nf_tables generation
unchanged across the listing, no rule handle repeated); the others are counted as torn.

P1 and P2 differ in every way an incremental transaction can: a1's group list (new
group-list chains, the dispatch map element swapped), the group chains (added and
deleted), a remote-group set (created and deleted), and a1's epoch. Both groups have
enough ingress rules to be dispatched by port (``secgroups.nft.dispatch``): every flip
also creates an interval verdict map and its sub-chains (one transaction ahead, in the
stage) and deletes the other's. Without the stage, a flip loses datagrams: measured with
the stage and switch sent as one transaction, 8 of ~3,100 UDP/80 datagrams over 8,000
flips, against none of ~3,500 staged (kernel 6.18, nft 1.0.6).

**Who flips.** The first 50 flips go through the real agent process
(``tests/agent_harness.py``: policy file → sync loop → planner → libnftables worker).
The agent is then stopped (it leaves its table in place) and the other 950 flips are
applied by the agent's own code from the test process, in node 1's netns: the same
``Planner`` (starting with a full plan over the table the agent left, as a restarted
agent does) and the same nft backend (``make_backend("lib")``: the libnftables worker).
A file-driven apply takes ~33 ms here (file poll, parse, status file: 50 took 1.7 s), so
1,000 would take ~35 s on an idle 2-core machine and twice that under CI load; the
transactions are the same. The test takes ~10 s (~18 s with both cores busy).
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests import nftcases as nc
from tests.agent_harness import AgentProcess, in_netns
from tests.nftgen import Generations, whole_listing

from secgroups.compiled import CompiledPolicy
from secgroups.evaluating import Evaluator, Packet
from secgroups.nft.rendering import render
from secgroups.nft.transactions import Inventory
from secgroups_lab.network import Lab, PodNet, netns_unavailable, run_in
from secgroups_lab.probes import ProbeClient, ProbeError

_why = netns_unavailable()
if _why:
    pytest.skip(_why, allow_module_level=True)

pytestmark = pytest.mark.netns

NODE = "n1"
FLIPS = 1000
AGENT_FLIPS = 50
MIN_FLIP_INTERVAL = 0.005  # direct flips: leave the probe a few datagrams per policy
ROUND_PAUSE = 0.002  # between two probe rounds (a1's daemon records at most 50,000)
SAMPLE_PAUSE = 0.001  # between two listings (leave the GIL to the probe and the flips)
TABLE = "inet secgroups"

# (family, port) -> (allowed by P1, allowed by P2)
CLASSES: dict[tuple[int, int], tuple[bool, bool]] = {
    (4, 80): (True, True),
    (6, 80): (True, True),
    (4, 22): (True, False),
    (4, 443): (False, True),
    (4, 3306): (False, False),
    (6, 3306): (False, False),
}


# ----------------------------------------------------------------------------- policies
def _fillers(prefix: str, base: int) -> list[nc.CompiledRule]:
    """Six rules on ports nobody probes: enough for the group's ingress to be dispatched."""
    return [
        nc.rule(f"default/{prefix}-fill{i}", nc.IN, "UDP", [base + i], priority=4, action=nc.DENY)
        for i in range(6)
    ]


def flip_policy(pods: dict[str, PodNet], outside: str, second: bool) -> CompiledPolicy:
    """P1 (``second=False``): a1 in group flip-a — UDP/80 from the outside address,
    UDP/22 from anywhere, UDP/80 over IPv6. P2: a1 in group flip-b (epoch 1) — UDP 80
    and 443 from the remote group ``clients`` (the outside address), UDP/22 denied,
    UDP/80 over IPv6. Each also denies six ports that nobody probes (``_fillers``)."""
    a1 = pods["a1"]
    if not second:
        group = nc.group(
            "default",
            "flip-a",
            [
                nc.rule("default/a-http", nc.IN, "UDP", [80], nc.cidr(f"{outside}/32")),
                nc.rule("default/a-ssh", nc.IN, "UDP", [22], priority=2),
                nc.rule("default/a-http6", nc.IN, "UDP", [80], family=nc.V6, priority=3),
                *_fillers("a", 10000),
                nc.rule("default/a-out", nc.EG, "All"),
            ],
        )
        pod = nc.pod("default", "a1", a1.ips, [group[0]], epoch=0)
        return nc.policy([group], [], [pod], node=NODE)
    clients = nc.sg_set("default", "clients", [f"{outside}/32"])
    group = nc.group(
        "default",
        "flip-b",
        [
            nc.rule("default/b-no-ssh", nc.IN, "UDP", [22], action=nc.DENY),
            nc.rule("default/b-web", nc.IN, "UDP", [80, 443], nc.ref(clients[0]), priority=2),
            nc.rule("default/b-http6", nc.IN, "UDP", [80], family=nc.V6, priority=3),
            *_fillers("b", 11000),
            nc.rule("default/b-out", nc.EG, "All"),
        ],
    )
    pod = nc.pod("default", "a1", a1.ips, [group[0]], epoch=1)
    return nc.policy([group], [clients], [pod], node=NODE)


def check_classes(
    policies: tuple[CompiledPolicy, CompiledPolicy], a1: PodNet, outside: Any
) -> None:
    """The evaluator agrees with :data:`CLASSES` (so the probe's classes mean what they say)."""
    for (family, port), want in CLASSES.items():
        src = outside.ipv4 if family == 4 else outside.ipv6
        dst = a1.ipv4 if family == 4 else a1.ipv6
        got = tuple(
            Evaluator(p).evaluate(Packet.make(src, dst, "udp", port)).allowed for p in policies
        )
        assert got == want, f"udp/{port} IPv{family}: evaluator says {got}, the test wants {want}"


# ----------------------------------------------------------------------------- probe
@dataclass
class Probe:
    """Tokened datagrams from the outside to a1, one round of every class at a time."""

    client: ProbeClient
    outside: Any
    a1: PodNet
    sent: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    sent_at: dict[str, float] = field(default_factory=dict)  # token -> time.time() sent
    send_errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def one(self, family: int, port: int) -> str | None:
        src = self.outside.ipv4 if family == 4 else self.outside.ipv6
        dst = self.a1.ipv4 if family == 4 else self.a1.ipv6
        try:
            return self.client.forge("udp", src, dst, port)
        except ProbeError as exc:  # not sent (e.g. ENOBUFS): not counted either way
            self.send_errors.append(str(exc))
            return None

    def run(self) -> None:
        while not self.stop.is_set():
            for cls in CLASSES:
                t = time.time()
                token = self.one(*cls)
                if token is not None:
                    self.sent.setdefault(cls, []).append(token)
                    self.sent_at[token] = t
            time.sleep(ROUND_PAUSE)

    def gets_through(self, receiver: ProbeClient, family: int) -> bool:
        token = self.one(family, 80)
        return token is not None and bool(receiver.wait_seen(token, timeout=0.5))

    @property
    def rounds(self) -> int:
        return min((len(v) for v in self.sent.values()), default=0)


def _target(verdict: Any) -> str | None:
    if isinstance(verdict, dict):
        for kind in ("jump", "goto"):
            if kind in verdict:
                return str(verdict[kind]["target"])
    return None


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


def _reachable_rules(
    bases: list[str], rules: dict[str, list[Any]], maps: dict[str, list[Any]]
) -> tuple[int, set[str]]:
    """The rules in force: those of the chains reachable from the base chains (jumps, gotos
    and verdict-map elements). The stage transaction adds chains that nothing reaches yet."""
    seen, todo = set(bases), list(bases)
    while todo:
        for expr in rules.get(todo.pop(), ()):
            for node in _walk(expr):
                name = _target(node)
                if isinstance(node, dict) and isinstance(node.get("data"), str):
                    ref = node["data"].lstrip("@")  # vmap @map
                    name = None
                    for _key, verdict in maps.get(ref, ()):
                        t = _target(verdict)
                        if t is not None and t not in seen:
                            seen.add(t)
                            todo.append(t)
                if name is not None and name not in seen:
                    seen.add(name)
                    todo.append(name)
    return sum(len(rules.get(c, ())) for c in seen), seen


# ----------------------------------------------------------------------------- sampler
@dataclass
class Sampler:
    """Lists our table in node 1's netns (libnftables in-process) until stopped."""

    netns: str
    a1_ip: str
    rule_counts: frozenset[int]
    chains: tuple[dict[str, int], dict[str, int]]  # P1's and P2's chains: rules each
    samples: int = 0  # listings taken within one generation, judged
    torn: int = 0  # listings a commit crossed (not judged)
    bad: list[str] = field(default_factory=list)
    first_bad: bytes = b""  # the whole listing of the first bad sample (kept by the test)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)

    def check(self, rc: int, out: bytes, err: bytes) -> str | None:
        if rc != 0:
            return f"listing failed: {err.decode(errors='replace').strip()[:200]}"
        items = json.loads(out)["nftables"]
        rules: dict[str, list[Any]] = {}
        maps: dict[str, list[Any]] = {}
        bases: list[str] = []
        target = None
        for item in items:
            if "rule" in item:
                rules.setdefault(item["rule"]["chain"], []).append(item["rule"]["expr"])
            elif "chain" in item and "hook" in item["chain"]:
                bases.append(item["chain"]["name"])
            elif "map" in item:
                maps[item["map"]["name"]] = item["map"].get("elem", [])
                if item["map"]["name"] == "in_disp4":
                    for key, verdict in item["map"].get("elem", ()):
                        if key == self.a1_ip:
                            target = _target(verdict)
        total, seen = _reachable_rules(bases, rules, maps)
        if total not in self.rule_counts:
            return f"{total} rules in force (P1/P2 have {sorted(self.rule_counts)}): " + (
                self.explain({c: len(rules.get(c, ())) for c in seen})
            )
        if target is None:
            return "no in_disp4 element for a1"
        if len(rules.get(target, ())) < 2:
            return f"a1's chain {target} has {len(rules.get(target, ()))} rules"
        return None

    def explain(self, found: dict[str, int]) -> str:
        """Which policy's chains the sample holds, and what neither policy has."""
        parts = []
        for label, want in zip(("P1", "P2"), self.chains, strict=True):
            missing = sorted(set(want) - set(found))
            odd = {c: (n, want[c]) for c, n in found.items() if c in want and want[c] != n}
            parts.append(f"{label}: {len(missing)} chains missing, counts differ {odd}")
        extra = {c: n for c, n in found.items() if not any(c in w for w in self.chains)}
        return "; ".join([*parts, f"chains of neither: {extra}"])

    def loop(self) -> None:
        from secgroups_agent.nftworker import LibNftables

        with Generations() as gen:
            self._sample(LibNftables(), gen)

    def _sample(self, nft: Any, gen: Generations) -> None:
        from secgroups_agent.nftables import OUTPUT_JSON

        command = f"list table {TABLE}".encode()
        while not self.stop.is_set():
            listing = whole_listing(gen, lambda: nft.run(command, OUTPUT_JSON))
            if listing is None:
                self.torn += 1
                time.sleep(SAMPLE_PAUSE * 5)  # a flip is under way: let it through
                continue
            rc, out, err = listing
            problem = self.check(rc, out, err)
            self.samples += 1
            if problem is not None:
                self.bad.append(f"{time.time():.3f} {problem}")
                self.first_bad = self.first_bad or out
            time.sleep(SAMPLE_PAUSE)

    def run(self) -> None:
        try:
            in_netns(self.netns, self.loop, timeout=600)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)


# ----------------------------------------------------------------------------- helpers
def wait_until(cond: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def rule_count(policy: CompiledPolicy, interfaces: dict[str, str]) -> int:
    return render(policy, NODE, interfaces).rule_count


def direct_flips(
    policies: tuple[CompiledPolicy, CompiledPolicy], interfaces: dict[str, str], flips: int
) -> dict[str, int]:
    """The agent's compute and emit without its process: planner + libnftables worker.

    Runs in node 1's netns (the worker is started from this thread, so it lives there)."""
    from secgroups_agent.nftables import make_backend
    from secgroups_agent.planning import Planner
    from secgroups_agent.sources import slice_policy

    planner = Planner(NODE)
    nft = make_backend("lib")
    kinds: dict[str, int] = {}
    try:
        doc = nft.list_json("ruleset", terse=True)
        inventory = None if doc is None else Inventory.from_json(doc, planner.options.table)
        snaps = [slice_policy(p, NODE) for p in policies]  # the same objects every time
        for i in range(flips + 1):  # the first plan is a full one (a restarted agent's)
            started = time.monotonic()
            snap = snaps[i % 2]
            full = i == 0
            plan = planner.plan(snap, interfaces, full=full, inventory=inventory if full else None)
            if plan.stage:  # as the agent does (transactions.staged_diff)
                nft.apply(plan.stage)
            nft.apply(plan.text)
            planner.commit(plan)
            kinds[plan.kind] = kinds.get(plan.kind, 0) + 1
            rest = MIN_FLIP_INTERVAL - (time.monotonic() - started)
            if rest > 0:
                time.sleep(rest)
    finally:
        nft.close()
    return kinds


# ----------------------------------------------------------------------------- the test
def test_a_thousand_policy_flips_never_leak_drop_or_empty_the_table(
    lab: Lab, pods: dict[str, PodNet], tmp_path: Path
) -> None:
    assert lab.outside is not None
    outside, a1 = lab.outside, pods["a1"]
    node_ns = lab.node_netns(1)
    p1 = flip_policy(pods, outside.ipv4, second=False)
    p2 = flip_policy(pods, outside.ipv4, second=True)
    check_classes((p1, p2), a1, outside)
    interfaces = {ip: a1.host_ifname for ip in a1.ips}
    counts = frozenset({rule_count(p1, interfaces), rule_count(p2, interfaces)})
    chains = tuple(
        {c.name: len(c.rules) for c in render(p, NODE, interfaces).chains} for p in (p1, p2)
    )
    run_in(node_ns, ["conntrack", "-F"], check=False)
    receiver = lab.client(a1)
    probe = Probe(lab.client(outside), outside, a1)
    sampler = Sampler(node_ns, a1.ipv4, counts, (chains[0], chains[1]))
    threads = [
        threading.Thread(target=probe.run, name="probe", daemon=True),
        threading.Thread(target=sampler.run, name="sampler", daemon=True),
    ]
    agent = AgentProcess(node_ns, NODE, tmp_path, delete_table_on_stop=False)
    phases: dict[str, float] = {}
    both = [cls for cls, (x, y) in CLASSES.items() if x and y]
    try:
        agent.start(p1)
        # Warm-up: neighbour entries resolved, the path works, then a clean record.
        for family in (4, 6):
            wait_until(
                functools.partial(probe.gets_through, receiver, family),
                f"a first IPv{family} datagram through",
                timeout=15,
            )
        receiver.call({"op": "clear_seen"}, 10)
        for t in threads:
            t.start()
        wait_until(lambda: sampler.samples > 0 and probe.rounds > 0, "probe and sampler", 15)
        phases["agent flips"] = time.time()
        for i in range(AGENT_FLIPS):
            agent.apply(p2 if i % 2 == 0 else p1, timeout=30)
        phases["agent stopped"] = time.time()
        assert agent.stop() == 0  # the table stays in place
        phases["direct flips"] = time.time()
        kinds = in_netns(
            node_ns,
            lambda: direct_flips((p1, p2), interfaces, FLIPS - AGENT_FLIPS),
            timeout=900,  # a hang guard only: ≈ 40 s idle, 300 s at load 40-56
        )
        assert kinds == {"full": 1, "incremental": FLIPS - AGENT_FLIPS}
        phases["flips done"] = time.time()
        # A few more rounds under the last policy, then stop and collect.
        last = probe.rounds
        wait_until(lambda: probe.rounds >= last + 5, "the last probe rounds", 15)
        probe.stop.set()
        sampler.stop.set()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), "probe or sampler did not stop"
        # Datagrams in flight arrive within a moment (the table still in place); a lost
        # one never does.
        wanted = {t for cls in both for t in probe.sent[cls]}
        with contextlib.suppress(AssertionError):
            wait_until(
                lambda: wanted <= {s.token for s in receiver.seen()},
                "every both-allowed datagram",
                10,
            )
        seen = {s.token: s.time for s in receiver.seen()}
    finally:
        probe.stop.set()
        sampler.stop.set()
        agent.stop()
        run_in(node_ns, ["nft", "delete", "table", *TABLE.split()], check=False)

    assert not sampler.errors, sampler.errors
    summary = (
        f"{probe.rounds} probe rounds, {sampler.samples} table samples "
        f"({sampler.torn} more torn by a commit, not judged), "
        f"{len(probe.send_errors)} send errors; phases "
        + ", ".join(f"{k} {v:.3f}" for k, v in phases.items())
    )
    print(summary)  # shown with -s
    for cls, (x, y) in CLASSES.items():
        tokens = probe.sent[cls]
        arrived = [t for t in tokens if t in seen]
        label = f"udp/{cls[1]} IPv{cls[0]}"
        if x and y:
            lost = [f"{probe.sent_at[t]:.3f}" for t in tokens if t not in seen]
            assert len(arrived) == len(tokens), (
                f"{label}: allowed by both policies, {len(tokens) - len(arrived)} of "
                f"{len(tokens)} datagrams lost, sent at {lost} ({summary})"
            )
        elif not x and not y:
            assert arrived == [], (
                f"{label}: denied by both policies, {len(arrived)} of {len(tokens)} "
                f"datagrams delivered, at {[f'{seen[t]:.3f}' for t in arrived]} ({summary})"
            )
        else:
            assert 0 < len(arrived) < len(tokens), (
                f"{label}: allowed by one policy only, yet {len(arrived)} of {len(tokens)} "
                f"arrived: the flips did not show ({summary})"
            )
    if sampler.first_bad:
        (tmp_path / "first-bad-sample.json").write_bytes(sampler.first_bad)
    assert sampler.bad == [], (
        f"{len(sampler.bad)} bad table samples (listing: {tmp_path}/first-bad-sample.json; "
        f"{summary}), first: {sampler.bad[:5]}"
    )
    assert sampler.samples >= 100, summary
