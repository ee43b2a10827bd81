"""``secgroups-lab``: the lab's command line.

Subcommands:
  up / down           the whole lab: control plane, nodes, simulated kubelet, operator, agents
  demo up / demo down the README demo: the lab plus examples/ and the live connectivity matrix
                      (``make demo-lab`` / ``make demo-lab-down``)
  binaries            build (if missing) and print the pinned binaries
  cp-up / cp-down     start / remove the control plane (etcd, kube-apiserver, kcm)
  cp-status           show the control plane's state

A lab that is up is never touched by a second ``up``: the command says so and exits 0.
Ctrl-C prints one line and exits 130 (docs/lab.md, "The demo"); ``down`` ignores it and
finishes. To add a subcommand, write ``cmd_x(args) -> int`` and register it in
:func:`build_parser`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence

from secgroups_lab import binaries, controlplane
from secgroups_lab._cmd import sigint_ignored


def cmd_binaries(args: argparse.Namespace) -> int:
    wanted = args.components or list(binaries.COMPONENTS)
    try:
        bins = binaries.ensure(wanted, build=not args.no_build)
    except (binaries.BinaryMissingError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for c in wanted:
        print(f"{c}: {bins.path(c)}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from secgroups_lab import demo
    from secgroups_lab.cluster import LabCluster, LabError, lab_state

    state = lab_state(args.prefix)
    if state.live:
        return demo.already_up(state)
    lab = LabCluster(
        prefix=args.prefix,
        nodes=args.nodes,
        operator=not args.no_operator,
        agents=not args.no_agents,
        detached=True,
    )
    t0 = time.monotonic()
    try:
        lab.up()
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return demo.interrupted(lab, t0)
    print(demo.reach(lab))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from secgroups_lab.cluster import LabCluster

    with sigint_ignored():  # a half-removed lab is worse than waiting a few seconds
        LabCluster(prefix=args.prefix).down()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from secgroups_lab import demo
    from secgroups_lab.cluster import LabError

    try:
        if args.action == "up":
            return demo.up(args.prefix, args.nodes, replace=args.replace)
        with sigint_ignored():
            return demo.down(args.prefix)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="secgroups-lab", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    lab_up = sub.add_parser("up", help="start the whole lab and leave it running")
    lab_up.add_argument("--prefix", default="ksg", help="name prefix (default %(default)s)")
    lab_up.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    lab_up.add_argument("--no-operator", action="store_true", help="do not start the operator")
    lab_up.add_argument("--no-agents", action="store_true", help="do not start node agents")
    lab_up.set_defaults(func=cmd_up)

    lab_down = sub.add_parser("down", help="stop the whole lab and remove what it made")
    lab_down.add_argument("--prefix", default="ksg", help="name prefix (default %(default)s)")
    lab_down.set_defaults(func=cmd_down)

    dm = sub.add_parser("demo", help="the README demo (Sg-A/Sg-B) with a live matrix")
    dm.add_argument("action", choices=("up", "down"))
    dm.add_argument("--prefix", default="ksg", help="name prefix (default %(default)s)")
    dm.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    dm.add_argument(
        "--replace",
        action="store_true",
        help="if the lab is up, remove it and start afresh (default: say it is up, change nothing)",
    )
    dm.set_defaults(func=cmd_demo)

    b = sub.add_parser("binaries", help="build (if missing) and print the pinned binaries")
    b.add_argument("components", nargs="*", help=f"any of {', '.join(binaries.COMPONENTS)}")
    b.add_argument("--no-build", action="store_true", help="fail instead of building")
    b.set_defaults(func=cmd_binaries)

    up = sub.add_parser("cp-up", help="start the control plane and leave it running")
    controlplane.add_cli_arguments(up)
    up.add_argument(
        "--slot", type=int, default=None, help="root-netns /30 slot (default: first free)"
    )
    up.set_defaults(func=controlplane.cmd_up)

    down = sub.add_parser("cp-down", help="stop the control plane, remove its netns and files")
    controlplane.add_cli_arguments(down)
    down.add_argument("--keep", action="store_true", help="keep the workdir (logs)")
    down.set_defaults(func=controlplane.cmd_down)

    st = sub.add_parser("cp-status", help="print the control plane's state")
    controlplane.add_cli_arguments(st)
    st.set_defaults(func=controlplane.cmd_status)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except KeyboardInterrupt:
        # Commands that start something handle Ctrl-C themselves; elsewhere there is
        # nothing to undo and no traceback to show.
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        # A command that failed (`ip`, a deadline, a file): one line; KSG_DEBUG=1 for the
        # traceback.
        if os.environ.get("KSG_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
