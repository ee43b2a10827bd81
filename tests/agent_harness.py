"""Drive a real ``secgroups-agent`` process inside a network namespace (netns tier, benches).

:class:`AgentProcess` starts the agent in a (lab node) netns with a policy file as its
source and a status file, and offers :meth:`AgentProcess.apply`: write a new policy
(with a new generation) and wait, with a deadline, until the agent's status says it
applied it. Also: GET its HTTP endpoints from inside the netns, read its metrics, find
its libnftables worker, read its log, and stop it. On stop the harness deletes the
agent's table from the netns (the agent itself leaves it in place on purpose), so a
shared lab is left as it was found.

Example::

    with AgentProcess("ksgnet-n1", node="n1", workdir=tmp_path) as agent:
        agent.start(policy)            # waits until generation 1 is applied
        agent.apply(changed_policy)    # waits until generation 2 is applied
        assert agent.http("/readyz")[0] == 200
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from secgroups.compiled import CompiledPolicy, NodeAgentStatus
from secgroups_agent.status import read_status_file

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


class AgentError(AssertionError):
    """The agent did not do what was expected in time (message holds its log tail)."""


def in_netns(netns: str, fn: Callable[[], T], *, timeout: float = 30.0) -> T:
    """Run ``fn`` in a short-lived thread that joined ``netns`` (the process stays put)."""
    result: list[T] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=work, name=f"in-{netns}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"call in netns {netns} took more than {timeout} s")
    if errors:
        raise errors[0]
    return result[0]


def _die_with_parent() -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class AgentProcess:
    """One agent process in ``netns`` for node ``node``, driven by a policy file."""

    def __init__(
        self,
        netns: str,
        node: str,
        workdir: Path,
        *,
        backend: str = "lib",
        port: int = 9750,
        drift_period: float = 0.25,
        resync_period: float = 300.0,
        min_sync_interval: float = 0.0,
        extra_args: Sequence[str] = (),
        delete_table_on_stop: bool = True,
    ) -> None:
        self.netns = netns
        self.node = node
        self.workdir = workdir
        self.backend = backend
        self.port = port
        self.drift_period = drift_period
        self.resync_period = resync_period
        self.min_sync_interval = min_sync_interval
        self.extra_args = list(extra_args)
        self.delete_table_on_stop = delete_table_on_stop
        self.policy_file = workdir / f"agent-{node}-policy.json"
        self.status_file = workdir / f"agent-{node}-status.json"
        self.log_file = workdir / f"agent-{node}.log"
        self.generation = 0
        self.process: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "secgroups_agent.main",
            "--node",
            self.node,
            "--source-file",
            str(self.policy_file),
            "--status-file",
            str(self.status_file),
            "--metrics-addr",
            f"127.0.0.1:{self.port}",
            "--nft-backend",
            self.backend,
            "--drift-period",
            str(self.drift_period),
            "--resync-period",
            str(self.resync_period),
            "--min-sync-interval",
            str(self.min_sync_interval),
            "--poll-interval",
            "0.02",
            *self.extra_args,
        ]

    def start(self, policy: CompiledPolicy | None = None, *, timeout: float = 30.0) -> None:
        """Start the agent (with ``policy`` as generation 1, if given) and wait until it is
        healthy — and, with a policy, until it applied it."""
        if self.process is not None:
            raise RuntimeError("agent already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.status_file.unlink()
        if policy is not None:
            self._write(policy)
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.netns}", "--", *self.argv()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads touch this fork
            )
        self.wait_for(lambda: self._http_quiet("/healthz")[0] == 200, "a healthy agent", timeout)
        if policy is not None:
            self.wait_applied(self.generation, timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; delete the agent's table. Exit code."""
        proc, self.process = self.process, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait(5.0)
        if self.delete_table_on_stop:
            self.nft("delete table inet secgroups", check=False)
        return code

    def kill(self, timeout: float = 10.0) -> int:
        """``kill -9`` the agent (a crash: no shutdown path runs); its table stays. Exit code."""
        proc, self.process = self.process, None
        if proc is None:
            raise AgentError("agent is not running")
        proc.kill()
        return proc.wait(timeout)

    @property
    def pid(self) -> int:
        if self.process is None or self.process.poll() is not None:
            raise AgentError(f"agent is not running\n{self.log_tail()}")
        return self.process.pid

    # ------------------------------------------------------------------ policy
    def _write(self, policy: CompiledPolicy) -> int:
        self.generation += 1
        doc = {
            "generation": self.generation,
            "policy": policy.model_dump(by_alias=True, mode="json"),
        }
        tmp = self.policy_file.with_name(f".{self.policy_file.name}.tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.policy_file)
        return self.generation

    def apply(self, policy: CompiledPolicy, *, timeout: float = 20.0) -> NodeAgentStatus:
        """Write ``policy`` as the next generation and wait until it is applied."""
        return self.wait_applied(self._write(policy), timeout=timeout)

    def wait_applied(self, generation: int, *, timeout: float = 20.0) -> NodeAgentStatus:
        def done() -> bool:
            s = self.status()
            return s is not None and s.applied_generation == generation and s.error is None

        self.wait_for(done, f"generation {generation} applied", timeout)
        status = self.status()
        assert status is not None
        return status

    def status(self) -> NodeAgentStatus | None:
        return read_status_file(self.status_file)

    # ------------------------------------------------------------------ probes
    def wait_for(self, cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if self.process is not None and self.process.poll() is not None:
                raise AgentError(f"agent exited ({self.process.returncode})\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AgentError(
                    f"timed out after {timeout} s waiting for {what}; status {self.status()}\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.02)

    def http(self, path: str, *, timeout: float = 5.0) -> tuple[int, str]:
        """GET ``path`` from the agent's HTTP server, inside its netns: (status, body)."""

        def get() -> tuple[int, str]:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n".encode())
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
            return int(head.split()[1]), body.decode()

        return in_netns(self.netns, get, timeout=timeout + 5)

    def _http_quiet(self, path: str) -> tuple[int, str]:
        try:
            return self.http(path, timeout=1.0)
        except OSError:
            return (0, "")

    def metrics(self) -> dict[str, float]:
        """The Prometheus samples (``name{labels}`` → value)."""
        code, body = self.http("/metrics")
        if code != 200:
            raise AgentError(f"/metrics answered {code}")
        out: dict[str, float] = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def worker_pid(self) -> int | None:
        """The libnftables worker: the agent's child running ``secgroups_agent.nftworker``."""
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    cmd = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
                    if b"secgroups_agent.nftworker" in cmd:
                        return int(child)
        return None

    def nft(self, command: str, *, check: bool = True) -> str:
        """Run ``nft <command>`` in the agent's netns (for tampering and inspection)."""
        proc = subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.netns}", "--", "nft", *command.split()],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AgentError(f"nft {command}: {proc.stderr.strip()}")
        return proc.stdout

    def table_json(self) -> dict[str, Any]:
        return dict(json.loads(self.nft("-j list table inet secgroups")))

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_file.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out
