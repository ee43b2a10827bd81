"""CNI benchmark: how long ``secgroups-cni`` ADD takes with the agent warm, and how long a
new pod stays behind the fail-closed placeholder before its own policy is in force.

Run as root: ``sudo .venv/bin/python bench/cni.py`` (``--pods 40``; ``--quick``). A script,
not a test: it prints figures and asserts nothing (docs/cni.md, "Figures").

The lab (``secgroups_lab.cluster.LabCluster(cni=True)``, prefix ``ksgcb``): a real control
plane, 2 nodes, the real operator and agents; the simulated kubelet runs the real plugin
binary for every pod, as a runtime does. Pods are created one after the other on node 1
(each waits for the previous one's readiness condition), in an enforced namespace (the
ADD waits for the placeholder's commit) and in a namespace that is not enforced (the ADD
waits for a commit that changes nothing). Three figures per pod, from the logs:

* **ADD** — the plugin process, start to exit, as the runtime waits for it (simulated
  kubelet: ``CNI ADD``): exec, connect, the agent's answer;
* **agent** — from the request to the answer inside the agent (``pod network opened``):
  one sync (plan + nft transaction); the conntrack clean-up of the addresses runs after
  it, beside the answer (the placeholder stays until it is done);
* **placeholder → policy** — from the ADD to the commit that lifted the placeholder
  (``placeholder lifted``): the runtime returns, the simulated kubelet writes the pod's
  IPs, the operator compiles and publishes, the agent applies.

``--isolated`` measures the ADD alone: one agent in a scratch network namespace with a
policy file (no API server, no operator; every namespace enforced), the plugin binary run
for ``--pods`` addresses in turn (each ADD puts one more address behind the placeholder:
one sync, one nft transaction), then DEL for each.

Everything shares the machine's cores with whatever else runs: the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from secgroups_lab.cluster import LabCluster

NS, OPEN = "cnib", "cnib-open"
GATE = "secgroups.dev/policy-applied"


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def line(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:<34} (no samples)"
    return (
        f"{name:<34} n={len(values):<4} p50 {statistics.median(values):7.1f} ms   "
        f"p99 {pct(values, 99):7.1f} ms   max {max(values):7.1f} ms"
    )


def pod(name: str, namespace: str, node: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "nodeName": node,
                "readinessGates": [{"conditionType": GATE}],
                "containers": [{"name": "app", "image": "localhost/probe"}],
            },
        }
    )


def applied(lab: LabCluster, name: str, namespace: str) -> bool:
    out = lab.kubectl("get", "pod", "-n", namespace, name, "-o", "json", check=False)
    try:
        conds = json.loads(out)["status"].get("conditions") or ()
    except (ValueError, KeyError):
        return False
    return any(c.get("type") == GATE and c.get("status") == "True" for c in conds)


def wait(what: str, check: object, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {what}")
        time.sleep(0.05)


def figures(log: Path, pattern: str, keys: set[str]) -> list[float]:
    out = []
    for text in log.read_text(errors="replace").splitlines():
        m = re.search(pattern, text)
        if m and m.group(1) in keys:
            out.append(float(m.group(2)))
    return out


def agent_ms(log: Path, msg: str, keys: set[str]) -> list[float]:
    out = []
    for text in log.read_text(errors="replace").splitlines():
        if not text.startswith("{"):
            continue
        rec = json.loads(text)
        f = rec.get("fields") or {}
        if rec.get("msg") == msg and f.get("pod") in keys:
            out.append(float(f["ms"]))
    return out


def plugin_call(plugin: Path, socket: Path, command: str, i: int) -> float:
    """Run the plugin once as a runtime does; seconds it took (SystemExit if it failed)."""
    ip4, ip6 = f"100.64.{200 + i // 250}.{2 + i % 250}", f"fd64:5ec:0:c8::{i + 2:x}"
    conf = {
        "cniVersion": "1.0.0", "name": "bench", "type": "secgroups-cni",
        "socket": str(socket), "timeoutSeconds": 30,
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": f"vethb{i}"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [
                {"address": f"{ip4}/32", "interface": 1},
                {"address": f"{ip6}/128", "interface": 1},
            ],
        },
    }  # fmt: skip
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
        "CNI_CONTAINERID": f"bench-{i}", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
        "CNI_PATH": str(plugin.parent),
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;"
        f"K8S_POD_NAME=p{i};K8S_POD_UID=uid-{i}",
    }  # fmt: skip
    t0 = time.monotonic()
    done = subprocess.run(
        [str(plugin)], input=json.dumps(conf), env=env, capture_output=True, text=True, check=False
    )
    took = time.monotonic() - t0
    if done.returncode != 0:
        raise SystemExit(f"{command} {i} failed: {done.stdout} {done.stderr}")
    return took


def isolated(n: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' agent harness
    from tests.agent_harness import AgentProcess

    from secgroups.compiled import CompiledPolicy
    from secgroups_lab.cnibin import build_plugin

    plugin = build_plugin()
    netns = "ksgcbi"
    subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", netns], check=True)
    work = Path(tempfile.mkdtemp(prefix="ksg-cni-bench-"))
    socket = work / "cni.sock"
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        extra = ["--cni-socket", str(socket), "--enforced-namespaces", "*"]
        with AgentProcess(netns, "n1", work, min_sync_interval=0.05, extra_args=extra) as agent:
            agent.start(CompiledPolicy())
            for i in range(3):  # warm-up
                plugin_call(plugin, socket, "ADD", 1000 + i)
            adds = [plugin_call(plugin, socket, "ADD", i) * 1000 for i in range(n)]
            dels = [plugin_call(plugin, socket, "DEL", i) * 1000 for i in range(n)]
            load = os.getloadavg()
            print(f"isolated agent, {n} pods; load average {load[0]:.1f} {load[1]:.1f}")
            print(line("ADD (plugin process, end to end)", adds))
            print(
                line(
                    "ADD inside the agent",
                    agent_ms(
                        agent.log_file, "pod network opened", {f"bench/p{i}" for i in range(n)}
                    ),
                )
            )
            print(line("DEL (plugin process, end to end)", dels))
            phases: dict[str, list[float]] = {}
            for rec in agent.log_records():
                f = rec.get("fields") or {}
                if rec.get("msg") == "pod network opened" and f.get("phases_ms"):
                    for k, v in zip(("bind", "commit"), f["phases_ms"], strict=False):
                        phases.setdefault(f"ADD: {k}", []).append(float(v))
                if rec.get("msg") == "applied":
                    f = rec.get("fields") or {}
                    for k, v in {"sync": f.get("ms"), **(f.get("phases_ms") or {})}.items():
                        phases.setdefault(str(k), []).append(float(v or 0))
            for k, v in phases.items():
                print(line(f"  {k}" if k.startswith("ADD") else f"  sync: {k}", v))
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pods", type=int, default=40, help="pods per namespace (default 40)")
    p.add_argument("--quick", action="store_true", help="5 pods per namespace")
    p.add_argument("--isolated", action="store_true", help="one agent, no cluster: ADD alone")
    args = p.parse_args()
    n = 5 if args.quick else args.pods
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.isolated:
        isolated(n)
        return 0
    lab = LabCluster(prefix="ksgcb", nodes=2, cni=True, progress=print)
    lab.up()
    try:
        lab.kubectl(
            "apply", "-f", "-",
            input_text=f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}, labels: {{secgroups.dev/enforce: "true"}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: {OPEN}}}
""",
        )  # fmt: skip
        node = f"{lab.prefix}-n1"
        names: dict[str, list[str]] = {NS: [], OPEN: []}
        t0 = time.monotonic()
        for i in range(n + 2):  # two warm-up pods per namespace, left out of the figures
            for ns in (NS, OPEN):
                name = f"p{i}"
                lab.kubectl("apply", "-f", "-", input_text=pod(name, ns, node))
                wait(f"{ns}/{name} applied", lambda n=name, s=ns: applied(lab, n, s))
                if i >= 2:
                    names[ns].append(f"{ns}/{name}")
        took = time.monotonic() - t0
        load = os.getloadavg()
        logs = lab.workdir / "logs"
        kubelet, agent = logs / "sim-kubelet.log", logs / f"agent-{node}.log"
        print(f"\n{2 * n} pods measured in {took:.0f} s; load average {load[0]:.1f} {load[1]:.1f}")
        for ns, label in ((NS, "enforced"), (OPEN, "not enforced")):
            keys = set(names[ns])
            print(f"-- namespace {ns} ({label})")
            print(
                line(
                    "ADD (plugin process, end to end)",
                    figures(kubelet, r"CNI ADD (\S+): ([\d.]+) ms", keys),
                )
            )
            print(line("ADD inside the agent", agent_ms(agent, "pod network opened", keys)))
            if ns == NS:
                print(line("placeholder -> policy", agent_ms(agent, "placeholder lifted", keys)))
    finally:
        lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
