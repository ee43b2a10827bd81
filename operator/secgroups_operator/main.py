"""``secgroups-operator``: the operator process.

Lists every watched kind once (so the first reconcile sees the whole cluster, never a
partial list that would unpublish pods not yet seen), recovers what a previous run
published, then runs kopf's watch machinery and the reconcile loop side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from collections.abc import Sequence

import kopf

from secgroups.membership import Scope
from secgroups.models import ENFORCE_LABEL
from secgroups_kube import AsyncKube, credentials
from secgroups_operator import admission, handlers
from secgroups_operator.kube import FIELD_MANAGER
from secgroups_operator.reconciling import Reconciler
from secgroups_operator.store import KINDS, FactsStore

log = logging.getLogger("secgroups_operator")


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
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="kopf liveness endpoint (default %(default)s)",
    )
    p.add_argument("--debounce", type=float, default=0.02, help="seconds to batch events")
    p.add_argument("-v", "--verbose", action="store_true")
    admission.add_arguments(p)
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    key, _, value = args.enforce_label.partition("=")
    scope = Scope(key=key, value=value or "true")
    cluster = AsyncKube.connect(args.kubeconfig, field_manager=FIELD_MANAGER)
    # Admission first: it needs no cache, so it answers while the lists below load.
    stop = asyncio.Event()
    webhook = admission.start(args, cluster, scope, stop)
    if args.webhook_only:
        await admission.serve_only(webhook, stop)
        await cluster.close()
        return
    store = FactsStore()
    reconciler = Reconciler(
        cluster,
        store,
        scope=scope,
        create_defaults=not args.no_default_groups,
        debounce_s=args.debounce,
    )
    for kind in KINDS:
        store.replace_kind(kind, await cluster.list(kind))
    await reconciler.recover()
    reconciler.mark_dirty()

    registry = kopf.OperatorRegistry()
    handlers.register(registry, store, reconciler)

    # kopf's watches log in with the same context as our writes (one kubeconfig rule),
    # instead of kopf's own fallbacks, which prefer the service account to $KUBECONFIG.
    @kopf.on.login(registry=registry)
    def login(**_: object) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(**dataclasses.asdict(credentials(cluster.config)))

    settings = kopf.OperatorSettings()
    settings.posting.level = logging.WARNING
    settings.watching.chunk_size = 500
    settings.persistence.finalizer = "secgroups.dev/operator"
    loop_task = asyncio.create_task(reconciler.run(stop))
    try:
        await kopf.operator(
            registry=registry,
            settings=settings,
            clusterwide=True,
            standalone=True,
            liveness_endpoint=args.liveness or None,
        )
    finally:
        stop.set()
        await loop_task
        if webhook is not None:
            await asyncio.gather(webhook, return_exceptions=True)
        await cluster.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:  # one line per HTTP request / handler run is noise at scale
        for name in ("httpx", "httpx2", "kopf.objects", "kopf.activities.authentication"):
            logging.getLogger(name).setLevel(logging.WARNING)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
