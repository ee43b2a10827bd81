"""Who owns a running lab, so that a second command can tell a live lab from leftovers.

A lab's daemons run in their own sessions and outlive the command that started them, so
"a process of this lab is running" does not mean "someone uses this lab". The control plane
(``state.json``) and the whole lab (``lab.json``) record an :class:`Owner`:

* while a command starts them, that command (its pid and start time, so a reused pid is
  not mistaken for it);
* once up, either the same process (tests: the lab lives as long as the test session) or
  nobody (``detached``: ``secgroups-lab up``, ``make demo``; the lab lives until ``down``).

What exists of a lab whose owner is gone (a SIGKILLed test session, a killed ``make demo``)
is *leftovers*, and the next start removes it. A live lab is never touched: the second
command says that it is up and how to reach or remove it (:func:`down_command`).
Used by :mod:`secgroups_lab.controlplane` and :mod:`secgroups_lab.cluster`.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEMO_PREFIX = "ksg"


def process_start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22);
    None if there is no such process (or it is a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if not fields or fields[0] == "Z":
        return None
    return int(fields[19])


def _command_line(limit: int = 100) -> str:
    text = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python"
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Owner:
    """The process a lab belongs to; ``pid`` 0 means detached (runs until ``down``)."""

    pid: int
    start_ticks: int
    command: str
    since: float  # wall-clock time the record was made

    @classmethod
    def me(cls, *, detached: bool = False) -> Owner:
        pid = os.getpid()
        if detached:
            return cls(0, 0, _command_line(), time.time())
        return cls(pid, process_start_ticks(pid) or 0, _command_line(), time.time())

    @property
    def detached(self) -> bool:
        return self.pid == 0

    def alive(self) -> bool:
        """Detached owners are always alive; a process owner while its process runs."""
        return self.detached or process_start_ticks(self.pid) == self.start_ticks

    def describe(self) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(self.since))
        if self.detached:
            return f"started by `{self.command}` at {when}"
        return f"used by process {self.pid} (`{self.command}`) since {when}"

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "command": self.command,
            "since": self.since,
        }

    @classmethod
    def from_json(cls, data: Any) -> Owner | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                int(data["pid"]),
                int(data["start_ticks"]),
                str(data["command"]),
                float(data["since"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


def down_command(prefix: str) -> str:
    """The command that removes the lab ``prefix``, as error messages name it."""
    if prefix == DEMO_PREFIX:
        return "make demo-lab-down"
    return f".venv/bin/secgroups-lab down --prefix {prefix}"
