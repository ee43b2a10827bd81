"""nft renderer benchmark: render, transaction text, and ``nft -f`` load of a realistic node.

Run: ``.venv/bin/python bench/nft_render.py [--repeat N]`` (as root for the load figures;
they run in a scratch netns created and deleted here). A script, not a test: it prints
one line per figure and asserts nothing.

The node is the reference node of docs/performance.md: 100 dual-stack pods, each in 2-3
of 20 groups of 50 rules (remote groups, CIDRs, port lists, ICMP, both families), 20
remote groups of 6,000 member IPs each (120k set elements). Targets (same page): full resync
of such a node < 1 s (the prototype's kernel part: 449 ms); pod add, epoch bump and a
50-rule group rewrite in milliseconds.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import nftcases as nc  # noqa: E402

from secgroups.compiled import CompiledPolicy  # noqa: E402
from secgroups.models import Action, Direction, IPFamily  # noqa: E402
from secgroups.nft.rendering import clear_cache, render  # noqa: E402
from secgroups.nft.transactions import diff_transaction, full_transaction  # noqa: E402

NETNS = f"sgnftbench{os.getpid()}"


def realistic_node(seed: int = 1) -> tuple[CompiledPolicy, dict[str, str]]:
    rnd = random.Random(seed)
    sets = []
    base = int(ipaddress.IPv4Address("100.96.0.0"))
    for s in range(20):
        ips = sorted(rnd.sample(range(s * 65536, s * 65536 + 65536), 6000))
        members = [str(ipaddress.IPv4Address(base + i)) for i in ips]
        v4 = [
            str(n) for n in ipaddress.collapse_addresses(ipaddress.ip_network(m) for m in members)
        ]
        sets.append(nc.sg_set("bench", f"remote-{s}", v4))
    groups = []
    for g in range(20):
        rules = []
        for r in range(50):
            rid, direction = f"bench/g{g}-r{r}", Direction.INGRESS if r % 3 else Direction.EGRESS
            action = Action.DENY if r % 7 == 0 else Action.ALLOW
            kind = r % 5
            if kind in (0, 1):
                rules.append(
                    nc.rule(
                        rid,
                        direction,
                        "TCP",
                        [rnd.randrange(1, 60000)],
                        nc.ref(sets[(g + r) % 20][0]),
                        action=action,
                        priority=1 + r,
                    )
                )
            elif kind == 2:
                rules.append(
                    nc.rule(
                        rid,
                        direction,
                        "UDP",
                        [53, (8000, 8100)],
                        nc.cidr(f"203.0.{r}.0/24"),
                        action=action,
                        priority=1 + r,
                    )
                )
            elif kind == 3:
                rules.append(
                    nc.rule(
                        rid,
                        direction,
                        "TCP",
                        [22, 80, 443],
                        action=action,
                        priority=1 + r,
                        family=IPFamily.IPV6,
                    )
                )
            else:
                rules.append(
                    nc.rule(rid, direction, "ICMP", icmp_type=8, action=action, priority=1 + r)
                )
        groups.append(nc.group("bench", f"group-{g}", rules))
    pods = []
    for p in range(100):
        chosen = rnd.sample([k for k, _ in groups], rnd.choice((2, 3)))
        pods.append(
            nc.pod(
                "bench",
                f"pod-{p:03}",
                (f"100.64.{p // 250}.{p % 250 + 1}", f"fd64:5ec::{p + 1:x}"),
                chosen,
                epoch=rnd.randrange(3),
            )
        )
    return nc.policy(groups, sets, pods), nc.interfaces(pods)


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def nft_load(text: str) -> float:
    t = time.perf_counter()
    subprocess.run(
        ["ip", "netns", "exec", NETNS, "nft", "-f", "-"],
        input=text,
        text=True,
        check=True,
        timeout=120,
    )
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    policy, ifaces = realistic_node()
    ms = 1000.0

    def cold() -> object:
        clear_cache()
        return render(policy, nc.NODE, ifaces)

    t_cold, _ = timed(cold, args.repeat)
    t_render, _ = timed(lambda: render(policy, nc.NODE, ifaces), args.repeat)
    ruleset = render(policy, nc.NODE, ifaces)
    t_text, text = timed(lambda: full_transaction(ruleset), args.repeat)
    assert isinstance(text, str)
    size = f"{ruleset.rule_count} rules, {ruleset.element_count} set elements"
    print(f"node: {len(ruleset.chains)} chains, {size}, transaction {len(text) / 1e6:.1f} MB")
    print(f"render, cold (empty address-set cache)   {t_cold * ms:8.1f} ms")
    print(f"render, warm (agent re-render)           {t_render * ms:8.1f} ms")
    print(f"full_transaction text                    {t_text * ms:8.1f} ms")

    pods = list(policy.nodes[nc.NODE].pods)
    new_pod = nc.pod("bench", "pod-new", ("100.64.9.9", "fd64:5ec::999"), pods[0].groups)
    with_pod = policy.model_copy(
        update={
            "nodes": {nc.NODE: policy.nodes[nc.NODE].model_copy(update={"pods": (*pods, new_pod)})}
        }
    )
    bumped_pods = tuple(
        p.model_copy(update={"epoch": p.epoch + 1}) if i < 10 else p for i, p in enumerate(pods)
    )
    bumped = policy.model_copy(
        update={"nodes": {nc.NODE: policy.nodes[nc.NODE].model_copy(update={"pods": bumped_pods})}}
    )
    set_key = next(iter(policy.sets))
    spec = policy.sets[set_key]
    member_gone = bumped.model_copy(
        update={"sets": {**policy.sets, set_key: spec.model_copy(update={"ipv4": spec.ipv4[1:]})}}
    )
    g_key = next(iter(policy.groups))
    g = policy.groups[g_key]
    rewritten = policy.model_copy(
        update={
            "groups": {
                **policy.groups,
                g_key: g.model_copy(update={"ingress": tuple(reversed(g.ingress))}),
            }
        }
    )
    changes = {
        "pod add (1 dual-stack pod)": (
            with_pod,
            {**ifaces, "100.64.9.9": "veth-new", "fd64:5ec::999": "veth-new"},
        ),
        "epoch bump of 10 pods": (bumped, ifaces),
        "member removed from a 6k set + 10 bumps": (member_gone, ifaces),
        "50-rule group rewrite": (rewritten, ifaces),
    }
    diffs = {}
    for name, (pol, ifs) in changes.items():
        new = render(pol, nc.NODE, ifs)
        t_diff, diff = timed(lambda new=new: diff_transaction(ruleset, new), args.repeat)
        assert isinstance(diff, str)
        diffs[name] = (new, diff)
        print(f"diff: {name:38} {t_diff * ms:8.1f} ms  ({len(diff.splitlines())} lines)")

    if os.geteuid() != 0 or shutil.which("nft") is None:
        print("nft load figures skipped: needs root and nft")
        return
    subprocess.run(["ip", "netns", "add", NETNS], check=True, timeout=30)
    try:
        cold = nft_load(text)
        warm = statistics.median(nft_load(text) for _ in range(args.repeat))
        print(f"nft -f full transaction, empty kernel    {cold * ms:8.1f} ms")
        print(f"nft -f full transaction, resync (warm)   {warm * ms:8.1f} ms")
        for name, (_, diff) in diffs.items():
            subprocess.run(
                ["ip", "netns", "exec", NETNS, "nft", "flush", "ruleset"], check=True, timeout=60
            )
            nft_load(text)
            took = nft_load(diff)
            print(f"nft -f diff: {name:32} {took * ms:8.1f} ms  (CLI, incl. process start)")
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False, timeout=30)


if __name__ == "__main__":
    main()
