"""``secgroups-operator``: the operator process.

Wiring (:class:`Operator`): one reflector per watched kind (``watching``: paged lists,
watches resumed from the last resourceVersion, bookmarks) feeding the reconciler
(``reconciling``); three more for the compiled kinds (what is published, and what the
agents report applied); leader election on a Lease (``leader``) when
``--leader-election-lease`` is given, otherwise this replica leads at once; Events;
``/healthz`` (the event loop answers) and ``/readyz`` (initial lists compiled); the
admission webhook (``admission``, docs/admission.md), which needs no cache and answers
while the lists load.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from secgroups.compiled import (
    COMPILED_GROUP_KIND,
    COMPILED_NODE_KIND,
    COMPILED_SET_KIND,
    NODE_REPORT_KIND,
)
from secgroups.membership import Scope
from secgroups.models import ENFORCE_LABEL
from secgroups_kube import AsyncKube
from secgroups_operator import admission, memory
from secgroups_operator.intake import KINDS
from secgroups_operator.kube import KubeCluster
from secgroups_operator.leader import LeaderElector
from secgroups_operator.ports import FIELD_MANAGER, Cluster
from secgroups_operator.reconciling import Options, Reconciler
from secgroups_operator.watching import Reflector

log = logging.getLogger("secgroups_operator")

#: What the operator watches of its own output: the compiled objects, and the agents'
#: reports of what they applied.
COMPILED_KINDS = (COMPILED_GROUP_KIND, COMPILED_SET_KIND, COMPILED_NODE_KIND, NODE_REPORT_KIND)


@dataclass
class Timings:
    """When each start-up phase ended (monotonic seconds), for logs and benchmarks."""

    started: float = field(default_factory=time.monotonic)
    lists_done: float | None = None
    built: float | None = None
    published: float | None = None


class Operator:
    """Reflectors + reconciler + leader election over one :class:`Cluster`."""

    def __init__(
        self,
        cluster: Cluster,
        options: Options | None = None,
        *,
        identity: str = "",
        lease: tuple[str, str] | None = None,
        lease_s: float = 8.0,
        page: int = 500,
        trim_s: float = 30.0,
    ) -> None:
        self.identity = identity or f"{socket.gethostname()}-{os.getpid()}"
        self.reconciler = Reconciler(cluster, options, identity=self.identity)
        self.compiled = [
            Reflector(cluster, kind, self.reconciler.compiled_sink(), page=page)
            for kind in COMPILED_KINDS
        ]
        self.inputs = [
            Reflector(cluster, kind, self.reconciler.input_sink(), page=page) for kind in KINDS
        ]
        self.elector: LeaderElector | None = None
        if lease is not None:
            self.elector = LeaderElector(
                cluster,
                lease[0],
                lease[1],
                self.identity,
                lease_s=lease_s,
                renew_s=max(0.5, lease_s / 4),
                retry_s=max(0.25, lease_s / 8),
                on_start=self.reconciler.start_leading,
                on_stop=self.reconciler.stop_leading,
            )
        self.timings = Timings()
        self.ready = asyncio.Event()
        self.trim_s = trim_s  # how often freed memory may be given back (``memory``)

    @property
    def leading(self) -> bool:
        return self.reconciler.leading

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [asyncio.create_task(r.run(), name=f"watch {r.kind}") for r in self.compiled]
        tasks += [asyncio.create_task(r.run(), name=f"watch {r.kind}") for r in self.inputs]
        tasks.append(asyncio.create_task(self.reconciler.events.run(), name="events"))
        tasks.append(asyncio.create_task(self.reconciler.preload(stop), name="preload"))
        try:
            for r in (*self.compiled, *self.inputs):
                await _until(r.listed, stop)
            if stop.is_set():
                return
            self.timings.lists_done = time.monotonic()
            self.reconciler.lists_done = self.timings.lists_done
            log.info("initial lists in %.2f s", self.timings.lists_done - self.timings.started)
            if self.elector is not None:
                tasks.append(asyncio.create_task(self.elector.run(stop), name="leader election"))
            else:
                self.reconciler.start_leading()
            rec = asyncio.create_task(self.reconciler.run(stop), name="reconciler")
            tasks.append(rec)
            await _until(self.reconciler.loaded, stop)
            self.timings.built = time.monotonic()
            self.ready.set()
            # The lists' pages and the build's intermediates are free now: give them back,
            # and later what busy rounds free (``memory``; glibc keeps it otherwise).
            memory.trim()
            tasks.append(
                asyncio.create_task(
                    memory.trim_after_rounds(lambda: self.reconciler.rounds, stop, self.trim_s),
                    name="trim",
                )
            )
            await rec
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _until(event: asyncio.Event, stop: asyncio.Event) -> None:
    waiter = asyncio.ensure_future(event.wait())
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    stopper.cancel()


# --------------------------------------------------------------------------- health


async def serve_health(addr: str, op: Operator) -> asyncio.AbstractServer:
    """``/healthz``: 200 while the loop answers; ``/readyz``: 200 once the initial lists
    are compiled; the body says whether this replica leads."""
    host, _, port = addr.rpartition(":")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            path = line.split()[1].decode() if len(line.split()) > 1 else "/"
            ok = path.startswith("/healthz") or op.ready.is_set()
            role = "leader" if op.leading else "standby"
            body = (f"ok {role}\n" if ok else "not ready: initial lists\n").encode()
            status = "200 OK" if ok else "503 Service Unavailable"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (OSError, TimeoutError, IndexError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host.strip("[]") or "0.0.0.0", int(port))


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="secgroups-operator", description=__doc__)
    p.add_argument(
        "--kubeconfig",
        help="kubeconfig file (default: $KUBECONFIG, the in-cluster service account, "
        "~/.kube/config)",
    )
    p.add_argument(
        "--enforce-label",
        default=f"{ENFORCE_LABEL}=true",
        help="namespaces whose pods are managed: KEY=VALUE (default %(default)s)",
    )
    p.add_argument(
        "--no-default-groups",
        action="store_true",
        help="do not create namespace default groups (S-D-1 still applies in compiled form)",
    )
    p.add_argument(
        "--leader-election-lease",
        metavar="NAMESPACE/NAME",
        help="run as one of several replicas: lead while holding this Lease "
        "(the chart: <release namespace>/<release>-operator); default: lead alone",
    )
    p.add_argument(
        "--lease-duration",
        type=float,
        default=8.0,
        help="seconds a dead leader's lease keeps others waiting (default %(default)s)",
    )
    p.add_argument(
        "--identity",
        default=os.environ.get("POD_NAME", ""),
        help="this replica's name in the lease (default $POD_NAME, else host-pid)",
    )
    p.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="health endpoint URL to serve /healthz and /readyz on ('' for none)",
    )
    p.add_argument("--debounce", type=float, default=0.005, help="seconds to batch events")
    p.add_argument("--page-size", type=int, default=500, help="objects per list page")
    p.add_argument(
        "--serial-rounds",
        action="store_true",
        help="write a round's node objects before the next round starts (the behaviour "
        "before pipelining; for comparisons: bench/realization.py --compare serial)",
    )
    p.add_argument(
        "--recheck-by-epochs",
        action="store_true",
        help="re-check every pod through its own epoch, never a group's or set's counter "
        "(the behaviour before counters; for comparisons: bench/realization.py --compare "
        "epochs)",
    )
    p.add_argument(
        "--new-pods-wait",
        action="store_true",
        help="hold a new pod's node object until its groups' and sets' latest specs are "
        "written, as a re-checked pod's (the behaviour before; for comparisons: "
        "bench/scale.py --compare new-pods)",
    )
    p.add_argument(
        "--no-preload",
        action="store_true",
        help="compile the initial lists only once they are all in, not as their pages "
        "arrive (the behaviour before; for comparisons: --compare-preload of "
        "bench/operator_memory.py and bench/scale.py)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    admission.add_arguments(p)
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    key, _, value = args.enforce_label.partition("=")
    options = Options(
        scope=Scope(key=key, value=value or "true"),
        create_defaults=not args.no_default_groups,
        debounce_s=args.debounce,
        pipelined=not args.serial_rounds,
        recheck_counters=not args.recheck_by_epochs,
        new_pods_early=not args.new_pods_wait,
        preload_s=0.0 if args.no_preload else Options.preload_s,
    )
    lease = None
    if args.leader_election_lease:
        ns, sep, name = args.leader_election_lease.partition("/")
        if not sep or not ns or not name:
            raise SystemExit("--leader-election-lease wants NAMESPACE/NAME")
        lease = (ns, name)
    kube = AsyncKube.connect(args.kubeconfig, field_manager=FIELD_MANAGER)
    stop = asyncio.Event()
    # Admission first: it needs no cache, so it answers while the lists load.
    webhook = admission.start(args, kube, options.scope, stop)
    if args.webhook_only:
        await admission.serve_only(webhook, stop)
        await kube.close()
        return
    cluster = KubeCluster(kube)
    op = Operator(
        cluster,
        options,
        identity=args.identity,
        lease=lease,
        lease_s=args.lease_duration,
        page=args.page_size,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = None
    if args.liveness:
        addr = args.liveness.split("://", 1)[-1].split("/", 1)[0]
        server = await serve_health(addr, op)
    try:
        await op.run(stop)
    finally:
        stop.set()
        if server is not None:
            server.close()
        if webhook is not None:
            await asyncio.gather(webhook, return_exceptions=True)
        await kube.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:  # one line per HTTP request is noise at scale
        for name in ("httpx", "httpx2", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
