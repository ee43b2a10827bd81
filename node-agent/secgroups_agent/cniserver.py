"""The CNI socket: where ``secgroups-cni`` (the chained plugin, ``cni/``) reaches the agent.

A unix stream socket on the host (``--cni-socket``, the chart's hostPath
``/var/run/secgroups/cni.sock``), owner-only (0600: the container runtime runs plugins
as root). One request per connection, newline-delimited JSON both ways (docs/cni.md,
"The socket"); :class:`~secgroups_agent.cni.CniState` answers. A request that is not
one JSON line within a few seconds is dropped; a reply is always one line.

:func:`start` wires the CNI side into a running agent per its flags (:func:`add_arguments`).

Neighbours: ``cni`` (what the answers are), ``cnikube`` (the API side), ``main``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secgroups.membership import Scope
from secgroups.models import ENFORCE_LABEL
from secgroups_agent import logs
from secgroups_agent.cni import BindingStore, CniState, StaticNamespaces
from secgroups_agent.cnikube import GATE, KubeNamespaces, KubePods, Readiness
from secgroups_agent.conntrack import ConntrackPort
from secgroups_agent.sources import SourceProblem
from secgroups_agent.syncing import SyncLoop

if TYPE_CHECKING:
    from secgroups_kube import AsyncKube

log = logs.get("cni")

MAX_REQUEST = 64 * 1024
READ_TIMEOUT = 5.0


class CniServer:
    """Serves :class:`CniState` on a unix socket until stopped."""

    def __init__(self, path: Path, state: CniState) -> None:
        self.path = path
        self.state = state
        self._server: asyncio.AbstractServer | None = None
        self.requests = 0

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a previous agent's socket: nobody listens on it
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old)
        log.info("CNI socket listening", extra=logs.fields(path=str(self.path)))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        # The socket file stays: the plugin's retries then see "connection refused" and
        # wait for the next agent, exactly as with a missing file.

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
                req: Any = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("not a JSON object")
            except (TimeoutError, ValueError, asyncio.LimitOverrunError) as exc:
                reply: dict[str, Any] = {"ok": False, "error": f"bad request: {exc}"}
            else:
                reply = await self.state.handle(req)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            log.debug("CNI client went away", extra=logs.fields(error=str(exc)))
        except Exception:
            log.exception("CNI request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


# ----------------------------------------------------------------------------- wiring


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The agent's CNI flags (docs/cni.md)."""
    g = p.add_argument_group("CNI plugin and readiness gate (docs/cni.md)")
    g.add_argument(
        "--cni-socket",
        type=Path,
        help="serve the secgroups-cni plugin on this unix socket (the chart: "
        "/var/run/secgroups/cni.sock); off by default",
    )
    g.add_argument(
        "--cni-state-dir",
        type=Path,
        help="where the CNI bindings are kept across restarts (default: <socket dir>/cni-state)",
    )
    g.add_argument(
        "--enforce-label",
        default=f"{ENFORCE_LABEL}=true",
        help="namespaces whose pods are managed, as the operator's flag: KEY=VALUE "
        "(default %(default)s)",
    )
    g.add_argument(
        "--enforced-namespaces",
        default="*",
        help="with --source-file (no API server): the namespaces taken as enforced, "
        "comma-separated, '*' for all (default %(default)s)",
    )
    g.add_argument(
        "--pod-readiness",
        action="store_true",
        help=f"set the readiness condition {GATE} of this node's pods (needs get/list/watch "
        "on pods and namespaces and patch on pods/status; docs/cni.md)",
    )


@dataclass
class CniRuntime:
    """The CNI side of a running agent: its state, socket and API reflectors."""

    state: CniState
    server: CniServer | None
    coroutines: list[Coroutine[Any, Any, None]]

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()


def _scope(text: str) -> Scope:
    key, _, value = text.partition("=")
    return Scope(key=key, value=value or "true")


async def start(
    args: argparse.Namespace,
    sync: SyncLoop,
    client: AsyncKube | None,
    conntrack: ConntrackPort | None,
) -> CniRuntime | None:
    """Wire the CNI side into ``sync`` per the flags; None when it is all off."""
    readiness_on = client is not None and args.pod_readiness
    if args.cni_socket is None and not readiness_on:
        return None
    coroutines: list[Coroutine[Any, Any, None]] = []
    namespaces: KubeNamespaces | StaticNamespaces
    if client is not None:
        namespaces = KubeNamespaces(client, _scope(args.enforce_label))
        namespaces.listeners.append(sync.changed)  # managed-ness decides pending addresses
        coroutines.append(namespaces.run())
    else:
        names = [n.strip() for n in args.enforced_namespaces.split(",") if n.strip()]
        namespaces = StaticNamespaces(names)

    def problem() -> SourceProblem | None:
        status = sync.status()
        if status.error:
            return SourceProblem(status.reason or "Error", status.error)
        return None

    state_dir = args.cni_state_dir
    if state_dir is None and args.cni_socket is not None:
        state_dir = args.cni_socket.parent / "cni-state"
    state = CniState(
        BindingStore(state_dir),
        namespaces,
        changed=sync.changed,
        conntrack=conntrack,
        problem=problem,
    )
    sync.placeholder = state
    server = None
    if args.cni_socket is not None:
        server = CniServer(args.cni_socket, state)
        await server.start()
    if readiness_on and client is not None and isinstance(namespaces, KubeNamespaces):
        pods = KubePods(client, args.node)
        readiness = Readiness(client, pods, namespaces)
        pods.listeners.append(readiness.poke)
        namespaces.listeners.append(readiness.poke)
        state.listeners.append(readiness.committed)
        coroutines += [pods.run(), readiness.run()]
    return CniRuntime(state, server, coroutines)
