"""``secgroups-agent``: the node agent's entry point (flags, wiring, signals).

Runs as a hostNetwork DaemonSet pod (in-cluster config) or, in the lab, inside a node's
network namespace (``nsenter --net=/run/netns/<node> .venv/bin/secgroups-agent ...``)
with a policy file instead of an API server. Everything it touches is in the current
network namespace: our nft table, conntrack, routes. On SIGTERM/SIGINT it stops
watching and exits, leaving the table in place (enforcement survives a restart; the
next start's full resync is a no-op for traffic). See docs/agent.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from secgroups.compiled import NodeAgentStatus
from secgroups.nft.dispatch import Limits
from secgroups.nft.rendering import RenderOptions
from secgroups_agent import cleanup, cniserver, logs
from secgroups_agent.conntrack import NetlinkConntrack
from secgroups_agent.interfaces import RouteInterfaces, RouteWatcher
from secgroups_agent.metrics import Metrics
from secgroups_agent.nftables import NftBackend, NftCli, make_backend
from secgroups_agent.planning import Planner
from secgroups_agent.server import DEFAULT_ADDR, Health, Server
from secgroups_agent.sources import FileSource, KubeSource, Source
from secgroups_agent.status import FileStatus, KubeReport, StatusReporter, StatusWriter
from secgroups_agent.syncing import SyncConfig, SyncLoop
from secgroups_agent.tamper import TableMonitor
from secgroups_agent.trust import OPERATOR_MANAGERS, writer_problem

if TYPE_CHECKING:
    from secgroups_kube import AsyncKube

log = logs.get()
FIELD_MANAGER = "secgroups-agent"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="secgroups-agent",
        description="kube-secgroups node agent: enforce the node's security groups with nftables.",
    )
    p.add_argument(
        "--node",
        default=os.environ.get("NODE_NAME"),
        help="this node's name (default: $NODE_NAME)",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--kubeconfig", type=Path, help="talk to the API server with this kubeconfig")
    src.add_argument(
        "--in-cluster",
        action="store_true",
        help="use the pod's service account only (default: $KUBECONFIG, the service account, "
        "~/.kube/config)",
    )
    src.add_argument(
        "--source-file",
        type=Path,
        help="read a CompiledPolicy dump (JSON/YAML) instead of watching the API server",
    )
    p.add_argument("--status-file", type=Path, help="write status to this JSON file")
    p.add_argument("--metrics-addr", default=DEFAULT_ADDR, help=f"HTTP address ({DEFAULT_ADDR})")
    p.add_argument("--resync-period", type=float, default=300.0, help="full resync period, s")
    p.add_argument("--drift-period", type=float, default=10.0, help="drift check period, s")
    p.add_argument(
        "--min-sync-interval",
        type=float,
        default=0.05,
        help="rate limit: one sync per interval after a burst (s; 0 = unlimited)",
    )
    p.add_argument("--sync-burst", type=int, default=5, help="syncs allowed back to back")
    p.add_argument("--nft-backend", choices=("lib", "cli"), default="lib")
    p.add_argument("--poll-interval", type=float, default=0.05, help="policy file poll, s")
    p.add_argument(
        "--no-node-to-pod",
        action="store_true",
        help="do not allow all traffic from this node to its pods (kubelet probes!)",
    )
    p.add_argument(
        "--linear-group-chains",
        action="store_true",
        help="walk every group's rules in a line (no dispatch by protocol and port)",
    )
    p.add_argument(
        "--trusted-writers",
        default=",".join(OPERATOR_MANAGERS),
        help="field managers whose compiled objects are enforced, comma-separated; objects "
        "whose spec another manager wrote are refused (docs/failure-modes.md, 'Trust'); "
        "empty: accept any writer",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument(
        "--cleanup",
        action="store_true",
        help="uninstall mode (the chart's post-delete hook): wait until the agent at "
        "--agent-addr has exited, delete this node's table, serve /readyz at --metrics-addr",
    )
    p.add_argument(
        "--agent-addr",
        default=DEFAULT_ADDR,
        help=f"with --cleanup: the agent's address ({DEFAULT_ADDR})",
    )
    cniserver.add_arguments(p)
    args = p.parse_args(argv)
    if not args.node:
        p.error("--node is required (or set NODE_NAME)")
    return args


def _ours(nft: NftBackend, sync: SyncLoop, pid: int | None) -> bool:
    """A commit by the libnftables worker; with the CLI backend (its ``nft`` processes
    come and go), any commit made while the loop writes."""
    worker = getattr(nft, "pid", None)
    if worker is not None:
        return pid is not None and pid == int(worker)
    return sync.writing


class _NoStatus:
    async def write(self, status: NodeAgentStatus) -> None:
        del status


async def run(args: argparse.Namespace) -> int:
    metrics = Metrics()
    health = Health()

    def worker_restarted(why: str) -> None:
        metrics.worker_restarts.inc()
        log.warning("libnftables worker restarted", extra=logs.fields(previous=why))

    nft = make_backend(args.nft_backend, on_restart=worker_restarted)
    client: AsyncKube | None = None
    source: Source
    if args.source_file is not None:
        source = FileSource(args.source_file, args.node, interval=args.poll_interval)
    else:
        # Imported here: an agent reading a policy file never loads the Kubernetes client.
        from secgroups_kube import AsyncKube

        client = AsyncKube.connect(
            args.kubeconfig, field_manager=FIELD_MANAGER, in_cluster=args.in_cluster
        )
        trusted = [m for m in args.trusted_writers.split(",") if m]
        trust = functools.partial(writer_problem, trusted=trusted) if trusted else None
        source = KubeSource(client, args.node, trust=trust)
    writer: StatusWriter
    if args.status_file is not None:
        writer = FileStatus(args.status_file)
    elif client is not None and isinstance(source, KubeSource):
        writer = KubeReport(client, args.node, source.node_uid)
    else:
        writer = _NoStatus()
    reporter = StatusReporter(writer, min_interval=0.0 if args.status_file else 1.0)
    config = SyncConfig(
        resync_period=args.resync_period,
        drift_period=args.drift_period,
        min_interval=args.min_sync_interval,
        burst=args.sync_burst,
    )
    watcher = RouteWatcher()
    sync = SyncLoop(
        source=source,
        planner=Planner(
            args.node,
            RenderOptions(
                allow_node_to_pod=not args.no_node_to_pod,
                dispatch=None if args.linear_group_chains else Limits(),
            ),
        ),
        nft=nft,
        conntrack=NetlinkConntrack(),
        interfaces=RouteInterfaces(watcher),
        reporter=reporter,
        metrics=metrics,
        health=health,
        config=config,
        # Reads (drift checks, inventories) go through `nft` processes: they run beside
        # the sync loop and never hold the worker the hot path writes through.
        reader=NftCli(),
    )
    watcher.on_change = sync.changed  # routes changed: re-resolve pod interfaces
    table = sync.planner.options.table
    monitor = TableMonitor(  # another process changed our table: rewrite it at once
        table.family,
        table.name,
        own=lambda pid: _ours(nft, sync, pid),
        on_foreign=sync.tampered,
        on_lost=sync.check_drift_soon,
    )
    cni = await cniserver.start(args, sync, client, sync.conntrack)  # docs/cni.md
    server = Server(health, metrics, args.metrics_addr)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    watcher.start(loop)
    monitor.start(loop)
    log.info(
        "agent started",
        extra=logs.fields(
            node=args.node,
            source=str(args.source_file or args.kubeconfig or "in-cluster"),
            nft_backend=args.nft_backend,
            metrics=args.metrics_addr,
            pid=os.getpid(),
        ),
    )
    tasks = [
        asyncio.create_task(source.run(sync.changed), name="source"),
        asyncio.create_task(sync.run(), name="sync"),
        asyncio.create_task(reporter.run(), name="status"),
        *(asyncio.create_task(c) for c in (cni.coroutines if cni else ())),
    ]
    stopper = asyncio.create_task(stop.wait(), name="stop")
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    for t in done:
        if t is not stopper:
            exc = t.exception() if not t.cancelled() else None
            log.error(
                "task ended unexpectedly",
                extra=logs.fields(task=t.get_name(), error=str(exc)),
                exc_info=exc,
            )
            code = 1
    for t in [*tasks, stopper]:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
    await reporter.flush()
    await server.stop()
    if cni is not None:
        await cni.stop()
    watcher.stop()
    monitor.stop()
    await asyncio.to_thread(nft.close)
    if client is not None:
        with contextlib.suppress(Exception):
            await client.close()
    log.info("agent stopped", extra=logs.fields(code=code))
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logs.setup(args.log_level)
    try:
        if args.cleanup:
            leftovers = cleanup.cni_leftovers(args.cni_socket, args.cni_state_dir)
            return asyncio.run(
                cleanup.run(args.node, args.agent_addr, args.metrics_addr, leftovers)
            )
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
