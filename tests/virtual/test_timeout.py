"""Timeouts under virtual time: raised at the deadline exactly, nothing taken, the
next waiter let in."""

from __future__ import annotations

import anyio
import pytest

import tokenbucket as tb
from tests.virtual._support import KINDS, TOL, drain, drained, make, now

pytestmark = pytest.mark.anyio


@KINDS
async def test_timeout_raises_at_the_deadline_and_consumes_nothing(kind: str) -> None:
    limiter = await drained(kind)
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
    limiter = await drained(kind)
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


async def test_timeout_raises_a_timeout_error_at_the_deadline_and_takes_nothing() -> None:
    limiter = tb.Limiter(requests_per_second=5, tokens_per_second=10, max_concurrency=3)
    async with limiter.acquire(tokens=8):
        pass
    start = now()
    events: list[tuple[str, float]] = []
    errors: list[BaseException] = []

    async def head() -> None:
        try:
            async with limiter.acquire(tokens=5, timeout=0.3):
                events.append(("head granted", now() - start))  # pragma: no cover
        except tb.AcquireTimeoutError as exc:
            errors.append(exc)
            events.append(("head timed out", now() - start))

    async def second() -> None:
        async with limiter.acquire(tokens=1):
            events.append(("second granted", now() - start))

    async with anyio.create_task_group() as tg:
        tg.start_soon(head)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(second)
    assert isinstance(errors[0], TimeoutError)
    assert isinstance(errors[0], tb.TokenBucketError)
    # The head left at 0.3 s; the second's token was there all along: granted then.
    assert dict(events) == {
        "head timed out": pytest.approx(0.3, abs=TOL),
        "second granted": pytest.approx(0.3, abs=TOL),
    }
    snapshot = limiter.statistics()
    assert dict(snapshot.available) == {"requests": 3, "tokens": 1}
    assert (snapshot.in_flight, snapshot.waiters) == (0, 0)
    # timeout=0: only what is there right now, else a timeout at once.
    with pytest.raises(tb.AcquireTimeoutError):
        async with limiter.acquire(tokens=2, timeout=0):
            pass  # pragma: no cover
    assert now() - start == pytest.approx(0.3, abs=TOL)
    async with limiter.acquire(tokens=1, timeout=0):
        pass
    assert limiter.statistics().available["tokens"] == 0


async def test_a_context_entered_again_after_its_timeout_waits_as_a_new_request() -> None:
    limiter = tb.Limiter(max_concurrency=1)
    order: list[str] = []
    waits: list[tb.LimiterEvent] = []
    limiter.subscribe(lambda event: waits.append(event) if event.kind == "wait" else None)
    release = anyio.Event()

    async def hold() -> None:
        async with limiter.acquire():
            await release.wait()

    async def first() -> None:
        async with limiter.acquire():
            order.append("first")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(hold)
        await anyio.sleep(0.1)
        late = limiter.acquire(timeout=0.2)
        with pytest.raises(tb.AcquireTimeoutError):
            await late.__aenter__()
        tasks.start_soon(first)
        await anyio.sleep(0.1)

        async def let_go() -> None:
            release.set()

        tasks.start_soon(let_go)
        async with late as lease:  # after first, in the queue: a place of its own
            order.append("late")
        assert lease.queued
    assert order == ["first", "late"]
    assert len(waits) == 3  # its second wait is told, as its first was


async def test_a_context_entered_again_waits_behind_who_came_since_on_a_shared_limit() -> None:
    group = tb.BucketGroup(
        {"a": tb.Limiter(requests_per_second=1000), "b": tb.Limiter(requests_per_second=1000)}
    )
    group.share("pool", ["a", "b"], tokens_per_second={"limit": 10, "burst": 10})
    a, b = group["a"], group["b"]
    async with a.acquire(tokens=10):
        pass  # the shared pool is empty
    late = a.acquire(tokens=5, timeout=0.05)
    with pytest.raises(tb.AcquireTimeoutError):
        await late.__aenter__()
    order: list[str] = []

    async def other() -> None:  # after the first try of late: first in line for the pool
        async with b.acquire(tokens=10):
            order.append("b")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(other)
        await anyio.sleep(0.5)  # 5 tokens back: enough for late, not for b
        with pytest.raises(tb.AcquireTimeoutError):
            async with late:  # behind b, which came since: not granted before b
                order.append("late")
    assert order == ["b"]
