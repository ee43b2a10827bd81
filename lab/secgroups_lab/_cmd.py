"""Small helpers to run commands, shared by the lab modules."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence


class CommandError(RuntimeError):
    """A command exited non-zero; the message holds the command and its stderr."""

    def __init__(self, cmd: Sequence[str], returncode: int, stderr: str) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"{' '.join(cmd)!s} exited {returncode}: {stderr.strip()}")


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60.0,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (no shell), capture its output, raise CommandError if ``check`` and it fails."""
    proc = subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=input_text,
    )
    if check and proc.returncode != 0:
        raise CommandError(cmd, proc.returncode, proc.stderr or proc.stdout)
    return proc


def ok(cmd: Sequence[str], *, timeout: float = 60.0) -> bool:
    """Run ``cmd``; True if it exited 0. Output is discarded."""
    return run(cmd, check=False, timeout=timeout).returncode == 0


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run ``ip [-n netns] args...`` and return its stdout."""
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    return run(cmd, check=check).stdout


def in_netns(netns: str, cmd: Sequence[str]) -> list[str]:
    """The argv that runs ``cmd`` in the network namespace ``netns`` (only the net namespace).

    ``nsenter --net`` rather than ``ip netns exec``: the latter remounts /sys and changes the
    mount namespace.
    """
    return ["nsenter", f"--net=/run/netns/{netns}", "--", *cmd]


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT (a second Ctrl-C) while a teardown runs, in this process and in the
    commands it starts meanwhile (an ignored signal stays ignored across exec).
    Outside the main thread signal handlers cannot change: then nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


class Progress:
    """Progress lines on stderr: ``[lab] message`` and ``[lab] message ... 1.2 s``."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[lab] {message}", file=sys.stderr, flush=True)

    def timed(self, message: str, started: float) -> float:
        """Print ``message`` with the seconds since ``started`` (a ``time.monotonic()``)."""
        elapsed = time.monotonic() - started
        self(f"{message} ({elapsed:.1f} s)")
        return elapsed
