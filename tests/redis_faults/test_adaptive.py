"""An adaptive cap on a Redis limiter when Redis cannot be reached: the per-process
gate holds in front of the local stand-in, and a request Redis fails gives its slot
back. Real sockets, real time, bounded; no assertion on speed."""

from __future__ import annotations

import asyncio

import pytest

import tokenbucket as tb

pytestmark = [pytest.mark.timeout(30), pytest.mark.asyncio]


def fixed(cap: int) -> tb.Adaptive:
    """An adaptive cap that cannot move (its bounds are one value)."""
    return tb.adaptive(initial=cap, min=cap, max=cap)


async def test_the_cap_holds_in_front_of_the_stand_in(dead_port: int) -> None:
    backend = tb.RedisBackend(f"redis://127.0.0.1:{dead_port}/0", on_error="local", local_share=1.0)
    limiter = tb.Limiter(
        requests_per_second=1000, max_concurrency=fixed(2), backend=backend, key="k"
    )
    flying = most = 0

    async def call() -> None:
        nonlocal flying, most
        async with limiter.acquire(timeout=5.0):
            flying += 1
            most = max(most, flying)
            await asyncio.sleep(0.01)
            flying -= 1

    try:
        await asyncio.wait_for(asyncio.gather(*(call() for _ in range(8))), 10.0)
        assert most == 2
        statistics = limiter.statistics()
        assert (statistics.in_flight, statistics.waiters) == (0, 0)
        assert statistics.counters.admitted == 8
    finally:
        await backend.aclose()


async def test_a_request_redis_fails_gives_its_slot_back(dead_port: int) -> None:
    backend = tb.RedisBackend(f"redis://127.0.0.1:{dead_port}/0", on_error="raise")
    limiter = tb.Limiter(
        requests_per_second=1000, max_concurrency=fixed(1), backend=backend, key="k"
    )
    try:
        for _ in range(3):  # (a slot kept by a failure would time the next one out)
            with pytest.raises(tb.BackendUnavailableError):
                async with limiter.acquire(timeout=5.0):
                    pass
        statistics = limiter.statistics()
        assert (statistics.in_flight, statistics.waiters) == (0, 0)
        assert statistics.counters.failures == 3
    finally:
        await backend.aclose()
