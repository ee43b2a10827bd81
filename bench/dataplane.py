"""Dataplane and agent benchmark: ratios measured side by side in ONE run on this machine.

Run as root: ``sudo .venv/bin/python bench/dataplane.py`` (``--quick`` for a short smoke
run; ``--only dataplane|agent``). A script, not a test: it prints one table (figure,
value, goal, ratio, pass/miss) and asserts nothing. Targets: docs/performance.md
("Dataplane", "Agent", "Targets and the reference node"); the method is the one of
docs/nftables.md#where-and-how-they-were-measured.

**Dataplane** — for each variant its own three network namespaces, built here and
deleted on exit: ``ksgdp-<v>-c`` (client, 100.79.1.2) — ``ksgdp-<v>-r`` (the node:
forwarding, the variant's ruleset) — ``ksgdp-<v>-s`` (the server pod, 100.79.2.2), joined
by routed veths. Every variant keeps its ruleset loaded for the whole run, so the
variants are measured in interleaved rounds (ABCD, BCDA, …) and machine noise hits them
alike; each figure is the median over all rounds. Variants:

* ``none`` — no ruleset at all (conntrack not even loaded in that namespace);
* ``ct-only`` — ``ct state established accept`` and nothing else;
* ``linear-10k`` — the same plus 10,000 linear non-matching rules;
* ``ours`` — ``table inet secgroups`` rendered by ``secgroups.nft`` from a compiled policy:
  the server pod in 5 groups × 120 ingress rules (remote groups, CIDRs, port lists, a
  Deny now and then) and 20 remote groups of 6,000 members each (120k set elements);
  the rule that admits the client is the 116th rule of the 5th group, so a linear walk
  passes ~595 rules first (5 groups, the most a pod has without a warning, each at the
  120-rule quota); group chains dispatched by protocol and port (the default), so the
  connection walks only the rules for TCP port 8080 (~120: 24 per group);
* ``ours-linear`` — the same policy with every group chain linear
  (``RenderOptions(dispatch=None)``, the layout before dispatch);
* ``ours-1st`` — the same table with the client's rule first: the layout's fixed cost;
* ``spoof-prev`` — ``ours-1st`` with the previous anti-spoofing chain (managed pods'
  interfaces only: ``iifname != @pod_ifaces return`` then the {interface . address} pair);
* ``spoof-fib`` — ``ours-1st`` with a reverse-path check instead of the pairs
  (``iifname @pod_ifaces fib saddr . iif oif missing drop``), the alternative not taken
  (docs/nftables.md#anti-spoofing).

Every ``ours*`` table holds 100 routed pods in its anti-spoofing sets (the server and 99
other pods of the node, as the agent finds them in the routes).

Figures: **first-packet connect p50** — a single-threaded client doing ``connect()`` +
``SO_LINGER 0`` close in a loop (every connection is new to conntrack and walks the
ruleset; 6 rounds of 0.8 s per variant); the same **from the pod** (the connect loop in the
server pod's namespace to a listener on the client host: the pod's packets pass the
anti-spoofing check first) for ``ours-1st``, ``spoof-prev`` and ``spoof-fib``;
**established throughput** — one bulk TCP flow
client → pod (6 rounds of 1.5 s per variant: a single flow on veth moves by ±20 % from
one second to the next).

**Agent** — ``bench/agent_sync.py --json`` (in its own scratch netns: the sync loop,
planner and libnftables worker in-process, change notification → commit) for member
add/remove in a 6,000-member group and the full resync of the reference node
(100 pods, 20 groups × 50 rules, 20 × 6,000 members: cold = empty caches and table,
as at agent start; warm = the periodic resync; compute and apply reported apart); then the
**real agent process** (``tests/agent_harness.py``) started on the same node from a policy
file in a scratch netns: its RSS after the initial full sync and after a periodic
resync, and its libnftables worker's RSS apart.

CPU is shared (2 vCPU here): the load average is printed with the figures; a busy
machine moves absolute numbers much more than the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import nftcases as nc  # noqa: E402

from secgroups.compiled import CompiledPolicy, CompiledRule  # noqa: E402
from secgroups.models import IPFamily  # noqa: E402
from secgroups.nft.rendering import RenderOptions, render  # noqa: E402
from secgroups.nft.transactions import full_transaction  # noqa: E402
from secgroups_lab.underlay import check_lab_address  # noqa: E402

PREFIX = "ksgdp"
VARIANTS = (
    "none", "ct-only", "linear-10k", "ours", "ours-linear", "ours-1st", "spoof-prev", "spoof-fib"
)  # fmt: skip
SPOOF_VARIANTS = ("ours-1st", "spoof-prev", "spoof-fib")  # also measured from the pod
# 100.79.0.0/16 of the lab's block is for benchmarks' own namespaces (docs/lab.md, "Address
# plan"); only the three netns of a variant hold them, never the root netns.
CLIENT, GW_C, GW_S, SERVER = "100.79.1.2", "100.79.1.1", "100.79.2.1", "100.79.2.2"
for _address in (CLIENT, GW_C, GW_S, SERVER):
    check_lab_address(_address)
CONNECT_PORT, BULK_PORT = 8080, 5001
NODE = nc.NODE

# ----------------------------------------------------------------------------- rulesets


def bench_policy(
    groups: int = 5, rules: int = 120, sets: int = 20, members: int = 6000, *, first: bool = False
) -> CompiledPolicy:
    """The server pod in ``groups`` groups of ``rules`` ingress rules; ``sets`` remote groups
    of ``members`` IPs. The last set holds the client; the rule that admits it is the
    ``rules - 4``-th of the last group (with ``first``: the first rule of the first group,
    to show the layout's fixed cost)."""
    from tests import agentcases as ac

    set_items = []
    for i in range(sets):
        ips = list(ac.member_ips(i, members))
        if i == sets - 1:
            ips[members // 2] = f"{CLIENT}/32"
        set_items.append(nc.sg_set("remote", f"r{i}", ips))
    match_at, match_group = (0, 0) if first else (rules - 5, groups - 1)
    group_items = []
    for g in range(groups):
        rs: list[CompiledRule] = []
        for r in range(rules):
            rid = f"app/g{g}-r{r:03}"
            prio = 1 + r * 99 // (rules - 1)  # 1..100, in rule order
            other = nc.ref(set_items[(g * 7 + r) % (sets - 1)][0])  # never the client's set
            if g == match_group and r == match_at:
                rs.append(
                    nc.rule(rid, nc.IN, "TCP", [CONNECT_PORT, BULK_PORT], nc.ref(set_items[-1][0]),
                            priority=prio)
                )  # fmt: skip
                continue
            kind = r % 5
            if kind == 0:  # the same port as the client's, from another group
                rs.append(nc.rule(rid, nc.IN, "TCP", [CONNECT_PORT], other, priority=prio))
            elif kind == 1:
                rs.append(nc.rule(rid, nc.IN, "TCP", [10000 + r], other, priority=prio))
            elif kind == 2:
                rs.append(
                    nc.rule(rid, nc.IN, "TCP", [22, 443, (9000, 9100)], nc.cidr(f"203.0.{r}.0/24"),
                            priority=prio)
                )  # fmt: skip
            elif kind == 3:
                rs.append(
                    nc.rule(rid, nc.IN, "UDP", [53], nc.ANY, priority=prio,
                            action=nc.DENY if r % 7 == 0 else nc.ALLOW)
                )  # fmt: skip
            else:
                rs.append(
                    nc.rule(rid, nc.IN, "TCP", [443], nc.ANY, priority=prio, family=IPFamily.IPV6)
                )
        rs.append(nc.rule(f"app/g{g}-out", nc.EG, "All", priority=1))
        group_items.append(nc.group("app", f"g{g}", rs))
    server = nc.pod("app", "server", (SERVER,), [k for k, _ in group_items])
    return nc.policy(group_items, set_items, [server], node=NODE)


# The server's veth and 99 other routed pods of the node (never created: names only).
ROUTES = {SERVER: "s0", **{f"100.79.3.{i}": f"pod{i}" for i in range(1, 100)}}

# The anti-spoofing chain before it covered every pod (managed pods' interfaces only).
SPOOF_PREV = """flush chain inet secgroups pre_antispoof
add rule inet secgroups pre_antispoof iifname != @pod_ifaces return
add rule inet secgroups pre_antispoof iifname . ip saddr @pod_src4 return
add rule inet secgroups pre_antispoof iifname . ip6 saddr @pod_src6 return
add rule inet secgroups pre_antispoof ip6 saddr :: jump nd_from_pod
add rule inet secgroups pre_antispoof ip6 saddr fe80::/10 jump nd_from_pod
add rule inet secgroups pre_antispoof counter drop comment "spoofed source address"
"""
# The reverse-path alternative: the kernel's routes instead of the agent's pairs.
SPOOF_FIB = """flush chain inet secgroups pre_antispoof
add rule inet secgroups pre_antispoof iifname @pod_ifaces fib saddr . iif oif missing drop
"""


def ours_text(first: bool = False, *, linear: bool = False) -> tuple[str, dict[str, int]]:
    options = RenderOptions(dispatch=None) if linear else RenderOptions()
    ruleset = render(bench_policy(first=first), NODE, ROUTES, options)
    size = {
        "rules": ruleset.rule_count,
        "chains": len(ruleset.chains),
        "elements": ruleset.element_count,
        "maps": sum(1 for s in ruleset.sets if s.name.startswith("gd_")),
    }
    return full_transaction(ruleset), size


CT_ONLY = """
table inet bench {
  chain filter_forward {
    type filter hook forward priority filter; policy accept;
    ct state established accept
  }
}
"""


def linear_text(n: int = 10_000) -> str:
    """The measured linear chain (docs/nftables.md#what-rules-and-sets-cost-per-packet):
    established first, then ``n`` rules that never match."""
    lines = [CT_ONLY.rstrip().rstrip("}").rstrip().rstrip("}")]
    for i in range(n):
        lines.append(f"    ip saddr 198.18.{i // 250}.{i % 250 + 1} tcp dport 443 accept")
    lines.append("  }\n}\n")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- netns


def run(argv: Sequence[str], *, input: str | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(
        list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)[:200]}: {proc.stderr.strip()[:2000]}")
    return proc.stdout


def ns(name: str, *argv: str, input: str | None = None, timeout: float = 120) -> str:
    return run(["nsenter", f"--net=/run/netns/{name}", "--", *argv], input=input, timeout=timeout)


def our_netns() -> list[str]:
    out = run(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"{PREFIX}-")]


def cleanup() -> None:
    for name in our_netns():
        subprocess.run(["ip", "netns", "pids", name], capture_output=True, check=False)
        pids = run(["ip", "netns", "pids", name]).split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def triplet(v: str) -> tuple[str, str, str]:
    return f"{PREFIX}-{v}-c", f"{PREFIX}-{v}-r", f"{PREFIX}-{v}-s"


def build(v: str) -> None:
    c, r, s = triplet(v)
    for name in (c, r, s):
        run(["ip", "netns", "add", name])
        ns(name, "ip", "link", "set", "lo", "up")
    run(["ip", "link", "add", "c0", "netns", c, "type", "veth", "peer", "name", "c0", "netns", r])
    run(["ip", "link", "add", "s0", "netns", r, "type", "veth", "peer", "name", "s0", "netns", s])
    ns(c, "ip", "addr", "add", f"{CLIENT}/24", "dev", "c0")
    ns(c, "ip", "link", "set", "c0", "up")
    ns(c, "ip", "route", "add", "default", "via", GW_C)
    ns(r, "ip", "addr", "add", f"{GW_C}/24", "dev", "c0")
    ns(r, "ip", "addr", "add", f"{GW_S}/32", "dev", "s0")
    ns(r, "ip", "link", "set", "c0", "up")
    ns(r, "ip", "link", "set", "s0", "up")
    ns(r, "ip", "route", "add", f"{SERVER}/32", "dev", "s0")  # a routed /32 veth, CNI ptp style
    ns(r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    ns(s, "ip", "addr", "add", f"{SERVER}/32", "dev", "s0")
    ns(s, "ip", "link", "set", "s0", "up")
    ns(s, "ip", "route", "add", GW_S, "dev", "s0")
    ns(s, "ip", "route", "add", "default", "via", GW_S, "dev", "s0")


SERVER_CODE = r"""
import socket, sys, threading
def connects():
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", CPORT)); ls.listen(4096)
    while True:
        c, _ = ls.accept(); c.close()
def bulk():
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", BPORT)); ls.listen(16)
    buf = bytearray(1 << 20)
    while True:
        c, _ = ls.accept()
        while c.recv_into(buf):
            pass
        c.close()
threading.Thread(target=connects, daemon=True).start()
threading.Thread(target=bulk, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()  # exits when the bench closes our stdin (or dies)
""".replace("CPORT", str(CONNECT_PORT)).replace("BPORT", str(BULK_PORT))

CONNECT_CODE = r"""
import json, socket, struct, sys, time
dst, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
linger = struct.pack("ii", 1, 0)
lat, failed = [], 0
clock = time.perf_counter
end = clock() + seconds
while clock() < end:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    s.settimeout(2.0)
    t = clock()
    try:
        s.connect((dst, port))
        lat.append(clock() - t)
    except OSError:
        failed += 1
    s.close()
print(json.dumps({"lat": lat, "failed": failed}))
"""

BULK_CODE = r"""
import json, socket, sys, time
dst, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection((dst, port), timeout=10)
chunk = memoryview(bytearray(1 << 20))
sent = 0
t = time.perf_counter()
end = t + seconds
while time.perf_counter() < end:
    s.sendall(chunk)
    sent += len(chunk)
s.shutdown(socket.SHUT_WR)
s.recv(1)  # the server closes once it has read everything
print(json.dumps({"bytes": sent, "seconds": time.perf_counter() - t}))
"""


@dataclass
class Dataplane:
    servers: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)
    load_seconds: dict[str, float] = field(default_factory=dict)

    def up(self, variants: Sequence[str]) -> None:
        cleanup()
        for v in variants:
            build(v)
            r = triplet(v)[1]
            text = None
            if v == "ct-only":
                text = CT_ONLY
            elif v == "linear-10k":
                text = linear_text()
            elif v == "ours":
                text, self.sizes[v] = ours_text()
            elif v == "ours-linear":
                text, self.sizes[v] = ours_text(linear=True)
            elif v == "ours-1st":
                text, _ = ours_text(first=True)
            elif v in ("spoof-prev", "spoof-fib"):
                text, _ = ours_text(first=True)
                text += SPOOF_PREV if v == "spoof-prev" else SPOOF_FIB
            if text is not None:
                t = time.perf_counter()
                ns(r, "nft", "-f", "-", input=text, timeout=300)
                self.load_seconds[v] = time.perf_counter() - t
            s = triplet(v)[2]
            proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{s}", "--", sys.executable, "-c", SERVER_CODE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            self.servers[v] = proc
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"server of {v} did not start")
            if v in SPOOF_VARIANTS:  # a listener on the client host: connects from the pod
                c = triplet(v)[0]
                back = subprocess.Popen(
                    ["nsenter", f"--net=/run/netns/{c}", "--", sys.executable, "-c", SERVER_CODE],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                self.servers[f"{v}/back"] = back
                assert back.stdout is not None
                if back.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"client-side listener of {v} did not start")

    def down(self) -> None:
        for proc in self.servers.values():
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.servers.clear()
        cleanup()

    def client(self, v: str, code: str, port: int, seconds: float) -> dict[str, object]:
        out = ns(triplet(v)[0], sys.executable, "-c", code, SERVER, str(port), str(seconds))
        result: dict[str, object] = json.loads(out)
        return result

    def from_pod(self, v: str, code: str, port: int, seconds: float) -> dict[str, object]:
        """``code`` run in the server pod towards the client host."""
        out = ns(triplet(v)[2], sys.executable, "-c", code, CLIENT, str(port), str(seconds))
        result: dict[str, object] = json.loads(out)
        return result


def rounds(variants: Sequence[str], n: int) -> Iterator[list[str]]:
    """ABCD, BCDA, CDAB, …: every variant in every position."""
    vs = list(variants)
    for i in range(n):
        k = i % len(vs)
        yield vs[k:] + vs[:k]


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def measure_dataplane(quick: bool) -> dict[str, dict[str, float]]:
    dp = Dataplane()
    try:
        dp.up(VARIANTS)
        for v, size in dp.sizes.items():
            print(
                f"{v}: {size['rules']} rules, {size['chains']} chains, {size['maps']} dispatch"
                f" maps, {size['elements']} set and map elements",
                flush=True,
            )
        print("loads: " + ", ".join(f"{v} {s:.2f} s" for v, s in dp.load_seconds.items()))
        for v in VARIANTS:  # warm-up: neighbours, caches, a working path
            r = dp.client(v, CONNECT_CODE, CONNECT_PORT, 0.2)
            if r["failed"] or not r["lat"]:
                raise RuntimeError(f"variant {v}: connections fail ({r['failed']})")
        lat: dict[str, list[float]] = {v: [] for v in VARIANTS}
        n_rounds, chunk = (2, 0.3) if quick else (6, 0.8)
        for order in rounds(VARIANTS, n_rounds):
            for v in order:
                r = dp.client(v, CONNECT_CODE, CONNECT_PORT, chunk)
                assert isinstance(r["lat"], list)
                lat[v].extend(r["lat"])
                if r["failed"]:
                    raise RuntimeError(f"variant {v}: {r['failed']} connections failed")
        pod_lat: dict[str, list[float]] = {v: [] for v in SPOOF_VARIANTS}
        for v in SPOOF_VARIANTS:  # warm-up
            dp.from_pod(v, CONNECT_CODE, CONNECT_PORT, 0.2)
        n_rounds, chunk = (2, 0.3) if quick else (6, 0.8)
        for order in rounds(SPOOF_VARIANTS, n_rounds):
            for v in order:
                r = dp.from_pod(v, CONNECT_CODE, CONNECT_PORT, chunk)
                assert isinstance(r["lat"], list)
                pod_lat[v].extend(r["lat"])
                if r["failed"]:
                    raise RuntimeError(
                        f"variant {v}: {r['failed']} connections from the pod failed"
                    )
        bulk_variants = ("none", "ct-only", "ours")
        gbit: dict[str, list[float]] = {v: [] for v in bulk_variants}
        n_rounds, seconds = (1, 0.5) if quick else (6, 1.5)
        for order in rounds(bulk_variants, n_rounds):
            for v in order:
                r = dp.client(v, BULK_CODE, BULK_PORT, seconds)
                gbit[v].append(float(r["bytes"]) * 8 / float(r["seconds"]) / 1e9)  # type: ignore[arg-type]
        return {
            "connect_p50_us": {v: median(x) * 1e6 for v, x in lat.items()},
            "connect_p90_us": {v: sorted(x)[int(len(x) * 0.9)] * 1e6 for v, x in lat.items()},
            "connects": {v: float(len(x)) for v, x in lat.items()},
            "pod_connect_p50_us": {v: median(x) * 1e6 for v, x in pod_lat.items()},
            "gbit": {v: median(x) for v, x in gbit.items()},
        }
    finally:
        dp.down()


# ----------------------------------------------------------------------------- agent


def agent_sync_figures(repeat: int) -> dict[str, Any]:
    """``bench/agent_sync.py --json`` (its own scratch netns; in-process sync loop)."""
    argv = [sys.executable, str(REPO / "bench" / "agent_sync.py"), "--repeat", str(repeat)]
    out = run([*argv, "--json"], timeout=1200)
    for line in out.splitlines():
        if line.startswith("JSON "):
            figures: dict[str, Any] = json.loads(line[5:])
            return figures
    raise RuntimeError(f"bench/agent_sync.py printed no figures:\n{out[-2000:]}")


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no {key} for {pid}")


def agent_process_figures(resync_period: float) -> dict[str, float]:
    """The real agent on the big node, from a policy file in a scratch netns: the log's
    cold and (periodic) warm full syncs, and RSS after the warm one."""
    from tests import agentcases as ac
    from tests.agent_harness import AgentProcess

    netns = f"{PREFIX}-agent"
    run(["ip", "netns", "add", netns])
    run(["ip", "-n", netns, "link", "set", "lo", "up"])
    out: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            agent = AgentProcess(
                netns, ac.NODE, Path(tmp), resync_period=resync_period, drift_period=3600
            )
            with agent:
                agent.start(ac.big_node(), timeout=300)

                def fulls() -> list[dict[str, Any]]:
                    return [
                        r["fields"]
                        for r in agent.log_records()
                        if r["msg"] == "applied" and r["fields"].get("kind") == "full"
                    ]

                agent.wait_for(lambda: len(fulls()) >= 2, "a periodic resync", resync_period + 120)
                time.sleep(0.5)  # status written, memory settled
                cold, warm = fulls()[:2]
                worker = agent.worker_pid()
                for name, rec in (("cold", cold), ("warm", warm)):
                    out[f"{name} ms"] = float(rec["ms"])
                    out[f"{name} compute ms"] = float(rec["phases_ms"]["compute"])
                    out[f"{name} emit ms"] = float(rec["phases_ms"]["emit"])
                out["rss"] = rss_mb(agent.pid)
                out["hwm"] = rss_mb(agent.pid, "VmHWM")
                out["worker rss"] = rss_mb(worker) if worker else float("nan")
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
    return out


# ----------------------------------------------------------------------------- report


@dataclass
class Row:
    figure: str
    measured: str
    goal: str = "—"
    ratio: float | None = None
    ok: bool | None = None

    def line(self) -> str:
        ratio = f"{self.ratio:6.2f}" if self.ratio is not None else f"{'':6}"
        result = {None: "", True: "pass", False: "MISS"}[self.ok]
        return f"{self.figure:46} {self.measured:>26} {self.goal:>9} {ratio}  {result}"


def dataplane_rows(d: dict[str, dict[str, float]]) -> list[Row]:
    p50, gbit = d["connect_p50_us"], d["gbit"]
    ours_ct = p50["ours"] / p50["ct-only"]
    linear_ct = p50["ours-linear"] / p50["ct-only"]
    lin_ours = p50["linear-10k"] / p50["ours"]
    thr = gbit["ours"] / gbit["none"]
    return [
        Row(
            "connect p50: ours / ct-only",
            f"{p50['ours']:.1f} / {p50['ct-only']:.1f} µs",
            "≤ 1.25x",
            ours_ct,
            ours_ct <= 1.25,
        ),
        Row(
            "connect p50: ours-linear / ct-only (before)",
            f"{p50['ours-linear']:.1f} / {p50['ct-only']:.1f} µs",
            ratio=linear_ct,
        ),
        Row(
            "connect p50: ours / ours-linear (dispatch)",
            f"{p50['ours']:.1f} / {p50['ours-linear']:.1f} µs",
            ratio=p50["ours"] / p50["ours-linear"],
        ),
        Row(
            "connect p50: linear-10k / ours",
            f"{p50['linear-10k']:.1f} / {p50['ours']:.1f} µs",
            "≥ 3x",
            lin_ours,
            lin_ours >= 3,
        ),
        Row(
            "connect p50: ours-1st / ct-only (fixed cost)",
            f"{p50['ours-1st']:.1f} / {p50['ct-only']:.1f} µs",
            ratio=p50["ours-1st"] / p50["ct-only"],
        ),
        *spoof_rows(d),
        Row(
            "throughput, 1 TCP flow: ours / none",
            f"{gbit['ours']:.1f} / {gbit['none']:.1f} Gbit/s",
            "≥ 0.9x",
            thr,
            thr >= 0.9,
        ),
    ]


def spoof_rows(d: dict[str, dict[str, float]]) -> list[Row]:
    """Anti-spoofing of every pod (ours-1st) beside the previous chain and the fib check."""
    p50, pod = d["connect_p50_us"], d["pod_connect_p50_us"]
    rows = []
    for other, what in (("spoof-prev", "managed"), ("spoof-fib", "fib")):
        rows.append(
            Row(
                f"antispoof, connect to pod: all / {what}",
                f"{p50['ours-1st']:.1f} / {p50[other]:.1f} µs",
                ratio=p50["ours-1st"] / p50[other],
            )
        )
        rows.append(
            Row(
                f"antispoof, connect from pod: all / {what}",
                f"{pod['ours-1st']:.1f} / {pod[other]:.1f} µs",
                ratio=pod["ours-1st"] / pod[other],
            )
        )
    return rows


def agent_rows(sync: dict[str, Any], proc: dict[str, float]) -> list[Row]:
    member = sync["member add/remove in a 6,000-member set"]
    rows = [
        Row(
            "member add/remove, 6k group: p99 (p50)",
            f"{member['p99'] * 1e3:.2f} ({member['p50'] * 1e3:.2f}) ms",
            "≤ 20 ms",
            member["p99"] / 0.020,
            member["p99"] <= 0.020,
        )
    ]
    for kind in ("warm", "cold"):
        f = sync[f"full sync, {kind}"]
        total, ph = f["seconds"], f["phases"]
        rows.append(
            Row(
                f"full resync, {kind}: total (render + apply)",
                f"{total:.2f} s ({ph['compute']:.2f} + {ph['emit']:.2f})",
                "≤ 1 s",
                total / 1.0,
                total <= 1.0,
            )
        )
    for kind in ("warm", "cold"):
        rows.append(
            Row(
                f"agent process, {kind} full sync (its log)",
                f"{proc[kind + ' ms'] / 1e3:.2f} s ({proc[kind + ' compute ms'] / 1e3:.2f}"
                f" + {proc[kind + ' emit ms'] / 1e3:.2f})",
                "≤ 1 s",
                proc[kind + " ms"] / 1e3,
                proc[kind + " ms"] <= 1e3,
            )
        )
    rows += [
        Row(
            "agent RSS after the resync (peak)",
            f"{proc['rss']:.0f} ({proc['hwm']:.0f}) MB",
            "≤ 80 MB",
            proc["rss"] / 80,
            proc["rss"] <= 80,
        ),
        Row("its libnftables worker, RSS", f"{proc['worker rss']:.0f} MB"),
    ]
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short smoke run")
    p.add_argument("--only", choices=("dataplane", "agent"))
    args = p.parse_args()
    if os.geteuid() != 0 or shutil.which("nft") is None:
        print("needs root, nft and ip netns", file=sys.stderr)
        return 2
    loads = [os.getloadavg()[0]]
    print(
        f"{os.cpu_count()} CPUs, kernel {os.uname().release}, {run(['nft', '--version']).strip()}"
    )
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    rows: list[Row] = []
    raw: dict[str, dict[str, float]] | None = None
    if args.only in (None, "dataplane"):
        raw = measure_dataplane(args.quick)
        rows += dataplane_rows(raw)
        loads.append(os.getloadavg()[0])
    if args.only in (None, "agent"):
        sync = agent_sync_figures(20 if args.quick else 200)
        loads.append(os.getloadavg()[0])
        proc = agent_process_figures(resync_period=5.0)
        loads.append(os.getloadavg()[0])
        rows += agent_rows(sync, proc)
    if raw is not None:
        print(f"\n{'variant':12} {'connect p50':>12} {'p90':>9} {'connects':>9} {'Gbit/s':>8}")
        for v in VARIANTS:
            g = raw["gbit"].get(v)
            print(
                f"{v:12} {raw['connect_p50_us'][v]:9.1f} µs {raw['connect_p90_us'][v]:6.1f} µs"
                f" {raw['connects'][v]:9.0f} {'' if g is None else f'{g:8.1f}'}"
            )
    print(f"\n{'figure':46} {'measured':>26} {'goal':>9} {'ratio':>6}  result")
    for row in rows:
        print(row.line())
    print(
        "\nload average (1 min) at start / after each part: "
        + " / ".join(f"{x:.2f}" for x in loads)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
