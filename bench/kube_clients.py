"""Memory and time of the Python Kubernetes clients we could use: import, then one LIST.

Each client runs in a fresh interpreter (``--python``, default this one), which prints
its resident set size (``VmRSS``) and its peak (``VmHWM``) after start, after importing
the client (and, for lightkube, making one resource class), and after connecting and
listing every pod of the cluster once (put a few hundred pods in it first; they need no
node). The median of ``--repeat`` runs is printed per client. Not a test:
nothing is asserted. The figures are in ``docs/architecture.md``, "Dependencies and why".

Run it against any API server (the lab's control plane is enough)::

    sudo .venv/bin/secgroups-lab cp-up --prefix ksgb
    python3 -m venv /tmp/kube-clients && /tmp/kube-clients/bin/pip install \\
        kubernetes kubernetes_asyncio lightkube
    .venv/bin/python bench/kube_clients.py --python /tmp/kube-clients/bin/python \\
        --kubeconfig /run/kube-secgroups-lab/ksgb/admin.kubeconfig
    sudo .venv/bin/secgroups-lab cp-down --prefix ksgb

``secgroups_kube`` (our wrapper: lightkube plus the resource classes of all our kinds,
over the core's pydantic models) runs in this repository's interpreter, beside the core
alone, which every shell loads anyway. Without ``--kubeconfig`` only imports are measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The measuring program, run once per sample in a new interpreter. {setup} imports the
# client, {listing} lists pods (with KUBECONFIG in `path`).
PROGRAM = """
import json, sys, time

def mem():
    out = {{}}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out

path = sys.argv[1] if len(sys.argv) > 1 else None
result = {{"start": mem()}}
t = time.perf_counter()
{setup}
result["import_s"] = time.perf_counter() - t
result["import"] = mem()
if path:
    t = time.perf_counter()
{listing}
    result["list_s"] = time.perf_counter() - t
    result["pods"] = n
    result["list"] = mem()
print(json.dumps(result))
"""

CLIENTS: dict[str, tuple[str, str]] = {
    "kubernetes (official, sync)": (
        "from kubernetes import client, config",
        """    config.load_kube_config(config_file=path)
    n = len(client.CoreV1Api().list_pod_for_all_namespaces().items)""",
    ),
    "kubernetes_asyncio": (
        "import asyncio\nfrom kubernetes_asyncio import client, config",
        """    async def listing():
        await config.load_kube_config(config_file=path)
        async with client.ApiClient() as api:
            return len((await client.CoreV1Api(api).list_pod_for_all_namespaces()).items)
    n = asyncio.run(listing())""",
    ),
    "lightkube (async, one resource)": (
        "import asyncio\n"
        "from lightkube import AsyncClient, KubeConfig\n"
        "from lightkube.generic_resource import create_namespaced_resource\n"
        "from lightkube.resources.core_v1 import Pod\n"
        "SG = create_namespaced_resource('secgroups.dev', 'v1alpha1', 'SecurityGroup',"
        " 'securitygroups')",
        """    async def listing():
        c = AsyncClient(KubeConfig.from_file(path))
        try:
            return len([p async for p in c.list(Pod, namespace='*')])
        finally:
            await c.close()
    n = asyncio.run(listing())""",
    ),
}
# Ours, in this repository's interpreter: the core alone (pydantic models, which every
# shell loads anyway), then the core with the wrapper.
OURS = (
    ("secgroups core only (no client)", "import secgroups.kinds, secgroups.models", "    n = 0"),
    (
        "secgroups core + secgroups_kube",
        "import asyncio\nfrom secgroups_kube import AsyncKube",
        """    async def listing():
        k = AsyncKube.connect(path, field_manager='bench')
        try:
            return len(await k.list('Pod'))
        finally:
            await k.close()
    n = asyncio.run(listing())""",
    ),
)


def sample(python: str, setup: str, listing: str, kubeconfig: str | None) -> dict[str, object]:
    code = PROGRAM.format(setup=setup, listing=listing)
    argv = [python, "-c", code] + ([kubeconfig] if kubeconfig else [])
    out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120, cwd="/")
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr else "failed")
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def median(samples: list[dict[str, object]], *keys: str) -> float:
    values = []
    for s in samples:
        v: object = s
        for k in keys:
            v = v[k]  # type: ignore[index]
        values.append(float(v))  # type: ignore[arg-type]
    return statistics.median(values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", default=sys.executable, help="interpreter with the clients")
    p.add_argument("--kubeconfig", help="list pods of this cluster (else imports only)")
    p.add_argument("--repeat", type=int, default=5, help="samples per client (median)")
    p.add_argument("--json", action="store_true", help="also print the medians as JSON")
    args = p.parse_args()
    rows = [(name, args.python, setup, listing) for name, (setup, listing) in CLIENTS.items()]
    ours = str(REPO / ".venv" / "bin" / "python")
    rows += [(name, ours, setup, listing) for name, setup, listing in OURS]
    print(f"{args.repeat} samples each, medians; RSS in MB (VmRSS, VmHWM = peak)")
    header = f"{'client':34} {'start':>6} {'import':>7} {'+list':>7} {'peak':>6} {'import s':>9}"
    print(header + (f" {'connect+list s':>15} pods" if args.kubeconfig else ""))
    figures = {}
    for name, python, setup, listing in rows:
        try:
            samples = [sample(python, setup, listing, args.kubeconfig) for _ in range(args.repeat)]
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"{name:34} not measured: {exc}")
            continue
        last = "list" if args.kubeconfig else "import"
        fig = {
            "start_mb": median(samples, "start", "VmRSS"),
            "import_mb": median(samples, "import", "VmRSS"),
            "list_mb": median(samples, last, "VmRSS"),
            "peak_mb": median(samples, last, "VmHWM"),
            "import_s": median(samples, "import_s"),
        }
        if args.kubeconfig:
            fig["list_s"] = median(samples, "list_s")
        figures[name] = fig
        line = (
            f"{name:34} {fig['start_mb']:6.1f} {fig['import_mb']:7.1f} {fig['list_mb']:7.1f} "
            f"{fig['peak_mb']:6.1f} {fig['import_s']:9.2f}"
        )
        pods = f" {int(median(samples, 'pods'))}" if args.kubeconfig else ""
        print(line + (f" {fig['list_s']:15.2f}{pods}" if args.kubeconfig else ""))
    if args.json:
        print("JSON " + json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
