"""How a limiter becomes shared: the loop it serves makes the switch, and no use from
anywhere can deadlock it, corrupt it or lose a grant on the way (two loops using each
other's limiters at once, a finished trio run, a closed loop with tasks still parked, a
task cancelled while its loop is busy, a fork)."""

from __future__ import annotations

import asyncio
import functools
import threading
import time

import trio

import tokenbucket as tb
from tokenbucket._threads import SharedQueue

from ._support import in_child, recorded
from .test_shared import WAIT, in_thread, until


def test_two_loops_using_each_others_limiters_at_once_do_not_deadlock() -> None:
    for _ in range(20):
        x = tb.TokenBucket(rate=100, capacity=100)
        y = tb.TokenBucket(rate=100, capacity=100)
        bound = threading.Barrier(2)
        done: list[str] = []
        threads = [
            in_thread(functools.partial(_cross, x, y, bound, done, "a")),
            in_thread(functools.partial(_cross, y, x, bound, done, "b")),
        ]
        for thread in threads:
            thread.join(WAIT)
        assert sorted(done) == ["a", "b"]
        assert isinstance(x._waiters, SharedQueue)
        assert isinstance(y._waiters, SharedQueue)


def _cross(
    first: tb.TokenBucket,
    second: tb.TokenBucket,
    bound: threading.Barrier,
    done: list[str],
    name: str,
) -> None:
    async def main() -> None:
        await first.acquire()  # binds `first` to this loop
        bound.wait(WAIT)
        await second.acquire()  # the other loop's: it shares it
        done.append(name)

    asyncio.run(main())


def test_a_limiter_of_a_finished_trio_run_serves_other_threads() -> None:
    bucket = tb.TokenBucket(rate=100, capacity=10)

    async def use() -> None:
        await bucket.acquire()

    trio.run(use)
    results: list[str] = []

    def blocking() -> None:
        bucket.acquire_blocking(timeout=WAIT)
        results.append("thread")

    in_thread(blocking).join(WAIT)
    in_thread(lambda: asyncio.run(bucket.acquire(timeout=WAIT))).join(WAIT)
    assert results == ["thread"]
    available = bucket.statistics().available
    assert available is not None
    assert available < 9  # both took their unit


def test_tasks_left_in_a_closed_loop_take_nothing_when_the_limiter_is_shared() -> None:
    bucket = tb.TokenBucket(rate=20, capacity=2)
    log = recorded(bucket)
    loop = asyncio.new_event_loop()
    parked: list[asyncio.Task[None]] = []

    async def park() -> None:
        await bucket.acquire(2)
        parked.extend(loop.create_task(bucket.acquire(1)) for _ in range(2))
        await asyncio.sleep(0)

    loop.run_until_complete(park())
    assert bucket.statistics().waiters == 2
    loop.close()  # with its two tasks still parked: they can never run
    bucket.acquire_blocking(2, timeout=WAIT)  # the whole bucket, at its refill
    assert log.amounts == [2.0, 2.0]
    assert bucket.statistics().waiters == 0


def test_a_task_cancelled_while_its_loop_is_busy_delays_no_one() -> None:
    bucket = tb.TokenBucket(rate=5, capacity=1)
    log = recorded(bucket)
    granted: list[str] = []

    async def main() -> None:
        bucket.acquire_blocking()  # shared, and empty
        task = asyncio.create_task(bucket.acquire())  # the head
        await asyncio.sleep(0)

        def blocking() -> None:
            bucket.acquire_blocking(timeout=WAIT)
            granted.append("W")

        waiter = in_thread(blocking)
        await asyncio.to_thread(until, lambda: bucket.statistics().waiters == 2)
        task.cancel()  # gone, though its task cannot run yet:
        await asyncio.to_thread(waiter.join, WAIT)  # the thread gets the next unit
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert granted == ["W"]
    assert log.amounts == [1.0, 1.0]  # the cancelled task was never granted
    assert log.refunds == []


def test_a_child_process_after_fork_starts_with_nobody_waiting() -> None:
    bucket = tb.TokenBucket(rate=50, capacity=1)
    bucket.acquire_blocking()
    parents = [in_thread(lambda: bucket.acquire_blocking(timeout=WAIT)) for _ in range(3)]
    until(lambda: bucket.statistics().waiters == 3)

    def in_the_child() -> None:  # its waiters' threads stayed in the parent
        start = time.monotonic()
        bucket.acquire_blocking(timeout=2.0)
        assert time.monotonic() - start < 1.0

    code = in_child(in_the_child)
    for thread in parents:
        thread.join(WAIT)
    assert code == 0


def test_two_loops_pausing_each_others_limiters_at_once_do_not_deadlock() -> None:
    first = tb.Limiter(requests_per_second=100)
    second = tb.Limiter(requests_per_second=100)
    barrier = threading.Barrier(2)
    done: list[str] = []

    def run(mine: tb.Limiter, other: tb.Limiter, name: str) -> None:
        async def main() -> None:
            async with mine.acquire():  # binds `mine` to this loop
                pass
            barrier.wait(WAIT)
            other.pause(0.001)  # the other loop runs it: this loop is not blocked
            done.append(name)
            await asyncio.sleep(0.05)

        asyncio.run(main())

    threads = [
        in_thread(functools.partial(run, first, second, "a")),
        in_thread(functools.partial(run, second, first, "b")),
    ]
    for thread in threads:
        thread.join(WAIT)
    assert sorted(done) == ["a", "b"]
    assert first.statistics().paused_until is not None


def test_a_limiter_of_an_idle_loop_left_open_serves_a_thread() -> None:
    limiter = tb.Limiter(requests_per_second=100)
    loop = asyncio.new_event_loop()
    try:

        async def use() -> None:
            async with limiter.acquire():
                pass

        loop.run_until_complete(use())  # bound to a loop that stays open, and idle
        done: list[bool] = []

        def blocking() -> None:
            with limiter.acquire_blocking(timeout=WAIT):
                done.append(True)

        in_thread(blocking).join(WAIT)
        assert done == [True]
    finally:
        loop.close()


def test_a_task_of_another_loop_gives_up_at_its_timeout_while_the_owner_is_busy() -> None:
    bucket = tb.TokenBucket(rate=100, capacity=10)
    started, release = threading.Event(), threading.Event()
    outcome: list[str] = []
    waited: list[float] = []

    async def owner() -> None:
        await bucket.acquire()  # binds the bucket to this loop
        started.set()
        release.wait(WAIT)  # then this loop runs nothing for a while

    async def other() -> None:
        start = time.monotonic()
        try:
            await bucket.acquire(timeout=0.2)
        except tb.AcquireTimeoutError:
            outcome.append("timed out")
            waited.append(time.monotonic() - start)

    owner_thread = in_thread(lambda: asyncio.run(owner()))
    started.wait(WAIT)
    in_thread(lambda: asyncio.run(other())).join(WAIT)
    release.set()
    owner_thread.join(WAIT)
    assert outcome == ["timed out"]
    # at its own timeout, not when the owner is free again (after WAIT seconds)
    assert 0.2 <= waited[0] < WAIT / 2


def test_asking_from_another_thread_whether_a_limiter_is_at_rest_changes_nothing() -> None:
    window = tb.Limiter(requests_per_second=1_000)
    running, stop = threading.Event(), threading.Event()

    async def owner() -> None:
        async with window.acquire():
            pass
        running.set()
        while not stop.is_set():
            async with window.acquire():
                pass
            await asyncio.sleep(0)

    thread = in_thread(lambda: asyncio.run(owner()))
    running.wait(WAIT)
    assert not window._at_rest()  # in use by a loop running in another thread
    stop.set()
    thread.join(WAIT)
    assert not isinstance(window._store._waiters, SharedQueue)  # type: ignore[attr-defined]


def test_a_child_process_can_use_a_limiter_bound_to_a_loop_of_the_parent() -> None:
    bucket = tb.TokenBucket(rate=100, capacity=10)
    with_loop = threading.Event()
    stop = threading.Event()

    async def owner() -> None:
        await bucket.acquire()
        with_loop.set()
        while not stop.is_set():
            await asyncio.sleep(0.01)

    thread = in_thread(lambda: asyncio.run(owner()))
    with_loop.wait(WAIT)
    # In the child, the parent's loop thread is not there.
    code = in_child(lambda: bucket.acquire_blocking(timeout=2.0))
    stop.set()
    thread.join(WAIT)
    assert code == 0


def test_statistics_read_by_another_thread_while_the_loop_runs_are_consistent() -> None:
    window = tb.SlidingWindow(limit=1_000_000, window=0.01)
    limiter = tb.Limiter(requests_per_second=1_000_000)
    running, stop = threading.Event(), threading.Event()

    async def owner() -> None:
        while not stop.is_set():
            await window.acquire()
            async with limiter.acquire():
                pass
            running.set()
            await asyncio.sleep(0)

    thread = in_thread(lambda: asyncio.run(owner()))
    running.wait(WAIT)
    for _ in range(200):  # as a dashboard would, while the loop takes
        stats = window.statistics()
        assert stats.available is not None
        assert 0 <= stats.available <= 1_000_000
        assert 0 <= limiter.statistics().available["requests"] <= 1_000_000
    stop.set()
    thread.join(WAIT)
    assert isinstance(window._waiters, SharedQueue)  # made consistent by sharing it
