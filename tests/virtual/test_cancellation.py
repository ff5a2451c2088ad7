"""Cancellation under virtual time: the next waiter takes over in the same instant;
a grant cancelled before it runs is handed on."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import looptime
import pytest
import trio
import trio.testing

import tokenbucket as tb
from tests.virtual._support import KINDS, TOL, drain, drained, now, start_in_order

pytestmark = pytest.mark.anyio


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
        await start_in_order(tg, head_task, second)
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
    limiter = await drained(kind)
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


async def test_cancelled_at_the_grant_keeps_the_lease_or_gives_it_back() -> None:
    """Cancel a waiter in the very instant it is granted, before it runs, many times:
    either it took its lease (and then gave the slot back on the way out) or it took
    nothing; no capacity and no slot is lost either way."""
    for _ in range(30):
        limiter = tb.Limiter(tokens_per_second=4, max_concurrency=1)
        start = now()
        scope = anyio.CancelScope()
        outcome: list[str] = []
        follower: list[float] = []

        async def hold(limiter: tb.Limiter = limiter) -> None:
            async with limiter.acquire(tokens=2):
                await anyio.sleep(1)

        async def victim(
            limiter: tb.Limiter = limiter,
            scope: anyio.CancelScope = scope,
            outcome: list[str] = outcome,
        ) -> None:
            with scope:
                async with limiter.acquire(tokens=1):
                    outcome.append("granted")  # no checkpoint between grant and this
                    await anyio.sleep(5)
            outcome.append("left")

        async def follow(
            limiter: tb.Limiter = limiter, follower: list[float] = follower, start: float = start
        ) -> None:
            async with limiter.acquire(tokens=1):
                follower.append(now() - start)

        async with anyio.create_task_group() as tg:
            await start_in_order(tg, hold, victim)
            await anyio.sleep(1)  # the holder's exit grants the victim in this instant
            scope.cancel()
            tg.start_soon(follow)
        assert outcome[-1] == "left"
        took = outcome[0] == "granted"
        # The follower never waits for the victim's slot or tokens beyond this instant.
        assert follower == [pytest.approx(1, abs=TOL)]
        snapshot = limiter.statistics()
        assert (snapshot.in_flight, snapshot.waiters) == (0, 0)
        # The holder's 2 tokens left the window at 1 s; the follower took 1.
        assert snapshot.available["tokens"] == 4 - 1 - took


async def cancel_the_head_then_the_granted(
    head: asyncio.Task[Any], second: asyncio.Task[Any]
) -> None:
    """Cancel ``head``: its removal grants ``second`` in the next loop iteration, and
    ``second`` is cancelled right after that, before it can run. Both end cancelled."""
    head.cancel()
    asyncio.get_running_loop().call_soon(second.cancel)
    with pytest.raises(asyncio.CancelledError):
        await second
    with pytest.raises(asyncio.CancelledError):
        await head


def test_asyncio_granted_then_cancelled_before_running_gives_the_grant_back() -> None:
    """asyncio: the head leaves, which grants `second`; `second` is cancelled before it
    runs; its tokens and its slot go to `third` in the same instant."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        limiter = tb.Limiter(tokens_per_second=4, max_concurrency=2)
        release = asyncio.Event()
        times: list[float] = []
        in_flight: list[int] = []

        async def take(tokens: float) -> None:
            async with limiter.acquire(tokens=tokens):
                times.append(loop.time() - start)
                in_flight.append(limiter.statistics().in_flight)
                await release.wait()

        start = loop.time()
        holder = asyncio.create_task(take(3))  # 1 token and 1 slot left
        await asyncio.sleep(0)
        head = asyncio.create_task(take(4))  # due at 1 s
        await asyncio.sleep(0)
        second = asyncio.create_task(take(1))
        await asyncio.sleep(0)
        third = asyncio.create_task(take(1))
        await asyncio.sleep(0.5)
        await cancel_the_head_then_the_granted(head, second)
        while len(times) < 2:
            await asyncio.sleep(0)
        # Without the hand-back, `third` would wait for tokens until 1 s, and forever
        # for the slot.
        assert times == [0.0, pytest.approx(0.5, abs=TOL)]
        assert in_flight == [1, 2]
        release.set()
        await asyncio.gather(holder, third)
        snapshot = limiter.statistics()
        assert (snapshot.in_flight, snapshot.waiters) == (0, 0)
        assert snapshot.available["tokens"] == 0

    loop = looptime.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 100))
    finally:
        loop.close()


async def test_cancelling_the_head_and_the_next_together_loses_nothing() -> None:
    for _ in range(20):
        limiter = tb.Limiter(tokens_per_second=4, max_concurrency=2)
        start = now()
        scopes = [anyio.CancelScope(), anyio.CancelScope()]
        times: list[float] = []

        async def take(
            tokens: float,
            scope: anyio.CancelScope | None = None,
            limiter: tb.Limiter = limiter,
            times: list[float] = times,
            start: float = start,
        ) -> None:
            with scope or anyio.CancelScope():
                async with limiter.acquire(tokens=tokens):
                    times.append(now() - start)
                    await anyio.sleep(10)

        async with anyio.create_task_group() as tg:
            tg.start_soon(take, 3)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(take, 4, scopes[0])
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(take, 1, scopes[1])
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(take, 1)
            await anyio.wait_all_tasks_blocked()
            await anyio.sleep(0.5)
            for scope in scopes:
                scope.cancel()
        assert times[0] == 0.0
        # Whether the second was granted before its cancellation or not, the last
        # one gets the token it needs at 0.5 s.
        assert times[-1] == pytest.approx(0.5, abs=TOL)
        assert len(times) in (2, 3)
        snapshot = limiter.statistics()
        assert (snapshot.in_flight, snapshot.waiters) == (0, 0)


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
        await cancel_the_head_then_the_granted(head, second)
        start = loop.time()
        await third
        # `second` gave its unit back, so `third` had one at t=1.5 (not at t=2.5).
        assert loop.time() - start == pytest.approx(0, abs=1e-5)
        assert bucket.statistics().available == pytest.approx(0.5, abs=1e-5)

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
