"""An adaptive cap on a Redis limiter: learned and applied per process (a gate in this
process's memory, in front of the limits shared in Redis). Real Redis, real time,
bounded; no assertion on speed."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

import pytest

import tokenbucket as tb

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.redis._support import RecordingBackend

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio]

WAIT = 10.0  # the longest a test waits for anything: only reached on a failure


def fixed(cap: int) -> tb.Adaptive:
    """An adaptive cap that cannot move (its bounds are one value)."""
    return tb.adaptive(initial=cap, min=cap, max=cap)


async def until(condition: Callable[[], bool]) -> None:
    """Wait (at most ``WAIT`` seconds) until ``condition()``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not condition():
        assert loop.time() < deadline, "not reached in time"
        await asyncio.sleep(0.005)


async def holding(limiter: tb.Limiter, release: asyncio.Event) -> asyncio.Task[None]:
    """A task that holds a lease of ``limiter`` until ``release`` is set, once it has."""

    async def hold() -> None:
        async with limiter.acquire(timeout=WAIT):
            await release.wait()

    holder = asyncio.create_task(hold())
    await until(lambda: limiter.statistics().in_flight == 1)
    return holder


async def test_a_429_lowers_this_processs_cap_and_the_history_says_why(
    redis_backend: RecordingBackend,
) -> None:
    cap = tb.adaptive(initial=10, min=2, max=100, policy="aimd", window=1)
    limiter = tb.Limiter(
        requests_per_minute=1000, max_concurrency=cap, backend=redis_backend, key="drop"
    )
    assert limiter.max_concurrency == 10
    async with limiter.acquire() as lease:
        lease.feedback({}, status=429)
    assert limiter.max_concurrency == 5
    statistics = limiter.statistics()
    assert statistics.max_concurrency == 5
    assert [(c.limit, c.reason) for c in statistics.limit_history] == [
        (10, "initial"),
        (5, "drop"),
    ]
    assert "max_concurrency 5" in repr(limiter)


async def test_the_cap_bounds_this_processs_calls_in_flight_in_fifo_order(
    redis_backend: RecordingBackend,
) -> None:
    limiter = tb.Limiter(
        requests_per_minute=1000, max_concurrency=fixed(3), backend=redis_backend, key="cap"
    )
    flying = most = 0
    order: list[int] = []
    release = asyncio.Event()

    async def call(i: int) -> None:
        nonlocal flying, most
        async with limiter.acquire() as lease:
            order.append(i)
            flying += 1
            most = max(most, flying)
            await release.wait()
            flying -= 1
        if i >= 3:
            assert lease.queued
            assert lease.binding == "max_concurrency"

    tasks = []
    for i in range(10):
        tasks.append(asyncio.create_task(call(i)))
        await asyncio.sleep(0)  # (in this order)
    await until(lambda: flying == 3)
    statistics = limiter.statistics()
    assert (statistics.in_flight, statistics.waiters) == (3, 7)
    release.set()
    await asyncio.gather(*tasks)
    assert most == 3
    assert order == list(range(10))
    assert limiter.statistics().in_flight == 0
    assert limiter.statistics().counters.admitted == 10


async def test_each_process_has_its_own_cap_over_the_limits_they_share(
    backend_factory: Callable[..., RecordingBackend],
) -> None:
    # Two processes (two backends, two limiters on one key): each may hold its own cap
    # of calls, and the rate in Redis counts both.
    limiters = [
        tb.Limiter(
            requests_per_minute=5,
            max_concurrency=fixed(2),
            backend=backend_factory(),
            key="shared",
        )
        for _ in range(2)
    ]
    held: list[tb.Lease] = []
    release = asyncio.Event()

    async def hold(limiter: tb.Limiter) -> None:
        async with limiter.acquire() as lease:
            held.append(lease)
            await release.wait()

    tasks = [asyncio.create_task(hold(limiter)) for limiter in limiters for _ in range(2)]
    await until(lambda: len(held) == 4)
    assert [limiter.statistics().in_flight for limiter in limiters] == [2, 2]
    # A fifth call across both fits the rate but not the first process's cap...
    with pytest.raises(tb.AcquireTimeoutError):
        async with limiters[0].acquire(timeout=0.05):
            pass
    release.set()
    await asyncio.gather(*tasks)
    # ... and once the leases ended, the rate (5 per minute, shared) admits one more.
    async with limiters[1].acquire(timeout=1.0):
        pass
    with pytest.raises(tb.AcquireTimeoutError):
        async with limiters[0].acquire(timeout=0.05):
            pass


async def test_a_caller_that_leaves_while_the_rate_holds_it_frees_its_slot(
    redis_backend: RecordingBackend,
) -> None:
    limiter = tb.Limiter(
        requests_per_minute=1, max_concurrency=fixed(2), backend=redis_backend, key="leave"
    )
    async with limiter.acquire():
        pass  # the minute's one request
    # Through the gate, then waiting for the rate in Redis, past its deadline.
    with pytest.raises(tb.AcquireTimeoutError):
        async with limiter.acquire(timeout=0.1):
            pass
    waiting = asyncio.create_task(limiter.acquire().__aenter__())
    await until(lambda: limiter.statistics().waiters == 1)
    # It holds a slot of the cap, but no call is in flight yet.
    assert limiter.statistics().in_flight == 0
    assert limiter._gauges()[:2] == (1, 0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    statistics = limiter.statistics()
    assert (statistics.in_flight, statistics.waiters) == (0, 0)
    assert statistics.counters.timeouts == 1
    assert statistics.counters.cancellations == 1


async def test_a_timeout_covers_the_wait_at_the_cap_and_for_the_rate(
    redis_backend: RecordingBackend,
) -> None:
    limiter = tb.Limiter(
        requests_per_minute=1000, max_concurrency=fixed(1), backend=redis_backend, key="time"
    )
    loop = asyncio.get_running_loop()
    async with limiter.acquire():
        start = loop.time()
        with pytest.raises(tb.AcquireTimeoutError):
            async with limiter.acquire(timeout=0.2):
                pass
        assert loop.time() - start < WAIT
        assert limiter.statistics().in_flight == 1
    async with limiter.acquire(timeout=0) as lease:
        assert not lease.queued
    assert limiter.statistics().in_flight == 0


async def test_settle_and_feedback_reach_redis_through_the_gate(
    redis_backend: RecordingBackend,
) -> None:
    limiter = tb.Limiter(
        tokens_per_minute=100, max_concurrency=fixed(4), backend=redis_backend, key="settle"
    )
    async with limiter.acquire(tokens=100) as lease:
        lease.settle(tokens=10)  # 90 given back, in Redis
    admitted = False

    async def try_90() -> None:
        nonlocal admitted
        try:
            async with limiter.acquire(tokens=90, timeout=0):
                admitted = True
        except tb.AcquireTimeoutError:
            pass  # the settlement is sent in the background: not there yet

    while not admitted:
        await try_90()
        await asyncio.sleep(0.01)
        assert limiter.statistics().counters.timeouts < 500
    async with limiter.acquire(tokens=0) as lease:
        lease.feedback({"retry-after": "30"}, status=429)
    assert limiter.statistics().paused_until is not None


async def test_threads_and_the_loop_share_one_gate(redis_backend: RecordingBackend) -> None:
    limiter = tb.Limiter(
        requests_per_minute=10_000, max_concurrency=fixed(2), backend=redis_backend, key="threads"
    )
    lock = threading.Lock()
    flying = most = 0
    errors: list[BaseException] = []

    def enter() -> None:
        nonlocal flying, most
        with lock:
            flying += 1
            most = max(most, flying)

    def leave() -> None:
        nonlocal flying
        with lock:
            flying -= 1

    def worker() -> None:
        try:
            for _ in range(5):
                with limiter.acquire_blocking(timeout=WAIT):
                    enter()
                    threading.Event().wait(0.005)
                    leave()
        except BaseException as error:
            errors.append(error)

    async def task() -> None:
        for _ in range(5):
            async with limiter.acquire(timeout=WAIT):
                enter()
                await asyncio.sleep(0.005)
                leave()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    await asyncio.gather(*(task() for _ in range(4)))
    for thread in threads:
        await asyncio.to_thread(thread.join, WAIT)
    assert not errors
    assert 1 <= most <= 2
    statistics = limiter.statistics()
    assert statistics.counters.admitted == 40
    assert statistics.in_flight == 0


async def test_a_group_member_learns_its_own_cap_on_redis(redis_backend: RecordingBackend) -> None:
    group = tb.BucketGroup.from_dict(
        {"m": {"requests_per_minute": 100, "max_concurrency": {"adaptive": {"initial": 8}}}},
        backend=redis_backend,
        key="group",
    )
    member = group["m"]
    assert member.max_concurrency == 8
    async with member.acquire():
        assert member.statistics().in_flight == 1
    assert member.statistics().in_flight == 0


async def test_a_wait_at_the_cap_then_for_the_rate_counts_from_the_call(
    redis_backend: RecordingBackend,
) -> None:
    limiter = tb.Limiter(
        requests_per_second=2, max_concurrency=fixed(1), backend=redis_backend, key="both"
    )
    for _ in range(2):
        async with limiter.acquire():
            pass
    # One holds the only slot; the next waits for it, then for the rate (2 a second,
    # both used): its wait, and the limiter's last one, run from its call.
    loop = asyncio.get_running_loop()
    release = asyncio.Event()
    holder = await holding(limiter, release)
    start = loop.time()
    context = limiter.acquire(timeout=WAIT)
    later = asyncio.create_task(context.__aenter__())
    await until(lambda: limiter.statistics().waiters == 1)
    await asyncio.sleep(0.1)
    release.set()
    lease = await later
    waited = loop.time() - start
    assert lease.queued
    assert 0.1 <= lease.waited <= waited
    assert limiter.statistics().last_wait == lease.waited
    await context.__aexit__(None, None, None)
    await holder


async def test_a_timeout_that_ends_in_the_backend_names_the_callers_timeout(
    redis_backend: RecordingBackend,
) -> None:
    limiter = tb.Limiter(
        requests_per_minute=1, max_concurrency=fixed(1), backend=redis_backend, key="named"
    )
    release = asyncio.Event()
    holder = await holding(limiter, release)
    later = asyncio.create_task(limiter.acquire(timeout=0.3).__aenter__())
    await until(lambda: limiter.statistics().waiters == 1)
    release.set()
    with pytest.raises(tb.AcquireTimeoutError, match=r"within 0\.3 s"):
        await later
    await holder
    assert limiter.statistics().in_flight == 0


async def test_a_timeout_without_a_wait_at_the_cap_names_the_callers_timeout(
    redis_backend: RecordingBackend,
) -> None:
    limiter = tb.Limiter(
        requests_per_minute=1, max_concurrency=fixed(2), backend=redis_backend, key="plain"
    )
    async with limiter.acquire():
        pass
    with pytest.raises(tb.AcquireTimeoutError, match=r"within 0\.2 s$"):
        async with limiter.acquire(timeout=0.2):
            pass


async def test_a_thread_waiting_for_the_rate_is_a_waiter(redis_backend: RecordingBackend) -> None:
    limiter = tb.Limiter(
        requests_per_minute=1, max_concurrency=fixed(2), backend=redis_backend, key="thread"
    )
    async with limiter.acquire():
        pass  # the minute's one request

    def wait() -> None:
        with pytest.raises(tb.AcquireTimeoutError):
            limiter.acquire_blocking(timeout=1.0).__enter__()

    waiting = asyncio.ensure_future(asyncio.to_thread(wait))
    await until(lambda: limiter.statistics().waiters == 1)
    assert limiter.statistics().in_flight == 0
    assert limiter._gauges()[:2] == (1, 0)
    await waiting
    statistics = limiter.statistics()
    assert (statistics.waiters, statistics.in_flight) == (0, 0)
