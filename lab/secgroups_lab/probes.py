"""Probes: start and stop probe daemons, and talk to them with typed calls.

One daemon (:mod:`secgroups_lab.probed`) runs in each lab host's network namespace and is
controlled over a unix socket in the lab's run directory (a filesystem socket is reachable
from every netns). :class:`ProbeClient` wraps its requests: one-shot probes (``tcp``, ``udp``,
``icmp``, ``gre`` to an address and port, many at once), long-lived flows (open, check from
either end, close), forged-source packets, and the record of what the daemon received.
:mod:`secgroups_lab.network` starts the daemons; :mod:`secgroups_lab.matrix` runs probes in
bulk.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from secgroups_lab._cmd import in_netns
from secgroups_lab.probewire import DEFAULT_PORTS

Proto = Literal["tcp", "udp", "icmp", "gre"]
# Seconds an answer from the daemon may take beyond the probe's own timeout.
RPC_MARGIN = 10.0


class ProbeError(RuntimeError):
    """The daemon could not be reached or rejected the request."""


class FlowOpenError(ProbeError):
    """A long-lived flow could not be opened: its first exchange failed."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class Endpoint(Protocol):
    """A lab host with a probe daemon: a pod, the outside host or a node."""

    @property
    def label(self) -> str: ...
    @property
    def netns(self) -> str: ...
    @property
    def ipv4(self) -> str: ...
    @property
    def ipv6(self) -> str: ...
    @property
    def control_socket(self) -> Path: ...


@dataclass(frozen=True)
class ProbeSpec:
    """One probe: ``proto`` to ``dst`` (``port`` for TCP/UDP), optionally from ``src``."""

    proto: Proto
    dst: str
    port: int = 0
    timeout: float = 2.0
    src: str | None = None

    def request(self) -> dict[str, Any]:
        req: dict[str, Any] = {
            "proto": self.proto,
            "dst": self.dst,
            "port": self.port,
            "timeout": self.timeout,
        }
        if self.src:
            req["src"] = self.src
        return req


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of one exchange: ``ok`` if the answer came back in time; ``reason`` says
    why not (``timeout``, ``refused``, ``host unreachable``, ...)."""

    ok: bool
    reason: str
    latency_ms: float
    peer: str = ""  # the address the answer came from

    @classmethod
    def parse(cls, data: dict[str, Any]) -> ProbeResult:
        return cls(
            ok=bool(data.get("ok")),
            reason=str(data.get("reason", "")),
            latency_ms=float(data.get("latency_ms", 0.0)),
            peer=str(data.get("peer", "")),
        )

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class FlowHandle:
    """A long-lived flow held open by the daemon of ``owner`` (a control socket path)."""

    id: str
    proto: Proto
    src: str
    sport: int  # the TCP/UDP source port or the ICMP echo identifier; 0 for GRE
    dst: str
    dport: int
    owner: Path


@dataclass(frozen=True)
class Seen:
    """A probe packet a daemon received: ``kind`` is ``Q`` (a probe) or ``F`` (forged)."""

    proto: str
    kind: str
    token: str
    src: str
    dst: str
    port: int
    time: float


class ProbeClient:
    """Typed calls to the probe daemon of ``target`` (an :class:`Endpoint` or a socket path).

    Every call has a deadline: the probe's own timeout plus :data:`RPC_MARGIN`. Safe to use
    from several threads (one connection per call).
    """

    def __init__(self, target: Endpoint | Path | str) -> None:
        if isinstance(target, str | Path):
            self.socket_path = Path(target)
            self.label = self.socket_path.stem
        else:
            self.socket_path = target.control_socket
            self.label = target.label

    def __repr__(self) -> str:
        return f"ProbeClient({self.label})"

    def call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request and return the daemon's answer (raises ProbeError)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            try:
                s.connect(str(self.socket_path))
                s.sendall(json.dumps(request).encode() + b"\n")
                chunks = []
                while True:
                    chunk = s.recv(1 << 16)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    if chunk.endswith(b"\n"):
                        break
            except OSError as exc:
                raise ProbeError(f"{self.label}: {request.get('op')}: {exc}") from exc
        if not chunks:
            raise ProbeError(f"{self.label}: {request.get('op')}: no answer")
        answer: dict[str, Any] = json.loads(b"".join(chunks))
        if "error" in answer:
            raise ProbeError(f"{self.label}: {request.get('op')}: {answer['error']}")
        return answer

    # ---------------------------------------------------------------- health
    def ping(self, timeout: float = 2.0) -> bool:
        try:
            return bool(self.call({"op": "ping"}, timeout).get("ok"))
        except (ProbeError, ValueError):
            return False

    def info(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.call({"op": "info"}, timeout)

    # ---------------------------------------------------------------- one-shot probes
    def probe(
        self,
        proto: Proto,
        dst: str,
        port: int = 0,
        *,
        timeout: float = 2.0,
        src: str | None = None,
    ) -> ProbeResult:
        spec = ProbeSpec(proto, dst, port, timeout, src)
        answer = self.call({"op": "probe", **spec.request()}, timeout + RPC_MARGIN)
        return ProbeResult.parse(answer)

    def probe_many(self, specs: Sequence[ProbeSpec]) -> list[ProbeResult]:
        """Run all ``specs`` at once in the daemon; results in the same order."""
        if not specs:
            return []
        timeout = max(s.timeout for s in specs) + RPC_MARGIN
        answer = self.call({"op": "probe_many", "probes": [s.request() for s in specs]}, timeout)
        return [ProbeResult.parse(r) for r in answer["results"]]

    # ---------------------------------------------------------------- long-lived flows
    def open_flow(
        self,
        proto: Proto,
        dst: str,
        port: int = 0,
        *,
        timeout: float = 2.0,
        src: str | None = None,
    ) -> FlowHandle:
        """Open a flow and complete one exchange on it (raises FlowOpenError if that fails).

        TCP: a connection kept idle. UDP: a socket with a fixed source port. ICMP: echo
        requests with a fixed identifier. GRE: the (source, destination) pair.
        """
        req = {"op": "flow_open", **ProbeSpec(proto, dst, port, timeout, src).request()}
        answer = self.call(req, timeout + RPC_MARGIN)
        if not answer.get("ok"):
            reason = str(answer.get("reason", ""))
            raise FlowOpenError(f"{self.label}: {proto} flow to {dst}:{port}: {reason}", reason)
        h = answer["handle"]
        return FlowHandle(
            id=str(h["id"]),
            proto=proto,
            src=str(h["src"]),
            sport=int(h["sport"]),
            dst=str(h["dst"]),
            dport=int(h["dport"]),
            owner=self.socket_path,
        )

    def check(self, handle: FlowHandle, *, timeout: float = 2.0) -> ProbeResult:
        """This end (the one that opened the flow) sends one message on it."""
        self._own(handle)
        answer = self.call(
            {"op": "flow_check", "id": handle.id, "timeout": timeout}, timeout + RPC_MARGIN
        )
        return ProbeResult.parse(answer)

    def check_peer(self, handle: FlowHandle, *, timeout: float = 2.0) -> ProbeResult:
        """The SERVER end speaks first: call this on the client of the host the flow goes to.

        TCP: the daemon writes on the connection it accepted from ``handle.src:sport``.
        UDP: it sends from its echo socket on ``dport`` to ``src:sport``. GRE: it sends a
        GRE probe to ``handle.src``. Not available for ICMP (the kernel answers echo).
        """
        req = {
            "op": "flow_check_peer",
            "proto": handle.proto,
            "peer": handle.src,
            "peer_port": handle.sport,
            "local": handle.dst,
            "local_port": handle.dport,
            "timeout": timeout,
        }
        return ProbeResult.parse(self.call(req, timeout + RPC_MARGIN))

    def close(self, handle: FlowHandle) -> None:
        self._own(handle)
        self.call({"op": "flow_close", "id": handle.id}, RPC_MARGIN)

    def _own(self, handle: FlowHandle) -> None:
        if handle.owner != self.socket_path:
            raise ProbeError(f"{self.label}: flow {handle.id} belongs to {handle.owner}")

    # ---------------------------------------------------------------- forged source, records
    def forge(self, proto: Literal["udp", "icmp"], src: str, dst: str, port: int = 0) -> str:
        """Send one packet from the forged address ``src`` (raw socket, header included).
        Returns its token; ask the receiver with :meth:`seen`."""
        answer = self.call(
            {"op": "forge", "proto": proto, "src": src, "dst": dst, "port": port}, RPC_MARGIN
        )
        if not answer.get("ok"):
            raise ProbeError(f"{self.label}: forge {proto} {src} -> {dst}: {answer.get('reason')}")
        return str(answer["token"])

    def seen(self, token: str | None = None) -> list[Seen]:
        """The probe packets this daemon received (all, or those carrying ``token``)."""
        answer = self.call({"op": "seen", "token": token}, RPC_MARGIN)
        return [
            Seen(
                proto=str(s["proto"]),
                kind=str(s["kind"]),
                token=str(s["token"]),
                src=str(s["src"]),
                dst=str(s["dst"]),
                port=int(s["port"]),
                time=float(s["time"]),
            )
            for s in answer["seen"]
        ]

    def wait_seen(self, token: str, *, timeout: float = 2.0, interval: float = 0.05) -> list[Seen]:
        """Poll :meth:`seen` for ``token`` until something arrives or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.seen(token)
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(interval)


@dataclass
class Flow:
    """A long-lived flow from ``client`` to ``server`` with checks from either end."""

    client: ProbeClient
    server: ProbeClient
    handle: FlowHandle

    @classmethod
    def open(
        cls,
        client: ProbeClient,
        server: ProbeClient,
        proto: Proto,
        dst: str,
        port: int = 0,
        *,
        timeout: float = 2.0,
    ) -> Flow:
        return cls(client, server, client.open_flow(proto, dst, port, timeout=timeout))

    def check(self, *, from_server: bool = False, timeout: float = 2.0) -> ProbeResult:
        if from_server:
            return self.server.check_peer(self.handle, timeout=timeout)
        return self.client.check(self.handle, timeout=timeout)

    def close(self) -> None:
        self.client.close(self.handle)


# -------------------------------------------------------------------- daemon processes
@dataclass
class ProbeDaemon:
    """A running probe daemon process."""

    name: str
    netns: str
    control: Path
    log: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self) -> ProbeClient:
        return ProbeClient(self.control)


def start_daemon(
    name: str,
    netns: str,
    control: Path,
    log: Path,
    ports: Iterable[int] = DEFAULT_PORTS,
    *,
    python: str = sys.executable,
) -> ProbeDaemon:
    """Start a probe daemon in ``netns`` (``nsenter --net``; nsenter execs, so the process
    is the daemon itself). It exits by itself if this process goes away."""
    control.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        control.unlink()
    argv = [
        python,
        "-m",
        "secgroups_lab.probed",
        "--name",
        name,
        "--control",
        str(control),
        "--log",
        str(log),
        "--ports",
        ",".join(str(p) for p in ports),
        "--parent-pid",
        str(os.getpid()),
    ]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            in_netns(netns, argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            close_fds=True,
        )
    return ProbeDaemon(name=name, netns=netns, control=control, log=log, process=proc)


def wait_ready(daemons: Sequence[ProbeDaemon], *, timeout: float = 20.0) -> None:
    """Wait until every daemon answers ``ping`` (raises ProbeError with the log tail)."""
    deadline = time.monotonic() + timeout
    waiting = list(daemons)
    while waiting:
        still = []
        for d in waiting:
            if d.process.poll() is not None:
                raise ProbeError(
                    f"probe daemon {d.name} exited with {d.process.returncode}:\n{_tail(d.log)}"
                )
            if not (d.control.exists() and d.client().ping(timeout=2.0)):
                still.append(d)
        waiting = still
        if waiting:
            if time.monotonic() >= deadline:
                names = ", ".join(d.name for d in waiting)
                raise ProbeError(f"probe daemons not ready after {timeout} s: {names}")
            time.sleep(0.02)


def stop_daemons(daemons: Sequence[ProbeDaemon], *, timeout: float = 5.0) -> None:
    """SIGTERM, wait until ``timeout``, then SIGKILL; every process is reaped."""
    for d in daemons:
        if d.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                d.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for d in daemons:
        try:
            d.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            d.process.kill()
            d.process.wait(5.0)
        with contextlib.suppress(FileNotFoundError):
            d.control.unlink()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"
