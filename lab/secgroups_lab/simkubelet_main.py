"""``python -m secgroups_lab.simkubelet_main``: the simulated kubelet as a daemon.

Builds the lab network (N nodes and the outside host), registers the Node objects,
serves Pods until SIGTERM/SIGINT, then removes every pod netns and the network it
made. Started by ``secgroups-lab up`` (:mod:`secgroups_lab.cluster`).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from secgroups_lab.network import Lab
from secgroups_lab.simkubelet import CniConfig, SimKubelet


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="secgroups_lab.simkubelet_main")
    p.add_argument("--prefix", default="ksg")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--kubeconfig", type=Path, required=True)
    p.add_argument("--state-file", type=Path, required=True)
    p.add_argument(
        "--cni-plugin", type=Path, help="run this secgroups-cni binary at pod creation and deletion"
    )
    p.add_argument(
        "--cni-socket-dir",
        type=Path,
        help="with --cni-plugin: each node agent's socket is DIR/<node>/cni.sock",
    )
    p.add_argument("--cni-timeout", type=float, default=10.0, help="the plugin's timeout, s")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    lab = Lab(args.prefix, nodes=args.nodes, verbose=True)
    try:
        lab.up()
        kubelet = SimKubelet.from_kubeconfig(lab, args.kubeconfig, args.state_file)
        if args.cni_plugin is not None:
            if args.cni_socket_dir is None:
                p.error("--cni-plugin needs --cni-socket-dir")
            kubelet.cni = CniConfig(args.cni_plugin, args.cni_socket_dir, args.cni_timeout)
        kubelet.register_nodes()
        watcher = threading.Thread(target=kubelet.run, args=(stop,), daemon=True)
        watcher.start()
        stop.wait()
    finally:
        lab.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
