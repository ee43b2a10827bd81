"""What one write of a compiled object costs the API server, by size and concurrency.

Run as root: ``sudo .venv/bin/python bench/apiwrites.py`` (``--quick``: fewer rounds).
A script, not a test: it prints the figures and asserts nothing.

A real control plane (``secgroups_lab.controlplane``, prefix ``ksgaw``) with our CRDs;
``CompiledNodePolicy`` objects of 1, 10, 100 and 1,000 pods (pod entries shaped like
the realization benchmark's: one IPv4 address, one group) written by server-side apply,
one at a time and ten at once (ten nodes' objects, as one re-check of a group spread
over ten nodes writes them), beside a ConfigMap of a few bytes written the same way.
For each: p50/p90 of one write and writes per second. Measured side by side in one run.

Why it matters (docs/performance.md, "Realization"): a node object is rewritten whole
for every epoch its pods get, and an agent's status report rewrites it too (a status
patch is a write of the whole object), so the cost of a re-check on the API server is
the node objects' size times the nodes that host the group's members.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from secgroups.compiled import COMPILED_NODE_KIND
from secgroups.models import API_VERSION
from secgroups_kube import AsyncKube
from secgroups_kube.resources import api_path
from secgroups_lab import binaries, controlplane

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apibench import APPLY, pct, req  # type: ignore[import-not-found]

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


async def bench(args: argparse.Namespace) -> None:
    cp = controlplane.ControlPlane(args.prefix, bins=binaries.ensure(binaries.CONTROL_PLANE))
    kube: AsyncKube | None = None
    rows = []
    try:
        cp.start()
        cp.apply_manifests(sorted((REPO / "crds").glob("*.yaml")))
        kube = AsyncKube.connect(cp.kubeconfig, field_manager="bench")
        for conc in (1, 10):
            for pods in (None, 1, 10, 100, 1000):
                rows.append(await measure(kube, pods, conc, args.rounds))
                print(f"  {rows[-1][0]}, {conc} in flight: done", flush=True)
    finally:
        if kube is not None:
            await kube.close()
        cp.stop()
    print()
    head = f"{'object':<24} {'bytes':>8} {'in flight':>9} {'p50 ms':>8} {'p90 ms':>8}"
    print(f"{head} {'writes/s':>9}")
    for label, size, conc, p50, p90, rate in rows:
        print(f"{label:<24} {size:>8,} {conc:>9} {p50:>8.1f} {p90:>8.1f} {rate:>9.0f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prefix", default="ksgaw")
    p.add_argument("--rounds", type=int, default=30, help="writes per object (default 30)")
    p.add_argument("--quick", action="store_true", help="5 rounds")
    args = p.parse_args()
    if args.quick:
        args.rounds = 5
    asyncio.run(bench(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
