"""Behaviour of TokenBucket and SlidingWindow under virtual time (trio and asyncio)."""

from __future__ import annotations

import itertools

import anyio
import pytest

import tokenbucket as tb

pytestmark = pytest.mark.anyio

Limiter = tb.TokenBucket | tb.SlidingWindow

# looptime keeps time in whole microseconds; trio's MockClock is exact.
TOL = 1e-5


def now() -> float:
    return anyio.current_time()


async def drain(limiter: Limiter) -> None:
    available = limiter.statistics().available
    assert available is not None
    if available > 0:
        assert limiter.try_acquire(available)


async def test_bucket_grants_at_exact_times() -> None:
    bucket = tb.TokenBucket(rate=10, capacity=20)
    start = now()
    times = []
    for _ in range(25):
        await bucket.acquire()
        times.append(now() - start)
    assert times[:20] == [0.0] * 20
    assert times[20:] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5], abs=TOL)


async def test_bucket_waits_only_for_the_deficit() -> None:
    bucket = tb.TokenBucket(rate=2, capacity=10)
    assert bucket.try_acquire(9)
    start = now()
    await bucket.acquire(4)  # 1 left, 3 missing: 1.5 s, not 4 / 2 = 2 s
    assert now() - start == pytest.approx(1.5, abs=TOL)


async def test_window_grants_at_exact_times() -> None:
    window = tb.SlidingWindow(limit=15, window=60)
    start = now()
    for _ in range(15):
        await window.acquire()
    assert now() == start
    await window.acquire()
    assert now() - start == pytest.approx(60, abs=TOL)
    await window.acquire(14)
    assert now() - start == pytest.approx(60, abs=TOL)
    await window.acquire()
    assert now() - start == pytest.approx(120, abs=TOL)


async def test_window_frees_exactly_what_leaves_it() -> None:
    window = tb.SlidingWindow(limit=10, window=5)
    await window.acquire(4)
    await anyio.sleep(1)
    await window.acquire(6)
    start = now()
    await window.acquire(5)  # needs the 4 from t=0 (free at 5) and 1 from t=1 (at 6)
    assert now() - start == pytest.approx(5, abs=TOL)


def make(kind: str) -> Limiter:
    if kind == "bucket":
        return tb.TokenBucket(rate=1, capacity=10)
    return tb.SlidingWindow(limit=10, window=10)


KINDS = pytest.mark.parametrize("kind", ["bucket", "window"])


@KINDS
async def test_fifo_large_request_is_not_starved(kind: str) -> None:
    limiter = make(kind)
    await drain(limiter)
    start = now()
    times: dict[str, float] = {}

    async def take(name: str, amount: float) -> None:
        await limiter.acquire(amount)
        times[name] = now() - start

    async with anyio.create_task_group() as tg:
        tg.start_soon(take, "small-0", 1)
        await anyio.sleep(0.01)
        tg.start_soon(take, "big", 10)
        await anyio.sleep(0.01)
        for i in range(1, 20):
            tg.start_soon(take, f"small-{i}", 1)
            await anyio.sleep(0.01)
    arrival = ["small-0", "big"] + [f"small-{i}" for i in range(1, 20)]
    in_order = [times[name] for name in arrival]
    assert in_order == sorted(in_order)
    # The big one is served before any small one that came after it.
    assert times["big"] < times["small-1"]
    assert times["big"] == pytest.approx(11 if kind == "bucket" else 20, abs=TOL)


@KINDS
async def test_try_acquire_never_overtakes_a_waiter(kind: str) -> None:
    limiter = make(kind)
    await drain(limiter)
    async with anyio.create_task_group() as tg:
        tg.start_soon(limiter.acquire, 5)
        await anyio.sleep(3)
        # Capacity for 1 unit exists (bucket: level 3), but the head waits for 5.
        assert limiter.statistics().waiters == 1
        assert not limiter.try_acquire(1)
        with pytest.raises(tb.AcquireTimeoutError):
            await limiter.acquire(1, timeout=0)
    assert limiter.statistics().waiters == 0


async def test_cancelling_the_head_hands_over_at_once() -> None:
    bucket = tb.TokenBucket(rate=1, capacity=10)
    await drain(bucket)
    start = now()
    granted: list[float] = []
    head = anyio.CancelScope()

    async def head_task() -> None:
        with head:
            await bucket.acquire(5)

    async def second() -> None:
        await bucket.acquire(1)
        granted.append(now() - start)

    async with anyio.create_task_group() as tg:
        tg.start_soon(head_task)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(second)
        await anyio.sleep(2)
        assert granted == []
        assert bucket.statistics().waiters == 2
        head.cancel()
    # At t=2 the head (5 units, due at t=5) left; the second waiter's unit was there.
    assert granted == [pytest.approx(2, abs=TOL)]
    # The head consumed nothing: 2 refilled - 1 granted.
    assert bucket.statistics().available == pytest.approx(1, abs=TOL)


@KINDS
async def test_cancelled_waiter_behind_the_head_changes_nothing(kind: str) -> None:
    limiter = make(kind)
    await drain(limiter)
    start = now()
    times: dict[str, float] = {}
    middle = anyio.CancelScope()

    async def take(name: str, amount: float, scope: anyio.CancelScope | None = None) -> None:
        with scope or anyio.CancelScope():
            await limiter.acquire(amount)
            times[name] = now() - start

    async with anyio.create_task_group() as tg:
        tg.start_soon(take, "a", 3)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(take, "b", 4, middle)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(take, "c", 5)
        await anyio.sleep(1)
        middle.cancel()
    assert "b" not in times
    if kind == "bucket":
        # As if b had never come: a at 3 s, c needs 5 more at 8 s.
        assert times == {"a": pytest.approx(3, abs=TOL), "c": pytest.approx(8, abs=TOL)}
    else:
        # The window drained at t=0 frees all 10 at t=10; a and c both fit then.
        assert times == {"a": pytest.approx(10, abs=TOL), "c": pytest.approx(10, abs=TOL)}


@KINDS
async def test_timeout_raises_at_the_deadline_and_consumes_nothing(kind: str) -> None:
    limiter = make(kind)
    await drain(limiter)
    start = now()
    with pytest.raises(tb.AcquireTimeoutError) as info:
        await limiter.acquire(5, timeout=2)
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, tb.TokenBucketError)
    assert now() - start == pytest.approx(2, abs=TOL)
    stats = limiter.statistics()
    assert stats.waiters == 0
    if kind == "bucket":
        assert stats.available == pytest.approx(2, abs=TOL)
    else:
        assert stats.available == 0


@KINDS
async def test_timeout_of_the_head_lets_the_next_one_in(kind: str) -> None:
    limiter = make(kind)
    await drain(limiter)
    start = now()
    events: list[tuple[str, float]] = []

    async def head() -> None:
        try:
            await limiter.acquire(10, timeout=2.5)
        except tb.AcquireTimeoutError:
            events.append(("head timed out", now() - start))

    async def second() -> None:
        await limiter.acquire(1)
        events.append(("second granted", now() - start))

    async with anyio.create_task_group() as tg:
        tg.start_soon(head)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(second)
    # Bucket: 2.5 units are there when the head gives up, so the second goes at once.
    # Window: nothing leaves the window before t=10.
    second_at = 2.5 if kind == "bucket" else 10
    assert dict(events) == {
        "head timed out": pytest.approx(2.5, abs=TOL),
        "second granted": pytest.approx(second_at, abs=TOL),
    }


@KINDS
async def test_zero_amounts_and_zero_timeout(kind: str) -> None:
    limiter = make(kind)
    await limiter.acquire(0)
    assert limiter.try_acquire(0)
    await limiter.acquire(4, timeout=0)  # available: succeeds without waiting
    await drain(limiter)
    with pytest.raises(tb.AcquireTimeoutError):
        await limiter.acquire(1, timeout=0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(limiter.acquire, 1)
        await anyio.wait_all_tasks_blocked()
        start = now()
        await limiter.acquire(0)  # returns at once even with a queue
        assert limiter.try_acquire(0)
        assert now() == start


@KINDS
async def test_ten_thousand_waiters_fifo_exact_and_conforming(kind: str) -> None:
    n = 10_000
    limiter: Limiter
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


@KINDS
async def test_statistics_and_repr(kind: str) -> None:
    limiter = make(kind)
    await drain(limiter)
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


@KINDS
async def test_async_with_takes_one_unit(kind: str) -> None:
    limiter = make(kind)
    async with limiter:
        pass
    assert limiter.statistics().available == pytest.approx(9, abs=TOL)
