"""Node cleanup for ``helm uninstall``: remove our table once the node's agent is gone.

The chart's post-delete hook runs this on every node (``secgroups-agent --cleanup``, a
DaemonSet in the node's network namespace with ``NET_ADMIN``, docs/install.md). The
agent leaves its table in place when it stops (so enforcement survives restarts and
upgrades) and repairs it within seconds while it runs; so the cleanup first waits until
nothing answers on the agent's port any more (its pod has terminated), then deletes
``table inet secgroups`` — and, with the CNI plugin, the plugin's socket and the bindings
the agent kept across restarts (``--cni-socket``, ``--cni-state-dir``; the chart's init
container has already removed the plugin itself) — and only then reports ready on its own
``/readyz``. It keeps
checking until it is stopped: a table that reappears (an agent that was slow to die) is
deleted again and readiness drops meanwhile. The chart's uninstall Job waits for every
node's cleanup pod to be ready.

Neighbours: :mod:`secgroups_agent.server` (the HTTP endpoints), :mod:`secgroups_agent.nftables`
(the ``nft`` command). Nothing here talks to the API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from secgroups.nft.objects import Table
from secgroups_agent import logs
from secgroups_agent.metrics import Metrics
from secgroups_agent.nftables import NftCli, NftError, is_no_such_table
from secgroups_agent.server import Health, Server, parse_addr

log = logs.get("cleanup")

TABLE = str(Table())  # "inet secgroups"


async def answers(addr: str, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at ``host:port`` (the agent's server)."""
    host, port = parse_addr(addr)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


def delete_table(nft: NftCli) -> bool:
    """Delete our table; True if there was one. Other tables are never touched."""
    try:
        nft.apply(f"delete table {TABLE}\n")
    except NftError as exc:
        if is_no_such_table(exc):
            return False
        raise
    return True


def cni_leftovers(socket: Path | None, state_dir: Path | None) -> list[Path]:
    """What the agent's CNI side leaves on the node: its socket and its bindings (the
    state directory defaults to ``<socket dir>/cni-state``, as the agent's does)."""
    if socket is None:
        return []
    return [socket, state_dir or socket.parent / "cni-state"]


def remove_paths(paths: Sequence[Path]) -> list[Path]:
    """Delete these files or directories; the ones that existed."""
    gone = []
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        gone.append(path)
    return gone


@dataclass
class Cleanup:
    """One node's cleanup loop (see the module docstring)."""

    agent_addr: str
    health: Health
    agent_running: Callable[[str], Awaitable[bool]] = answers
    remove: Callable[[], bool] = lambda: delete_table(NftCli())
    interval: float = 1.0
    leftovers: Sequence[Path] = field(default_factory=list)

    async def step(self) -> None:
        """One check: wait for the agent, else make sure the table is gone."""
        self.health.beat()
        if await self.agent_running(self.agent_addr):
            self.health.ready = False
            self.health.not_ready_reason = (
                f"the node agent still answers at {self.agent_addr}; waiting for it to exit"
            )
            return
        try:
            removed = await asyncio.to_thread(self.remove)
        except NftError as exc:
            self.health.ready = False
            self.health.not_ready_reason = f"cannot delete table {TABLE}: {exc}"
            log.error("delete failed", extra=logs.fields(table=TABLE, error=str(exc)))
            return
        if removed:
            log.info("table deleted", extra=logs.fields(table=TABLE))
        for path in remove_paths(self.leftovers):
            log.info("removed", extra=logs.fields(path=str(path)))
        if not self.health.ready:
            log.info("node clean", extra=logs.fields(table=TABLE))
        self.health.ready = True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.step()
            with contextlib.suppress(TimeoutError):
                # not wait_for: it can swallow a cancel, and the task never ends
                async with asyncio.timeout(self.interval):
                    await stop.wait()


async def run(node: str, agent_addr: str, serve_addr: str, leftovers: Sequence[Path] = ()) -> int:
    """Serve ``/readyz`` at ``serve_addr`` and clean until SIGTERM; the process's exit code."""
    health = Health(not_ready_reason="not checked yet")
    server = Server(health, Metrics(), serve_addr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    log.info(
        "cleanup started",
        extra=logs.fields(node=node, agent=agent_addr, addr=serve_addr, table=TABLE),
    )
    try:
        await Cleanup(agent_addr, health, leftovers=list(leftovers)).run(stop)
    finally:
        await server.stop()
    log.info("cleanup stopped", extra=logs.fields(node=node, clean=health.ready))
    return 0
