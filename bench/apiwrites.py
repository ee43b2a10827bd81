"""What one write of a compiled object costs the API server, by size and concurrency.

Run as root: ``sudo .venv/bin/python bench/apiwrites.py`` (``--quick``: fewer rounds).
A script, not a test: it prints the figures and asserts nothing.

A real control plane (``secgroups_lab.controlplane``, prefix ``ksgaw``) with our CRDs;
``CompiledNodePolicy`` objects of 1, 10, 100 and 1,000 pods (pod entries shaped like
the realization benchmark's: one IPv4 address, one group) written by server-side apply,
one at a time and ten at once (ten nodes' objects, as one re-check of a group spread
over ten nodes writes them), beside a ConfigMap of a few bytes written the same way.
For each: p50/p90 of one write and writes per second. Measured side by side in one run.

Then (the second table, "by method and schema") what part of that cost is whose: node
objects of 1, 10, 30 and 100 pods written, in the same run, by

* ``apply``: server-side apply, as the operator writes them (the current way);
* ``update``: PUT of the whole object with the resourceVersion of the previous write's
  response (no apply merge; a stale version would be a 409);
* either with ``fieldValidation=Ignore`` (no strict second decode of the body looking
  for unknown or duplicate fields);
* ``merge``: JSON merge patch of ``spec`` only; ``create``: a new object each time;
* the same against scratch CRDs the bench derives from the generated one
  (``bench.secgroups.dev``): ``nocel`` (minus the CEL rules), ``loose`` (minus CEL rules,
  regex patterns, defaults and length/count bounds: types and required fields only),
  ``open`` (``x-kubernetes-preserve-unknown-fields`` on spec: no structural schema
  below it), ``podsopen`` (the generated schema but for the pod entries, which are
  open objects);
* a ConfigMap carrying the same spec as JSON text in one data value (the floor for the
  same bytes), by apply and by update;

in blocks, the variants of a size taking turns; with, per row, the API server's own
mean time for the request (its ``apiserver_request_duration_seconds``), the size of
``metadata.managedFields`` and of the stored value in etcd, and the ratio of writes/s
to the current way's.
``--profile DIR``: also CPU profiles of the API server (10 s each, ``go tool pprof``)
while it serves 100-pod objects ten at a time by apply, apply without field validation,
update, update of the open-spec CRD and ConfigMap apply: its CPU per write, in parts.

Why it matters (docs/performance.md, "Realization"): a node object is rewritten whole
for every epoch its pods get, and an agent's status report rewrites it too (a status
patch is a write of the whole object), so the cost of a re-check on the API server is
the node objects' size times the nodes that host the group's members.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from secgroups.compiled import COMPILED_NODE_KIND, NODE_REPORT_KIND, NodeAgentReport
from secgroups.crdgen import resource_schema
from secgroups.models import API_VERSION
from secgroups_kube import AsyncKube
from secgroups_kube.resources import api_path
from secgroups_lab import binaries, controlplane
from secgroups_lab._cmd import in_netns

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apibench import (  # type: ignore[import-not-found]
    APPLY,
    MERGE,
    WRITES,
    pct,
    req,
    request_totals,
    totals_since,
)

REPO = Path(__file__).resolve().parent.parent


def node_body(name: str, pods: int, epoch: int) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [
        {
            "namespace": "rz",
            "name": f"bulk-{i:04d}",
            "uid": str(uuid.UUID(int=i + 1)),
            "ips": [f"100.64.{i // 250}.{i % 250 + 1}"],
            "groups": [f"sg.rz.bulk{i % 20:02d}"],
            "epoch": epoch,
        }
        for i in range(pods)
    ]
    names = sorted({f"sg.rz.bulk{i % 20:02d}" for i in range(pods)})
    return {
        "apiVersion": API_VERSION,
        "kind": COMPILED_NODE_KIND,
        "metadata": {"name": name},
        "spec": {"node": name, "pods": entries, "groups": names, "sets": names},
    }


def configmap_body(name: str, value: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"v": str(value)},
    }


def target(pods: int | None, conc: int, j: int) -> tuple[str, str]:
    """(path, name) of object ``j``: a node object of ``pods`` pods, or a ConfigMap."""
    if pods is None:
        name = f"cm-{conc}-{j}"
        return f"/api/v1/namespaces/default/configmaps/{name}", name
    name = f"n{pods}-{conc}-{j}"
    return f"{api_path(COMPILED_NODE_KIND)}/{name}", name


def body(pods: int | None, name: str, k: int) -> dict[str, Any]:
    return configmap_body(name, k) if pods is None else node_body(name, pods, k)


async def measure(
    kube: AsyncKube, pods: int | None, conc: int, rounds: int
) -> tuple[str, int, int, float, float, float]:
    """(label, bytes, in flight, p50 ms, p90 ms, writes/s) of ``rounds`` writes of each of
    ``conc`` objects, the ``conc`` at once."""
    times: list[float] = []

    async def one(j: int, k: int) -> None:
        path, name = target(pods, conc, j)
        t = time.perf_counter()
        await req(
            kube,
            "PATCH",
            path,
            body(pods, name, k),
            params={"fieldManager": "bench", "force": "true"},
            ctype=APPLY,
        )
        times.append(time.perf_counter() - t)

    await asyncio.gather(*(one(j, 0) for j in range(conc)))  # created first, not counted
    times.clear()
    t0 = time.perf_counter()
    for k in range(1, rounds + 1):
        await asyncio.gather(*(one(j, k) for j in range(conc)))
    wall = time.perf_counter() - t0
    label = "ConfigMap" if pods is None else f"node object, {pods:,} pods"
    size = len(json.dumps(body(pods, target(pods, conc, 0)[1], 1)))
    return label, size, conc, pct(times, 50) * 1000, pct(times, 90) * 1000, len(times) / wall


# ------------------------------------------------ the second table: by method and schema

SCRATCH_GROUP = "bench.secgroups.dev"
MANAGED_BY = {"app.kubernetes.io/managed-by": "secgroups-operator"}  # as the operator
# What "loose" drops from the generated schema: everything but types and required fields.
LOOSE_DROPS = frozenset(
    {
        "x-kubernetes-validations",
        "pattern",
        "default",
        "maxLength",
        "minLength",
        "maxItems",
        "maxProperties",
        "minimum",
    }
)


@dataclass(frozen=True)
class Schema:
    """Where node objects of one schema live: the generated CRD or a scratch one."""

    key: str  # cnp (the generated CRD), nocel, loose, open; cm for the ConfigMap
    api_version: str
    kind: str
    path: str  # collection path
    etcd_prefix: str  # key prefix of its objects in etcd


def _scratch(key: str, suffix: str) -> Schema:
    plural = f"compilednodepolicies{suffix.lower()}"
    return Schema(
        key,
        f"{SCRATCH_GROUP}/v1alpha1",
        f"{COMPILED_NODE_KIND}{suffix}",
        f"/apis/{SCRATCH_GROUP}/v1alpha1/{plural}",
        f"/registry/{SCRATCH_GROUP}/{plural}/",
    )


SCHEMAS = {
    "cnp": Schema(
        "cnp",
        API_VERSION,
        COMPILED_NODE_KIND,
        api_path(COMPILED_NODE_KIND),
        f"/registry/{API_VERSION.split('/')[0]}/compilednodepolicies/",
    ),
    "nocel": _scratch("nocel", "NoCel"),
    "loose": _scratch("loose", "Loose"),
    "open": _scratch("open", "Open"),
    "podsopen": _scratch("podsopen", "PodsOpen"),
    "withstatus": _scratch("withstatus", "WithStatus"),
    "nar": Schema(
        "nar",
        API_VERSION,
        NODE_REPORT_KIND,
        api_path(NODE_REPORT_KIND),
        f"/registry/{API_VERSION.split('/')[0]}/nodeagentreports/",
    ),
    "cm": Schema(
        "cm",
        "v1",
        "ConfigMap",
        "/api/v1/namespaces/default/configmaps",
        "/registry/configmaps/default/",
    ),
}

# (label, schema, method): the current way first (the ratios are to it).
VARIANTS: tuple[tuple[str, str, str], ...] = (
    ("apply (current)", "cnp", "apply"),
    ("apply, fieldVal=Ignore", "cnp", "apply-ignore"),
    ("update (PUT)", "cnp", "update"),
    ("update, fieldVal=Ignore", "cnp", "update-ignore"),
    ("merge patch spec", "cnp", "merge"),
    ("create new", "cnp", "create"),
    ("apply, no CEL", "nocel", "apply"),
    ("apply, loose", "loose", "apply"),
    ("update, loose", "loose", "update"),
    ("apply, open spec", "open", "apply"),
    ("update, open spec", "open", "update"),
    ("apply, open pods", "podsopen", "apply"),
    ("update, open pods", "podsopen", "update"),
    ("ConfigMap apply", "cm", "apply"),
    ("ConfigMap update", "cm", "update"),
    # An agent's report of what it applied: before, a status merge patch of its node
    # object (a scratch CRD: the generated one with the old status subresource); now an
    # apply of its own NodeAgentReport. "pods" is the node object's size in both.
    ("report: node obj. status", "withstatus", "status"),
    ("report: NodeAgentReport", "nar", "report"),
)
VARIANT_PODS = (1, 10, 30, 100)
PROFILE_PODS = 100  # about 16 kB: the size of the scale benchmark's 30-pod node objects


def _strip(node: Any, drops: frozenset[str]) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v, drops) for k, v in node.items() if k not in drops}
    if isinstance(node, list):
        return [_strip(v, drops) for v in node]
    return node


def scratch_crds(directory: Path) -> list[Path]:
    """The scratch CRDs derived from the generated CompiledNodePolicy one, written to
    ``directory``: same versions, names and status; the spec schema reduced."""
    generated = yaml.safe_load(
        (REPO / "crds" / "secgroups.dev_compilednodepolicies.yaml").read_text(encoding="utf-8")
    )
    out = []
    for key in ("nocel", "loose", "open", "podsopen", "withstatus"):
        crd = copy.deepcopy(generated)
        schema = SCHEMAS[key]
        plural = schema.path.rsplit("/", 1)[1]
        crd["metadata"] = {"name": f"{plural}.{SCRATCH_GROUP}"}
        crd["spec"]["group"] = SCRATCH_GROUP
        crd["spec"]["names"] = {
            "kind": schema.kind,
            "listKind": f"{schema.kind}List",
            "plural": plural,
            "singular": schema.kind.lower(),
        }
        for version in crd["spec"]["versions"]:
            props = version["schema"]["openAPIV3Schema"]["properties"]
            if key == "nocel":
                props["spec"] = _strip(props["spec"], frozenset({"x-kubernetes-validations"}))
            elif key == "loose":
                props["spec"] = _strip(props["spec"], LOOSE_DROPS)
            elif key == "open":
                props["spec"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
            elif key == "withstatus":  # as the node object was: the agent's status on it
                props["status"] = resource_schema(NodeAgentReport)["properties"]["status"]
                version["subresources"] = {"status": {}}
            else:  # the schema kept but for the pod entries
                pods = props["spec"]["properties"]["pods"]
                pods["items"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        path = directory / f"{plural}.yaml"
        path.write_text(yaml.safe_dump(crd, sort_keys=False), encoding="utf-8")
        out.append(path)
    return out


def variant_body(schema: Schema, name: str, pods: int, k: int) -> dict[str, Any]:
    """Node object ``name`` of ``pods`` pods at epoch ``k`` in ``schema`` (for the
    ConfigMap: the same spec as JSON text in one data value)."""
    spec = node_body(name, pods, k)["spec"]
    meta: dict[str, Any] = {"name": name, "labels": dict(MANAGED_BY)}
    if schema.key == "nar":  # the report of a node whose object has ``pods`` pods
        return {
            "apiVersion": schema.api_version,
            "kind": schema.kind,
            "metadata": meta,
            "status": report_status(pods, k),
        }
    if schema.key == "cm":
        meta["namespace"] = "default"
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta,
            "data": {"spec": json.dumps(spec, separators=(",", ":"))},
        }
    return {"apiVersion": schema.api_version, "kind": schema.kind, "metadata": meta, "spec": spec}


def report_status(pods: int, k: int) -> dict[str, Any]:
    """An agent's report after its ``k``-th apply (what KubeReport writes)."""
    return {
        "appliedGeneration": k + 1,
        "appliedGroupRevision": 1000 + k,
        "appliedAt": f"2026-12-07T00:00:{k % 60:02d}.000Z",
        "pods": pods,
        "rules": 10 * pods,
        "setElements": 20 * pods,
    }


async def write(
    kube: AsyncKube, schema: Schema, method: str, name: str, pods: int, k: int, rv: str | None
) -> Any:
    """One write of node object ``name`` (``pods`` pods, epoch ``k``) by ``method``
    (``apply``, ``update`` with resourceVersion ``rv``, ``merge``, ``create``; an
    ``-ignore`` suffix: with ``fieldValidation=Ignore``); the server's response."""
    bd = variant_body(schema, name, pods, k)
    params = {"fieldManager": "bench"}
    if method.endswith("-ignore"):
        params["fieldValidation"] = "Ignore"
        method = method.removesuffix("-ignore")
    path = f"{schema.path}/{name}"
    if method in ("apply", "report"):
        return await req(kube, "PATCH", path, bd, params={**params, "force": "true"}, ctype=APPLY)
    if method == "status":  # the agent's old report: a merge patch of the status
        patch = {"status": report_status(pods, k)}
        return await req(kube, "PATCH", f"{path}/status", patch, params=params, ctype=MERGE)
    if method == "create":
        return await req(kube, "POST", schema.path, bd, params=params)
    if method == "update":
        bd["metadata"]["resourceVersion"] = rv
        return await req(kube, "PUT", path, bd, params=params)
    assert method == "merge", method  # spec (the ConfigMap's data) only
    patch = {"data": bd["data"]} if schema.key == "cm" else {"spec": bd["spec"]}
    return await req(kube, "PATCH", path, patch, params=params, ctype=MERGE)


@dataclass
class Row:
    label: str
    pods: int
    size: int  # bytes of the body the current way sends
    conc: int
    p50: float  # ms, client side
    p90: float
    rate: float  # writes/s
    server_ms: float  # the API server's mean for the request
    managed_fields: int  # bytes of metadata.managedFields (JSON) after the writes
    stored: int  # bytes of the value in etcd (-1: not read)


def etcd_value_size(cp: controlplane.ControlPlane, key: str) -> int:
    """Bytes of the value under ``key`` in etcd, through its JSON gateway (-1 if unread)."""
    body = json.dumps({"key": base64.b64encode(key.encode()).decode()})
    url = f"{controlplane.ETCD_CLIENT_URL}/v3/kv/range"
    cmd = in_netns(cp.netns, ["curl", "-sf", "-m", "5", "-X", "POST", url, "-d", body])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False)
    try:
        kvs = json.loads(proc.stdout).get("kvs") or []
        return len(base64.b64decode(kvs[0]["value"])) if kvs else -1
    except (ValueError, KeyError):
        return -1


class Cell:
    """The writes of one variant at one size and concurrency: ``conc`` objects written by
    ``method``, the ``conc`` at once, in blocks (the variants of a size take turns, so a
    burst of load elsewhere on the machine falls on all of them alike)."""

    def __init__(
        self, kube: AsyncKube, label: str, schema: Schema, method: str, pods: int, conc: int
    ) -> None:
        self.kube, self.label, self.schema, self.method = kube, label, schema, method
        self.pods, self.conc = pods, conc
        self.base = f"v{schema.key}-{method}-{pods}-{conc}"
        self.rv: dict[int, str] = {}
        self.times: list[float] = []
        self.wall = self.server_n = self.server_s = 0.0
        self.k = 0
        self.last = f"{self.base}-0"

    async def _one(self, j: int, k: int, setup: bool = False) -> None:
        name = f"{self.base}-{j}"
        if self.method == "create":
            name = self.last = f"{name}-{k}"
        how = self.method
        if setup:  # each object first made the variant's way, uncounted
            how = "apply" if self.method.startswith(("apply", "report")) else "create"
        t = time.perf_counter()
        out = await write(self.kube, self.schema, how, name, self.pods, k, self.rv.get(j))
        if not setup:
            self.times.append(time.perf_counter() - t)
        self.rv[j] = out["metadata"]["resourceVersion"]

    async def setup(self) -> None:
        if self.method != "create":
            await asyncio.gather(*(self._one(j, 0, setup=True) for j in range(self.conc)))

    async def run(self, rounds: int) -> None:
        """``rounds`` more writes of each object, timed, with the server's own time."""
        before = await request_totals(self.kube, verbs=WRITES)
        t0 = time.perf_counter()
        for _ in range(rounds):
            self.k += 1
            await asyncio.gather(*(self._one(j, self.k) for j in range(self.conc)))
        self.wall += time.perf_counter() - t0
        served = totals_since(before, await request_totals(self.kube, verbs=WRITES))
        resource = self.schema.path.rsplit("/", 1)[1]
        want_sub = "status" if self.method == "status" else ""
        for (_, res, sub), (n, secs) in served.items():
            if res == resource and sub == want_sub:
                self.server_n += n
                self.server_s += secs

    async def row(self, cp: controlplane.ControlPlane) -> Row:
        schema = self.schema
        obj = await req(self.kube, "GET", f"{schema.path}/{self.last}")
        mf = len(json.dumps(obj["metadata"].get("managedFields") or [], separators=(",", ":")))
        stored = await asyncio.to_thread(etcd_value_size, cp, schema.etcd_prefix + self.last)
        return Row(
            self.label,
            self.pods,
            len(json.dumps(variant_body(SCHEMAS["cnp"], self.base, self.pods, 1))),
            self.conc,
            pct(self.times, 50) * 1000,
            pct(self.times, 90) * 1000,
            len(self.times) / self.wall,
            1000 * self.server_s / self.server_n if self.server_n else float("nan"),
            mf,
            stored,
        )


def print_variants(rows: list[Row]) -> None:
    print()
    print(
        "Compiled-object writes by method and schema (same run; x = writes/s / the current way's)"
    )
    head = f"{'variant':<23} {'pods':>4} {'bytes':>7} {'in flight':>9} {'p50 ms':>7} {'p90 ms':>7}"
    print(f"{head} {'server ms':>9} {'writes/s':>8} {'x':>5} {'mgdFields B':>11} {'etcd B':>7}")
    current = {(r.pods, r.conc): r.rate for r in rows if r.label == VARIANTS[0][0]}
    for r in rows:
        ratio = r.rate / current[(r.pods, r.conc)] if (r.pods, r.conc) in current else float("nan")
        print(
            f"{r.label:<23} {r.pods:>4} {r.size:>7,} {r.conc:>9} {r.p50:>7.1f} {r.p90:>7.1f}"
            f" {r.server_ms:>9.1f} {r.rate:>8.0f} {ratio:>5.2f} {r.managed_fields:>11,}"
            f" {r.stored:>7,}"
        )


# What the profile summary sums up: (what, regex of the function whose cumulative CPU it
# is). Nested, not additive: read each against the total.
PROFILE_PARTS: tuple[tuple[str, str], ...] = (
    ("request body decode, YAML (apply)", r"^sigs\.k8s\.io/yaml\.unmarshal$"),
    ("  strict re-decode (fieldValidation)", r"^sigs\.k8s\.io/(yaml|json)\.UnmarshalStrict$"),
    ("schema coercion (meta, pruning, defaults)", r"unstructuredSchemaCoercer\)\.apply$"),
    ("OpenAPI schema validation", r"validation\.ValidateCustomResource(Update)?$"),
    ("  CEL rules", r"schema/cel\.\(\*Validator\)\.Validate$"),
    ("field manager (managedFields)", r"\(\*FieldManager\)\.(Apply|UpdateNoErrors)$"),
    ("decode of the stored object", r"etcd3\.\(\*defaultDecoder\)\.Decode$"),
    ("encode (etcd value, response)", r"serializer/versioning\.\(\*codec\)\.Encode$"),
    ("deep copies", r"runtime\.DeepCopyJSON$"),
    ("watch events from etcd", r"etcd3\.\(\*watchChan\)\.serialProcessEvents$"),
    ("GC, background marking", r"^runtime\.gcBgMarkWorker$"),
    ("GC, assists (inside the above)", r"^runtime\.gcAssistAlloc$"),
)
PROFILED: tuple[tuple[str, str, str], ...] = (
    ("apply", "cnp", "apply"),
    ("apply Ign.", "cnp", "apply-ignore"),
    ("update", "cnp", "update"),
    ("upd. open", "open", "update"),
    ("CM apply", "cm", "apply"),
)


def _seconds(text: str) -> float:
    for unit, scale in (("ms", 0.001), ("us", 1e-6), ("µs", 1e-6), ("s", 1.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)


def profile_parts(path: Path) -> dict[str, float]:
    """CPU seconds of ``path`` (a pprof CPU profile): ``total`` and each of
    :data:`PROFILE_PARTS` (the largest cumulative time of a function it names)."""
    top = subprocess.run(
        ["go", "tool", "pprof", "-top", "-cum", "-nodecount=100000", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    total = re.search(r"Total samples = (\S+)", top)
    out = {"total": _seconds(total.group(1)) if total else float("nan")}
    rows = [
        m.groups() for m in re.finditer(r"^\s*\S+\s+\S+%\s+\S+%\s+(\S+)\s+\S+%\s+(.+)$", top, re.M)
    ]
    for what, pattern in PROFILE_PARTS:
        rx = re.compile(pattern)
        out[what] = max(
            (_seconds(cum) for cum, fn in rows if rx.search(fn.split(" (")[0])), default=0.0
        )
    return out


async def profile(
    kube: AsyncKube, schema: Schema, method: str, pods: int, seconds: int, out: Path
) -> tuple[int, dict[str, float]]:
    """A CPU profile of the API server while it serves ``method`` writes of ``pods``-pod
    objects ten at a time, saved to ``out``: (writes served while profiled, CPU seconds
    by part)."""
    stop = asyncio.Event()
    done: list[float] = []

    async def writer(j: int) -> None:
        name = f"prof-{schema.key}-{method}-{pods}-{j}"
        first = "apply" if method.startswith("apply") else "create"
        rv = (await write(kube, schema, first, name, pods, 0, None))["metadata"]
        k = 0
        while not stop.is_set():
            k += 1
            obj = await write(kube, schema, method, name, pods, k, rv["resourceVersion"])
            rv = obj["metadata"]
            done.append(time.perf_counter())

    tasks = [asyncio.create_task(writer(j)) for j in range(10)]
    try:
        await asyncio.sleep(2)
        t0 = time.perf_counter()
        resp = await kube._http().get(
            "/debug/pprof/profile", params={"seconds": seconds}, timeout=seconds + 60
        )
        resp.raise_for_status()
        out.write_bytes(resp.content)
    finally:
        stop.set()
        failed = [r for r in await asyncio.gather(*tasks, return_exceptions=True) if r]
    if failed:
        raise RuntimeError(f"profiled writes failed: {failed[0]!r}")
    writes = sum(1 for t in done if t0 <= t <= t0 + seconds)
    return writes, await asyncio.to_thread(profile_parts, out)


def print_profiles(results: list[tuple[str, int, dict[str, float]]], seconds: int) -> None:
    print()
    print(
        f"API server CPU per write, ms (pprof, {seconds} s each, {PROFILE_PODS}-pod objects"
        ", 10 in flight; parts nested, not additive)"
    )
    print(f"{'':<42}" + "".join(f" {label:>10}" for label, _, _ in results))
    print(
        f"{'writes/s while profiled':<42}"
        + "".join(f" {n / seconds:>10.0f}" for _, n, _ in results)
    )
    for what in ("total", *(w for w, _ in PROFILE_PARTS)):
        cells = "".join(
            f" {1000 * parts[what] / n if n else float('nan'):>10.2f}" for _, n, parts in results
        )
        print(f"{'API server CPU, all' if what == 'total' else what:<42}{cells}")


async def bench_variants(
    kube: AsyncKube,
    cp: controlplane.ControlPlane,
    rounds: int,
    blocks: int,
    only: set[str] | None,
) -> list[Row]:
    rows = []
    for conc in (1, 10):
        for pods in VARIANT_PODS:
            cells = [
                Cell(kube, label, SCHEMAS[key], method, pods, conc)
                for label, key, method in VARIANTS
                if not only or key in only or method in only or label == VARIANTS[0][0]
            ]
            for cell in cells:
                await cell.setup()
            for b in range(blocks):
                share = rounds // blocks + (1 if b < rounds % blocks else 0)
                for cell in cells:
                    await cell.run(share)
            rows += [await cell.row(cp) for cell in cells]
            print(f"  variants, {pods} pods, {conc} in flight: done", flush=True)
    return rows


async def bench(args: argparse.Namespace) -> None:
    cp = controlplane.ControlPlane(
        args.prefix,
        bins=binaries.ensure(binaries.CONTROL_PLANE),
        apiserver_args=["--profiling=true"] if args.profile else [],
    )
    kube: AsyncKube | None = None
    rows = []
    variants: list[Row] = []
    profiles: list[tuple[str, int, dict[str, float]]] = []
    load0 = os.getloadavg()
    print(f"load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", flush=True)
    cp.start()  # before the try: a refused start (another run's live) must not tear it down
    try:
        with tempfile.TemporaryDirectory() as tmp:
            crds = sorted((REPO / "crds").glob("*.yaml")) + scratch_crds(Path(tmp))
            cp.apply_manifests(crds)
        kube = AsyncKube.connect(cp.kubeconfig, field_manager="bench")
        if not args.skip_sizes:
            for conc in (1, 10):
                for pods in (None, 1, 10, 100, 1000):
                    rows.append(await measure(kube, pods, conc, args.rounds))
                    print(f"  {rows[-1][0]}, {conc} in flight: done", flush=True)
        if not args.skip_variants:
            only = set(args.only.split(",")) if args.only else None
            variants = await bench_variants(kube, cp, args.variant_rounds, args.blocks, only)
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for label, key, method in PROFILED:
                out = args.profile / f"apiserver-{key}-{method}-{PROFILE_PODS}.pprof"
                n, parts = await profile(kube, SCHEMAS[key], method, PROFILE_PODS, 10, out)
                profiles.append((label, n, parts))
                print(f"  profiled {label}: {n} writes", flush=True)
    finally:
        if kube is not None:
            await kube.close()
        cp.stop()
    load1 = os.getloadavg()
    print(f"load average at end: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    if variants:
        print_variants(variants)
    if profiles:
        print_profiles(profiles, 10)
    if not rows:
        return
    print()
    head = f"{'object':<24} {'bytes':>8} {'in flight':>9} {'p50 ms':>8} {'p90 ms':>8}"
    print(f"{head} {'writes/s':>9}")
    for label, size, conc, p50, p90, rate in rows:
        print(f"{label:<24} {size:>8,} {conc:>9} {p50:>8.1f} {p90:>8.1f} {rate:>9.0f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prefix", default="ksgaw")
    p.add_argument("--rounds", type=int, default=30, help="writes per object (default 30)")
    p.add_argument(
        "--variant-rounds",
        type=int,
        default=100,
        help="second table: writes per object (default 100)",
    )
    p.add_argument(
        "--blocks",
        type=int,
        default=4,
        help="second table: the rounds in this many blocks, the variants taking turns",
    )
    p.add_argument("--quick", action="store_true", help="5 rounds (second table: 10)")
    p.add_argument(
        "--skip-sizes", action="store_true", help="not the first table (size and concurrency)"
    )
    p.add_argument(
        "--skip-variants", action="store_true", help="not the second table (method and schema)"
    )
    p.add_argument(
        "--only",
        help="second table: only these schemas/methods, comma-separated (cnp, nocel, loose,"
        " open, cm; apply, update, merge, create), beside the current way",
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="also profile the API server's CPU (apply and update of 30-pod objects); save here",
    )
    args = p.parse_args()
    if args.quick:
        args.rounds = 5
        args.variant_rounds = 10
    asyncio.run(bench(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
