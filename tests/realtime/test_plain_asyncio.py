"""Plain asyncio, as most users write it: pytest-asyncio and asyncio's own timeouts."""

from __future__ import annotations

import asyncio
import sys

import pytest

import tokenbucket as tb

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
