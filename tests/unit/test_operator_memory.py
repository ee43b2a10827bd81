"""``secgroups_operator.memory``: freed memory is given back after busy rounds only."""

from __future__ import annotations

import asyncio
import time

import pytest

from secgroups_operator import memory


def test_trim_answers_whether_it_could() -> None:
    assert isinstance(memory.trim(), bool)


def test_trims_once_after_rounds_moved_and_not_while_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if memory._malloc_trim() is None:
        pytest.skip("no malloc_trim here (not glibc)")
    trims: list[int] = []
    rounds = [0]
    looks = [0]  # how often the loop has read the round count (one per interval)
    monkeypatch.setattr(memory, "trim", lambda: trims.append(rounds[0]) or True)

    def count() -> int:
        looks[0] += 1
        return rounds[0]

    async def intervals(n: int) -> None:
        target = looks[0] + n
        deadline = time.monotonic() + 20
        while looks[0] < target:
            assert time.monotonic() < deadline, "the trim loop stopped looking"
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(memory.trim_after_rounds(count, stop, 0.01))
        await intervals(3)  # idle: nothing to give back
        assert trims == []
        rounds[0] = 3  # a busy stretch
        await intervals(3)
        assert trims == [3]  # once, not once per interval
        stop.set()
        await asyncio.wait_for(task, 20)

    asyncio.run(asyncio.wait_for(scenario(), 60))
