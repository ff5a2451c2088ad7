"""One limiter across event loops and clocks (G7, G8)."""

from __future__ import annotations

import asyncio
import threading

import anyio
import looptime
import pytest
import trio
import trio.testing

import tokenbucket as tb

pytestmark = pytest.mark.anyio


BUCKET = tb.TokenBucket(rate=20, capacity=2)  # made at import time, as users do


def test_one_limiter_across_successive_event_loops() -> None:
    grants: list[str] = []

    async def use(name: str) -> None:
        for _ in range(3):
            await BUCKET.acquire()
        grants.append(name)

    asyncio.run(use("asyncio 1"))
    asyncio.run(use("asyncio 2"))
    trio.run(use, "trio", clock=trio.testing.MockClock(autojump_threshold=0))
    anyio.run(use, "uvloop", backend_options={"use_uvloop": True})
    trio.run(use, "trio again")
    asyncio.run(use("asyncio 3"))
    assert grants == ["asyncio 1", "asyncio 2", "trio", "uvloop", "trio again", "asyncio 3"]


def test_a_clock_with_another_origin_never_over_admits() -> None:
    bucket = tb.TokenBucket(rate=1, capacity=5)
    stamps: list[float] = []

    async def drain() -> None:
        while bucket.try_acquire(1):
            pass
        stamps.append(trio.current_time())

    async def after() -> None:
        start = trio.current_time()
        await bucket.acquire(1)
        stamps.append(trio.current_time() - start)

    late = trio.testing.MockClock(autojump_threshold=0)
    late.jump(1e6)  # this run's clock starts a million seconds later
    trio.run(drain, clock=trio.testing.MockClock(autojump_threshold=0))
    trio.run(after, clock=late)
    # No refill is credited for the jump: the unit needs its full second.
    assert stamps[1] == pytest.approx(1.0)
    early = trio.testing.MockClock(autojump_threshold=0)
    trio.run(after, clock=early)  # and back to 0: no hang, no gift
    assert stamps[2] == pytest.approx(1.0)


def test_a_limiter_with_waiters_in_another_running_loop_is_shared() -> None:
    bucket = tb.TokenBucket(rate=20, capacity=1)
    order: list[str] = []

    async def other_loop() -> None:
        await bucket.acquire(timeout=5)
        order.append("other loop")

    async def main() -> None:
        assert bucket.try_acquire(1)
        waiter = asyncio.create_task(bucket.acquire(timeout=5))
        await asyncio.sleep(0)
        thread = threading.Thread(target=asyncio.run, args=(other_loop(),))
        thread.start()
        await asyncio.to_thread(thread.join)
        await waiter
        order.insert(0 if waiter.done() else 1, "first loop")

    asyncio.run(main())
    # The first loop's waiter came first: it was granted first (FIFO across loops).
    assert order == ["first loop", "other loop"]
    assert type(bucket._waiters).__name__ == "SharedQueue"


def test_a_limiter_serving_a_trio_run_is_shared_with_a_thread() -> None:
    bucket = tb.TokenBucket(rate=50, capacity=1)
    order: list[str] = []

    def other_thread() -> None:
        bucket.acquire_blocking(timeout=5)
        order.append("thread")

    async def main() -> None:
        assert bucket.try_acquire(1)  # bound to this run, and empty
        thread = threading.Thread(target=other_thread)
        thread.start()
        await trio.to_thread.run_sync(thread.join)  # the run shares it with the thread
        await bucket.acquire(timeout=5)  # then waits on the shared limiter
        order.append("trio")

    trio.run(main)
    assert order == ["thread", "trio"]
    assert type(bucket._waiters).__name__ == "SharedQueue"


def test_a_trio_run_with_a_mock_clock_cannot_wait_on_a_shared_limiter() -> None:
    bucket = tb.TokenBucket(rate=0.001, capacity=1)
    bucket.acquire_blocking()  # shared, and empty

    async def main() -> None:
        with pytest.raises(RuntimeError, match="MockClock"):
            await bucket.acquire(timeout=1)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


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
