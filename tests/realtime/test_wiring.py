"""A few checks against real event loops and their real clocks.

Everything about timing is checked under virtual time elsewhere; these tests only prove
the wiring: a real timer fires, a real timeout and a real cancellation unwind cleanly, and
a limiter made outside any loop serves successive ``asyncio.run`` calls. Time is only
ever checked from below (a limiter must never be early); being late is the machine's
business, and pytest-timeout catches a hang.
"""

from __future__ import annotations

import asyncio

import anyio
import pytest
import trio

import tokenbucket as tb

pytestmark = pytest.mark.anyio

# The loop's clock and the limiter's are the same clock; allow only rounding.
EPS = 1e-9


async def test_waits_for_refill_and_never_early() -> None:
    bucket = tb.TokenBucket(rate=50, capacity=1)
    start = anyio.current_time()
    stamps = []
    for _ in range(6):
        await bucket.acquire()
        stamps.append(anyio.current_time() - start)
    assert stamps[0] < 0.02  # the first unit is there at once
    for i, stamp in enumerate(stamps):
        assert stamp >= i / 50 - EPS


async def test_waiters_are_served_in_arrival_order() -> None:
    bucket = tb.TokenBucket(rate=100, capacity=1)
    assert bucket.try_acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await bucket.acquire()
        order.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(waiter, i)
            await anyio.wait_all_tasks_blocked()
        assert bucket.statistics().waiters == 8
    assert order == list(range(8))


async def test_timeout_raises_and_consumes_nothing() -> None:
    bucket = tb.TokenBucket(rate=1, capacity=2)
    await bucket.acquire(2)
    start = anyio.current_time()
    with pytest.raises(tb.AcquireTimeoutError) as caught:
        await bucket.acquire(1, timeout=0.05)
    assert isinstance(caught.value, TimeoutError)
    assert anyio.current_time() - start >= 0.05 - EPS
    stats = bucket.statistics()
    assert stats.waiters == 0
    assert stats.queued == 0
    assert stats.next_wakeup is None


async def test_cancel_scope_leaves_no_trace() -> None:
    window = tb.SlidingWindow(limit=2, window=0.2)
    await window.acquire(2)
    with anyio.move_on_after(0.03) as scope:
        await window.acquire()
    assert scope.cancelled_caught
    assert window.statistics().waiters == 0
    # The cancelled waiter took nothing: one unit per window again once it has passed.
    start = anyio.current_time()
    await window.acquire()
    assert anyio.current_time() - start >= 0.2 - 0.03 - 0.01


async def test_sliding_window_holds_the_next_unit_back_a_whole_window() -> None:
    window = tb.SlidingWindow(limit=3, window=0.1)
    start = anyio.current_time()
    for _ in range(3):
        await window.acquire()
    assert anyio.current_time() - start < 0.05
    await window.acquire()
    assert anyio.current_time() - start >= 0.1 - EPS


def test_one_limiter_serves_successive_asyncio_runs() -> None:
    bucket = tb.TokenBucket(rate=40, capacity=2)  # made outside any event loop

    async def burst_then_wait() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for _ in range(3):
            await bucket.acquire()
        return loop.time() - start

    async def burst_then_wait_trio() -> float:
        start = anyio.current_time()
        for _ in range(3):
            await bucket.acquire()
        return anyio.current_time() - start

    # Each run takes 3 units; whatever refilled in between is at most the capacity (2),
    # so every run waits at least 1/40 s for its third unit, whichever clock it has.
    assert asyncio.run(burst_then_wait()) >= 1 / 40 - EPS
    assert asyncio.run(burst_then_wait()) >= 1 / 40 - EPS
    assert trio.run(burst_then_wait_trio) >= 1 / 40 - EPS
    assert asyncio.run(burst_then_wait()) >= 1 / 40 - EPS
