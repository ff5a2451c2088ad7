"""statistics() and repr under virtual time: the exact instant of the next wake-up."""

from __future__ import annotations

import anyio
import pytest

import tokenbucket as tb
from tests.virtual._support import KINDS, TOL, drained, enter, now

pytestmark = pytest.mark.anyio


@KINDS
async def test_statistics_and_repr(kind: str) -> None:
    limiter = await drained(kind)
    start = now()
    async with anyio.create_task_group() as tg:
        tg.start_soon(limiter.acquire, 2)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(limiter.acquire, 3)
        await anyio.wait_all_tasks_blocked()
        stats = limiter.statistics()
        assert stats.waiters == 2
        assert stats.queued == 5
        assert stats.limit == 10
        assert stats.available == 0
        assert stats.next_wakeup == pytest.approx(start + (2 if kind == "bucket" else 10))
        text = repr(limiter)
        assert "waiters=2" in text
        assert "next_wakeup=" in text
    stats = limiter.statistics()
    assert (stats.waiters, stats.queued, stats.next_wakeup) == (0, 0, None)


async def test_statistics_and_repr_show_the_state() -> None:
    limiter = tb.Limiter(requests_per_second=1, tokens_per_second=10, max_concurrency=4)
    start = now()
    async with limiter.acquire(tokens=10), anyio.create_task_group() as tg:
        tg.start_soon(enter, limiter.acquire(tokens=5))
        await anyio.wait_all_tasks_blocked()
        snapshot = limiter.statistics()
        assert snapshot.waiters == 1
        assert snapshot.in_flight == 1
        assert snapshot.max_concurrency == 4
        assert snapshot.next_wakeup == pytest.approx(start + 1, abs=TOL)
        assert "waiters=1" in repr(limiter)
        assert "max_concurrency 4" in repr(limiter)
    snapshot = limiter.statistics()
    assert (snapshot.waiters, snapshot.in_flight, snapshot.next_wakeup) == (0, 0, None)
