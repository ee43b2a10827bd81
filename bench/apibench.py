"""What the API-server benchmarks (``scale.py``, ``realization.py``) share: a raw request
through the shared client's HTTP connection, and a nearest-rank percentile."""

from __future__ import annotations

import json
from typing import Any

from secgroups_kube import AsyncKube


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
