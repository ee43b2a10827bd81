"""Scale benchmark: the operator and the dissemination path at 1,000 nodes / 30,000 pods
(kwok nodes and pods) on the lab's real control plane.

Run as root: ``sudo .venv/bin/python bench/scale.py`` (``--quick`` for a small smoke run;
``--nodes/--pods/--namespaces`` to change the shape; ``--pods-first`` to create every pod
before the operator starts — no RSS steps, and its first start is the cold start;
``--compare epochs`` / ``--compare new-pods`` to measure the churn also with the
operator's ``--recheck-by-epochs`` / ``--new-pods-wait``, side by side). A
script, not a test: it prints the figures with their goals (docs/performance.md,
"Operator at scale") and asserts nothing.
Needs kwok: ``hack/build-binaries.sh kwok`` (v0.8.0 from the Go module proxy, cached like
the control plane; this script builds it if missing).

**The cluster.** A real etcd + kube-apiserver + kube-controller-manager
(``secgroups_lab.controlplane``, prefix ``ksgsc``); the kwok controller fakes the
``--nodes`` Nodes (annotated ``kwok.x-k8s.io/node=fake``, pod CIDRs in 100.100.0.0/14 and
fd64:5ec:100::/40: API objects only, no packet is sent) and the Pods on them (status
Running with IPs from the node's CIDRs). The policy is ``bench/compile.py``'s synthetic
cluster: 50 namespaces × 20 groups (7 selected by app, 3 by tier, 10 by annotation only)
× 20 rules (remote groups of this and other namespaces, IP address groups, CIDRs, every
port form, both families, Allow and Deny), 5 IP address groups per namespace; each pod
in 3-5 groups. Plus one *big node* whose 50 pods each name all 20 groups of their
namespace: a node using 1,000 groups and the sets they reference.

**What is measured**, with the real operator process:

1. RSS of the operator while the pods grow (10k, 20k, 30k), and the time to publish
   each step;
2. restart on a published cluster and from scratch (compiled objects deleted): the
   operator's own figures — initial lists, and everything published N s after them;
3. one pod's churn: a new pod (kwok gives it IPs) to its node object, the writes it
   causes, and the bytes the API server sends to the agents because of it;
4. the watches: ``--nodes`` simulated agents (``--agents N``: the first N nodes' only;
   a thousand listing at once swamp this machine's API server) (the three watches of
   ``secgroups_agent.sources.KubeSource`` each, raw streams counting bytes, no nftables;
   each reports its node object applied in its ``NodeAgentReport`` as soon as it sees it,
   as an agent does after its sync) → the API server's watch count; bytes per change for
   a rule edit too;
5. the big node: a real agent in a netns on the lab underlay — time to apply, rules and
   set elements, its RSS.

The machine has 2 shared cores: the load average is printed with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secgroups.compiled import COMPILED_NODE_KIND, NODE_REPORT_KIND, applied_nodes
from secgroups_kube import AsyncKube
from secgroups_lab import binaries, controlplane, underlay
from secgroups_lab._cmd import in_netns

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import apibench  # type: ignore[import-not-found]  # noqa: E402
from compile import synthetic_cluster  # type: ignore[import-not-found]  # noqa: E402

# Every request of this benchmark: a long deadline (the API server under 30,000 pods), and a
# POST of an object that exists is not an error (phases create what may be there).
req = functools.partial(apibench.req, timeout=120, conflict_ok=True)
pct = apibench.pct

API = "secgroups.dev/v1alpha1"
# --compare: the operator flag, the mode's name with it and without it.
COMPARISONS = {
    "epochs": ("--recheck-by-epochs", "epochs only", "counters"),
    "new-pods": ("--new-pods-wait", "new pods wait", "new pods early"),
}
KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-delete.yaml",
)
COMPILED = ("compiledsecuritygroups", "compiledaddresssets", "compilednodepolicies")


def log(msg: str) -> None:
    load = os.getloadavg()[0]
    print(f"[{time.strftime('%H:%M:%S')} load {load:4.1f}] {msg}", flush=True)


def rss_mb(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]


async def gather_limited(coros: list[Any], limit: int = 32) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> None:
        async with sem:
            await c

    await asyncio.gather(*(one(c) for c in coros))


# --------------------------------------------------------------------------- the cluster


def kwok_config(out: Path) -> Path:
    mod = (
        binaries.cache_dir()
        / "go"
        / "mod"
        / "sigs.k8s.io"
        / f"kwok@{kwok_version()}"
        / "kustomize"
        / "stage"
    )
    docs = [(mod / rel).read_text() for rel in KWOK_STAGES]
    out.write_text("\n---\n".join(docs))
    return out


def kwok_version() -> str:
    return binaries.read_versions()["KWOK_VERSION"]


def kwok_binary() -> Path:
    path = binaries.cache_dir() / "bin" / f"kwok-{kwok_version()}" / "kwok"
    if not path.exists():
        subprocess.run([str(REPO / "hack" / "build-binaries.sh"), "kwok"], check=True)
    return path


def node_obj(i: int, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name},
        },
        "spec": {
            "podCIDR": f"100.{100 + i // 256}.{i % 256}.0/24",
            "podCIDRs": [f"100.{100 + i // 256}.{i % 256}.0/24", f"fd64:5ec:100:{i:x}::/64"],
            "taints": [],
        },
    }


def pod_obj(
    ns: str, name: str, node: str, labels: dict[str, str], groups: str | None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels}
    if groups:
        meta["annotations"] = {"secgroups.dev/security-groups": groups}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "x"}],
            "tolerations": [{"operator": "Exists"}],
        },
    }


def model_obj(model: Any) -> dict[str, Any]:
    data: dict[str, Any] = model.model_dump(by_alias=True, mode="json", exclude_none=True)
    data.pop("status", None)
    meta = data["metadata"]
    data["metadata"] = {k: meta[k] for k in ("name", "namespace") if meta.get(k)}
    return data


def plural_path(kind: str, ns: str | None = None) -> str:
    from secgroups_kube.resources import api_path

    return api_path(kind, ns)


# --------------------------------------------------------------------------- simulated agents


@dataclass
class Watchers:
    """``n`` simulated agents: each the three watches of KubeSource, bytes counted, and
    its node's NodeAgentReport (``report``)."""

    kubeconfig: Path
    nodes: list[str]
    report: bool = True  # each reports what it "applied", as an agent does
    bytes: int = 0
    events: int = 0
    reports: int = 0  # NodeAgentReport applies
    listed: int = 0  # initial lists done
    failures: int = 0  # lists or watches that failed (retried after 1-5 s)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    clients: list[AsyncKube] = field(default_factory=list)

    async def start(self) -> None:
        from secgroups.naming import node_label

        for i, node in enumerate(self.nodes):
            if i % 30 == 0:  # 90 watches per client: its pool holds 100 connections
                self.clients.append(AsyncKube.connect(self.kubeconfig, field_manager="bench"))
            kube = self.clients[-1]
            label = node_label(node)
            for kind, labels, fields in (
                ("CompiledSecurityGroup", label, None),
                ("CompiledAddressSet", label, None),
                ("CompiledNodePolicy", None, f"metadata.name={node}"),
            ):
                own = node if kind == "CompiledNodePolicy" and self.report else None
                self.tasks.append(asyncio.create_task(self._watch(kube, kind, labels, fields, own)))
            if (i + 1) % 25 == 0 or i + 1 == len(self.nodes):
                # 25 agents at a time, as agents starting over minutes would: a thousand
                # agents' initial lists at once time out on 2 cores and retry for ever.
                deadline = time.monotonic() + 300
                while self.listed < len(self.tasks) and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)

    async def _applied(self, kube: AsyncKube, node: str, obj: Mapping[str, Any]) -> None:
        """Report ``obj`` (this node's object) applied at once, as the agent's
        ``KubeReport`` does after its sync (a failed report is counted and dropped)."""
        from secgroups.compiled import NodeAgentStatus
        from secgroups_agent.status import report_body

        meta = obj.get("metadata") or {}
        pods = len((obj.get("spec") or {}).get("pods") or ())
        status = NodeAgentStatus(applied_generation=int(meta.get("generation") or 0), pods=pods)
        try:
            await kube.apply(report_body(node, str(meta["uid"]), status))
            self.reports += 1
        except Exception:
            self.failures += 1

    async def _watch(
        self,
        kube: AsyncKube,
        kind: str,
        labels: str | None,
        fields: str | None,
        reporting: str | None = None,
    ) -> None:
        """List and watch ``kind``; ``reporting``: the node whose object this is (its
        events are parsed and reported applied)."""
        path = plural_path(kind)
        while True:
            try:
                params: dict[str, Any] = {"limit": 500}
                if labels:
                    params["labelSelector"] = labels
                if fields:
                    params["fieldSelector"] = fields
                resp = await kube._http().get(path, params=params, timeout=120)
                # The list's metadata comes last (a custom resource's list has its keys
                # sorted): no need to parse megabytes of items.
                found = re.findall(rb'"resourceVersion":"(\d+)"', resp.content[-2000:])
                if not found:
                    raise RuntimeError(f"no resourceVersion: {resp.content[-300:]!r}")
                rv = found[-1].decode()
                self.bytes += len(resp.content)
                self.listed += 1
                if reporting is not None:  # one small object
                    for item in json.loads(resp.content).get("items") or ():
                        await self._applied(kube, reporting, item)
                del resp, found  # a thousand agents' lists held while watching: gigabytes
                params = {k: v for k, v in params.items() if k != "limit"}
                params.update(
                    watch="true",
                    allowWatchBookmarks="true",
                    resourceVersion=rv,
                    timeoutSeconds=3600,
                )
                async with kube._http().stream("GET", path, params=params, timeout=None) as st:
                    if reporting is None:
                        async for chunk in st.aiter_bytes():
                            self.bytes += len(chunk)
                            self.events += chunk.count(b"\n")
                        continue
                    async for line in st.aiter_lines():
                        self.bytes += len(line) + 1
                        self.events += 1
                        event = json.loads(line)
                        if event.get("type") in ("ADDED", "MODIFIED"):
                            await self._applied(kube, reporting, event["object"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                if self.failures in (1, 100, 1000):
                    log(f"simulated agent: {kind} list/watch failed ({self.failures}): {exc!r}")
                await asyncio.sleep(1.0 + 4 * random.random())

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for c in self.clients:
            await c.close()


@dataclass
class Timeline:
    """When a churn pod's IP and then the pod in its node object are seen, by two watches
    (what an agent sees, without this script's polling in the figure): pods of the churn
    namespaces, and every node object."""

    kube: AsyncKube
    ip: dict[tuple[str, str], float] = field(default_factory=dict)
    on_node: dict[tuple[str, str], float] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self, namespaces: list[str]) -> None:
        for ns in namespaces:
            self.tasks.append(asyncio.create_task(self._watch(plural_path("Pod", ns), self._pod)))
        self.tasks.append(
            asyncio.create_task(self._watch(plural_path("CompiledNodePolicy"), self._node))
        )
        await asyncio.sleep(1.0)

    def _pod(self, obj: dict[str, Any], now: float) -> None:
        meta = obj["metadata"]
        if (obj.get("status") or {}).get("podIP"):
            self.ip.setdefault((meta["namespace"], meta["name"]), now)

    def _node(self, obj: dict[str, Any], now: float) -> None:
        for p in (obj.get("spec") or {}).get("pods", ()):
            if p["name"].startswith("churn-"):
                self.on_node.setdefault((p["namespace"], p["name"]), now)

    async def _watch(self, path: str, on: Any) -> None:
        resp = await self.kube._http().get(path, params={"limit": 1}, timeout=120)
        rv = resp.json()["metadata"]["resourceVersion"]
        params = {"watch": "true", "resourceVersion": rv, "allowWatchBookmarks": "true"}
        async with self.kube._http().stream("GET", path, params=params, timeout=None) as st:
            async for line in st.aiter_lines():
                now = time.monotonic()
                ev = json.loads(line)
                if ev["type"] in ("ADDED", "MODIFIED"):
                    on(ev["object"], now)

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# --------------------------------------------------------------------------- metrics


async def apiserver_metrics(kube: AsyncKube) -> dict[str, float]:
    resp = await kube._http().get("/metrics", timeout=600)
    out: dict[str, float] = {}
    watches = 0.0
    event_bytes = 0.0
    for line in resp.text.splitlines():
        if line.startswith("apiserver_longrunning_requests{") and 'verb="WATCH"' in line:
            watches += float(line.rsplit(" ", 1)[1])
        elif line.startswith("apiserver_watch_events_sizes_sum{"):
            event_bytes += float(line.rsplit(" ", 1)[1])
    out["watches"] = watches
    out["watch_event_bytes"] = event_bytes
    return out


# --------------------------------------------------------------------------- main


async def start_and_publish(
    op: Operator, figure: Any, name: str, timeout: float, *flags: str
) -> None:
    """Start the operator and report its start-up figure: the initial lists, and when
    everything was published after them (with the writes that took)."""
    op.start(*flags)
    m = await op.wait_log(
        r"all compiled objects published: (\d+) objects \((\d+) writes\) ([\d.]+) s after",
        timeout,
    )
    text = op.text()
    lists = re.search(r"initial lists in ([\d.]+) s", text)
    build = re.search(
        r"initial build: \d+ objects in(?: \((\d+) of them[^)]*\))?, \d+ compiled objects, "
        r"([\d.]+) s",
        text,
    )
    total = f"{float(lists[1]) + float(m[3]):.2f}" if lists else "?"
    preloaded = (
        f", {int(build[1]):,} objects compiled during the lists" if build and build[1] else ""
    )
    figure(
        name,
        f"lists {lists[1] if lists else '?'} s; published {m[3]} s after the lists, {total} s "
        f"after the start ({m[2]} writes; initial build {build[2] if build else '?'} s"
        f"{preloaded}); RSS {op.rss():.0f} MB",
        "<= 3 s after the lists",
    )


async def cold_start(op: Operator, figure: Any) -> None:
    """Start the operator on a cluster without compiled objects: every one is written."""
    await start_and_publish(op, figure, "start from scratch (every compiled object written)", 1800)


class Operator:
    def __init__(self, cp: controlplane.ControlPlane, logs: Path) -> None:
        self.cp, self.logs = cp, logs
        self.proc: subprocess.Popen[bytes] | None = None
        self.n = 0

    def start(self, *flags: str) -> Path:
        self.n += 1
        path = self.logs / f"operator-{self.n}.log"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "secgroups_operator.main",
                "--kubeconfig",
                str(self.cp.kubeconfig),
                "--liveness",
                "",
                "--no-webhook",
                *flags,
            ],
            stdout=path.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self.path = path
        return path

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def rss(self) -> float:
        return rss_mb(self.proc.pid) if self.proc else float("nan")

    def text(self) -> str:
        return self.path.read_text(errors="replace")

    async def wait_log(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text())
            if m:
                return m
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError("the operator exited:\n" + self.text()[-3000:])
            await asyncio.sleep(0.5)
        raise RuntimeError(f"no {pattern!r} in the operator log within {timeout} s")

    async def settle(self, after: int, quiet: float = 1.5, timeout: float = 60) -> None:
        """Wait for a round beyond the first ``after`` logged ones, then for ``quiet``
        seconds without another and no node objects in flight (rounds that write nothing
        are not logged). Without the last part a pod deleted whose re-checks rewrite
        hundreds of node objects in the background had them counted as the next pod's."""
        deadline = time.monotonic() + timeout
        n, since = len(self.rounds()), time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            m = len(self.rounds())
            if m != n:
                n, since = m, time.monotonic()
            elif n > after and time.monotonic() - since >= quiet and not self.tail_running():
                return

    def tail_running(self) -> bool:
        """Whether a round's node objects are still being written in the background (the
        operator logs when they start and when they end)."""
        text = self.text()
        return text.count("written in the background") > text.count("(node objects and deletions)")

    def rounds(self) -> list[tuple[int, float, int, float]]:
        """(events, compile ms, writes, publish ms) of every logged round."""
        out = []
        for m in re.finditer(
            r"round: (\d+) events, compile ([\d.]+) ms, (\d+) writes in ([\d.]+) ms", self.text()
        ):
            out.append((int(m[1]), float(m[2]), int(m[3]), float(m[4])))
        return out


async def node_pod_count(kube: AsyncKube) -> int:
    total, cont = 0, None
    while True:
        items, _, cont = await kube.list_page("CompiledNodePolicy", limit=200, cont=cont)
        total += sum(len(o.get("spec", {}).get("pods", ())) for o in items)
        if not cont:
            return total


async def all_running(kube: AsyncKube) -> bool:
    """Whether kwok has every pod Running (one small page: listing 30,000 pods in full
    every poll would cost this script and the API server more than the pods do)."""
    items, _, _ = await kube.list_page("Pod", limit=1, fields="status.phase!=Running")
    return not items


async def bench(args: argparse.Namespace) -> None:
    prefix = args.prefix
    bins = binaries.ensure(binaries.CONTROL_PLANE)
    kwok = kwok_binary()
    cp = controlplane.ControlPlane(
        prefix,
        bins=bins,
        apiserver_args=["--max-requests-inflight=800", "--max-mutating-requests-inflight=400"],
    )
    logs = cp.workdir / "bench-logs"
    op = Operator(cp, logs)
    kwok_proc: subprocess.Popen[bytes] | None = None
    agent: subprocess.Popen[bytes] | None = None
    watchers: Watchers | None = None
    kube: AsyncKube | None = None
    big_netns = f"{prefix}-big"
    figures: list[tuple[str, str, str]] = []

    def figure(name: str, value: str, goal: str = "") -> None:
        figures.append((name, value, goal))
        log(f"FIGURE {name}: {value} {('(goal ' + goal + ')') if goal else ''}")

    # Before the try: a start that fails leaves nothing behind, and one refused because
    # another run of this prefix is live must not tear that run down.
    cp.start()
    try:
        cp.apply_manifests(sorted((REPO / "crds").glob("*.yaml")))
        kube = AsyncKube.connect(cp.kubeconfig, field_manager="bench")
        logs.mkdir(parents=True, exist_ok=True)
        kwok_proc = subprocess.Popen(
            [
                str(kwok),
                f"--kubeconfig={cp.kubeconfig}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--config={kwok_config(logs / 'kwok-stages.yaml')}",
                "--node-ip=100.64.254.99",
                "--cidr=100.100.0.0/14",
            ],
            stdout=(logs / "kwok.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        facts = synthetic_cluster(
            namespaces=args.namespaces, pods_per_ns=args.pods // args.namespaces, nodes=args.nodes
        )
        node_names = [*facts.nodes, "big-node"]
        t = time.monotonic()
        await gather_limited(
            [req(kube, "POST", "/api/v1/nodes", node_obj(i, n)) for i, n in enumerate(node_names)]
        )
        for n in facts.namespaces:
            await req(
                kube,
                "POST",
                "/api/v1/namespaces",
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": n.name, "labels": n.labels},
                },
            )
        objs = [*facts.address_groups, *facts.groups, *facts.rules]
        await gather_limited(
            [
                req(kube, "POST", plural_path(o.kind, o.metadata.namespace), model_obj(o))
                for o in objs
            ]
        )
        log(
            f"{len(node_names)} nodes, {len(facts.groups)} groups, {len(facts.rules)} rules, "
            f"{len(facts.address_groups)} address groups ({time.monotonic() - t:.0f} s)"
        )

        # The operator from an empty cluster; pods arrive in three steps (or, with
        # --pods-first, all before the operator's first start, which is then its cold start).
        if not args.pods_first:
            op.start()
            await op.wait_log(r"all compiled objects published", 600)
        pods = list(facts.pods)
        big = [
            pod_obj(n.name, "big-pod", "big-node", {}, ",".join(f"g{g:02d}" for g in range(20)))
            for n in facts.namespaces
        ]
        steps = [pods[i : i + len(pods) // 3] for i in range(0, len(pods), len(pods) // 3)][:3]
        created = 0
        for k, step in enumerate(steps):
            t = time.monotonic()
            batch = [
                pod_obj(p.namespace, p.name, p.node or "", dict(p.labels), p.groups_annotation)
                for p in step
            ]
            if k == 0:
                batch += big
            await gather_limited(
                [
                    req(kube, "POST", plural_path("Pod", b["metadata"]["namespace"]), b)
                    for b in batch
                ],
                48,
            )
            created += len(batch)
            posted = time.monotonic() - t
            while not await all_running(kube):
                await asyncio.sleep(1)
            ready_at = time.monotonic()
            if args.pods_first:
                log(f"{created:,} pods running ({ready_at - t:.0f} s)")
                continue
            while await node_pod_count(kube) < created:
                await asyncio.sleep(1)
            figure(
                f"operator RSS at {created:,} pods",
                f"{op.rss():.0f} MB (pods created in {posted:.0f} s, "
                f"running in {ready_at - t:.0f} s; "
                f"published {time.monotonic() - ready_at:.1f} s later)",
                "<= 300 MB, flat",
            )
        if args.pods_first:
            await cold_start(op, figure)
        apiserver, etcd = cp.daemons["kube-apiserver"].pid, cp.daemons["etcd"].pid
        figure("API server RSS", f"{rss_mb(apiserver):.0f} MB; etcd {rss_mb(etcd):.0f} MB")

        # Simulated agents: the watch count.
        before = await apiserver_metrics(kube)
        # Not the big node: it gets a real agent (its report must be that agent's).
        others = [n for n in node_names if n != "big-node"]
        simulated = others if args.agents is None else others[: args.agents]
        watchers = Watchers(cp.kubeconfig, simulated)
        t = time.monotonic()
        await watchers.start()
        await asyncio.sleep(5)
        while True:
            now = await apiserver_metrics(kube)
            if (
                now["watches"] - before["watches"] >= 3 * len(simulated)
                or time.monotonic() - t > 300
            ):
                break
            await asyncio.sleep(2)
        figure(
            "API server watches",
            f"{now['watches']:.0f} ({now['watches'] - before['watches']:.0f} from "
            f"{len(simulated)} simulated agents of {len(node_names)} nodes: 3 each; initial lists "
            f"{watchers.bytes / 1e6:.0f} MB in {time.monotonic() - t:.0f} s, 25 agents at a "
            f"time; {watchers.failures} failed and retried; each reports its node object "
            f"applied: {watchers.reports} reports so far)",
            "linear in nodes",
        )
        per_name, cont = 1, None  # the old agent: its node object + one watch per reference
        while True:
            items, _, cont = await kube.list_page("CompiledNodePolicy", limit=200, cont=cont)
            per_name += sum(
                1 + len(o["spec"].get("groups", ())) + len(o["spec"].get("sets", ())) for o in items
            )
            if not cont:
                break
        figure(
            "  watches one per referenced object would take",
            f"{per_name:,} (the agent before this design: one watch per group and set used)",
        )

        # One pod's churn: the pod's IP → its node object; writes; bytes to the agents.
        # Two kinds of pod: one in a group that no Deny rule names (the common case), and
        # one of the synthetic namespaces', whose groups inbound Deny rules name — S-CT-2
        # row 1 then re-checks every member of those groups (their node objects change).
        await req(
            kube,
            "POST",
            "/api/v1/namespaces",
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": "churn", "labels": {"secgroups.dev/enforce": "true"}},
            },
        )
        for obj in (
            {
                "apiVersion": API,
                "kind": "SecurityGroup",
                "metadata": {"name": "web", "namespace": "churn"},
                "spec": {"podSelector": {"matchLabels": {"app": "web"}}},
            },
            {
                "apiVersion": API,
                "kind": "SecurityGroupRule",
                "metadata": {"name": "web-from-web", "namespace": "churn"},
                "spec": {
                    "securityGroup": "web",
                    "direction": "Ingress",
                    "protocol": "TCP",
                    "ports": "80",
                    "remote": {"securityGroup": {"name": "web"}},
                },
            },
        ):
            await req(kube, "POST", plural_path(str(obj["kind"]), "churn"), obj)
        base_nodes = node_names[: min(50, args.nodes)]
        await gather_limited(
            [
                req(
                    kube,
                    "POST",
                    plural_path("Pod", "churn"),
                    pod_obj("churn", f"base-{i}", n, {"app": "web"}, None),
                )
                for i, n in enumerate(base_nodes)
            ]
        )
        while await node_pod_count(kube) < created + len(base_nodes):
            await asyncio.sleep(1)
        timeline = Timeline(kube)
        await timeline.start(["churn", facts.namespaces[0].name])
        variants = [
            (
                "a pod of churn/web (50 members that allow each other)",
                "churn",
                {"app": "web"},
                None,
                "",
            ),
            (
                "a synthetic pod (ns-00: app a0, group g10)",
                facts.namespaces[0].name,
                {"app": "a0"},
                "g10",
                "",
            ),
        ]
        compare = COMPARISONS.get(args.compare or "")
        blocks = [(*v[:4], "", args.churn) for v in variants]
        if compare is not None:
            # The same pods with the operator flag off and on, in the order off, on, on,
            # off (half the pods each: a drift in the machine's load over the blocks
            # weighs on both modes alike), restarted between the blocks (a restart on a
            # published cluster writes nothing): side by side in one run.
            half = max(1, args.churn // 2)
            blocks = [
                (*v[:4], flag, half) for v in variants for flag in ("", compare[0], compare[0], "")
            ]
        compile_ms: list[float] = []  # the operator's compile per churn round, every block
        results: dict[str, dict[str, list[float]]] = {}  # variant -> figure -> samples
        for n_block, (title, ns, labels, groups, flag, count) in enumerate(blocks):
            variant = title
            if compare is not None:
                op.stop()
                mode = compare[1] if flag else compare[2]
                await start_and_publish(
                    op, figure, f"operator restarted ({mode})", 900, *([flag] if flag else [])
                )
                variant = f"{title} [{mode}]"
            block_start = len(op.rounds())
            got = results.setdefault(
                variant, {k: [] for k in ("lat", "writes", "sent", "del_writes", "del_sent")}
            )
            for i in range(count):
                # Names unique per block: the timeline keeps the first time it saw one.
                name = f"churn-{n_block}-{i}"
                node = base_nodes[i % len(base_nodes)]
                r0 = len(op.rounds())
                b0 = watchers.bytes
                await req(
                    kube, "POST", plural_path("Pod", ns), pod_obj(ns, name, node, labels, groups)
                )
                key = (ns, name)
                deadline = time.monotonic() + 60
                while key not in timeline.on_node and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                if key in timeline.on_node and key in timeline.ip:
                    got["lat"].append(timeline.on_node[key] - timeline.ip[key])
                await op.settle(r0)
                got["writes"].append(sum(r[2] for r in op.rounds()[r0:]))
                got["sent"].append(watchers.bytes - b0)
                r0, b0 = len(op.rounds()), watchers.bytes
                await req(
                    kube,
                    "DELETE",
                    f"/api/v1/namespaces/{ns}/pods/{name}",
                    params={"gracePeriodSeconds": 0},
                )
                await op.settle(r0)
                await asyncio.sleep(0.5)  # the agents' watches: the last bytes
                got["del_writes"].append(sum(r[2] for r in op.rounds()[r0:]))
                got["del_sent"].append(watchers.bytes - b0)
            compile_ms += [r[1] for r in op.rounds()[block_start:] if r[2]]
        for variant, got in results.items():
            lat, writes, del_writes = got["lat"], got["writes"], got["del_writes"]
            figure(
                f"one pod's churn, {variant}: IP → its node object",
                f"p50 {pct(lat, 50) * 1000:.0f} ms, p99 {pct(lat, 99) * 1000:.0f} ms "
                f"over {len(lat)} (both ends seen by this script's watches)",
                "<= 50 ms",
            )
            figure(
                "  objects written: the pod created / deleted",
                f"p50 {pct(writes, 50):.0f} / {pct(del_writes, 50):.0f}, "
                f"max {max(writes, default=0):.0f} / {max(del_writes, default=0):.0f}",
                "O(1)",
            )
            figure(
                f"  bytes sent to the {len(simulated)} simulated agents: created / deleted",
                f"p50 {pct(got['sent'], 50) / 1e3:.0f} kB / "
                f"{pct(got['del_sent'], 50) / 1e3:.0f} kB",
            )
        await timeline.stop()
        if compare is not None:  # what follows measures the default operator
            op.stop()
            await start_and_publish(op, figure, f"operator restarted ({compare[2]})", 900)
        figure(
            "  operator compile per churn round",
            f"p50 {pct(compile_ms, 50):.1f} ms, p99 {pct(compile_ms, 99):.1f} ms",
        )

        # A rule edit: bytes to the agents.
        rule_bytes: list[int] = []
        rule_writes: list[int] = []
        for i in range(args.rule_edits):
            r = facts.rules[i * 7 % len(facts.rules)]
            body = model_obj(r)
            body["spec"]["description"] = f"edited {i}"
            body["spec"]["priority"] = 1 + (r.spec.priority % 99)
            b0, r0 = watchers.bytes, len(op.rounds())
            await req(
                kube,
                "PUT",
                plural_path("SecurityGroupRule", r.metadata.namespace) + f"/{r.metadata.name}",
                {
                    **body,
                    "metadata": {
                        **body["metadata"],
                        "resourceVersion": (
                            await req(
                                kube,
                                "GET",
                                plural_path("SecurityGroupRule", r.metadata.namespace)
                                + f"/{r.metadata.name}",
                            )
                        )["metadata"]["resourceVersion"],
                    },
                },
            )
            await op.settle(r0)
            await asyncio.sleep(0.5)
            rule_bytes.append(watchers.bytes - b0)
            rule_writes.append(sum(r[2] for r in op.rounds()[r0:]))
        figure(
            f"  bytes to the {len(simulated)} simulated agents per rule edit",
            f"p50 {pct([float(b) for b in rule_bytes], 50) / 1e3:.0f} kB, "
            f"max {max(rule_bytes, default=0) / 1e3:.0f} kB; objects written p50 "
            f"{pct([float(w) for w in rule_writes], 50):.0f} (a priority change re-checks the "
            "group's members: S-CT-2 row 5)",
        )

        # The big node: a real agent.
        underlay.create_netns(big_netns)
        underlay.attach(prefix, big_netns, "eth0", ["100.64.254.98/24"])
        big_node = await kube.get("CompiledNodePolicy", "big-node")
        spec = (big_node or {}).get("spec", {})
        t = time.monotonic()
        agent = subprocess.Popen(
            in_netns(
                big_netns,
                [
                    sys.executable,
                    "-m",
                    "secgroups_agent.main",
                    "--node",
                    "big-node",
                    "--kubeconfig",
                    str(cp.node_kubeconfig),
                    "--metrics-addr",
                    "127.0.0.1:9750",
                ],
            ),
            stdout=(logs / "agent-big.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        status: dict[str, Any] = {}
        while time.monotonic() - t < 600:
            cnp = await kube.get(COMPILED_NODE_KIND, "big-node")
            report = await kube.get(NODE_REPORT_KIND, "big-node")
            status = (report or {}).get("status") or {}
            if cnp and report and applied_nodes([cnp], [report]):
                break
            await asyncio.sleep(1)
        figure(
            "big node: a real agent applied its policy",
            f"{time.monotonic() - t:.1f} s from the agent's start: "
            f"{len(spec.get('groups', ()))} groups + {len(spec.get('sets', ()))} sets, "
            f"{status.get('rules')} rules, {status.get('setElements')} set elements, "
            f"agent RSS {rss_mb(agent.pid):.0f} MB, 3 watches",
            "a node using 1,000 groups and sets works",
        )

        # Restarts: warm (everything published) and cold (compiled objects deleted).
        op.stop()
        await start_and_publish(op, figure, "restart on a published cluster", 900)
        for i in range(2 if args.compare_preload else 0):  # alternated, the same cluster
            for flags, mode in ((("--no-preload",), "lists compiled at the end"), ((), "preload")):
                op.stop()
                await start_and_publish(op, figure, f"restart {i + 1}, {mode}", 900, *flags)
        if not args.pods_first:
            op.stop()
            for plural in COMPILED:
                cp.kubectl("delete", plural, "--all", "--wait=false", timeout=600)
            await asyncio.sleep(5)
            await cold_start(op, figure)
        await asyncio.sleep(30)
        figure("operator RSS, steady, 30 s later", f"{op.rss():.0f} MB", "<= 300 MB, flat")
        costs = await apibench.request_totals(kube, timeout=600)
        figure(
            "API server: writes of the compiled kinds, the whole run (count × mean)",
            apibench.describe_totals(costs, lambda k: k[1].startswith("compiled")),
        )

        print()
        load = os.getloadavg()
        print(
            f"scale: {args.nodes} nodes + the big node, {len(pods) + len(big)} pods; "
            f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
        )
        for name, value, goal in figures:
            print(f"  {name:<48} {value}" + (f"   [goal {goal}]" if goal else ""))
    finally:
        if watchers is not None:
            await watchers.stop()
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
        op.stop()
        if kwok_proc is not None:
            kwok_proc.terminate()
            try:
                kwok_proc.wait(15)
            except subprocess.TimeoutExpired:
                kwok_proc.kill()
        if kube is not None:
            await kube.close()
        if underlay.netns_exists(big_netns):
            underlay.delete_netns(big_netns)
        if args.keep_logs and logs.exists():
            shutil.copytree(logs, args.keep_logs, dirs_exist_ok=True)
        cp.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prefix", default="ksgsc")
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--pods", type=int, default=30000)
    p.add_argument("--namespaces", type=int, default=50)
    p.add_argument("--churn", type=int, default=30)
    p.add_argument("--rule-edits", type=int, default=10)
    p.add_argument(
        "--pods-first",
        action="store_true",
        help="create every pod before the operator starts (no RSS steps; its first start is "
        "the cold start)",
    )
    p.add_argument("--keep-logs", help="copy the operator's and agents' logs here")
    p.add_argument(
        "--agents",
        type=int,
        help="simulate the agents of the first N nodes only (default: every node); the "
        "bytes per change are then those N agents'",
    )
    p.add_argument(
        "--compare",
        choices=sorted(COMPARISONS),
        help="measure the churn with an operator flag on and off, side by side: epochs — "
        "--recheck-by-epochs (re-checks through pod epochs only, as before counters); "
        "new-pods — --new-pods-wait (a new pod's node object waits for its sets' latest "
        "specs, as before)",
    )
    p.add_argument(
        "--compare-preload",
        action="store_true",
        help="after the restart, restart twice more in each mode, alternated: with the "
        "operator's --no-preload (the lists compiled only once all are in) and without",
    )
    p.add_argument("--quick", action="store_true", help="100 nodes, 5 namespaces, 3,000 pods")
    args = p.parse_args()
    if args.quick:
        args.nodes, args.pods, args.namespaces, args.churn, args.rule_edits = 100, 3000, 5, 10, 3
    if os.geteuid() != 0:
        print("needs root (the lab's network namespaces)", file=sys.stderr)
        return 2
    asyncio.run(bench(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
