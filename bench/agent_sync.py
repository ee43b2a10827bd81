"""Node-agent timings in a scratch network namespace: nft backends, full sync, hot path.

Run as root: ``.venv/bin/python bench/agent_sync.py [--repeat 200]``. It re-executes
itself inside a scratch netns (created and deleted here) and prints one line per figure.
Not a test: nothing is asserted. Figures (targets: docs/performance.md, "Targets and the
reference node"):

* one small transaction (add + delete one element of a 6,000-element set), libnftables
  worker vs ``nft -f -``;
* full sync of a realistic node (100 pods, 20 groups x 50 rules, 20 x 6,000 set
  members = 120k elements): planner + apply, cold (empty caches, empty kernel) and warm
  (the periodic resync);
* a sweep's conntrack reads for 30 re-checked pods: a dump per old mark against one
  ``dump_marks``; and deleting 10 deleted pods' entries: two filtered dumps per IP
  against one walk (2,000 entries in the table);
* hot path: one member added to / removed from a 6,000-member set, from the change to
  the commit, through the sync loop (planner + worker), p50/p99;
* pod add, epoch bump, group and set re-check counters raised, and group rule
  rewrite, same path.

``--json`` adds one last line ``JSON {...}`` with the figures in seconds (what
``bench/dataplane.py`` reads).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NETNS = "ksgbench-agent"
FIGURES: dict[str, object] = {}  # name -> seconds, or {"p50", "p99", "phases"} (--json)


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def ms(xs: list[float]) -> str:
    return f"p50 {pct(xs, 50) * 1e3:.2f} ms, p99 {pct(xs, 99) * 1e3:.2f} ms (n={len(xs)})"


def backends(repeat: int) -> None:
    from secgroups_agent.nftables import LibNftWorker, NftCli

    setup = "add table inet benchx\nadd set inet benchx s { type ipv4_addr; }\n"
    els = ", ".join(f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}" for i in range(6000))
    worker, cli = LibNftWorker(), NftCli()
    worker.apply(setup + f"add element inet benchx s {{ {els} }}\n")
    for name, backend, n in (("libnftables worker", worker, repeat), ("nft -f - (CLI)", cli, 50)):
        times = []
        for i in range(n):
            ip = f"10.250.{i // 250}.{i % 250 + 1}"
            t = time.perf_counter()
            backend.apply(f"add element inet benchx s {{ {ip} }}\n")
            times.append(time.perf_counter() - t)
            t = time.perf_counter()
            backend.apply(f"delete element inet benchx s {{ {ip} }}\n")
            times.append(time.perf_counter() - t)
        print(f"small transaction, {name}: {ms(times)}")
        FIGURES[f"small transaction, {name}"] = {"p50": pct(times, 50), "p99": pct(times, 99)}
    worker.apply("delete table inet benchx\n")
    worker.close()


def sweep_reads(repeat: int) -> None:
    """A sweep's conntrack reads: the old marks of 30 re-checked pods, one exact dump each
    (as before) against ``dump_marks`` (one walk when the table is small enough), side by
    side; 2,000 unrelated entries in the namespace's table (the scratch netns)."""
    import random

    from secgroups_agent.conntrack import NetlinkConntrack, table_entries
    from secgroups_agent.ctnetlink import CtNetlink

    lines = "".join(
        f"-I -s 100.64.200.{i % 250 + 1} -d 100.64.201.1 -p udp --sport {10000 + i}"
        f" --dport 53 -t 600 -m {i % 7 + 1}\n"
        for i in range(2000)
    )
    for line in lines.splitlines():
        subprocess.run(["conntrack", *line.split()], capture_output=True, check=False)
    marks = [random.randrange(1 << 20, 1 << 31) for _ in range(30)]
    port = NetlinkConntrack()
    each: list[float] = []
    once: list[float] = []
    for _ in range(max(3, min(repeat, 20))):
        t = time.perf_counter()
        with CtNetlink() as nl:
            for m in marks:
                nl.dump_mark(m)
        each.append(time.perf_counter() - t)
        t = time.perf_counter()
        port.dump_marks(marks)
        once.append(time.perf_counter() - t)
    a, b = statistics.median(each), statistics.median(once)
    print(
        f"sweep reads, 30 re-checked pods, {table_entries()} entries in the table: "
        f"a dump per mark {a * 1e3:.1f} ms, one dump_marks {b * 1e3:.1f} ms (x{a / b:.1f})"
    )
    FIGURES["sweep reads, 30 marks: a dump each"] = a
    FIGURES["sweep reads, 30 marks: dump_marks"] = b

    # Deleted pods: 10 dual-stack pods' entries (2 each per address), by two tuple-filtered
    # dumps per IP (pyroute2, as before) against one walk (what delete_ips picks here).
    gone = [(f"100.64.210.{i + 1}", f"fd64:210::{i + 1:x}") for i in range(10)]
    ips = [ip for pair in gone for ip in pair]

    def seed() -> None:
        for n, (v4, v6) in enumerate(gone):
            for k in range(2):
                sport = str(20000 + 10 * n + k)
                for src, dst in ((v4, "100.64.201.2"), (v6, "fd64:201::2")):
                    subprocess.run(
                        ["conntrack", "-I", "-s", src, "-d", dst, "-p", "tcp", "--sport", sport,
                         "--dport", "80", "--state", "ESTABLISHED", "-t", "600"],
                        capture_output=True, check=False,
                    )  # fmt: skip

    by_filters: list[float] = []
    one_walk: list[float] = []
    for _ in range(3):
        for xs, call in ((by_filters, port._delete_by_filters), (one_walk, port.delete_ips)):
            seed()
            t = time.perf_counter()
            n = call(ips)
            xs.append(time.perf_counter() - t)
            assert n == 40, n
    a, b = statistics.median(by_filters), statistics.median(one_walk)
    print(
        f"deleted pods' entries, 10 dual-stack pods (40 entries), {table_entries()} in the "
        f"table: two filtered dumps per IP {a * 1e3:.1f} ms, one walk {b * 1e3:.1f} ms "
        f"(x{a / b:.1f})"
    )
    FIGURES["pod deletions, 20 IPs: filtered dumps"] = a
    FIGURES["pod deletions, 20 IPs: one walk"] = b
    subprocess.run(["conntrack", "-F"], capture_output=True, check=False)


def sync_figures(repeat: int) -> None:
    from tests import agentcases as ac
    from tests import nftcases as nc

    from secgroups.compiled import CompiledPolicy
    from secgroups_agent.conntrack import FakeConntrack
    from secgroups_agent.interfaces import FakeInterfaces
    from secgroups_agent.metrics import Metrics
    from secgroups_agent.nftables import LibNftWorker
    from secgroups_agent.planning import Planner
    from secgroups_agent.server import Health
    from secgroups_agent.sources import StaticSource, slice_policy
    from secgroups_agent.status import FakeStatus, StatusReporter
    from secgroups_agent.syncing import SyncConfig, SyncLoop

    t = time.perf_counter()
    policy = ac.big_node()
    print(f"(building the test policy: {time.perf_counter() - t:.2f} s)")
    node = ac.NODE
    ifaces = nc.interfaces(policy.nodes[node].pods)
    gen = [0]

    def snap(p: CompiledPolicy) -> object:
        gen[0] += 1
        return slice_policy(p, node, gen[0])

    async def run() -> None:
        worker = LibNftWorker()
        worker.apply("add table inet scratch\n")  # start the worker outside the timings
        src = StaticSource()
        loop = SyncLoop(
            source=src,
            planner=Planner(node),
            nft=worker,
            conntrack=FakeConntrack(),
            interfaces=FakeInterfaces(ifaces),
            reporter=StatusReporter(FakeStatus(), min_interval=0.0),
            metrics=Metrics(),
            health=Health(),
            config=SyncConfig(drift_period=3600, min_interval=0.0),
        )
        tasks = [asyncio.create_task(loop.run()), asyncio.create_task(src.run(loop.changed))]
        phases: list[dict[str, float]] = []

        def phase_line(figure: str, xs: list[float] | float) -> str:
            keys = ("inputs", "compute", "emit")
            medians = {k: statistics.median(p[k] for p in phases) for k in keys}
            out = ", ".join(f"{k} {v * 1e3:.2f}" for k, v in medians.items())
            phases.clear()
            if isinstance(xs, list):
                FIGURES[figure] = {"p50": pct(xs, 50), "p99": pct(xs, 99), "phases": medians}
            else:
                FIGURES[figure] = {"seconds": xs, "phases": medians}
            return f"  (medians, ms: {out})"

        async def change(p: CompiledPolicy, *, full: bool = False) -> float:
            """The agent-side latency: from the change notification to the commit."""
            if full:
                loop.request_full()
            s = snap(p)
            src.set(s)  # type: ignore[arg-type]
            want = s.generation  # type: ignore[attr-defined]
            while True:
                res = loop.results[-1] if loop.results else None
                if res is not None and res.plan is not None and res.plan.state.generation == want:
                    break
                await asyncio.sleep(0.001)
            assert res.outcome == "applied", res.outcome
            phases.append(res.timings)
            return res.latency

        cold = await change(policy)
        print(f"full sync, cold (render caches empty, empty table): {cold:.3f} s")
        print(phase_line("full sync, cold", cold))
        warm = []
        for _ in range(3):
            warm.append(await change(policy, full=True))
        print(f"full sync, warm (periodic resync): {statistics.median(warm):.3f} s")
        print(phase_line("full sync, warm", statistics.median(warm)))
        key = ac.remote_key(3)
        members = list(policy.sets[key].ipv4)
        cur = policy
        hot: list[float] = []
        for i in range(repeat):
            extra = f"10.99.{i // 250}.{i % 250 + 1}/32"
            cur = ac.with_members(cur, key, [*members, extra])
            hot.append(await change(cur))
            cur = ac.with_members(cur, key, members)
            hot.append(await change(cur))
        print(f"member add/remove in a 6,000-member set: {ms(hot)}")
        print(phase_line("member add/remove in a 6,000-member set", hot))
        pods = list(cur.nodes[node].pods)
        bumps = []
        for i in range(min(repeat, 50)):
            pods[i % len(pods)] = pods[i % len(pods)].model_copy(update={"epoch": i + 1})
            spec = cur.nodes[node].model_copy(update={"pods": tuple(pods)})
            cur = cur.model_copy(update={"nodes": {node: spec}})
            bumps.append(await change(cur))
        print(f"epoch bump of one pod: {ms(bumps)}")
        print(phase_line("epoch bump of one pod", bumps))
        # Re-check counters: every member of a group, or every pod whose groups name a
        # set inbound, re-checked through the group's or the set's object alone.
        counted = []
        for i in range(min(repeat, 50)):
            g = sorted(cur.groups)[i % 20]
            spec_g = cur.groups[g].model_copy(update={"recheck": cur.groups[g].recheck + 1})
            cur = cur.model_copy(update={"groups": {**cur.groups, g: spec_g}})
            counted.append(await change(cur))
        print(f"group counter raised (its members re-checked): {ms(counted)}")
        print(phase_line("group counter raised", counted))
        counted = []
        for _ in range(min(repeat, 50)):
            spec_s = cur.sets[key].model_copy(update={"recheck": cur.sets[key].recheck + 1})
            cur = cur.model_copy(update={"sets": {**cur.sets, key: spec_s}})
            counted.append(await change(cur))
        print(f"set counter raised (pods naming it inbound re-checked): {ms(counted)}")
        print(phase_line("set counter raised", counted))
        adds = []
        groups = sorted(cur.groups)
        for i in range(min(repeat, 50)):
            pod = nc.pod("app", f"new{i}", [f"100.64.9.{i + 2}"], [groups[i % 20]])
            spec = cur.nodes[node].model_copy(update={"pods": (*cur.nodes[node].pods, pod)})
            cur = cur.model_copy(update={"nodes": {node: spec}})
            adds.append(await change(cur))
        print(f"pod add (existing group list): {ms(adds)}")
        print(phase_line("pod add (existing group list)", adds))
        rewrites = []
        for i in range(min(repeat, 50)):
            g = groups[i % 20]
            spec_g = cur.groups[g]
            rules = (*spec_g.ingress[1:], spec_g.ingress[0])  # same rules, other order
            changed = spec_g.model_copy(update={"ingress": rules})
            cur = cur.model_copy(update={"groups": {**cur.groups, g: changed}})
            rewrites.append(await change(cur))
        print(f"group rule rewrite (50 rules): {ms(rewrites)}")
        print(phase_line("group rule rewrite (50 rules)", rewrites))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        worker.apply("delete table inet secgroups\ndelete table inet scratch\n")
        worker.close()

    asyncio.run(run())
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"agent-side process max RSS (planner caches for the big node): {rss:.0f} MiB")
    FIGURES["bench process max RSS MiB"] = rss


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeat", type=int, default=200)
    p.add_argument("--json", action="store_true", help="end with a JSON line of the figures")
    args = p.parse_args()
    if os.environ.get("KSG_BENCH_IN_NETNS") != "1":
        if os.geteuid() != 0:
            print("needs root (network namespaces)", file=sys.stderr)
            return 2
        subprocess.run(["ip", "netns", "del", NETNS], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "add", NETNS], check=True)
        try:
            env = {**os.environ, "KSG_BENCH_IN_NETNS": "1", "PYTHONPATH": str(REPO)}
            return subprocess.run(
                [
                    "nsenter",
                    f"--net=/run/netns/{NETNS}",
                    "--",
                    sys.executable,
                    __file__,
                    "--repeat",
                    str(args.repeat),
                    *(["--json"] if args.json else []),
                ],
                env=env,
                check=False,
            ).returncode
        finally:
            subprocess.run(["ip", "netns", "del", NETNS], check=False)
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    backends(args.repeat)
    sweep_reads(args.repeat)
    sync_figures(args.repeat)
    if args.json:
        print("JSON " + json.dumps(FIGURES), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
