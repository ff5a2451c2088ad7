"""G5: waiting costs nothing. Each waiter is woken once, when it is granted, and the
limiter keeps one timer however long its queue is."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Coroutine, Generator
from typing import Any

import looptime
import pytest
import trio
import trio.testing

import tokenbucket as tb

N = 2_000


def make(kind: str) -> tb.TokenBucket | tb.SlidingWindow:
    if kind == "bucket":
        # A capacity above the amount, so a timer that fires late loses no refill.
        return tb.TokenBucket(rate=100, capacity=2)
    return tb.SlidingWindow(limit=1, window=0.01)


class _Counted(Coroutine[Any, Any, None]):
    """A task's coroutine, counting each time the task steps it (start and wake-ups)."""

    def __init__(self, coro: Coroutine[Any, Any, None]) -> None:
        self.coro = coro
        self.steps = 0

    def send(self, value: Any) -> Any:
        self.steps += 1
        return self.coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None, /) -> Any:
        self.steps += 1
        return self.coro.throw(typ if val is None else val)

    def close(self) -> None:
        self.coro.close()

    def __await__(self) -> Generator[Any, None, None]:
        return self.coro.__await__()  # pragma: no cover - a Task never calls it


@pytest.mark.parametrize("kind", ["bucket", "window"])
def test_asyncio_wakes_each_waiter_once_with_one_timer(kind: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        limiter = make(kind)
        assert limiter.try_acquire(limiter.statistics().limit)
        order: list[int] = []

        async def waiter(i: int) -> None:
            await limiter.acquire()
            order.append(i)

        counted = [_Counted(waiter(i)) for i in range(N)]
        tasks = []
        for coro in counted:
            tasks.append(loop.create_task(coro))
            await asyncio.sleep(0)
        assert limiter.statistics().waiters == N
        # One timer for the whole queue (the loop's own list of scheduled callbacks).
        assert len(loop._scheduled) == 1  # type: ignore[attr-defined]
        start = loop.time()
        await asyncio.gather(*tasks)
        assert order == list(range(N))
        # A start, then exactly one wake-up: the grant.
        assert Counter(c.steps for c in counted) == {2: N}
        # looptime's clock ticks in whole microseconds: a window, which counts from each
        # grant's instant, may lose up to one tick per grant.
        assert N / 100 - 1e-3 <= loop.time() - start <= N / 100 + N * 1e-6

    loop = looptime.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


class _StepCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps: Counter[trio.lowlevel.Task] = Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task] += 1


@pytest.mark.parametrize("kind", ["bucket", "window"])
def test_trio_wakes_each_waiter_once(kind: str) -> None:
    async def main() -> None:
        limiter = make(kind)
        assert limiter.try_acquire(limiter.statistics().limit)
        order: list[int] = []
        counter = _StepCounter()
        waiters: list[trio.lowlevel.Task] = []

        async def waiter(i: int) -> None:
            waiters.append(trio.lowlevel.current_task())
            await limiter.acquire()
            order.append(i)

        trio.lowlevel.add_instrument(counter)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(N):
                nursery.start_soon(waiter, i)
                await trio.testing.wait_all_tasks_blocked()
            assert limiter.statistics().waiters == N
        trio.lowlevel.remove_instrument(counter)
        assert order == list(range(N))
        assert Counter(counter.steps[task] for task in waiters) == {2: N}
        assert trio.current_time() - start == pytest.approx(N / 100)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
