"""One limiter used at once by threads (``acquire_blocking``) and by asyncio loops running
in other threads: G1 (counted over all of them), FIFO across them, timeouts, exceptions
and cancellation that leave nothing behind. Real threads and real time, bounded."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import pytest

import tokenbucket as tb
from tokenbucket._threads import SharedQueue

from ._support import Log, bucket_conforms, recorded, window_conforms

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator

WAIT = 10.0  # the longest any test waits for anything: only reached on a failure


@contextlib.contextmanager
def loop_in_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An asyncio loop running forever in a thread of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="loop")
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        loop.close()


def submit(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> Future[Any]:
    return asyncio.run_coroutine_threadsafe(coro, loop)


def in_thread(target: Callable[[], object], name: str = "worker") -> threading.Thread:
    thread = threading.Thread(target=target, name=name)
    thread.start()
    return thread


def until(condition: Callable[[], bool]) -> None:
    """Wait (in real time, bounded) until ``condition()`` holds."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def waiting(limiter: tb.TokenBucket | tb.SlidingWindow, count: int) -> bool:
    return limiter.statistics().waiters == count


def make(kind: str, rate: float, capacity: float) -> tb.TokenBucket | tb.SlidingWindow:
    if kind == "bucket":
        return tb.TokenBucket(rate=rate, capacity=capacity)
    return tb.SlidingWindow(limit=capacity, window=capacity / rate)


def conforms(kind: str, log: Log, rate: float, capacity: float) -> None:
    if kind == "bucket":
        bucket_conforms(log, rate, capacity)
    else:
        window_conforms(log, capacity, capacity / rate)


@pytest.mark.parametrize("kind", ["bucket", "window"])
def test_threads_and_loops_share_one_limit(kind: str) -> None:
    rate, capacity = 1000.0, 5.0
    limiter = make(kind, rate, capacity)
    log = recorded(limiter)
    threads, per_thread, tasks, per_task = 16, 12, 4, 12
    errors: list[BaseException] = []

    def blocking() -> None:
        try:
            for _ in range(per_thread):
                limiter.acquire_blocking(1, timeout=WAIT)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    async def tasks_of_a_loop() -> None:
        async def one() -> None:
            for _ in range(per_task):
                await limiter.acquire(1, timeout=WAIT)

        await asyncio.gather(*(one() for _ in range(tasks)))

    with loop_in_thread() as first, loop_in_thread() as second:
        futures = [submit(first, tasks_of_a_loop()), submit(second, tasks_of_a_loop())]
        workers = [in_thread(blocking, f"thread {i}") for i in range(threads)]
        for worker in workers:
            worker.join(WAIT)
        for future in futures:
            future.result(WAIT)
    assert not errors
    expected = threads * per_thread + 2 * tasks * per_task
    assert log.amounts == [1.0] * expected  # each granted once, nothing more
    conforms(kind, log, rate, capacity)
    stats = limiter.statistics()
    assert (stats.waiters, stats.queued, stats.next_wakeup) == (0, 0.0, None)
    assert isinstance(limiter._waiters, SharedQueue)


def test_fifo_across_threads_and_loops() -> None:
    bucket = tb.TokenBucket(rate=50, capacity=1)
    log = recorded(bucket)
    assert bucket.try_acquire(1)  # from this thread: the bucket is shared, and empty
    log.closed = True  # nothing is granted until every waiter has arrived
    done: list[object] = []
    with loop_in_thread() as first, loop_in_thread() as second:
        for i in range(12):
            amount = 0.5 + i / 100  # tells the waiters apart in the log
            if i % 3 == 0:
                block = functools.partial(bucket.acquire_blocking, amount, timeout=WAIT)
                done.append(in_thread(block))
            else:
                loop = first if i % 3 == 1 else second
                done.append(submit(loop, bucket.acquire(amount, timeout=WAIT)))
            until(functools.partial(waiting, bucket, i + 1))
        log.closed = False
        bucket._waiters.kick()
        for item in done:
            if isinstance(item, threading.Thread):
                item.join(WAIT)
            else:
                assert isinstance(item, Future)
                item.result(WAIT)
    assert log.amounts == [1.0] + [0.5 + i / 100 for i in range(12)]


def test_a_thread_that_times_out_takes_nothing_and_delays_no_one() -> None:
    bucket = tb.TokenBucket(rate=2, capacity=1)
    log = recorded(bucket)
    assert bucket.try_acquire(1)
    failures: list[BaseException] = []

    def head() -> None:
        try:
            bucket.acquire_blocking(1, timeout=0.05)
        except tb.AcquireTimeoutError as error:
            failures.append(error)

    first = in_thread(head)
    until(lambda: bucket.statistics().waiters == 1)
    second = in_thread(lambda: bucket.acquire_blocking(0.01, timeout=WAIT))
    first.join(WAIT)
    second.join(WAIT)
    assert len(failures) == 1
    assert "timed out" in str(failures[0])
    assert log.amounts == [1.0, 0.01]  # the one behind it came next, at once
    assert bucket.statistics().waiters == 0
    with pytest.raises(tb.AcquireTimeoutError):
        bucket.acquire_blocking(1, timeout=0)


class Interrupted(Exception):
    pass


def test_an_exception_in_a_blocked_thread_takes_nothing() -> None:
    bucket = tb.TokenBucket(rate=0.001, capacity=1)
    log = recorded(bucket)
    assert bucket.try_acquire(1)

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Interrupted):
            bucket.acquire_blocking(1)  # this (the main) thread: a signal interrupts it
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    stats = bucket.statistics()
    assert (stats.waiters, stats.queued) == (0, 0.0)
    assert log.amounts == [1.0]


def test_a_cancelled_task_in_another_loop_takes_nothing() -> None:
    bucket = tb.TokenBucket(rate=0.001, capacity=1)
    log = recorded(bucket)
    assert bucket.try_acquire(1)
    with loop_in_thread() as loop:
        future = submit(loop, bucket.acquire(1))
        until(lambda: bucket.statistics().waiters == 1)
        future.cancel()
        until(lambda: bucket.statistics().waiters == 0)
    assert log.amounts == [1.0]


def test_a_grant_given_back_by_a_cancelled_task_goes_to_the_next() -> None:
    bucket = tb.TokenBucket(rate=5, capacity=1)
    log = recorded(bucket)
    assert bucket.try_acquire(1)
    with loop_in_thread() as loop:
        future = submit(loop, bucket.acquire(0.5))
        until(lambda: bucket.statistics().waiters == 1)
        entered, blocked = threading.Event(), threading.Event()

        def block() -> None:
            entered.set()
            blocked.wait(WAIT)

        loop.call_soon_threadsafe(block)  # the loop runs nothing until told
        entered.wait(WAIT)
        until(lambda: len(log.grants) == 2)  # granted, but its task cannot run yet
        waiter = in_thread(lambda: bucket.acquire_blocking(1, timeout=WAIT))
        until(lambda: bucket.statistics().waiters == 1)
        future.cancel()  # the task is cancelled before it runs again
        blocked.set()
        waiter.join(WAIT)
    assert log.amounts == [1.0, 0.5, 1.0]
    assert log.refunds == [0.5]  # given back, and the next waiter had it


def test_with_blocks_for_one_unit() -> None:
    window = tb.SlidingWindow(limit=2, window=60)
    log = recorded(window)
    with window:
        pass
    with window:
        pass
    assert log.amounts == [1.0, 1.0]
    with pytest.raises(tb.AcquireTimeoutError):
        window.acquire_blocking(timeout=0.01)


def test_a_task_of_a_loop_started_from_a_worker_thread_shares_the_limiter() -> None:
    # asyncio.to_thread copies the caller's context into the worker, and a loop started
    # there copies it into its tasks: they must not take the owner loop's unlocked path.
    bucket = tb.TokenBucket(rate=1000, capacity=10)
    log = recorded(bucket)

    async def elsewhere() -> None:
        for _ in range(3):
            await bucket.acquire()

    async def main() -> None:
        await bucket.acquire()
        assert not isinstance(bucket._waiters, SharedQueue)
        await asyncio.to_thread(asyncio.run, elsewhere())
        assert isinstance(bucket._waiters, SharedQueue)
        await bucket.acquire()

    asyncio.run(main())
    assert log.amounts == [1.0] * 5


def test_a_loop_with_its_own_clock_and_waiters_is_not_shared() -> None:
    class Shifted(asyncio.SelectorEventLoop):
        def time(self) -> float:
            return time.monotonic() + 1000.0

    bucket = tb.TokenBucket(rate=0.001, capacity=1)
    loop = Shifted()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        assert submit(loop, _take_one(bucket)).result(WAIT)
        future = submit(loop, bucket.acquire(1, timeout=WAIT))
        until(lambda: bucket.statistics().waiters == 1)
        with pytest.raises(RuntimeError, match=r"time\.monotonic"):
            bucket.acquire_blocking(1, timeout=WAIT)
        future.cancel()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        loop.close()


async def _take_one(bucket: tb.TokenBucket) -> bool:
    return bucket.try_acquire(1)


def test_statistics_of_a_shared_limiter() -> None:
    bucket = tb.TokenBucket(rate=10, capacity=2)
    bucket.acquire_blocking(2)
    stats = bucket.statistics()
    assert stats.available is not None
    assert 0.0 <= stats.available < 0.5
    assert stats.waiters == 0
    waiter = in_thread(lambda: bucket.acquire_blocking(1, timeout=WAIT))
    until(lambda: bucket.statistics().waiters == 1)
    stats = bucket.statistics()
    assert stats.queued == 1.0
    assert stats.next_wakeup is not None
    assert stats.next_wakeup > time.monotonic() - 1.0
    waiter.join(WAIT)
    assert "waiters=0" in repr(bucket)


def test_a_trio_run_an_asyncio_loop_and_threads_share_one_limit() -> None:
    import trio

    rate, capacity = 1000.0, 5.0
    bucket = tb.TokenBucket(rate=rate, capacity=capacity)
    log = recorded(bucket)
    bucket.acquire_blocking(5)  # shared from the start

    async def trio_tasks() -> None:
        async def one() -> None:
            for _ in range(10):
                await bucket.acquire(1, timeout=WAIT)

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)

    def blocking() -> None:
        for _ in range(10):
            bucket.acquire_blocking(1, timeout=WAIT)

    with loop_in_thread() as loop:
        future = submit(loop, _asyncio_tasks(bucket, 4, 10))
        runs = [in_thread(lambda: trio.run(trio_tasks), "trio")]
        runs += [in_thread(blocking, f"thread {i}") for i in range(4)]
        for thread in runs:
            thread.join(WAIT)
        future.result(WAIT)
    assert log.amounts == [5.0] + [1.0] * 120
    bucket_conforms(log, rate, capacity)
    assert bucket.statistics().waiters == 0


async def _asyncio_tasks(bucket: tb.TokenBucket, tasks: int, each: int) -> None:
    async def one() -> None:
        for _ in range(each):
            await bucket.acquire(1, timeout=WAIT)

    await asyncio.gather(*(one() for _ in range(tasks)))
