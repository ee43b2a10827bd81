"""Output: aligned tables (kubectl style) with optional colour, or JSON / YAML for machines.

Colour is used only when stdout is a terminal, ``--no-color`` is not given, ``NO_COLOR``
is unset or empty (https://no-color.org) and ``TERM`` is not ``dumb``. Machine formats
(``-o json|yaml``) never contain colour and are the same document offline and online.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TextIO

import yaml

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Format(StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


def use_color(stream: TextIO, no_color: bool) -> bool:
    if no_color or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@dataclass(frozen=True)
class Style:
    color: bool = False

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color and text else text

    def bold(self, text: str) -> str:
        return self.paint(text, "1")

    def dim(self, text: str) -> str:
        return self.paint(text, "2")

    def red(self, text: str) -> str:
        return self.paint(text, "31")

    def green(self, text: str) -> str:
        return self.paint(text, "32")

    def yellow(self, text: str) -> str:
        return self.paint(text, "33")

    def verdict(self, allowed: bool, text: str | None = None) -> str:
        word = text if text is not None else ("allowed" if allowed else "denied")
        return self.green(word) if allowed else self.red(word)

    def action(self, action: str) -> str:
        return self.green(action) if action == "Allow" else self.red(action)

    def severity(self, severity: str) -> str:
        return self.red(severity) if severity == "error" else self.yellow(severity)


def visible_len(text: str) -> int:
    return len(_ANSI.sub("", text))


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], style: Style, indent: str = ""
) -> str:
    """Columns padded to their widest cell, two spaces apart; the last column is not padded."""
    if not rows:
        return ""
    widths = [max(visible_len(str(r[i])) for r in (headers, *rows)) for i in range(len(headers))]

    def line(cells: Sequence[str], head: bool = False) -> str:
        parts = []
        for i, cell in enumerate(cells):
            text = style.bold(cell) if head else str(cell)
            pad = "" if i == len(cells) - 1 else " " * (widths[i] - visible_len(str(cell)))
            parts.append(text + pad)
        return (indent + "  ".join(parts)).rstrip()

    return "\n".join([line(headers, head=True), *(line(r) for r in rows)]) + "\n"


def dump(data: Any, fmt: Format) -> str:
    """``data`` (plain dicts, lists, strings, numbers) as JSON or YAML."""
    if fmt is Format.JSON:
        return json.dumps(data, indent=2) + "\n"
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def dump_all(docs: Sequence[Any]) -> str:
    """Several objects as multi-document YAML."""
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, allow_unicode=True)
