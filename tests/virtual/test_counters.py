"""The counters under virtual time: exact waits, their histogram, and what bound them."""

from __future__ import annotations

import asyncio

import anyio
import pytest

import tokenbucket as tb
from tests.virtual._support import TOL, now

pytestmark = pytest.mark.anyio


async def test_waits_are_exact_and_land_in_their_buckets() -> None:
    # Five at once (burst), then one a second: waits of 1, 2, ... 12 s for 12 more.
    limiter = tb.Limiter(requests_per_second=tb.per_second(1, burst=5))
    leases: list[tb.Lease] = []

    async def one() -> None:
        async with limiter.acquire() as lease:
            leases.append(lease)

    start = now()
    async with anyio.create_task_group() as tg:
        for _ in range(17):
            tg.start_soon(one)
            await anyio.wait_all_tasks_blocked()
    assert now() - start == pytest.approx(12, abs=TOL)
    waits = sorted(lease.waited for lease in leases)
    assert waits[:5] == [0.0] * 5
    assert waits[5:] == pytest.approx([float(k) for k in range(1, 13)], abs=TOL)
    assert {lease.binding for lease in leases[5:]} == {"requests 1/second burst 5"}
    counters = limiter.statistics().counters
    assert counters.admitted == 17
    assert counters.waited == 12
    assert counters.wait_seconds == pytest.approx(sum(range(1, 13)), abs=12 * TOL)
    # 0: five; (0.1, 1]: the first; (1, 10]: 2 .. 10 s; (10, 60]: 11 and 12 s.
    assert counters.wait_histogram == {
        0.0: 5,
        0.001: 0,
        0.01: 0,
        0.1: 0,
        1.0: 1,
        10.0: 9,
        60.0: 2,
        float("inf"): 0,
    }


async def test_a_pause_binds_and_is_counted() -> None:
    limiter = tb.Limiter(requests_per_second=100, tokens_per_second=1000)
    limiter.feedback({"retry-after": "3"}, status=429)
    start = now()
    async with limiter.acquire(tokens=10) as lease:
        assert now() - start == pytest.approx(3, abs=TOL)
    assert lease.waited == pytest.approx(3, abs=TOL)
    assert lease.binding == "paused"
    counters = limiter.statistics().counters
    assert (counters.rejections, counters.pauses, counters.waited) == (1, 1, 1)
    assert counters.paused_seconds == pytest.approx(3)
    assert counters.admitted_units == {"requests": 1.0, "tokens": 10.0}


async def test_a_shared_pool_counts_on_each_member() -> None:
    group = tb.BucketGroup(
        {"a": tb.Limiter(requests_per_second=100), "b": tb.Limiter(requests_per_second=100)}
    )
    group.share("org", ["a", "b"], tokens_per_second=tb.per_second(10, burst=10))
    async with group.acquire("a", tokens=10):
        pass
    start = now()
    async with group.acquire("b", tokens=5) as lease:
        pass
    assert now() - start == pytest.approx(0.5, abs=TOL)
    assert lease.binding == "tokens 10/second burst 10"
    a, b = group["a"].statistics().counters, group["b"].statistics().counters
    assert (a.admitted, a.admitted_units["tokens"], a.waited) == (1, 10.0, 0)
    assert (b.admitted, b.admitted_units["tokens"], b.waited) == (1, 5.0, 1)


async def test_each_waiter_is_told_its_own_binding() -> None:
    # A waits for tokens; C, behind it, then waits for the slot A takes.
    limiter = tb.Limiter(tokens_per_second=tb.per_second(10, burst=10), max_concurrency=2)
    holder = limiter.acquire(tokens=10)  # every token, and one slot
    await holder.__aenter__()
    bindings: dict[str, str | None] = {}

    async def one(name: str, tokens: float) -> None:
        async with limiter.acquire(tokens=tokens) as lease:
            bindings[name] = lease.binding
            await anyio.sleep(5)

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "A", 5)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(one, "C", 0)
        await anyio.wait_all_tasks_blocked()
        await anyio.sleep(1)
        await holder.__aexit__(None, None, None)
    assert bindings == {"A": "tokens 10/second burst 10", "C": "max_concurrency"}


async def test_the_histogram_never_goes_down_while_a_woken_waiter_has_not_run() -> None:
    limiter = tb.Limiter(max_concurrency=1)
    first = limiter.acquire()
    await first.__aenter__()
    seen: list[dict[float, int]] = []

    async def second() -> None:
        async with limiter.acquire():
            pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        await anyio.sleep(2)
        await first.__aexit__(None, None, None)  # grants `second`, which has not run yet
        seen.append(dict(limiter.statistics().counters.wait_histogram))
    seen.append(dict(limiter.statistics().counters.wait_histogram))
    before, after = seen
    assert before[0.0] == after[0.0] == 1  # `first` only
    assert (before[10.0], after[10.0]) == (0, 1)  # `second` waited 2 s: there once it ran
    counters = limiter.statistics().counters
    assert (counters.admitted, counters.waited) == (2, 1)


async def test_a_wait_of_no_time_still_counts_as_a_wait() -> None:
    limiter = tb.Limiter(max_concurrency=1)
    first = limiter.acquire()
    await first.__aenter__()
    leases: list[tb.Lease] = []

    async def second() -> None:
        async with limiter.acquire() as lease:
            leases.append(lease)

    async with anyio.create_task_group() as tg:
        tg.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        await first.__aexit__(None, None, None)  # at the same (virtual) instant
    assert leases[0].waited == 0.0
    assert leases[0].binding == "max_concurrency"
    counters = limiter.statistics().counters
    assert counters.waited == 1
    assert counters.wait_histogram[0.0] == 2  # one at once, one that queued for no time


def test_a_grant_lost_to_a_cancellation_is_counted_once_and_leaks_nothing() -> None:
    async def main() -> tb.LimiterStatistics:
        limiter = tb.Limiter(max_concurrency=1)
        first = limiter.acquire()
        await first.__aenter__()

        async def second() -> None:
            async with limiter.acquire():
                pass

        task = asyncio.create_task(second())
        await asyncio.sleep(0)  # it queues
        await first.__aexit__(None, None, None)  # grants `second`...
        task.cancel()  # ...which is cancelled before it runs: the grant goes back
        with pytest.raises(asyncio.CancelledError):
            await task
        return limiter.statistics()

    stats = asyncio.run(main())
    assert stats.in_flight == 0
    counters = stats.counters
    assert (counters.admitted, counters.cancellations, counters.waited) == (2, 1, 1)
    assert counters.wait_histogram[0.0] == 1  # the lost grant is in no bucket
    assert sum(counters.wait_histogram.values()) == 1


async def test_a_listener_raising_a_base_exception_on_a_grant_leaks_no_slot() -> None:
    limiter = tb.Limiter(max_concurrency=1)
    raised = [False]

    def listener(event: tb.LimiterEvent) -> None:
        if event.kind == "grant" and not raised[0]:
            raised[0] = True
            raise KeyboardInterrupt

    limiter.subscribe(listener)
    with pytest.raises(KeyboardInterrupt):
        async with limiter.acquire():
            pytest.fail("the block must not run")
    assert limiter.statistics().in_flight == 0
    with anyio.fail_after(1):
        async with limiter.acquire():
            pass
