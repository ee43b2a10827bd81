"""Lab network timings: bring-up, pod add/delete, baseline connectivity matrices.

Run as root: ``.venv/bin/python bench/lab_network.py [--nodes 3] [--pods 4] [--repeat 10]``.
Prints one line per figure (seconds). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from secgroups_lab.matrix import cases, run_matrix
from secgroups_lab.network import Lab, cleanup_leftovers


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--prefix", default="ksgbench")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--pods", type=int, default=4, help="pods per node")
    p.add_argument("--repeat", type=int, default=10, help="single pod add/delete rounds")
    p.add_argument("--matrix-pods", type=int, default=10, help="pods in the big matrix")
    args = p.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    cleanup_leftovers(args.prefix)
    t0 = time.monotonic()
    lab = Lab(args.prefix, nodes=args.nodes)
    with lab:
        t_net = time.monotonic() - t0
        specs = [
            (n, "bench", f"p{n}-{k}") for n in range(1, args.nodes + 1) for k in range(args.pods)
        ]
        lab.add_pods(specs)
        t_up = time.monotonic() - t0
        print(f"underlay + outside + {args.nodes} nodes: {t_net:.2f} s")
        print(f"lab up ({args.nodes} nodes x {args.pods} pods, with probe daemons): {t_up:.2f} s")
        adds, dels = [], []
        for i in range(args.repeat):
            t = time.monotonic()
            pod = lab.add_pod(1 + i % args.nodes, "churn", f"c{i}")
            adds.append(time.monotonic() - t)
            t = time.monotonic()
            lab.delete_pod(pod)
            dels.append(time.monotonic() - t)
        print(
            f"pod add (netns, veth, routes, daemon ready): median {statistics.median(adds):.3f} s"
        )
        print(f"pod delete: median {statistics.median(dels):.3f} s")
        eps = lab.endpoints()
        r = run_matrix(eps, cases(ports=(80,)), timeout=2.0)
        print(
            f"baseline matrix {len(eps)}x{len(eps)} x 8 cases: {r.probes} probes, "
            f"{r.elapsed:.2f} s, {len(r.mismatches)} mismatches"
        )
        extra = max(0, args.matrix_pods - len(lab.pods))
        lab.add_pods([(1 + k % args.nodes, "big", f"m{k}") for k in range(extra)])
        big = sorted(lab.pods.values(), key=lambda p: p.key)[: args.matrix_pods]
        r = run_matrix(big, cases(ports=(80,)), timeout=2.0)
        print(
            f"matrix {len(big)}x{len(big)} pods x 4 protocols x 2 families: {r.probes} probes, "
            f"{r.elapsed:.2f} s, {len(r.mismatches)} mismatches"
        )
    print(f"teardown: {lab.timing.teardown:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
