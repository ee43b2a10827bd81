"""The product demo on kind (``make demo``): the chart installed with helm on the 3-node
cluster of ``hack/kind.sh up``, examples/ applied, the demo pods running our probe image
on several nodes, and the live connectivity matrix from inside those pods — expected (the
core's evaluator over what the API server holds) beside observed (the pods' own packets
through every node's nftables, kube-proxy's table beside ours).

    python -m secgroups_lab.kinddemo up     # after `hack/kind.sh up` (make demo does both)
    python -m secgroups_lab.kinddemo mem    # RSS of the operator and agent pods

The netns-lab demo (:mod:`secgroups_lab.demo`, ``make demo-lab``) is the fast path
without Docker. Exit status of ``up``: 0 (the matrix matches), 1 (a mismatch, or the
cluster is missing or failed), 130 (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from secgroups_lab import demo
from secgroups_lab.kind import (
    NAMESPACE,
    Kind,
    KindError,
    agents_applied,
    container_ids,
    container_pids,
    examples_for,
    install_chart,
    our_images,
    published_pods,
    rss_kib,
    wait_for,
    wait_probes,
)
from secgroups_lab.matrix import MatrixResult, cases, run_matrix

DEMO_NS = "demo"


def say(message: str) -> None:
    print(f"[kind-demo] {message}", file=sys.stderr, flush=True)


def timed(what: str, t0: float) -> None:
    say(f"{what} ({time.monotonic() - t0:.1f} s)")


def run(kind: Kind) -> MatrixResult:
    """Install the chart, apply examples/, wait for the pods and the agents; the matrix."""
    t0 = time.monotonic()
    install_chart(kind)
    timed("helm upgrade --install kube-secgroups charts/kube-secgroups: ready", t0)
    t0 = time.monotonic()
    docs = examples_for(kind.nodes(), our_images()["probe"])
    kind.apply(docs)
    pods = [d["metadata"]["name"] for d in docs if d["kind"] == "Pod"]
    timed(f"applied examples/ ({len(docs)} objects; pods {', '.join(pods)})", t0)
    t0 = time.monotonic()
    endpoints = wait_probes(kind, DEMO_NS, pods)
    where = ", ".join(f"{n}@{e.node}" for n, e in sorted(endpoints.items()))
    timed(f"pods running: {where}", t0)
    t0 = time.monotonic()
    wait_for(
        "the operator published every demo pod",
        lambda: published_pods(kind, DEMO_NS) >= set(pods),
        120,
    )
    wait_for("every node agent applied its policy", lambda: agents_applied(kind), 120)
    timed("every node agent applied the compiled policy", t0)
    return run_matrix(
        [endpoints[n] for n in sorted(endpoints)],
        cases(protos=("tcp", "icmp"), ports=(22, 80), families=(4,)),
        demo.expectation(kind.facts()),
        timeout=1.0,
        allowed_timeout=5.0,
    )


def usage(kind: Kind) -> str:
    return "\n".join(
        [
            "",
            "The cluster keeps running (3 nodes; the chart in namespace kube-secgroups). "
            'To use it (README.md, "Debug a denied connection"):',
            '  eval "$(hack/kind.sh env)"; export PATH=$PWD/.venv/bin:$PATH',
            "  kubectl secgroups trace --from pod/b1 --to pod/a1 --proto tcp --port 22 -n demo",
            "`make demo-down` (= make kind-down) removes it.",
        ]
    )


def cmd_up(_args: argparse.Namespace) -> int:
    try:
        kind = Kind.connect()
        result = run(kind)
    except KeyboardInterrupt:
        say("interrupted: the cluster is still up; `make demo-down` removes it")
        return demo.EXIT_INTERRUPTED
    except KindError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(result.render())
    print(usage(kind))
    return 1 if result.mismatches else 0


def cmd_mem(_args: argparse.Namespace) -> int:
    """RSS of every container of the release's pods (all its processes), one line each."""
    try:
        kind = Kind.connect()
        pods = kind.get("pods", "-n", NAMESPACE)["items"]
    except KindError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        for name, cid in sorted(container_ids(pod).items()):
            pids = container_pids(cid)
            print(
                f"{pod['metadata']['name']:<45} {name:<10} {pod['spec'].get('nodeName', ''):<20}"
                f" {rss_kib(pids) / 1024:6.1f} MiB in {len(pids)} process(es)"
            )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m secgroups_lab.kinddemo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="install the chart, apply examples/, print the live matrix")
    sub.add_parser("mem", help="RSS of the operator and agent pods")
    args = parser.parse_args(argv)
    return {"up": cmd_up, "mem": cmd_mem}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
