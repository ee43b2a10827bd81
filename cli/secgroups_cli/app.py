"""What every command gets: parsed options, the snapshot, output streams and style.

Also the parsing of object references as kubectl writes them (``pod/NAME``,
``sg/NAME``), extended with ``pod/NAMESPACE/NAME`` for a pod in another namespace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from secgroups_cli.errors import CliError
from secgroups_cli.render import Format, Style, dump
from secgroups_cli.sources import Options, Snapshot, load

POD_WORDS = ("pod", "pods", "po")
GROUP_WORDS = ("sg", "securitygroup", "securitygroups", "securitygroup.secgroups.dev")


@dataclass
class App:
    options: Options
    out: TextIO
    err: TextIO
    style: Style
    fmt: Format
    stdin: TextIO | None = None
    _snapshot: Snapshot | None = field(default=None, repr=False)

    def snapshot(self) -> Snapshot:
        """Load the facts once; print the source's notes on stderr."""
        if self._snapshot is None:
            self._snapshot = load(self.options, self.stdin)
            for note in self._snapshot.notes:
                self.note(note)
        return self._snapshot

    def note(self, text: str) -> None:
        self.err.write(self.style.dim(text) + "\n")

    def write(self, text: str) -> None:
        self.out.write(text)

    def emit(self, data: Any) -> None:
        """Write ``data`` in the machine format asked for."""
        self.out.write(dump(data, self.fmt))

    @property
    def machine(self) -> bool:
        return self.fmt is not Format.TABLE


def parse_ref(text: str, words: Sequence[str], what: str, default_ns: str) -> tuple[str, str]:
    """``pod/NAME`` (in ``default_ns``), ``pod/NS/NAME`` or a bare ``NAME`` → (ns, name)."""
    kind, slash, rest = text.partition("/")
    if not slash:
        name, namespace = text, default_ns
    elif kind.lower() not in words:
        raise CliError(f"{text}: expected {words[0]}/NAME (or {words[0]}/NAMESPACE/NAME)")
    elif "/" in rest:
        namespace, _, name = rest.partition("/")
    else:
        name, namespace = rest, default_ns
    if not name or not namespace or "/" in name:
        raise CliError(
            f"{text}: expected {words[0]}/NAME (or {words[0]}/NAMESPACE/NAME) for {what}"
        )
    return namespace, name
