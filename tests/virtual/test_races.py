"""Grants racing with cancellation, and limiters moving between event loops."""

from __future__ import annotations

import asyncio
import threading

import anyio
import pytest
import trio
import trio.testing

import tokenbucket as tb


def test_grant_then_cancel_before_running_gives_the_grant_back() -> None:
    """asyncio: a waiter granted and cancelled before it runs hands its unit on."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        bucket = tb.TokenBucket(rate=1, capacity=2)
        assert bucket.try_acquire(2)
        head = asyncio.create_task(bucket.acquire(2))
        await asyncio.sleep(0)
        second = asyncio.create_task(bucket.acquire(1))
        await asyncio.sleep(0)
        third = asyncio.create_task(bucket.acquire(1))
        await asyncio.sleep(1.5)  # level 1.5: second and third fit, the head does not
        # Cancel the head; its removal grants `second` in the next loop iteration, and
        # `second` is cancelled right after that, before it can run.
        head.cancel()
        loop.call_soon(second.cancel)
        with pytest.raises(asyncio.CancelledError):
            await second
        with pytest.raises(asyncio.CancelledError):
            await head
        start = loop.time()
        await third
        # `second` gave its unit back, so `third` had one at t=1.5 (not at t=2.5).
        assert loop.time() - start == pytest.approx(0, abs=1e-5)
        assert bucket.statistics().available == pytest.approx(0.5, abs=1e-5)

    import looptime

    loop = looptime.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_cancelling_two_waiters_at_once_on_trio_consumes_nothing() -> None:
    """Both orders of the two cancellations (trio shuffles them) leave nothing taken."""

    async def once() -> None:
        bucket = tb.TokenBucket(rate=1, capacity=2)
        assert bucket.try_acquire(2)
        scopes = [trio.CancelScope(), trio.CancelScope()]

        async def take(scope: trio.CancelScope, amount: float) -> None:
            with scope:
                await bucket.acquire(amount)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(take, scopes[0], 2)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(take, scopes[1], 1)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(1.5)
            for scope in scopes:
                scope.cancel()
        assert bucket.statistics().available == pytest.approx(1.5)
        assert bucket.statistics().waiters == 0

    async def main() -> None:
        for _ in range(20):
            await once()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


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


def test_waiters_in_another_running_loop_are_reported() -> None:
    bucket = tb.TokenBucket(rate=0.001, capacity=1)
    errors: list[BaseException] = []

    async def other_loop() -> None:
        try:
            await bucket.acquire()
        except RuntimeError as exc:
            errors.append(exc)

    async def main() -> None:
        assert bucket.try_acquire(1)
        waiter = asyncio.create_task(bucket.acquire())
        await asyncio.sleep(0)
        thread = threading.Thread(target=asyncio.run, args=(other_loop(),))
        thread.start()
        await asyncio.to_thread(thread.join)
        waiter.cancel()

    asyncio.run(main())
    assert len(errors) == 1
    assert "another event loop" in str(errors[0])


def test_grants_of_one_batch_are_charged_when_each_is_made() -> None:
    """A process preempted while it grants a batch charges the later grants later.

    The queue grants both waiters in one pass at t=1; the clock moves 0.4 s between the
    two grants (as when the OS preempts the process). The second grant must count from
    the instant it was made, so one second later only the first has left the window.
    """

    async def main() -> None:
        window = tb.SlidingWindow(limit=2, window=1)
        assert window.try_acquire(2)  # binds the limiter to this run; full until t=1
        real = window._waiters.clock
        skew = {"offset": 0.0, "jumps": 0}

        def preempted() -> float:
            now = real() + skew["offset"]
            if real() >= 1.0 and skew["jumps"] < 2:
                skew["jumps"] += 1
                skew["offset"] += 0.4  # the next read comes 0.4 s later
            return now

        window._waiters.clock = preempted
        granted: list[float] = []

        async def take() -> None:
            await window.acquire(1)
            granted.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(take)
            nursery.start_soon(take)
        assert granted == [pytest.approx(1.0), pytest.approx(1.0)]
        assert skew["offset"] == pytest.approx(0.8)
        # Charged at 1.0 and 1.4 on the limiter's clock: at 2.05 on that clock the first
        # has left the window, the second has not.
        await trio.sleep(2.05 - skew["offset"] - trio.current_time())
        assert window.try_acquire(1)
        assert not window.try_acquire(1)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
