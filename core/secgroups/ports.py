"""Destination-port syntax of security group rules (S-M-3) and named service ports (S-O-3).

A rule's ``ports`` field is text: a single port ``22``, a range ``80-82``, an
inconsecutive list ``22,25,27`` or a mixture ``22-24,25``; each item may also be
a service name such as ``ssh`` or ``https`` (S-O-3). This module parses that text
into sorted, merged :class:`PortRange` tuples — the only form the compiler, the
renderer and the evaluator ever see. The CRD's CEL rules (see ``crdgen``) check
the same grammar on the API server, with the same messages.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MIN_PORT = 1
MAX_PORT = 65535

# S-O-3: common service ports, stored as numbers once compiled. Keep this table
# sorted by name; the CRD's CEL rule and `kubectl explain` text are generated from it.
NAMED_PORTS: dict[str, int] = {
    "amqp": 5672,
    "dns": 53,
    "elasticsearch": 9200,
    "etcd": 2379,
    "ftp": 21,
    "http": 80,
    "http-alt": 8080,
    "https": 443,
    "imap": 143,
    "imaps": 993,
    "kafka": 9092,
    "ldap": 389,
    "ldaps": 636,
    "memcached": 11211,
    "mongodb": 27017,
    "mssql": 1433,
    "mysql": 3306,
    "ntp": 123,
    "oracle": 1521,
    "pop3": 110,
    "pop3s": 995,
    "postgresql": 5432,
    "rdp": 3389,
    "redis": 6379,
    "smtp": 25,
    "smtps": 465,
    "snmp": 161,
    "ssh": 22,
    "telnet": 23,
    "zookeeper": 2181,
}

# One item: a number, a range of numbers, or a lower-case service name.
ITEM_PATTERN = r"[0-9]{1,5}(-[0-9]{1,5})?|[a-z][a-z0-9-]{0,30}"
# The whole field: items separated by commas, no spaces.
PORTS_PATTERN = rf"^({ITEM_PATTERN})(,({ITEM_PATTERN}))*$"
PORTS_MAX_LENGTH = 256
_PORTS_RE = re.compile(PORTS_PATTERN)

# Messages shared by the pydantic models and the CRD's CEL rules, so the API
# server and the offline tools say the same thing.
MSG_SYNTAX = (
    "ports must be a port (22), a range (80-82) or a comma-separated list of them "
    "(22,25,27 or 22-24,25), or service names (ssh, https), without spaces"
)
MSG_BOUNDS = "ports must be between 1 and 65535"
MSG_ORDER = "a port range must be written low-high (low <= high)"
MSG_NAME = "unknown service port name; known names: " + ", ".join(sorted(NAMED_PORTS))


class PortSyntaxError(ValueError):
    """The ports text does not follow S-M-3; the message says which rule it breaks."""


@dataclass(frozen=True, order=True, slots=True)
class PortRange:
    """An inclusive range of destination ports; ``lo == hi`` for a single port."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if not (MIN_PORT <= self.lo <= self.hi <= MAX_PORT):
            raise PortSyntaxError(f"invalid port range {self.lo}-{self.hi}")

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.lo <= port <= self.hi

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


def _parse_item(item: str) -> PortRange:
    if item[0].isdigit():
        lo_text, _, hi_text = item.partition("-")
        lo = int(lo_text)
        hi = int(hi_text) if hi_text else lo
        if not (MIN_PORT <= lo <= MAX_PORT and MIN_PORT <= hi <= MAX_PORT):
            raise PortSyntaxError(MSG_BOUNDS)
        if lo > hi:
            raise PortSyntaxError(MSG_ORDER)
        return PortRange(lo, hi)
    if item not in NAMED_PORTS:
        raise PortSyntaxError(f"{MSG_NAME} (got {item!r})")
    port = NAMED_PORTS[item]
    return PortRange(port, port)


def validate_ports(text: str) -> str:
    """Check ``text`` against S-M-3 and return it unchanged; raise PortSyntaxError if bad."""
    parse_ports(text)
    return text


def parse_ports(text: str) -> tuple[PortRange, ...]:
    """Parse S-M-3 port text into sorted, merged ranges (adjacent ranges are joined).

    >>> parse_ports("22-24,25,ssh")
    (PortRange(lo=22, hi=25),)
    """
    # fullmatch, not match: Python's ``$`` also matches before a trailing newline, which
    # CEL's RE2 does not, so ``"22\n"`` would pass here and fail on the API server.
    if len(text) > PORTS_MAX_LENGTH or not _PORTS_RE.fullmatch(text):
        raise PortSyntaxError(MSG_SYNTAX)
    return merge_ranges(_parse_item(item) for item in text.split(","))


def merge_ranges(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
    """Sort and merge overlapping or adjacent ranges into a canonical tuple."""
    out: list[PortRange] = []
    for r in sorted(ranges):
        if out and r.lo <= out[-1].hi + 1:
            if r.hi > out[-1].hi:
                out[-1] = PortRange(out[-1].lo, r.hi)
        else:
            out.append(r)
    return tuple(out)


def is_inconsecutive(text: str) -> bool:
    """True when the rule lists several port items (``22,25,27``, ``22-24,25``).

    Such rules count against the S-L-1 quota, as multi-port rules do in the
    source; the count follows what the user wrote, not the merged ranges.
    """
    return "," in text


def format_ranges(ranges: tuple[PortRange, ...]) -> str:
    """The canonical text of merged ranges (``22-25,80``); empty text means all ports."""
    return ",".join(str(r) for r in ranges)
