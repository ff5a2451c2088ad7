"""The concurrency cap under virtual time: taken with the rates in one await, its
slot back on every way out, nothing held while waiting."""

from __future__ import annotations

import math

import anyio
import pytest

import tokenbucket as tb
from tests.virtual._support import TOL, max_in_period, now, start_in_order

pytestmark = pytest.mark.anyio


async def test_requests_tokens_and_concurrency_together_exact_times() -> None:
    # 4 requests/s, 30 tokens/s (3 calls of 10), 2 in flight; each call lasts 0.25 s.
    limiter = tb.Limiter(requests_per_second=4, tokens_per_second=30, max_concurrency=2)
    start = now()
    grants: list[float] = []
    open_now = 0
    peak = 0

    async def call() -> None:
        nonlocal open_now, peak
        async with limiter.acquire(tokens=10):
            open_now += 1
            peak = max(peak, open_now)
            assert limiter.statistics().in_flight <= 2
            grants.append(now() - start)
            await anyio.sleep(0.25)
            open_now -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(call)
    # At k: two calls (the slots bind); at k + 0.25: one more (the tokens bind).
    assert sorted(grants) == pytest.approx([0, 0, 0.25, 1, 1, 1.25, 2, 2], abs=TOL)
    assert peak == 2
    log = [(t, 10.0) for t in grants]
    assert max_in_period(log, 1.0) <= 30
    assert max_in_period([(t, 1.0) for t in grants], 1.0) <= 4
    assert limiter.statistics().in_flight == 0


async def test_concurrency_only_limiter_is_a_fifo_semaphore() -> None:
    limiter = tb.Limiter(max_concurrency=2)
    assert limiter.dimensions == ()
    start = now()
    grants: list[tuple[int, float]] = []

    async def call(index: int) -> None:
        async with limiter.acquire():
            grants.append((index, now() - start))
            await anyio.sleep(1)

    async with anyio.create_task_group() as tg:
        for index in range(5):
            tg.start_soon(call, index)
            await anyio.wait_all_tasks_blocked()
    assert sorted(grants) == [
        (0, 0.0),
        (1, 0.0),
        (2, pytest.approx(1, abs=TOL)),
        (3, pytest.approx(1, abs=TOL)),
        (4, pytest.approx(2, abs=TOL)),
    ]
    with pytest.raises(tb.InvalidArgumentError):
        limiter.acquire(tokens=1)


async def test_slot_released_on_normal_exit_error_and_cancellation() -> None:
    limiter = tb.Limiter(requests_per_second=1_000, max_concurrency=1)
    async with limiter.acquire():
        assert limiter.statistics().in_flight == 1
    assert limiter.statistics().in_flight == 0

    async def fail_inside() -> None:
        async with limiter.acquire():
            assert limiter.statistics().in_flight == 1
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await fail_inside()
    assert limiter.statistics().in_flight == 0

    with anyio.CancelScope() as scope:
        async with limiter.acquire():
            assert limiter.statistics().in_flight == 1
            scope.cancel()
            await anyio.sleep(10)
    assert scope.cancelled_caught
    assert limiter.statistics().in_flight == 0

    with anyio.move_on_after(3) as timer:
        async with limiter.acquire():
            await anyio.sleep(10)
    assert timer.cancelled_caught
    assert limiter.statistics().in_flight == 0

    # After all that the one slot is free: granted at once.
    start = now()
    async with limiter.acquire():
        assert now() == start


async def test_a_cancelled_holder_hands_its_slot_to_the_waiter_at_once() -> None:
    limiter = tb.Limiter(requests_per_second=1_000, max_concurrency=1)
    start = now()
    granted: list[float] = []
    holder = anyio.CancelScope()

    async def hold() -> None:
        with holder:
            async with limiter.acquire():
                await anyio.sleep(math.inf)

    async def wait() -> None:
        async with limiter.acquire():
            granted.append(now() - start)

    async with anyio.create_task_group() as tg:
        await start_in_order(tg, hold, wait)
        await anyio.sleep(3)
        assert granted == []
        snapshot = limiter.statistics()
        assert (snapshot.in_flight, snapshot.waiters) == (1, 1)
        holder.cancel()
    assert granted == [pytest.approx(3, abs=TOL)]
    assert limiter.statistics().in_flight == 0


async def test_a_waiter_blocked_on_tokens_holds_no_request_and_no_slot() -> None:
    limiter = tb.Limiter(requests_per_second=2, tokens_per_second=10, max_concurrency=1)
    async with limiter.acquire(tokens=10):
        pass
    start = now()
    outcome: list[str] = []

    async def blocked() -> None:
        try:
            async with limiter.acquire(tokens=5, timeout=0.5):
                outcome.append("granted")  # pragma: no cover - must not happen
        except tb.AcquireTimeoutError:
            outcome.append(f"timeout at {now() - start:.6f}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(blocked)
        await anyio.wait_all_tasks_blocked()
        snapshot = limiter.statistics()
        assert snapshot.waiters == 1
        assert snapshot.in_flight == 0
        assert snapshot.available["requests"] == 1
        assert snapshot.available["tokens"] == 0
    assert outcome == ["timeout at 0.500000"]
    # The request and the slot it did not hold are there for the next caller at once.
    async with limiter.acquire():
        assert now() - start == pytest.approx(0.5, abs=TOL)
        assert limiter.statistics().available["requests"] == 0


async def test_a_waiter_blocked_on_the_slot_holds_no_tokens() -> None:
    limiter = tb.Limiter(requests_per_second=100, tokens_per_second=10, max_concurrency=1)
    release = anyio.Event()
    start = now()
    times: list[float] = []

    async def hold() -> None:
        async with limiter.acquire(tokens=1):
            await release.wait()

    async def wait_for_slot() -> None:
        with pytest.raises(tb.AcquireTimeoutError):
            async with limiter.acquire(tokens=5, timeout=0.5):
                pass  # pragma: no cover - must not happen

    async def big_after() -> None:
        async with limiter.acquire(tokens=9):
            times.append(now() - start)

    async with anyio.create_task_group() as tg:
        await start_in_order(tg, hold, wait_for_slot)
        assert limiter.statistics().available["tokens"] == 9
        await anyio.sleep(0.75)
        tg.start_soon(big_after)
        await anyio.wait_all_tasks_blocked()
        release.set()
    # The timed-out waiter took none of the 9 tokens left.
    assert times == [pytest.approx(0.75, abs=TOL)]
