"""Redis-backed limiters used from threads (``acquire_blocking``) and from an asyncio loop
at once: limits counted over all of them, the concurrency cap, timeouts and exceptions
that leave nothing behind, settlements that reach Redis, and a fork. Real Redis, real
time, bounded; no assertion on speed."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import TYPE_CHECKING

import pytest

import tokenbucket as tb

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.redis._support import RecordingBackend

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio]

THREADS = 16
RUN = 1.5  # seconds the workers keep acquiring
WAIT = 10.0  # the longest a test waits for anything: only reached on a failure


class Tally:
    """Admissions and calls in flight, counted across threads and the loop."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.tokens = 0.0
        self.units = 0
        self.flying = 0
        self.most_flying = 0
        self.errors: list[BaseException] = []

    def enter(self, tokens: float) -> None:
        with self.lock:
            self.requests += 1
            self.tokens += tokens
            self.flying += 1
            self.most_flying = max(self.most_flying, self.flying)

    def leave(self) -> None:
        with self.lock:
            self.flying -= 1

    def unit(self) -> None:
        with self.lock:
            self.units += 1


def start_threads(count: int, target: Callable[[], None], tally: Tally) -> list[threading.Thread]:
    def guarded() -> None:
        try:
            target()
        except BaseException as exc:  # reported by the test
            with tally.lock:
                tally.errors.append(exc)

    threads = [threading.Thread(target=guarded, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


async def join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        await asyncio.to_thread(thread.join, WAIT)
        assert not thread.is_alive()


async def test_threads_and_a_loop_share_one_limit(
    backend_factory: Callable[..., RecordingBackend],
) -> None:
    backend = backend_factory()
    limiter = tb.Limiter(
        requests_per_second=tb.per_second(40, burst=5),
        tokens_per_second=tb.per_second(400, burst=100),
        max_concurrency=4,
        backend=backend,
        key="limiter",
    )
    bucket = tb.TokenBucket(rate=30, capacity=3, backend=backend, key="bucket")
    tally = Tally()
    cost = 20.0
    start = time.monotonic()
    end = start + RUN

    def worker() -> None:
        i = 0
        while time.monotonic() < end:
            i += 1
            try:
                if i % 2:
                    with limiter.acquire_blocking(tokens=cost, timeout=1.0):
                        tally.enter(cost)
                        time.sleep(0.002)
                        tally.leave()
                else:
                    bucket.acquire_blocking(timeout=1.0)
                    tally.unit()
            except tb.AcquireTimeoutError:
                pass

    async def task() -> None:
        i = 0
        while time.monotonic() < end:
            i += 1
            try:
                if i % 2:
                    async with limiter.acquire(tokens=cost, timeout=1.0):
                        tally.enter(cost)
                        await asyncio.sleep(0.002)
                        tally.leave()
                else:
                    await bucket.acquire(timeout=1.0)
                    tally.unit()
            except tb.AcquireTimeoutError:
                pass

    threads = start_threads(THREADS, worker, tally)
    await asyncio.gather(*(task() for _ in range(4)))
    await join(threads)
    elapsed = time.monotonic() - start
    assert not tally.errors
    assert tally.requests > 0
    assert tally.units > 0
    # Every admission was charged in Redis within the run, which began with full buckets.
    assert tally.requests <= 5 + 40 * elapsed
    assert tally.tokens <= 100 + 400 * elapsed
    assert tally.units <= 3 + 30 * elapsed
    assert tally.most_flying <= 4
    assert tally.flying == 0
    assert limiter.statistics().in_flight == 0
    assert limiter._blocking_store().statistics().in_flight == 0


async def test_a_timeout_in_a_thread_takes_nothing(
    backend_factory: Callable[..., RecordingBackend],
) -> None:
    backend = backend_factory()
    limiter = tb.Limiter(
        tokens_per_minute=tb.per_minute(100, burst=100),
        max_concurrency=1,
        backend=backend,
        key="limiter",
    )
    holding = threading.Event()
    done = threading.Event()
    outcome: list[str] = []

    def holder() -> None:
        with limiter.acquire_blocking(tokens=60, timeout=WAIT):
            holding.set()
            done.wait(WAIT)

    def latecomer() -> None:
        holding.wait(WAIT)
        try:  # no slot within the timeout (and not enough tokens either)
            with limiter.acquire_blocking(tokens=50, timeout=0.2):
                outcome.append("granted")
        except tb.AcquireTimeoutError:
            outcome.append("timed out")
        try:  # not enough tokens for a long time: refused at once
            with limiter.acquire_blocking(tokens=50, timeout=0):
                outcome.append("granted")
        except tb.AcquireTimeoutError:
            outcome.append("timed out")

    tally = Tally()
    threads = start_threads(1, holder, tally) + start_threads(1, latecomer, tally)
    await join(threads[1:])
    done.set()
    await join(threads)
    assert not tally.errors
    assert outcome == ["timed out", "timed out"]
    # The slot is free again and the 40 tokens left were not touched by the latecomer.
    async with limiter.acquire(tokens=40, timeout=0):
        pass


async def test_a_settlement_from_a_thread_reaches_redis(
    backend_factory: Callable[..., RecordingBackend],
) -> None:
    backend = backend_factory()
    limiter = tb.Limiter(
        tokens_per_minute=tb.per_minute(100, burst=100), backend=backend, key="limiter"
    )

    def settle() -> None:
        with limiter.acquire_blocking(tokens=100, timeout=WAIT) as lease:
            lease.settle(tokens=10)

    await asyncio.to_thread(settle)
    # The bucket refills 100 a minute: 85 within a few seconds only if 90 came back.
    deadline = time.monotonic() + 3.0
    while True:
        try:
            async with limiter.acquire(tokens=85, timeout=0):
                break
        except tb.AcquireTimeoutError:
            assert time.monotonic() < deadline, "the settlement did not reach Redis"
            await asyncio.sleep(0.05)


async def test_an_exception_in_the_block_releases_the_slot(
    backend_factory: Callable[..., RecordingBackend],
) -> None:
    backend = backend_factory()
    limiter = tb.Limiter(max_concurrency=1, backend=backend, key="limiter")

    def fail() -> None:
        with limiter.acquire_blocking(timeout=WAIT):
            raise ValueError("in the block")

    with pytest.raises(ValueError, match="in the block"):
        await asyncio.to_thread(fail)

    def again() -> None:
        with limiter.acquire_blocking(timeout=0):
            pass

    await asyncio.to_thread(again)
    async with limiter.acquire(timeout=0):
        pass


def wait_for_child(pid: int) -> int:
    """The child's wait status, within ``WAIT``."""
    deadline = time.monotonic() + WAIT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        assert time.monotonic() < deadline, "the child did not finish"
        time.sleep(0.02)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
async def test_a_child_process_after_fork_acquires_through_a_portal_of_its_own(
    redis_url: str, prefix: str, admin: object
) -> None:
    backend = tb.RedisBackend(redis_url, prefix=prefix)
    limiter = tb.Limiter(requests_per_second=1000, max_concurrency=2, backend=backend, key="l")
    bucket = tb.TokenBucket(rate=1000, capacity=10, backend=backend, key="b")

    def use() -> None:
        with limiter.acquire_blocking(timeout=WAIT):
            pass
        bucket.acquire_blocking(timeout=WAIT)

    await asyncio.to_thread(use)  # the portal runs in the parent
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            use()
            code = 0
        finally:
            os._exit(code)
    status = await asyncio.to_thread(wait_for_child, pid)
    assert os.waitstatus_to_exitcode(status) == 0
    await asyncio.to_thread(use)  # and the parent's portal still serves it
    await backend.aclose()


async def test_the_portal_cancels_what_a_thread_gives_up_and_raises_what_it_raises() -> None:
    from tokenbucket import _portal

    cancelled = threading.Event()
    undone: list[int] = []

    async def slow() -> int:
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1

    async def fails() -> None:
        raise ValueError("in the portal")

    def give_up() -> None:
        with pytest.raises(tb.AcquireTimeoutError):
            _portal.run(slow(), 0.05, undone.append)

    await asyncio.to_thread(give_up)
    assert await asyncio.to_thread(cancelled.wait, WAIT)
    assert not undone
    with pytest.raises(ValueError, match="in the portal"):
        await asyncio.to_thread(_portal.run, fails())
    assert await asyncio.to_thread(_portal.call, len, "abc") == 3


async def test_a_pause_from_a_thread_reaches_redis(
    backend_factory: Callable[..., RecordingBackend],
) -> None:
    backend = backend_factory()
    limiter = tb.Limiter(requests_per_second=1000, backend=backend, key="limiter")
    await asyncio.to_thread(limiter.pause, 30)  # a thread without an event loop
    # Sent in the background, as from a loop: it reaches Redis within a round trip or so.
    deadline = time.monotonic() + 5
    while True:
        try:
            async with limiter.acquire(timeout=0):
                pass
        except tb.AcquireTimeoutError:
            break  # paused, for this process's loop too: the pause is in Redis
        assert time.monotonic() < deadline, "the pause never reached Redis"
        await asyncio.sleep(0.01)


async def test_a_threads_wait_is_told_in_its_thread_never_in_the_portal(
    backend_factory: Callable[..., RecordingBackend],
) -> None:
    backend = backend_factory()
    limiter = tb.Limiter(limits={"units": tb.Rate(10, 1.0, burst=1)}, backend=backend, key="told")
    seen: list[tuple[str, str]] = []
    limiter.subscribe(lambda event: seen.append((event.kind, threading.current_thread().name)))
    leases: list[tb.Lease] = []

    def work() -> None:
        for _ in range(2):
            with limiter.acquire_blocking(units=1, timeout=WAIT) as lease:
                leases.append(lease)

    thread = threading.Thread(target=work, name="worker")
    thread.start()
    await asyncio.to_thread(thread.join, WAIT)
    assert seen == [("grant", "worker"), ("wait", "worker"), ("grant", "worker")]
    assert 0.05 <= leases[1].waited <= 0.1 + 0.5
    counters = limiter.statistics().counters
    assert (counters.admitted, counters.waited) == (2, 1)
