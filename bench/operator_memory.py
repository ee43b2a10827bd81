"""Where the operator's memory goes, per pod and per rule: ``python bench/operator_memory.py``.

The operator's own pieces in one process — the reflectors, the intake, the reconciler
with its incremental compiler, the publisher and the status writer (``main.Operator``) —
on a lean in-process API port (:class:`LeanCluster`) instead of an API server: list pages
and watch events are parsed from JSON text the way the client parses the API server's
(one ``json.loads`` per page, one per watch event), writes are answered and forgotten —
but a status write comes back through the watch as the API server sends it (the object
with its new status, as a MODIFIED event). So the process holds what the operator holds,
plus the interpreter and its imports.

The cluster is ``bench/compile.py``'s synthetic one, as ``bench/scale.py`` creates it:
50 namespaces × 20 groups × 20 rules (1,000 groups, 20,000 rules, 250 IP address groups),
1,000 nodes plus the *big node* and its 50 pods. Pods are realistic v1 Pod JSON as the
API server returns a kwok pod (no managedFields): labels with a ``pod-template-hash``,
the groups annotation, an ownerReference, the usual spec defaults, four conditions, a
container status, ``status.podIPs`` (IPv4 and IPv6). The objects are written to a temp
directory by a child process first, so the synthetic cluster's models never sit in the
measured process.

Phases, each measured after a full garbage collection once everything is compiled and
published: the policy with no pod; pods arriving as watch events in three equal steps
(10,050 / 20,050 / 30,050 at full size); then, in a fresh child process, the **cold
start** on all pods at once (the peak RSS, VmHWM, is the list pages and the build held
together); then, in another child, the **restart** on what the cold start published:
its lists hold every compiled object as the cold start left it, so nothing is written,
and the time from the lists to everything published is the initial build's (the
restart goal: ≤ 3 s after the lists; ``bench/scale.py`` measures it with an API
server). Printed: RSS (``/proc/self/status``), the slope in kB per pod between the
first and the last step, and with ``--sites N`` the top N allocation sites of the pods
(``tracemalloc``: the growth between the first and last steps, by file and line) and of
the policy (no pod). tracemalloc slows the run about 3× and adds its own bookkeeping to
RSS, so RSS figures of a ``--sites`` run are not comparable with a plain run.

``--quick``: 5 namespaces (2,000 rules), 100 nodes, 3,000 pods — under 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
INPUT_ORDER = ("Namespace", "Node", "SecurityGroup", "SecurityGroupRule", "IPAddressGroup", "Pod")
COMPILED_ORDER = ("CompiledSecurityGroup", "CompiledAddressSet", "CompiledNodePolicy")
ECHOED = ("SecurityGroup", "SecurityGroupRule", "IPAddressGroup")  # their status writes
API = "secgroups.dev/v1alpha1"
STAMP = "2026-12-07T05:00:00Z"


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- the objects


def _uid(kind: str, i: int) -> str:
    h = f"{abs(hash((kind, i))) & 0xFFFFFFFFFFFFFFFFFFFFFFFF:024x}"
    return f"{i & 0xFFFFFFFF:08x}-{h[:4]}-4{h[4:7]}-8{h[7:10]}-{h[12:24]}"


def pod_json(
    i: int, ns: str, name: str, node: str, labels: dict[str, str], groups: str | None
) -> dict[str, Any]:
    """A Running kwok pod as the API server returns it (no managedFields)."""
    template = f"{abs(hash((ns, labels.get('app', '')))) % 16**9:09x}"
    owner = f"{labels.get('app', name)}-{template}"
    annotations = {"kwok.x-k8s.io/fake": "true"}
    if groups:
        annotations["secgroups.dev/security-groups"] = groups
    v4 = f"100.{100 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"
    v6 = f"fd64:5ec:100:{i >> 16:x}::{i & 0xFFFF:x}"
    host = f"100.64.{(hash(node) >> 8) & 255}.{hash(node) & 255}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "generateName": f"{owner}-",
            "namespace": ns,
            "uid": _uid("Pod", i),
            "resourceVersion": "0",
            "creationTimestamp": STAMP,
            "labels": {**labels, "pod-template-hash": template},
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": owner,
                    "uid": _uid("ReplicaSet", hash(owner) & 0xFFFFFF),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "volumes": [
                {
                    "name": "kube-api-access-x7k2p",
                    "projected": {
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {
                                "configMap": {
                                    "name": "kube-root-ca.crt",
                                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                }
                            },
                        ],
                        "defaultMode": 420,
                    },
                }
            ],
            "containers": [
                {
                    "name": "app",
                    "image": "registry.example/app:1.4.2",
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                    "volumeMounts": [
                        {
                            "name": "kube-api-access-x7k2p",
                            "readOnly": True,
                            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                        }
                    ],
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent",
                }
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "nodeName": node,
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [{"operator": "Exists"}],
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": STAMP}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "hostIP": host,
            "hostIPs": [{"ip": host}],
            "podIP": v4,
            "podIPs": [{"ip": v4}, {"ip": v6}],
            "startTime": STAMP,
            "containerStatuses": [
                {
                    "name": "app",
                    "state": {"running": {"startedAt": STAMP}},
                    "lastState": {},
                    "ready": True,
                    "restartCount": 0,
                    "image": "registry.example/app:1.4.2",
                    "imageID": "",
                    "started": True,
                }
            ],
            "qosClass": "Burstable",
        },
    }


def node_json(i: int, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": _uid("Node", i),
            "resourceVersion": "0",
            "creationTimestamp": STAMP,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
        },
        "spec": {
            "podCIDR": f"100.{100 + i // 256}.{i % 256}.0/24",
            "podCIDRs": [f"100.{100 + i // 256}.{i % 256}.0/24", f"fd64:5ec:100:{i:x}::/64"],
        },
        "status": {
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "conditions": [
                {"type": "Ready", "status": "True", "lastHeartbeatTime": STAMP, "reason": "x"}
            ],
            "addresses": [{"type": "InternalIP", "address": "100.64.0.1"}],
            "nodeInfo": {"kubeletVersion": "fake", "operatingSystem": "linux"},
        },
    }


def write_objects(out: Path, namespaces: int, nodes: int, pods: int) -> None:
    """Write the synthetic cluster as JSON lines, one file per kind (a child process)."""
    sys.path.insert(0, str(REPO / "bench"))
    from compile import synthetic_cluster  # type: ignore[import-not-found]

    facts = synthetic_cluster(namespaces=namespaces, pods_per_ns=pods // namespaces, nodes=nodes)
    files = {k: (out / f"{k}.jsonl").open("w") for k in INPUT_ORDER}

    def put(kind: str, obj: Mapping[str, Any]) -> None:
        files[kind].write(json.dumps(obj, separators=(",", ":")) + "\n")

    for i, n in enumerate((*facts.nodes, "big-node")):
        put("Node", node_json(i, n))
    for i, ns in enumerate(facts.namespaces):
        meta = {"name": ns.name, "uid": _uid("Namespace", i), "resourceVersion": "0"}
        put(
            "Namespace",
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {**meta, "creationTimestamp": STAMP, "labels": dict(ns.labels)},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            },
        )
    for i, o in enumerate((*facts.address_groups, *facts.groups, *facts.rules)):
        data = o.model_dump(by_alias=True, mode="json", exclude_none=True)
        data.pop("status", None)
        data["metadata"] = {
            "name": o.metadata.name,
            "namespace": o.metadata.namespace,
            "uid": _uid(o.kind, i),
            "resourceVersion": "0",
            "generation": 1,
            "creationTimestamp": STAMP,
        }
        put(o.kind, data)
    # Pods in the order bench/scale.py creates them: the big node's with the first step.
    steps = 3
    per = len(facts.pods) // steps
    k = 0
    for s in range(steps):
        if s == 0:
            for ns in facts.namespaces:
                groups = ",".join(f"g{g:02d}" for g in range(20))
                put("Pod", pod_json(2**20 + k, ns.name, "big-pod", "big-node", {}, groups))
        for p in facts.pods[s * per : (s + 1) * per]:
            put(
                "Pod",
                pod_json(k, p.namespace, p.name, p.node or "", dict(p.labels), p.groups_annotation),
            )
            k += 1
    for f in files.values():
        f.close()


# --------------------------------------------------------------------------- the API port


class LeanCluster:
    """The operator's ``Cluster`` port without an API server: lists and watches read
    JSON lines from files (a page at a time, parsed as the client parses a response),
    writes are answered with the metadata the publisher reads and then forgotten."""

    def __init__(
        self, objects: Path, listed: Mapping[str, int], record: IO[str] | None = None
    ) -> None:
        self.objects = objects
        self.record = record  # each write of a compiled object, as a JSON line (restart)
        # A status write comes back through the watch, as the API server sends it: the
        # object (read again from its file) with the new status and resourceVersion.
        self.offsets: dict[tuple[str, str, str], int] = {}
        for kind in ECHOED:
            path = objects / f"{kind}.jsonl"
            with path.open("rb") as f:
                while line := f.readline():
                    meta = json.loads(line)["metadata"]
                    self.offsets[(kind, meta.get("namespace", ""), meta["name"])] = f.tell() - len(
                        line
                    )
        self.listed = dict(listed)  # kind → how many of its lines the initial list has
        self.rv = 1000
        self.queues: dict[str, asyncio.Queue[tuple[str, dict[str, Any]]]] = {}
        self.generations: dict[tuple[str, str], int] = {}
        self.writes = 0
        self.status_writes = 0
        self.creates = 0
        self._files: dict[str, IO[str]] = {}

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _line(self, kind: str) -> str | None:
        f = self._files.get(kind)
        if f is None:
            path = self.objects / f"{kind}.jsonl"
            if not path.exists():
                return None
            f = self._files[kind] = path.open()
        return f.readline() or None

    async def list_page(
        self,
        kind: str,
        *,
        limit: int,
        cont: str | None = None,
        labels: str | None = None,
        fields: str | None = None,
    ) -> Any:
        from secgroups_kube.reflector import Page

        await asyncio.sleep(0)
        start = int(cont or 0)
        left = self.listed.get(kind, 0) - start
        lines = []
        for _ in range(min(limit, max(0, left))):
            line = self._line(kind)
            if line is None:
                break
            lines.append(line)
        items: list[dict[str, Any]] = json.loads("[" + ",".join(lines) + "]")
        for obj in items:
            obj["metadata"]["resourceVersion"] = self._next_rv()
        nxt = start + len(lines)
        more = len(lines) == limit and nxt < self.listed.get(kind, 0)
        return Page(items, str(self.rv), str(nxt) if more else None)

    def feed(self, kind: str, count: int) -> int:
        """Queue the next ``count`` objects of ``kind`` as ADDED watch events (JSON text)."""
        q = self.queues.setdefault(kind, asyncio.Queue())
        n = 0
        for _ in range(count):
            line = self._line(kind)
            if line is None:
                break
            q.put_nowait(("ADDED", {"_text": line}))
            n += 1
        return n

    async def watch_events(
        self,
        kind: str,
        *,
        resource_version: str,
        labels: str | None = None,
        fields: str | None = None,
        timeout_s: int = 300,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        q = self.queues.setdefault(kind, asyncio.Queue())
        while True:
            typ, raw = await q.get()
            obj = json.loads(raw["_text"]) if "_text" in raw else raw
            obj["metadata"]["resourceVersion"] = self._next_rv()
            yield typ, obj

    def backlog(self) -> int:
        return sum(q.qsize() for q in self.queues.values())

    async def apply(self, body: Mapping[str, Any], *, field_manager: str = "") -> dict[str, Any]:
        return await self._written(body)

    async def _written(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """A write of the operator's (apply, or a node object's create or update): what
        the API server answers, nothing kept."""
        await asyncio.sleep(0)
        meta = body.get("metadata") or {}
        key = (str(body["kind"]), str(meta["name"]))
        gen = self.generations.get(key, 0) + ("spec" in body)
        self.generations[key] = gen
        self.writes += 1
        if self.record is not None:
            self.record.write(json.dumps({"generation": gen, "body": body}) + "\n")
        return {
            "apiVersion": body.get("apiVersion"),
            "kind": key[0],
            "metadata": {
                "name": key[1],
                "generation": gen,
                "resourceVersion": self._next_rv(),
                "labels": dict(meta.get("labels") or {}),
            },
        }

    async def create(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        from secgroups.compiled import COMPILED_NODE_KIND  # imported by now: no RSS step

        if body.get("kind") == COMPILED_NODE_KIND:  # node objects: created, then updated
            return await self._written(body)
        # Default groups: created, and seen again through the watch as a user would see them.
        await asyncio.sleep(0)
        self.creates += 1
        obj = json.loads(json.dumps(body))
        obj["metadata"].update(uid=_uid("default", self.creates), generation=1)
        self.queues.setdefault(obj["kind"], asyncio.Queue()).put_nowait(("ADDED", obj))
        return obj

    async def get(self, kind: str, name: str, namespace: str | None = None) -> None:
        await asyncio.sleep(0)

    async def replace(self, body: Mapping[str, Any]) -> dict[str, Any]:
        from secgroups.compiled import COMPILED_NODE_KIND

        if body.get("kind") != COMPILED_NODE_KIND:
            raise NotImplementedError("no leader election here")
        return await self._written(body)

    async def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        await asyncio.sleep(0)
        self.writes += 1

    async def patch_status(
        self, kind: str, name: str, namespace: str | None, status: Mapping[str, Any]
    ) -> None:
        await asyncio.sleep(0)
        self.status_writes += 1
        at = self.offsets.get((kind, namespace or "", name))
        if at is None:  # a default group the operator created: not echoed
            return
        with (self.objects / f"{kind}.jsonl").open() as f:
            f.seek(at)
            obj = json.loads(f.readline())
        obj["status"] = dict(status)
        self.queues.setdefault(kind, asyncio.Queue()).put_nowait(
            ("MODIFIED", {"_text": json.dumps(obj)})
        )

    async def post_event(self, body: Mapping[str, Any]) -> None:
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- the run


def count_busy(rec: Any) -> None:
    """Count the reconciler's rounds and status writes in flight (a compile runs in a
    thread; a flush of 21,000 statuses takes a while): :func:`settle` waits for none."""
    rec.busy = 0
    plain = rec.round

    async def counted(*args: Any, **kw: Any) -> Any:
        rec.busy += 1
        try:
            return await plain(*args, **kw)
        finally:
            rec.busy -= 1

    rec.round = counted
    writes = rec.statuses.flush

    async def counted_flush(*args: Any, **kw: Any) -> Any:
        rec.busy += 1
        try:
            return await writes(*args, **kw)
        finally:
            rec.busy -= 1

    rec.statuses.flush = counted_flush


async def settle(op: Any, cluster: LeanCluster, timeout: float = 900.0) -> None:
    """Until every queued event is compiled and everything is published (and stays so)."""
    rec = op.reconciler
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    last = (-1, -1)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        idle = (
            not rec.busy
            and not cluster.backlog()
            and not rec._queue
            and rec.publisher.converged()
            and not rec.statuses.wanted
        )
        now = (rec.rounds, rec.intake.events)
        if idle and now == last:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 0.5:
                return
        else:
            quiet_since = None
        last = now
    raise SystemExit(f"not settled within {timeout:.0f} s")


def measure() -> float:
    gc.collect()
    return rss_mb()


def top_sites(
    before: tracemalloc.Snapshot | None, after: tracemalloc.Snapshot, n: int, per: int
) -> None:
    filters = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen*"),
    ]
    after = after.filter_traces(filters)
    if before is None:
        stats = after.statistics("lineno")
        total = sum(s.size for s in stats)
        print(f"    traced {total / 2**20:.1f} MB; top sites:")
        for s in stats[:n]:
            frame = s.traceback[0]
            print(f"    {s.size / 2**20:8.2f} MB {s.count:9,d} blocks  {_where(frame)}")
        return
    diff = after.compare_to(before.filter_traces(filters), "lineno")
    total = sum(d.size_diff for d in diff)
    print(f"    traced growth {total / 2**20:.1f} MB = {total / per:,.0f} B per pod; top sites:")
    for d in diff[:n]:
        frame = d.traceback[0]
        print(
            f"    {d.size_diff / 2**20:8.2f} MB {d.size_diff / per:7,.0f} B/pod "
            f"{d.count_diff / per:6.1f} blocks/pod  {_where(frame)}"
        )


def _where(frame: tracemalloc.Frame) -> str:
    name = frame.filename
    for root in (str(REPO) + "/", sys.prefix + "/lib/"):
        if name.startswith(root):
            name = name[len(root) :]
    return f"{name}:{frame.lineno}"


async def run(args: argparse.Namespace, objects: Path, counts: dict[str, int]) -> dict[str, Any]:
    from secgroups_operator.main import Operator
    from secgroups_operator.reconciling import Options

    pods = counts["Pod"]
    cold = args.cold_child or args.restart_child
    listed = {k: v for k, v in counts.items() if cold or k != "Pod"}
    record = (objects / "writes.jsonl").open("w") if args.cold_child else None
    cluster = LeanCluster(objects, listed, record)
    options = Options(debounce_s=0.005, status_interval_s=0.2)
    if args.no_preload:
        options.preload_s = 0.0
    # The operator gives freed memory back at most every 30 s after busy rounds; here
    # every 0.4 s, so that each settled phase (0.5 s quiet) is measured after one.
    op = Operator(cluster, options, page=500, trim_s=0.4)  # type: ignore[arg-type]
    count_busy(op.reconciler)
    stop = asyncio.Event()
    task = asyncio.create_task(op.run(stop))
    t0 = time.monotonic()
    if cold:
        while op.timings.lists_done is None and not task.done():
            await asyncio.sleep(0.01)
        log(
            f"listed in {time.monotonic() - t0:.1f} s: RSS {rss_mb():.0f} MB, "
            f"peak so far {rss_mb('VmHWM'):.0f} MB"
        )
    await asyncio.wait_for(op.ready.wait(), 900)
    if args.restart_child:
        at_ready = rss_mb()  # built and trimmed, as the operator is then (no collection)
        await settle(op, cluster)
        lists, rec = op.timings.lists_done, op.reconciler
        assert lists is not None and op.timings.built is not None
        assert rec.published_at is not None
        out = {
            "restart": (
                pods,
                op.timings.built - lists,
                rec.published_at - lists,
                cluster.writes,
                measure(),
                lists - op.timings.started,
                rec.published_at - op.timings.started,
                rec.preloaded_events,
                at_ready,
            )
        }
        stop.set()
        await asyncio.wait_for(task, 60)
        return out
    built = tracemalloc.take_snapshot() if cold and args.sites else None
    if cold:
        log(
            f"built in {time.monotonic() - t0:.1f} s: RSS {rss_mb():.0f} MB, "
            f"peak so far {rss_mb('VmHWM'):.0f} MB"
        )
    await settle(op, cluster)
    out: dict[str, Any] = {"steps": []}
    took = time.monotonic() - t0
    snap0 = tracemalloc.take_snapshot() if args.sites else None
    rss = measure()
    if cold:
        if built is not None and snap0 is not None:
            print("    what the build held until published (negative: freed since):")
            top_sites(built, snap0, args.sites, 1)
        out["cold"] = (pods, rss, rss_mb("VmHWM"), took)
        log(
            f"cold start on {pods:,} pods: {took:.1f} s; "
            f"RSS {rss:.0f} MB, peak {rss_mb('VmHWM'):.0f} MB"
        )
    else:
        out["steps"].append((0, rss))
        log(
            f"policy, no pods: {took:.1f} s; RSS {rss:.0f} MB "
            f"({cluster.writes:,} writes, {cluster.creates} default-group objects)"
        )
        if snap0 is not None:
            top_sites(None, snap0, args.sites, 1)
        first_snap: tracemalloc.Snapshot | None = None
        per = pods // 3
        done = 0
        for step in range(3):
            t = time.monotonic()
            n = per if step < 2 else pods - done
            done += cluster.feed("Pod", n)
            await settle(op, cluster)
            rss = measure()
            out["steps"].append((done, rss))
            log(f"{done:,} pods: +{n:,} in {time.monotonic() - t:.1f} s; RSS {rss:.0f} MB")
            if args.sites and step == 0:
                first_snap = tracemalloc.take_snapshot()
        if first_snap is not None:
            top_sites(
                first_snap, tracemalloc.take_snapshot(), args.sites, done - out["steps"][1][0]
            )
    stop.set()
    await asyncio.wait_for(task, 60)
    if record is not None:
        record.close()
    return out


def fold_writes(objects: Path) -> None:
    """The compiled objects as the cold start left them (``writes.jsonl``: every write)
    → one ``<kind>.jsonl`` per compiled kind, listed by the restart. A group's or set's
    labels are what its two field managers last applied (spec and placement)."""
    last: dict[tuple[str, str], dict[str, Any]] = {}
    labels: dict[tuple[str, str, bool], dict[str, str]] = {}
    with (objects / "writes.jsonl").open() as f:
        for line in f:
            w = json.loads(line)
            body = w["body"]
            meta = body["metadata"]
            key = (body["kind"], meta["name"])
            labels[(*key, "spec" in body)] = meta.get("labels") or {}
            obj = last.setdefault(key, {"apiVersion": body["apiVersion"], "kind": key[0]})
            obj["metadata"] = {"name": key[1], "generation": w["generation"]}
            if "spec" in body:
                obj["spec"] = body["spec"]
    for kind in COMPILED_ORDER:
        with (objects / f"{kind}.jsonl").open("w") as f:
            for key, obj in sorted(last.items()):
                if key[0] == kind:
                    merged = {**labels.get((*key, True), {}), **labels.get((*key, False), {})}
                    obj["metadata"]["labels"] = merged
                    f.write(json.dumps(obj) + "\n")
    (objects / "writes.jsonl").unlink()


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="5 namespaces, 100 nodes, 3,000 pods")
    p.add_argument("--namespaces", type=int, default=50)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--pods", type=int, default=30000, help="synthetic pods (plus the big node's)")
    p.add_argument("--sites", type=int, default=0, metavar="N", help="top N allocation sites")
    p.add_argument("--no-cold", action="store_true", help="skip the cold start")
    p.add_argument("--objects", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--no-restart", action="store_true", help="skip the restart")
    p.add_argument("--cold-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--restart-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--compare-preload",
        action="store_true",
        help="run the restart with and without compiling the lists as they come in, "
        "alternated (3 of each)",
    )
    p.add_argument("--no-preload", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--write-objects", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.namespaces, args.nodes, args.pods = 5, 100, 3000
    if args.write_objects:
        write_objects(args.write_objects, args.namespaces, args.nodes, args.pods)
        return 0
    logging.basicConfig(level=logging.WARNING)
    if args.sites:
        tracemalloc.start(1)
    if args.objects:
        return _measure(args, args.objects)
    with tempfile.TemporaryDirectory(prefix="ksg-opmem-") as tmp:
        t = time.monotonic()
        argv = [sys.executable, __file__, "--write-objects", tmp]
        argv += ["--namespaces", str(args.namespaces), "--nodes", str(args.nodes)]
        subprocess.run([*argv, "--pods", str(args.pods)], check=True)
        log(f"objects written in {time.monotonic() - t:.1f} s")
        return _measure(args, Path(tmp))


def _measure(args: argparse.Namespace, objects: Path) -> int:
    kinds = INPUT_ORDER + (COMPILED_ORDER if args.restart_child else ())
    counts = {k: sum(1 for _ in (objects / f"{k}.jsonl").open()) for k in kinds}
    base = rss_mb()
    import secgroups_kube  # noqa: F401  (the real process imports the client too)
    import secgroups_operator.main  # noqa: F401

    log(
        f"{counts['Namespace']} namespaces, {counts['Node']:,} nodes, "
        f"{counts['SecurityGroup']:,} groups, {counts['SecurityGroupRule']:,} rules, "
        f"{counts['IPAddressGroup']} address groups, {counts['Pod']:,} pods; "
        f"RSS {base:.0f} MB bare, {rss_mb():.0f} MB with the imports (pid {os.getpid()})"
    )
    out = asyncio.run(run(args, objects, counts))
    if args.cold_child:
        print("COLD " + json.dumps(out["cold"]), flush=True)
        return 0
    if args.restart_child:
        print("RESTART " + json.dumps(out["restart"]), flush=True)
        return 0
    steps = out["steps"]
    (n1, r1), (n3, r3) = steps[1], steps[-1]
    slope = (r3 - r1) * 1024 / max(1, n3 - n1)
    print("\nsummary (RSS after gc, MB):")
    print("  " + " | ".join(f"{n:,} pods: {r:.0f}" for n, r in steps))
    print(f"  slope {n1:,} → {n3:,} pods: {slope:.2f} kB per pod")
    if not args.no_cold:
        argv = [sys.executable, __file__, "--objects", str(objects), "--cold-child"]
        argv += ["--sites", str(args.sites)] if args.sites else []
        res = subprocess.run(argv, check=True, capture_output=True, text=True)
        sys.stdout.write(
            "".join(line + "\n" for line in res.stdout.splitlines() if not line.startswith("COLD "))
        )
        line = next(line for line in res.stdout.splitlines() if line.startswith("COLD "))
        pods, rss, peak, took = json.loads(line[5:])
        print(f"  cold start on {pods:,} pods: RSS {rss:.0f} MB, peak {peak:.0f} MB ({took:.1f} s)")
        if not args.no_restart:
            fold_writes(objects)
            modes = (False, True) * 3 if args.compare_preload else (False,)
            for no_preload in modes:
                restart(objects, no_preload)
    return 0


def restart(objects: Path, no_preload: bool = False) -> None:
    """The restart child on what the cold start wrote (the build's time is the figure)."""
    argv = [sys.executable, __file__, "--objects", str(objects), "--restart-child"]
    argv += ["--no-preload"] if no_preload else []
    res = subprocess.run(argv, check=True, capture_output=True, text=True)
    line = next(line for line in res.stdout.splitlines() if line.startswith("RESTART "))
    pods, build, published, writes, rss, lists, total, preloaded, at_ready = json.loads(line[8:])
    compiled = sum(1 for k in COMPILED_ORDER for _ in (objects / f"{k}.jsonl").open())
    how = "lists compiled at the end" if no_preload else f"{preloaded:,} objects preloaded"
    print(
        f"  restart on {pods:,} pods and {compiled:,} compiled objects ({how}): lists "
        f"{lists:.2f} s, initial build {build:.2f} s, all published {published:.2f} s after "
        f"the lists, {total:.2f} s after the start ({writes} writes); RSS {at_ready:.0f} MB "
        f"once built, {rss:.0f} MB settled"
    )


if __name__ == "__main__":
    raise SystemExit(main())
