"""The nft port: apply one transaction atomically, and read our table back.

Neighbours: :mod:`secgroups_agent.syncing` hands it the transaction text the renderer
(``secgroups.nft``) produced; :mod:`secgroups_agent.drift` reads the table back with it.

Implementations of :class:`NftBackend`:

* :class:`LibNftWorker` — libnftables in-process (ctypes), in a long-lived worker
  subprocess (:mod:`secgroups_agent.nftworker`). A libnftables crash (segfault) kills
  only the worker: the call raises :class:`NftWorkerCrashedError`, the next call starts a new
  worker, and the sync loop falls back to a full resync
  (docs/nftables.md#libnftables-crashes-on-some-json-input);
* :class:`NftCli` — ``nft -f -`` per transaction: crash-isolated but ~40x slower per
  small change (process start);
* :class:`WorkerWithCliFallback` — the worker, except that the transaction after a
  worker crash (a full resync) goes through the CLI, so that a construct that crashes
  libnftables cannot crash-loop the worker; and the CLI for good if the worker cannot
  start at all (no ``libnftables.so.1``);
* :class:`FakeNft` — in memory, for unit tests: records transactions, fails on demand,
  and returns whatever listing the test gives it.

Every call has a deadline. Errors keep nft's first error message (``NftError.message``)
and the whole error output (``NftError.detail``).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from secgroups_agent import logs
from secgroups_agent.nftworker import OP_QUIT, OP_RUN, REQUEST, RESPONSE

log = logs.get("nft")

# nft_ctx_output flags (libnftables.h).
OUTPUT_JSON = 1 << 4
OUTPUT_TERSE = 1 << 11

DEFAULT_TIMEOUT = 30.0
_ERROR_DETAIL_LIMIT = 4000


class NftError(RuntimeError):
    """A transaction or listing failed; nothing was applied (nft transactions are atomic)."""

    reason = "NftApplyFailed"

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail[:_ERROR_DETAIL_LIMIT]


class NftWorkerCrashedError(NftError):
    """The libnftables worker died during the call (e.g. a segfault in libnftables)."""

    reason = "NftWorkerCrashed"


class NftWorkerUnavailableError(NftError):
    """The libnftables worker cannot start (no libnftables.so.1, no Python to run it)."""

    reason = "NftWorkerUnavailable"


class NftTimeoutError(NftError):
    """The call did not finish within its deadline; the worker (or nft) was killed."""

    reason = "NftTimeout"


def first_error(err: str) -> str:
    """nft's first error line (``<input>:3:1-4: Error: ...``), or the first non-empty line."""
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    for line in lines:
        if "Error:" in line:
            return line
    return lines[0] if lines else "nft failed without a message"


def is_no_such_table(err: NftError) -> bool:
    return "No such file or directory" in err.message or "does not exist" in err.message


class NftBackend(Protocol):
    """Runs nft text (one atomic transaction per call) and lists a table as JSON."""

    @property
    def name(self) -> str: ...

    def apply(self, text: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Apply ``text`` atomically; raise :class:`NftError` (nothing applied) on failure."""
        ...

    def list_json(
        self, target: str, *, terse: bool = False, timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, Any] | None:
        """``nft -j [-t] list <target>`` parsed (``table inet secgroups``, ``set inet
        secgroups pods4``, ...), or None if it does not exist.

        ``terse`` omits set and map elements (cheap even with 100k elements)."""
        ...

    def close(self) -> None: ...


def _parse_listing(out: str) -> dict[str, Any]:
    data = json.loads(out) if out.strip() else {"nftables": []}
    if not isinstance(data, dict):
        raise NftError("nft listing is not a JSON object", out[:200])
    return data


# --------------------------------------------------------------------------- worker
@dataclass
class WorkerStats:
    """Counts for metrics and logs."""

    starts: int = 0
    crashes: int = 0
    timeouts: int = 0


class LibNftWorker:
    """libnftables in a long-lived child process; one call at a time (thread-safe).

    The worker is started lazily and restarted lazily after it died, so a crash costs one
    failed call. ``on_restart`` is told about every start after the first (for metrics).
    """

    name = "lib"

    def __init__(
        self,
        *,
        python: str = sys.executable,
        start_timeout: float = 10.0,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        self._python = python
        self._start_timeout = start_timeout
        self._on_restart = on_restart
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._req_w = -1
        self._resp_r = -1
        self.stats = WorkerStats()
        self.last_exit: str | None = None

    # ------------------------------------------------------------- process management
    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _start(self) -> None:
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [self._python, "-m", "secgroups_agent.nftworker", str(req_r), str(resp_w)],
                stdin=subprocess.DEVNULL,
                stdout=_stderr_fd(),
                pass_fds=(req_r, resp_w),
                close_fds=True,
                env={**os.environ, "PYTHONPATH": _package_root_path()},
            )
        except OSError as exc:
            for fd in (req_r, req_w, resp_r, resp_w):
                os.close(fd)
            raise NftWorkerUnavailableError(f"cannot start the libnftables worker: {exc}") from exc
        os.close(req_r)
        os.close(resp_w)
        self._proc, self._req_w, self._resp_r = proc, req_w, resp_r
        self.stats.starts += 1
        try:
            rc, _, err = self._read_response(time.monotonic() + self._start_timeout)
        except NftError as exc:
            self._kill()
            raise NftWorkerUnavailableError(f"the libnftables worker did not start: {exc}") from exc
        if rc != 0:
            self._kill()
            raise NftWorkerUnavailableError(first_error(err), err)
        if self.stats.starts > 1 and self._on_restart is not None:
            self._on_restart(self.last_exit or "unknown")

    def _kill(self) -> None:
        proc = self._proc
        self._proc = None
        for fd in (self._req_w, self._resp_r):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._req_w = self._resp_r = -1
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5.0)
        self.last_exit = _describe_exit(proc.returncode)

    def close(self) -> None:
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.write(self._req_w, REQUEST.pack(OP_QUIT, 0, 0))
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(2.0)
            self._kill()

    # ------------------------------------------------------------- wire
    def _write(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NftTimeoutError("timed out sending the transaction to the libnftables worker")
            _, writable, _ = select.select([], [self._req_w], [], remaining)
            if not writable:
                continue
            try:
                n = os.write(self._req_w, view[: 1 << 16])
            except BrokenPipeError as exc:
                raise NftWorkerCrashedError("the libnftables worker is gone") from exc
            view = view[n:]

    def _read_exact(self, n: int, deadline: float) -> bytes:
        chunks: list[bytes] = []
        while n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NftTimeoutError("the libnftables worker did not answer in time")
            readable, _, _ = select.select([self._resp_r], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(self._resp_r, min(n, 1 << 20))
            if not chunk:
                raise NftWorkerCrashedError("the libnftables worker died")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _read_response(self, deadline: float) -> tuple[int, str, str]:
        rc, out_len, err_len = RESPONSE.unpack(self._read_exact(RESPONSE.size, deadline))
        body = self._read_exact(out_len + err_len, deadline) if out_len + err_len else b""
        return (
            rc,
            body[:out_len].decode(errors="replace"),
            body[out_len:].decode(errors="replace"),
        )

    def run(self, text: str, flags: int = 0, *, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Run ``text`` with output ``flags`` in the worker; return its output."""
        payload = text.encode()
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:  # died between calls: nothing was in flight
                    self._kill()
                    self.stats.crashes += 1
                self._start()
            deadline = time.monotonic() + timeout
            try:
                self._write(REQUEST.pack(OP_RUN, flags, len(payload)) + payload, deadline)
                rc, out, err = self._read_response(deadline)
            except NftWorkerCrashedError as exc:
                self._kill()
                self.stats.crashes += 1
                raise NftWorkerCrashedError(
                    f"the libnftables worker died ({self.last_exit}); the transaction was not"
                    " confirmed",
                    str(exc),
                ) from exc
            except NftTimeoutError:
                self._kill()
                self.stats.timeouts += 1
                raise
        if rc != 0:
            raise NftError(first_error(err), err)
        return out

    # ------------------------------------------------------------- NftBackend
    def apply(self, text: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.run(text, timeout=timeout)

    def list_json(
        self, target: str, *, terse: bool = False, timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, Any] | None:
        flags = OUTPUT_JSON | (OUTPUT_TERSE if terse else 0)
        try:
            out = self.run(f"list {target}", flags, timeout=timeout)
        except NftError as exc:
            if type(exc) is NftError and is_no_such_table(exc):
                return None
            raise
        return _parse_listing(out)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _stderr_fd() -> int:
    """The worker's stdout goes to our stderr (libnftables never writes there when
    buffering, but a crash message should reach the agent's log)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return subprocess.DEVNULL


def _package_root_path() -> str:
    """PYTHONPATH for the worker: this package's parent first, then the current path."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rest = os.environ.get("PYTHONPATH")
    return here if not rest else f"{here}{os.pathsep}{rest}"


# --------------------------------------------------------------------------- CLI
class NftCli:
    """``nft -f -`` per transaction and ``nft -j list table`` per listing."""

    name = "cli"

    def __init__(self, nft: str = "nft") -> None:
        self._nft = nft

    def _run(self, argv: list[str], stdin: str | None, timeout: float) -> str:
        try:
            proc = subprocess.run(
                [self._nft, *argv],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise NftTimeoutError(
                f"nft {' '.join(argv)} did not finish within {timeout} s"
            ) from exc
        except OSError as exc:
            raise NftError(f"cannot run {self._nft}: {exc}") from exc
        if proc.returncode != 0:
            err = proc.stderr or proc.stdout
            if proc.returncode < 0:
                raise NftWorkerCrashedError(
                    f"nft was {_describe_exit(proc.returncode)}: {first_error(err)}", err
                )
            raise NftError(first_error(err), err)
        return proc.stdout

    def apply(self, text: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._run(["-f", "-"], text, timeout)

    def list_json(
        self, target: str, *, terse: bool = False, timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, Any] | None:
        argv = ["-j", *(["-t"] if terse else []), "list", *target.split()]
        try:
            out = self._run(argv, None, timeout)
        except NftError as exc:
            if type(exc) is NftError and is_no_such_table(exc):
                return None
            raise
        return _parse_listing(out)

    def close(self) -> None:
        pass


class WorkerWithCliFallback:
    """The libnftables worker; after it crashed, the next transaction goes through the CLI.

    The transaction after a crash is the full resync the sync loop falls back to. If a
    construct in it crashes libnftables, the CLI (a separate process per call) reports
    the error instead of crash-looping the worker; the next call uses the worker again.
    """

    name = "lib"

    def __init__(self, worker: LibNftWorker, cli: NftCli) -> None:
        self.worker = worker
        self.cli = cli
        self._use_cli_once = False
        self.cli_only = False  # the worker cannot start here: `nft -f -` from now on

    def apply(self, text: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        if self._use_cli_once or self.cli_only:
            self._use_cli_once = False
            self.cli.apply(text, timeout=timeout)
            return
        try:
            self.worker.apply(text, timeout=timeout)
        except NftWorkerUnavailableError as exc:
            log.warning(
                "libnftables worker unavailable; using `nft -f -`",
                extra=logs.fields(error=exc.message),
            )
            self.cli_only = True
            self.cli.apply(text, timeout=timeout)
        except (NftWorkerCrashedError, NftTimeoutError):
            self._use_cli_once = True
            raise

    def list_json(
        self, target: str, *, terse: bool = False, timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, Any] | None:
        if self.cli_only:
            return self.cli.list_json(target, terse=terse, timeout=timeout)
        return self.worker.list_json(target, terse=terse, timeout=timeout)

    def close(self) -> None:
        self.worker.close()


# --------------------------------------------------------------------------- fake
@dataclass
class FakeNft:
    """An in-memory backend for unit tests.

    ``applied`` records every successful transaction; ``fail_next`` holds errors to raise
    on the next calls to :meth:`apply` (nothing is recorded for them). :meth:`list_json`
    asks ``lister`` (if set), else returns ``listing`` for the table; ``on_apply`` (if
    set) sees every applied text (a test's model of the kernel).
    """

    name: str = "fake"
    applied: list[str] = field(default_factory=list)
    attempts: int = 0
    fail_next: list[NftError] = field(default_factory=list)
    listing: dict[str, Any] | None = None
    lister: Callable[[str, bool], dict[str, Any] | None] | None = None
    listed: list[str] = field(default_factory=list)
    on_apply: Callable[[FakeNft, str], None] | None = None
    gate: threading.Event | None = None  # when set, apply() waits for it (slow kernel)

    def apply(self, text: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.attempts += 1
        if self.gate is not None and not self.gate.wait(timeout):
            raise NftTimeoutError("fake nft gate not opened in time")
        if self.fail_next:
            raise self.fail_next.pop(0)
        # The model of the kernel first, the record after: apply() runs in the sync loop's
        # worker thread, and a test that sees the record must also see the model updated.
        if self.on_apply is not None:
            self.on_apply(self, text)
        self.applied.append(text)

    def list_json(
        self, target: str, *, terse: bool = False, timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, Any] | None:
        self.listed.append(target)
        if self.lister is not None:
            return self.lister(target, terse)
        return self.listing if target.startswith("table ") else None

    def close(self) -> None:
        pass


def make_backend(kind: str, *, on_restart: Callable[[str], None] | None = None) -> NftBackend:
    """``lib`` (worker, CLI after a crash) or ``cli``."""
    if kind == "cli":
        return NftCli()
    if kind == "lib":
        return WorkerWithCliFallback(LibNftWorker(on_restart=on_restart), NftCli())
    raise ValueError(f"unknown nft backend {kind!r} (lib or cli)")
