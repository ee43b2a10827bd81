"""HTTP endpoints: ``/healthz`` (loop alive), ``/readyz`` (initial sync applied), ``/metrics``.

A minimal HTTP/1.1 server on the agent's asyncio loop (GET only, one request per
connection), so that a blocked loop also fails the liveness probe. Default address
127.0.0.1:9750: the agent runs with hostNetwork (and inside a lab node netns in tests).

``/healthz`` is 200 while the sync loop's heartbeat is younger than ``stale_after``
seconds (the loop beats at least every second, even when idle); ``/readyz`` is 200
once the first sync has been applied; both answer 503 with a one-line reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from secgroups_agent import logs
from secgroups_agent.metrics import Metrics

log = logs.get("server")

DEFAULT_ADDR = "127.0.0.1:9750"
_MAX_HEADER = 8192
_READ_TIMEOUT = 5.0


@dataclass
class Health:
    """Shared by the sync loop (writer) and the server (reader)."""

    stale_after: float = 30.0
    heartbeat: float = field(default_factory=time.monotonic)
    ready: bool = False
    not_ready_reason: str = "initial sync not applied yet"

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def alive(self) -> tuple[bool, str]:
        age = time.monotonic() - self.heartbeat
        if age > self.stale_after:
            return False, f"sync loop silent for {age:.1f} s"
        return True, "ok"


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bad address {addr!r} (want host:port)")
    return host.strip("[]") or "0.0.0.0", int(port)


class Server:
    def __init__(self, health: Health, metrics: Metrics, addr: str = DEFAULT_ADDR) -> None:
        self.health = health
        self.metrics = metrics
        self.addr = addr
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        host, port = parse_addr(self.addr)
        self._server = await asyncio.start_server(self._handle, host, port)
        log.info("http server listening", extra=logs.fields(addr=self.addr, port=self.port))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    def respond(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of ``path``."""
        path = path.split("?", 1)[0]
        if path == "/healthz":
            ok, why = self.health.alive()
            return (200 if ok else 503), "text/plain", (why + "\n").encode()
        if path == "/readyz":
            if self.health.ready:
                return 200, "text/plain", b"ok\n"
            return 503, "text/plain", (self.health.not_ready_reason + "\n").encode()
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render()
        return 404, "text/plain", b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
            if len(head) > _MAX_HEADER:
                raise ValueError("header too large")
            method, path, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if method not in ("GET", "HEAD"):
                code, ctype, body = 405, "text/plain", b"method not allowed\n"
            else:
                code, ctype, body = self.respond(path)
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(
                code, "Service Unavailable"
            )
            header = (
                f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(header + (b"" if method == "HEAD" else body))
            await asyncio.wait_for(writer.drain(), _READ_TIMEOUT)
        except (TimeoutError, ValueError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
