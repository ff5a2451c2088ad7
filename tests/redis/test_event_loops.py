"""The Redis backend's event loops: asyncio only, and any number of them one after another.

A backend made at import time is used by successive ``asyncio.run()`` calls: the
connections of a loop that has ended are closed or dropped, never reused in the next.
On trio (redis-py's client is asyncio-only) the first use raises a clear error.
"""

from __future__ import annotations

import asyncio
import gc
from typing import TYPE_CHECKING, Any

import pytest
import trio

import tokenbucket as tb

if TYPE_CHECKING:
    from collections.abc import Coroutine

pytestmark = pytest.mark.timeout(30)


def limiters(backend: tb.RedisBackend) -> list[tb.TokenBucket | tb.SlidingWindow | tb.Limiter]:
    return [
        tb.TokenBucket(rate=1000, capacity=5, backend=backend, key="bucket"),
        tb.SlidingWindow(limit=5, window=1, backend=backend, key="window"),
        tb.Limiter(requests_per_second=1000, max_concurrency=2, backend=backend, key="limiter"),
    ]


async def use(subjects: list[tb.TokenBucket | tb.SlidingWindow | tb.Limiter]) -> None:
    for subject in subjects:
        if isinstance(subject, tb.Limiter):
            async with subject.acquire():
                pass
        else:
            await subject.acquire()


def test_one_backend_serves_successive_asyncio_runs(redis_url: str, prefix: str) -> None:
    backend = tb.RedisBackend(redis_url, prefix=prefix)
    subjects = limiters(backend)

    async def several() -> None:
        await backend.ping()
        await asyncio.gather(*(use(subjects) for _ in range(2)))

    for _ in range(3):
        asyncio.run(several())
    gc.collect()  # an unclosed connection of an ended loop would warn here (an error)

    async def close() -> None:
        await backend.aclose()
        client = tb.RedisBackend(redis_url).client
        keys = await client.keys(f"*{prefix}*")
        if keys:
            await client.delete(*keys)
        await client.aclose()

    asyncio.run(close())


def run_and_collect(main: Coroutine[Any, Any, None]) -> None:
    asyncio.run(main)
    gc.collect()


def test_a_loop_closed_without_shutdown_is_left_behind(redis_url: str, prefix: str) -> None:
    """A loop closed without ``asyncio.run``'s shutdown: the next loop opens connections
    of its own instead of failing on the old ones."""
    backend = tb.RedisBackend(redis_url, prefix=prefix)
    subjects = limiters(backend)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(use(subjects))
    finally:
        loop.close()
    with pytest.warns(ResourceWarning):  # the sockets of a loop closed under them
        run_and_collect(use(subjects))
    asyncio.run(backend.aclose())


@pytest.mark.parametrize("kind", ["bucket", "window", "limiter", "ping"])
def test_trio_raises_a_clear_error_at_first_use(redis_url: str, prefix: str, kind: str) -> None:
    backend = tb.RedisBackend(redis_url, prefix=prefix)
    subjects = dict(zip(["bucket", "window", "limiter"], limiters(backend), strict=True))

    async def first_use() -> None:
        if kind == "ping":
            await backend.ping()
        else:
            await use([subjects[kind]])

    with pytest.raises(tb.BackendConfigurationError, match="asyncio") as caught:
        trio.run(first_use)
    assert "trio" in str(caught.value)
    asyncio.run(backend.aclose())
