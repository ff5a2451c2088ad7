"""FIFO under virtual time: a large request is never starved, try_acquire never
overtakes, ten thousand waiters in order."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import tokenbucket as tb
from tests.virtual._support import (
    KINDS,
    TOL,
    Single,
    drain,
    drained,
    non_decreasing,
    now,
    shared_group,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

pytestmark = pytest.mark.anyio


async def small_big_then_small(
    take: Callable[[str, float], Coroutine[Any, Any, None]],
) -> list[str]:
    """One small request, a big one (10), then 19 small ones, 10 ms apart; their names
    in arrival order once all were granted."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(take, "small-0", 1)
        await anyio.sleep(0.01)
        tg.start_soon(take, "big", 10)
        await anyio.sleep(0.01)
        for i in range(1, 20):
            tg.start_soon(take, f"small-{i}", 1)
            await anyio.sleep(0.01)
    return ["small-0", "big"] + [f"small-{i}" for i in range(1, 20)]


@KINDS
async def test_fifo_large_request_is_not_starved(kind: str) -> None:
    limiter = await drained(kind)
    start = now()
    times: dict[str, float] = {}

    async def take(name: str, amount: float) -> None:
        await limiter.acquire(amount)
        times[name] = now() - start

    arrival = await small_big_then_small(take)
    in_order = [times[name] for name in arrival]
    assert in_order == sorted(in_order)
    # The big one is served before any small one that came after it.
    assert times["big"] < times["small-1"]
    assert times["big"] == pytest.approx(11 if kind == "bucket" else 20, abs=TOL)


@KINDS
async def test_try_acquire_never_overtakes_a_waiter(kind: str) -> None:
    limiter = await drained(kind)
    async with anyio.create_task_group() as tg:
        tg.start_soon(limiter.acquire, 5)
        await anyio.sleep(3)
        # Capacity for 1 unit exists (bucket: level 3), but the head waits for 5.
        assert limiter.statistics().waiters == 1
        assert not limiter.try_acquire(1)
        with pytest.raises(tb.AcquireTimeoutError):
            await limiter.acquire(1, timeout=0)
    assert limiter.statistics().waiters == 0


@KINDS
async def test_ten_thousand_waiters_fifo_exact_and_conforming(kind: str) -> None:
    n = 10_000
    limiter: Single
    if kind == "bucket":
        limiter = tb.TokenBucket(rate=1000, capacity=10)
    else:
        limiter = tb.SlidingWindow(limit=100, window=0.1)
    await drain(limiter)
    start = now()
    grants: list[tuple[int, float]] = []
    arrivals = iter(range(n))

    async def take() -> None:
        arrival = next(arrivals)  # no checkpoint between this and acquire()
        await limiter.acquire()
        grants.append((arrival, now() - start))

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(take)
            if i % 1000 == 0:
                await anyio.wait_all_tasks_blocked()
    assert len(grants) == n
    # FIFO: grant times never decrease in arrival order.
    by_arrival = sorted(grants)
    times = [t for _, t in by_arrival]
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(times))
    if kind == "bucket":
        # The k-th unit (0-based) is due at (k + 1) / rate once the burst is gone.
        expected = [(k + 1) / 1000 for k in range(n)]
        assert times == pytest.approx(expected, abs=TOL)
        # Conformance over every window: at most capacity + rate * T in [t_i, t_j].
        for width in (0.0, 0.0105, 0.1, 1.0):
            j = 0
            for i in range(n):
                while j < n and times[j] <= times[i] + width:
                    j += 1
                assert j - i <= 10 + 1000 * width + 1e-6
    else:
        # 100 per 0.1 s window: batches of 100, each 0.1 s after the one before (a
        # quantised clock such as looptime's may add its 1 us tick per batch).
        batches = times[::100]
        assert all(times[k] == batches[k // 100] for k in range(n))
        gaps = [b - a for a, b in itertools.pairwise([0.0, *batches])]
        assert min(gaps) >= 0.1 - 1e-9
        assert max(gaps) <= 0.1 + 2e-6
        j = 0
        for i in range(n):
            while j < n and times[j] < times[i] + 0.1 - 1e-9:
                j += 1
            assert j - i <= 100
    assert limiter.statistics().waiters == 0


async def test_fifo_large_token_request_not_overtaken_by_later_small_ones() -> None:
    limiter = tb.Limiter(requests_per_second=1_000, tokens_per_second=10)
    async with limiter.acquire(tokens=10):
        pass
    start = now()
    times: dict[str, float] = {}

    async def take(name: str, tokens: float) -> None:
        async with limiter.acquire(tokens=tokens):
            times[name] = now() - start

    arrival = await small_big_then_small(take)
    assert non_decreasing([times[name] for name in arrival])
    # small-0 at 1 s; the big one needs the whole window: 2 s (room was 9 at 1 s).
    assert times["small-0"] == pytest.approx(1, abs=TOL)
    assert times["big"] == pytest.approx(2, abs=TOL)
    assert min(times[f"small-{i}"] for i in range(1, 20)) == pytest.approx(3, abs=TOL)


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
