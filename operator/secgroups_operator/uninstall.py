"""``secgroups-operator-uninstall``: the last step of ``helm uninstall`` (the chart's Job).

Helm has deleted the release's objects; the chart's post-delete hooks then run a node
cleanup DaemonSet (``secgroups-agent --cleanup`` on every node, which deletes
``table inet secgroups`` once the node's agent has exited) and this Job, which:

1. waits until the release's operator and agent pods are gone (an operator still
   running would publish again what step 3 deletes);
2. waits until every node's cleanup pod is Ready (its node's table is gone);
3. deletes what the operator made at run time and Helm does not know about: every
   compiled object (``CompiledNodePolicy``, ``CompiledSecurityGroup``,
   ``CompiledAddressSet``), the operator's leader Lease and the webhook's TLS Secret.

Users' objects (SecurityGroups, rules, IP address groups, the namespace ``default``
groups) and the CRDs stay, as docs/install.md says. Each wait has the one deadline
``--timeout``; on expiry the message names what was still waited for, and Helm reports
the hook as failed. Progress goes to stdout (``kubectl logs job/<release>-cleanup``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from lightkube.resources.apps_v1 import DaemonSet
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Pod, Secret

from secgroups.kinds import KINDS
from secgroups_kube import ApiError, Kube, is_not_found
from secgroups_kube.resources import global_resource

FIELD_MANAGER = "secgroups-uninstall"
COMPILED_KINDS = tuple(k.kind for k in KINDS.values() if not k.namespaced)
T = TypeVar("T")


class UninstallError(RuntimeError):
    """A wait ran out of time (the message says what was still pending)."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="secgroups-operator-uninstall", description=__doc__)
    p.add_argument("--kubeconfig", help="kubeconfig file (default: the in-cluster rule)")
    p.add_argument("--namespace", required=True, help="the release namespace")
    p.add_argument("--instance", required=True, help="the release name (instance label)")
    p.add_argument("--cleanup-daemonset", required=True, help="the node cleanup DaemonSet")
    p.add_argument("--lease", required=True, help="the operator's leader Lease")
    p.add_argument("--secret", required=True, help="the webhook's TLS Secret")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for all waits")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between checks")
    return p.parse_args(argv)


def say(msg: str) -> None:
    print(f"[uninstall] {msg}", flush=True)


def wait(
    what: str,
    check: Callable[[], tuple[bool, str]],
    deadline: float,
    interval: float,
) -> None:
    """Poll ``check`` (done, state) until done; print each new state; fail at ``deadline``."""
    last = ""
    while True:
        done, state = check()
        if state != last:
            say(f"{what}: {state}")
            last = state
        if done:
            return
        if time.monotonic() >= deadline:
            raise UninstallError(f"{what}: not done in time ({state})")
        time.sleep(interval)


def _ready(pod: Any) -> bool:
    conditions = (pod.status.conditions if pod.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


class Uninstall:
    """The three steps of the module docstring against one API server."""

    def __init__(self, kube: Kube, args: argparse.Namespace) -> None:
        self.kube = kube
        self.client: Any = kube.client
        self.args = args

    def components_gone(self) -> tuple[bool, str]:
        selector = {
            "app.kubernetes.io/instance": self.args.instance,
            "app.kubernetes.io/component": ("operator", "agent"),
        }
        pods = list(self.client.list(Pod, namespace=self.args.namespace, labels=selector))
        names = sorted(p.metadata.name for p in pods)
        return not names, f"{len(names)} pods left" + (f" ({', '.join(names)})" if names else "")

    def nodes_clean(self) -> tuple[bool, str]:
        ds = self.client.get(DaemonSet, self.args.cleanup_daemonset, namespace=self.args.namespace)
        status = ds.status
        if status is None or (status.observedGeneration or 0) < (ds.metadata.generation or 0):
            return False, "waiting for the DaemonSet controller"
        desired, ready = status.desiredNumberScheduled or 0, status.numberReady or 0
        state = f"{ready}/{desired} nodes clean"
        if ready < desired:
            pods = self.client.list(
                Pod,
                namespace=self.args.namespace,
                labels={
                    "app.kubernetes.io/instance": self.args.instance,
                    "app.kubernetes.io/component": "cleanup",
                },
            )
            waiting = sorted(
                (p.spec.nodeName or f"{p.metadata.name} (not scheduled)")
                for p in pods
                if not _ready(p)
            )
            if waiting:
                state += f"; waiting for {', '.join(waiting)}"
        return ready >= desired, state

    def delete_compiled(self) -> int:
        count = 0
        for kind in COMPILED_KINDS:
            res = global_resource(kind)
            for obj in self.client.list(res):
                try:
                    self.client.delete(res, obj.metadata.name)
                except ApiError as exc:
                    if not is_not_found(exc):
                        raise
                count += 1
        return count

    def delete_named(self) -> list[str]:
        gone = []
        for res, name in ((Lease, self.args.lease), (Secret, self.args.secret)):
            try:
                self.client.delete(res, name, namespace=self.args.namespace)
                gone.append(f"{res.__name__}/{name}")
            except ApiError as exc:
                if not is_not_found(exc):
                    raise
        return gone

    def run(self) -> None:
        deadline = time.monotonic() + self.args.timeout
        wait("operator and agents stopped", self.components_gone, deadline, self.args.interval)
        wait("node tables removed", self.nodes_clean, deadline, self.args.interval)
        say(f"deleted {self.delete_compiled()} compiled objects")
        named = self.delete_named()
        say(f"deleted {', '.join(named) or 'no Lease or Secret (none existed)'}")
        say("done: the CRDs and users' objects stay (docs/install.md)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    kube = Kube.connect(args.kubeconfig, field_manager=FIELD_MANAGER)
    try:
        Uninstall(kube, args).run()
    except UninstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        kube.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
