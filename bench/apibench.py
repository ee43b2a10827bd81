"""What the API-server benchmarks (``scale.py``, ``realization.py``) share: a raw request
through the shared client's HTTP connection, and a nearest-rank percentile."""

from __future__ import annotations

import json
import re
from typing import Any

from secgroups_kube import AsyncKube

MERGE = "application/merge-patch+json"
APPLY = "application/apply-patch+yaml"  # server-side apply


def pct(values: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (NaN for no values)."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


async def req(
    kube: AsyncKube,
    method: str,
    path: str,
    body: Any = None,
    *,
    params: dict[str, Any] | None = None,
    ctype: str = "application/json",
    timeout: float | None = None,
    conflict_ok: bool = False,
) -> Any:
    """One request; an error status raises, except 409 on a POST when ``conflict_ok`` (the
    object exists). ``timeout`` replaces the client's own."""
    extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    resp = await kube._http().request(
        method,
        path,
        params=params or {},
        content=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": ctype},
        **extra,
    )
    conflict = conflict_ok and method == "POST" and resp.status_code == 409
    if resp.status_code >= 400 and not conflict:
        raise RuntimeError(f"{method} {path}: {resp.status_code} {resp.text[:300]}")
    return resp.json() if resp.content else None


# The verbs the API server's metrics give writes: a PUT and a POST are labelled so (not
# UPDATE and CREATE), for built-in and custom resources alike.
WRITES = ("APPLY", "PATCH", "PUT", "POST", "DELETE")
Totals = dict[tuple[str, str, str], tuple[float, float]]


async def request_totals(
    kube: AsyncKube, timeout: float = 60, verbs: tuple[str, ...] = WRITES
) -> Totals:
    """The API server's own count of mutating requests so far: per (verb, resource,
    subresource), (requests, seconds spent) from ``apiserver_request_duration_seconds``
    — what a write costs on the server, and which writes a run made (the difference of
    two calls). ``verbs``: the metric's verb labels counted (default: every write)."""
    resp = await kube._http().get("/metrics", timeout=timeout)
    out: dict[tuple[str, str, str], list[float]] = {}
    for line in resp.text.splitlines():
        if not line.startswith("apiserver_request_duration_seconds_"):
            continue
        if line.startswith("apiserver_request_duration_seconds_sum"):
            slot = 1
        elif line.startswith("apiserver_request_duration_seconds_count"):
            slot = 0
        else:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels.get("verb") not in verbs:
            continue
        key = (labels["verb"], labels.get("resource", ""), labels.get("subresource", ""))
        out.setdefault(key, [0.0, 0.0])[slot] += float(line.rsplit(" ", 1)[1])
    return {k: (n, t) for k, (n, t) in out.items()}


def totals_since(before: Totals, after: Totals) -> Totals:
    """What was served between two :func:`request_totals` calls."""
    out: Totals = {}
    for key, (n1, t1) in after.items():
        n0, t0 = before.get(key, (0.0, 0.0))
        if n1 > n0:
            out[key] = (n1 - n0, t1 - t0)
    return out


def describe_totals(totals: Totals, keep: Any = lambda key: True) -> str:
    """``verb resource[/sub] count × mean ms`` for the kept keys, most time first."""
    rows = sorted(((t, k, n) for k, (n, t) in totals.items() if keep(k)), reverse=True)
    return "; ".join(
        f"{verb} {res}{'/' + sub if sub else ''} {n:.0f} × {1000 * t / n:.1f} ms"
        for t, (verb, res, sub), n in rows
    )
