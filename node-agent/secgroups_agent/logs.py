"""JSON logs: one object per line with ``time``, ``level``, ``msg`` and ``fields``.

Use ``log.info("applied", extra=fields(kind="full", ms=12.5))``; the fields land in
the object's ``fields`` member. Exceptions are rendered into ``fields.error`` and
``fields.traceback``. Time is RFC 3339 UTC with milliseconds.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

LOGGER_NAME = "secgroups_agent"
_FIELDS = "secgroups_fields"


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: structured fields of this line."""
    return {_FIELDS: values}


def rfc3339(ts: float) -> str:
    """``2026-01-02T03:04:05.678Z`` for a ``time.time()`` value."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))
    return f"{whole}.{int(ts * 1000) % 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; non-JSON values are rendered with ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        extra: Mapping[str, Any] = getattr(record, _FIELDS, None) or {}
        flds = dict(extra)
        if record.name != LOGGER_NAME:
            flds.setdefault("logger", record.name)
        if record.exc_info and record.exc_info[1] is not None:
            flds["error"] = str(record.exc_info[1])
            flds["traceback"] = self.formatException(record.exc_info)
        if flds:
            out["fields"] = flds
        return json.dumps(out, default=str, sort_keys=False)


def setup(level: str = "info", stream: TextIO | None = None) -> logging.Logger:
    """Route the root logger to ``stream`` (stderr) as JSON lines; return our logger."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # libraries: warnings only
    ours = logging.getLogger(LOGGER_NAME)
    ours.setLevel(level.upper())
    return ours


def get(name: str | None = None) -> logging.Logger:
    return logging.getLogger(LOGGER_NAME if name is None else f"{LOGGER_NAME}.{name}")
