"""``secgroups-lab``: the lab's command line.

Subcommands:
  binaries            build (if missing) and print the pinned binaries
  cp-up / cp-down     start / remove the control plane (etcd, kube-apiserver, kcm)
  cp-status           show the control plane's state

To add a subcommand, write ``cmd_x(args) -> int`` and register it in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from secgroups_lab import binaries, controlplane


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="secgroups-lab", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

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
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
