"""Edge cases of Limiter and BucketGroup: shared limits, loop switches, server reports."""

from __future__ import annotations

import asyncio

import anyio
import looptime
import pytest
import trio
import trio.testing

import tokenbucket as tb

pytestmark = pytest.mark.anyio


def shared_group() -> tb.BucketGroup:
    return tb.BucketGroup.from_dict(
        {"a": {"requests_per_second": 1000}, "b": {"requests_per_second": 1000}},
        shared={"org": {"tokens_per_second": 100, "members": ["a", "b"]}},
    )


async def test_a_large_request_is_not_starved_through_a_shared_limit() -> None:
    group = shared_group()
    granted: list[float] = []
    small: list[float] = []

    async def big() -> None:
        async with group.acquire("a", tokens=100):
            granted.append(anyio.current_time())

    async def small_caller() -> None:
        while anyio.current_time() < 30:
            async with group.acquire("b", tokens=10):
                small.append(anyio.current_time())

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(small_caller)
        await anyio.sleep(1.5)
        arrival = anyio.current_time()
        tg.start_soon(big)
    # Only the five small requests already queued when it arrived go before it; then the
    # window empties and the big one goes, however many small ones keep coming.
    assert len(granted) == 1
    assert arrival < granted[0] <= arrival + 2.0 + 1e-6
    assert len([t for t in small if arrival < t < granted[0]]) <= 5
    assert len(small) > 100  # the small ones kept going before and after it


async def test_a_report_lowers_only_the_rate_it_describes() -> None:
    limiter = tb.Limiter(requests_per_minute=100, requests_per_day=100_000)
    async with limiter.acquire() as lease:
        lease.feedback({"RateLimit-Remaining": "5"})  # no reset: the per-minute window
    start = anyio.current_time()
    for _ in range(5):
        async with limiter.acquire():
            pass
    assert anyio.current_time() == pytest.approx(start, abs=1e-5)
    async with limiter.acquire():
        pass
    # The sixth waited for the per-minute window, not for a day.
    assert 1 <= anyio.current_time() - start <= 60 + 1e-5


async def test_a_report_leaves_a_shared_pool_alone() -> None:
    group = tb.BucketGroup.from_dict(
        {"gpt": {"tokens_per_minute": 1000}, "o3": {"tokens_per_minute": 1000}},
        shared={"org": {"tokens_per_minute": 1000, "members": ["gpt", "o3"]}},
    )
    async with group.acquire("gpt", tokens=10) as lease:
        lease.feedback({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "30s"})
    start = anyio.current_time()
    async with group.acquire("o3", tokens=500):
        pass
    assert anyio.current_time() == pytest.approx(start, abs=1e-5)
    assert group["gpt"].statistics().available["tokens"] == 0


async def test_the_implied_request_is_checked_against_the_limit() -> None:
    limiter = tb.Limiter(requests_per_second=0.5)
    with pytest.raises(tb.AmountExceedsLimitError):
        async with limiter.acquire():
            pass
    assert limiter.statistics().available["requests"] == 0.5


async def test_awaiting_an_acquire_context_says_what_to_do() -> None:
    limiter = tb.Limiter(requests_per_second=1)
    with pytest.raises(TypeError, match="async with"):
        await limiter.acquire()


def test_an_unknown_name_is_a_library_error_and_a_key_error() -> None:
    group = tb.BucketGroup.from_dict({"a": {"requests_per_second": 1}})
    with pytest.raises(tb.UnknownNameError) as caught:
        group["b"]
    assert isinstance(caught.value, KeyError)
    assert isinstance(caught.value, tb.TokenBucketError)
    assert "'a'" in str(caught.value)


def test_a_member_listed_twice_is_refused() -> None:
    with pytest.raises(tb.InvalidArgumentError, match="twice"):
        tb.BucketGroup.from_dict(
            {"a": {"requests_per_second": 1}},
            shared={"org": {"tokens_per_second": 10, "members": ["a", "a"]}},
        )


def test_an_expired_pause_stays_expired_on_another_loop() -> None:
    limiter = tb.Limiter(max_concurrency=4)

    async def pause_briefly() -> None:
        limiter.pause(0.01)
        await asyncio.sleep(0.02)

    async def acquire_on_trio() -> float:
        start = trio.current_time()
        async with limiter.acquire(timeout=2):
            pass
        return trio.current_time() - start

    asyncio.run(pause_briefly())
    waited = trio.run(acquire_on_trio, clock=trio.testing.MockClock(autojump_threshold=0))
    assert waited == 0


def test_a_shared_limit_follows_each_members_loop() -> None:
    group = tb.BucketGroup.from_dict(
        {"a": {"requests_per_second": 100}, "b": {"requests_per_second": 100}},
        shared={"org": {"tokens_per_second": 10, "members": ["a", "b"]}},
    )

    async def use(name: str) -> float:
        start = anyio.current_time()
        for _ in range(2):
            async with group.acquire(name, tokens=10, timeout=5):
                pass
        return anyio.current_time() - start

    loop = looptime.new_event_loop()
    try:
        first = loop.run_until_complete(use("a"))
    finally:
        loop.close()
    second = trio.run(use, "b", clock=trio.testing.MockClock(autojump_threshold=0))
    third = asyncio.run(use("a"))  # would hang if the pool were left on trio's clock
    assert first == pytest.approx(1.0, abs=1e-5)
    assert 1.0 - 1e-5 <= second <= 2.0 + 1e-5  # a new clock: as if no time had passed
    assert 0.0 <= third <= 3.0  # real time: at most the two windows, plus overhead


def test_idle_keys_are_forgotten_across_event_loops() -> None:
    # A bucket that refills its one unit in a millisecond: at rest soon after use.
    group = tb.BucketGroup(default={"requests_per_second": {"limit": 1000, "burst": 1000}})

    async def job(offset: int) -> None:
        for i in range(1200):
            async with group.acquire(f"key-{offset}-{i}"):
                pass

    held = []
    for n in range(4):
        asyncio.run(job(n))
        held.append(len(group))
        # Idle long enough for every key to refill.
        asyncio.run(asyncio.sleep(0.01))
    # Sweeps run as the group grows: it never holds every key ever seen.
    assert max(held) < 4 * 1200
