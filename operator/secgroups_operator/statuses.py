"""What the operator reports in the status of the user's objects, one object at a time.

Pure functions of one object and what it depends on (so a change recomputes only the
statuses it reaches, never the whole cluster's):

* SecurityGroup: ``memberCount``, ``ruleCount``, ``rulesCountedTowardsQuota`` (S-L-1
  usage per direction and IP type), ``realization`` (nodes that enforce its current
  compiled rules / nodes that need them, and that generation of its compiled object),
  and a ``Ready`` condition: False with ``QuotaExceeded`` / ``TooManyMembers`` (S-L-1,
  S-L-2), ``TooManyRules`` / ``CannotCompile`` / ``TooLarge`` (its compiled form is
  held, see ``publishing``; the held text is ``Reason: message``, the message in the
  compiler's words, ``quotas.too_many_rules_error``) or ``PublishFailed``; warnings in
  the message.
* SecurityGroupRule: ``Ready``, or False with ``GroupNotFound`` / ``RemoteNotFound``.
* IPAddressGroup: ``Ready`` with its compiled CIDR count, or False with ``TooLarge``.
* Any of ours that does not parse: ``Ready`` False with ``Invalid``.

Conditions keep their ``lastTransitionTime`` while status and reason stay the same, so
a steady cluster writes nothing. :class:`StatusWriter` writes them: at most once per
``interval_s`` per round of writes, only what changed since it was last written or
observed, each object's failure retried alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from secgroups.models import IPAddressGroup, SecurityGroup, SecurityGroupRule
from secgroups.quotas import group_findings, group_usage
from secgroups_operator.ports import Cluster

log = logging.getLogger(__name__)

StatusKey = tuple[str, str, str]  # (kind, namespace, name)
# The Ready condition last written or observed: (status, reason, lastTransitionTime).
Since = tuple[str, str, str]


def now_stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ready(
    ok: bool, reason: str, message: str, generation: int | None, now: str, since: Since | None
) -> dict[str, Any]:
    status = "True" if ok else "False"
    when = since[2] if since is not None and since[:2] == (status, reason) else now
    out: dict[str, Any] = {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": when,
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def group_status(
    group: SecurityGroup,
    rules: Iterable[SecurityGroupRule],
    members: int,
    *,
    held: str | None,
    now: str,
    since: Since | None,
) -> dict[str, Any]:
    ns, name = group.metadata.namespace or "default", group.metadata.name
    rules = list(rules)
    usage = group_usage((ns, name), rules, members)
    findings = group_findings(usage)
    errors = [f for f in findings if f.severity == "error"]
    warnings = [f for f in findings if f.severity == "warning"]
    generation = group.metadata.generation
    if held is not None:
        reason, _, message = held.partition(": ")
        ready = _ready(False, reason, message, generation, now, since)
    elif errors:
        reason = "QuotaExceeded" if errors[0].requirement == "S-L-1" else "TooManyMembers"
        text = "; ".join(f"{f.requirement}: {f.message}" for f in errors)
        ready = _ready(False, reason, text, generation, now, since)
    else:
        text = "; ".join(f"{f.requirement}: {f.message}" for f in warnings)
        ready = _ready(True, "Compiled", text, generation, now, since)
    return {
        "observedGeneration": generation,
        "memberCount": members,
        "ruleCount": len(rules),
        "rulesCountedTowardsQuota": usage.usage(),
        "conditions": [ready],
    }


def rule_status(
    rule: SecurityGroupRule,
    *,
    group_exists: bool,
    missing_remote: str | None,
    now: str,
    since: Since | None,
) -> dict[str, Any]:
    ns = rule.metadata.namespace or "default"
    generation = rule.metadata.generation
    if not group_exists:
        cond = _ready(
            False,
            "GroupNotFound",
            f"security group {ns}/{rule.spec.security_group} does not exist",
            generation,
            now,
            since,
        )
    elif missing_remote is not None:
        cond = _ready(False, "RemoteNotFound", missing_remote, generation, now, since)
    else:
        cond = _ready(True, "Compiled", "", generation, now, since)
    return {"observedGeneration": generation, "conditions": [cond]}


def ipag_status(
    ipag: IPAddressGroup, *, cidrs: int, now: str, since: Since | None
) -> dict[str, Any]:
    generation = ipag.metadata.generation
    cond = _ready(True, "Compiled", f"{cidrs} CIDRs once compiled", generation, now, since)
    return {"observedGeneration": generation, "conditions": [cond]}


def problem_status(reason: str, message: str, now: str, since: Since | None) -> dict[str, Any]:
    """The status of an object we cannot use (it does not parse, or it is too large)."""
    return {"conditions": [_ready(False, reason, message, None, now, since)]}


def _digest(status: Mapping[str, Any]) -> bytes:
    text = json.dumps(status, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(text, digest_size=16).digest()


def since_of(status: Mapping[str, Any] | None) -> Since | None:
    for cond in (status or {}).get("conditions") or ():
        if cond.get("type") == "Ready":
            return (
                str(cond.get("status")),
                str(cond.get("reason")),
                str(cond.get("lastTransitionTime") or ""),
            )
    return None


@dataclass
class StatusWriter:
    """Writes wanted statuses that differ from what the objects have (see the module doc).

    ``overlay(key, status)`` may add what the loop knows (realization, publish errors)
    just before the comparison.
    """

    cluster: Cluster
    interval_s: float = 1.0
    concurrency: int = 8
    wanted: dict[StatusKey, dict[str, Any]] = field(default_factory=dict)
    #: What each object's status is now (written by us, or observed): a digest.
    have: dict[StatusKey, bytes] = field(default_factory=dict)
    since: dict[StatusKey, Since] = field(default_factory=dict)
    retry_at: dict[StatusKey, tuple[int, float]] = field(default_factory=dict)
    written: int = 0
    failed: int = 0
    notify: Any = None  # called when a status is wanted (wakes the writer)
    _last_round: float = 0.0

    def observe(self, key: StatusKey, status: Mapping[str, Any] | None) -> None:
        """The status an object has (from the watch); a steady cluster rewrites nothing."""
        if status:
            self.have[key] = _digest(status)
            since = since_of(status)
            if since is not None:
                self.since[key] = since

    def forget(self, key: StatusKey) -> None:
        self.wanted.pop(key, None)
        self.have.pop(key, None)
        self.since.pop(key, None)
        self.retry_at.pop(key, None)

    def want(self, key: StatusKey, status: dict[str, Any]) -> None:
        self.wanted[key] = status
        if self.notify is not None:
            self.notify()

    def due_in(self) -> float | None:
        """Seconds until a round may run, or None when nothing is pending."""
        if not self.wanted:
            return None
        return max(0.0, self._last_round + self.interval_s - time.monotonic())

    async def flush(self, overlay: Any = None) -> int:
        """One round of writes (call when :meth:`due_in` is 0)."""
        self._last_round = time.monotonic()
        now = self._last_round
        jobs: list[tuple[StatusKey, dict[str, Any]]] = []
        for key in list(self.wanted):
            r = self.retry_at.get(key)
            if r is not None and r[1] > now:
                continue
            status = self.wanted.pop(key)
            if overlay is not None:
                status = overlay(key, status)
            if self.have.get(key) == _digest(status):
                continue
            jobs.append((key, status))

        async def one(key: StatusKey, status: dict[str, Any]) -> None:
            try:
                await self.cluster.patch_status(key[0], key[2], key[1] or None, status)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed += 1
                n = self.retry_at.get(key, (0, 0.0))[0] + 1
                delay = min(2.0**n, 300.0) * random.uniform(0.5, 1.0)
                self.retry_at[key] = (n, time.monotonic() + delay)
                self.wanted.setdefault(key, status)
                log.warning("status of %s %s/%s not written: %s", *key, exc)
                return
            self.retry_at.pop(key, None)
            self.have[key] = _digest(status)
            since = since_of(status)
            if since is not None:
                self.since[key] = since
            self.written += 1

        # ``concurrency`` workers over one queue, not a task per status: a cold start
        # writes 21,000 statuses, and 21,000 waiting tasks held ~25 MB.
        todo = iter(jobs)

        async def worker() -> None:
            for key, status in todo:
                await one(key, status)

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(jobs)))))
        return len(jobs)


def with_realization(
    status: dict[str, Any], desired: int, realized: int, generation: int | None
) -> dict[str, Any]:
    out = dict(status)
    out["realization"] = {
        "nodesDesired": desired,
        "nodesRealized": realized,
        "nodes": f"{realized}/{desired}",
        **({"generation": generation} if generation is not None else {}),
    }
    return out


def with_publish_error(status: dict[str, Any], error: str, now: str) -> dict[str, Any]:
    out = dict(status)
    conds = [dict(c) for c in out.get("conditions", ())]
    for c in conds:
        if c.get("type") == "Ready" and c.get("status") == "True":
            c.update(
                status="False",
                reason="PublishFailed",
                message=f"its compiled object cannot be written (retrying): {error}"[:32768],
                lastTransitionTime=now,
            )
    out["conditions"] = conds
    return out
