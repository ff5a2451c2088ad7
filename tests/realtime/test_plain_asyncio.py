"""Plain asyncio, as most users write it: pytest-asyncio and asyncio's own timeouts."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

import pytest

import tokenbucket as tb

if TYPE_CHECKING:
    from collections.abc import Callable

if sys.version_info >= (3, 11):  # asyncio.timeout is new in 3.11

    @pytest.mark.asyncio
    async def test_asyncio_timeout_context_manager() -> None:
        bucket = tb.TokenBucket(rate=2, capacity=1)
        await bucket.acquire()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):
                await bucket.acquire()
        assert bucket.statistics().waiters == 0
        assert not bucket.try_acquire()  # the cancelled waiter was never granted anything


@pytest.mark.asyncio
async def test_wait_for_and_gather() -> None:
    window = tb.SlidingWindow(limit=2, window=0.1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(window.acquire() for _ in range(3))), 0.03)
    # gather cancelled the third acquire when wait_for gave up: it left no waiter behind.
    assert window.statistics().waiters == 0
    await asyncio.gather(*(window.acquire() for _ in range(2)))
    assert loop.time() - start >= 0.1 - 1e-9


# One unit per 20 ms, each way.
MAKE: dict[str, Callable[[], object]] = {
    "TokenBucket": lambda: tb.TokenBucket(rate=50, capacity=1),
    "SlidingWindow": lambda: tb.SlidingWindow(limit=1, window=0.02),
    "Limiter": lambda: tb.Limiter(requests_per_second=tb.per_second(50, burst=1)),
}


async def _take(limiter: object) -> None:
    if isinstance(limiter, tb.Limiter):
        async with limiter.acquire():
            pass
    else:
        assert isinstance(limiter, (tb.TokenBucket, tb.SlidingWindow))
        await limiter.acquire()


@pytest.mark.asyncio
@pytest.mark.parametrize("name", MAKE)
async def test_the_path_that_does_not_yield_never_passes_a_waiter(name: str) -> None:
    # On the default loop an uncontended acquisition returns without yielding; once a
    # task waits, later callers queue behind it, and when the queue has drained the
    # acquisition that does not yield is back.
    limiter = MAKE[name]()
    loop = asyncio.get_running_loop()
    yielded: list[bool] = []

    async def without_yielding() -> bool:
        loop.call_soon(yielded.append, True)
        await _take(limiter)
        ran = bool(yielded)
        await asyncio.sleep(0)
        yielded.clear()
        return not ran

    assert await without_yielding()
    order: list[str] = []

    async def taker(label: str) -> None:
        await _take(limiter)
        order.append(label)

    first = asyncio.create_task(taker("first"))
    await asyncio.sleep(0)  # "first" queues: the unit of this period is spent
    assert not first.done()
    await taker("second")  # must wait behind "first", although its task came later
    await first
    assert order == ["first", "second"]
    await asyncio.sleep(0.05)  # a full period later nobody waits and the unit is back
    assert await without_yielding(), name
