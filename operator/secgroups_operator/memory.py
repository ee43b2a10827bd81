"""Giving freed memory back to the system: :func:`trim` and :func:`trim_after_rounds`.

glibc's malloc keeps what Python frees in its heaps for reuse — the initial lists'
pages, the build's intermediate results, each round's compiled specs and their JSON —
and gives back only what lies at the top of a heap. ``bench/operator_memory.py``
measured 60-80 MB of the operator's RSS at 10,000-30,000 pods as such free memory;
``malloc_trim(0)`` returns its pages (tens of milliseconds on the event loop). The
operator (``main``) trims after the initial build and then after busy stretches, at
most once every ``interval_s``. Without glibc (musl, macOS) both do nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from functools import cache

log = logging.getLogger(__name__)


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return fn


def trim() -> bool:
    """Return the free pages of malloc's heaps to the system; False where unsupported."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True


async def trim_after_rounds(
    rounds: Callable[[], int], stop: asyncio.Event, interval_s: float = 30.0
) -> None:
    """Trim every ``interval_s`` while ``rounds()`` (the reconciler's count) moved."""
    if _malloc_trim() is None:
        log.debug("malloc_trim unavailable: freed memory stays with the allocator")
        return
    seen = rounds()
    while not stop.is_set():
        waiter = asyncio.ensure_future(stop.wait())  # not wait_for: 3.11's can eat a cancel
        try:
            await asyncio.wait({waiter}, timeout=interval_s)
        finally:
            waiter.cancel()
        now = rounds()
        if now != seen:
            seen = now
            trim()
