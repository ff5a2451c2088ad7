"""A Limiter (and a BucketGroup's limiters) used at once by threads
(``acquire_blocking``) and asyncio loops in other threads: every dimension and the
concurrency cap hold over all of them, FIFO across them, and a thread that times out,
is interrupted or raises inside its block leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import signal
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

import tokenbucket as tb
from tokenbucket._threads import SharedQueue

from .test_shared import WAIT, in_thread, loop_in_thread, submit, until


class MultiLog:
    """Every grant a Limiter's state made (instant, amounts by dimension), in order."""

    def __init__(self) -> None:
        self.grants: list[tuple[float, tuple[float, ...]]] = []
        self.closed = False


class _RecordingMulti:
    def __init__(self, multi: Any, log: MultiLog) -> None:
        self._multi = multi
        self._log = log

    def try_take(self, request: Any, now: float) -> bool:
        if self._log.closed:
            return False
        granted = bool(self._multi.try_take(request, now))
        if granted:
            self._log.grants.append((now, tuple(request.amounts)))
        return granted

    def ready_at(self, request: Any, now: float) -> float:
        return math.inf if self._log.closed else float(self._multi.ready_at(request, now))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._multi, name)


def recorded(limiter: tb.Limiter) -> MultiLog:
    log = MultiLog()
    store: Any = limiter._store
    proxy = _RecordingMulti(store._multi, log)
    store._multi = proxy
    store._waiters.state = proxy
    return log


def conforms(log: MultiLog, dim: int, rate: float, burst: float) -> None:
    grants = sorted((t, amounts[dim]) for t, amounts in log.grants)
    for i in range(len(grants)):
        total = 0.0
        for j in range(i, len(grants)):
            total += grants[j][1]
            assert total <= burst + rate * (grants[j][0] - grants[i][0]) + 1e-9 * burst


def test_threads_and_loops_share_every_dimension_and_the_cap() -> None:
    limiter = tb.Limiter(
        requests_per_second=tb.Rate(800, 1, burst=4),
        tokens_per_second=tb.Rate(80_000, 1, burst=1_000),
        max_concurrency=3,
    )
    log = recorded(limiter)
    held = [0]
    peak = [0]
    count = threading.Lock()

    def holding() -> contextlib.AbstractContextManager[None]:
        @contextlib.contextmanager
        def inner() -> Any:
            with count:
                held[0] += 1
                peak[0] = max(peak[0], held[0])
            yield
            with count:
                held[0] -= 1

        return inner()

    def blocking(i: int) -> None:
        with limiter.acquire_blocking(tokens=100, timeout=WAIT) as lease, holding():
            lease.settle(tokens=100)  # what it reserved: the log stays the usage

    async def tasks() -> None:
        async def one() -> None:
            async with limiter.acquire(tokens=100, timeout=WAIT):
                with holding():
                    await asyncio.sleep(0)

        await asyncio.gather(*(one() for _ in range(40)))

    with loop_in_thread() as first, loop_in_thread() as second:
        futures = [submit(first, tasks()), submit(second, tasks())]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(blocking, range(120)))
        for future in futures:
            future.result(WAIT)
    assert len(log.grants) == 200
    assert peak[0] <= 3
    requests, tokens = limiter.dimensions.index("requests"), limiter.dimensions.index("tokens")
    conforms(log, requests, 800, 4)
    conforms(log, tokens, 80_000, 1_000)
    stats = limiter.statistics()
    assert (stats.in_flight, stats.waiters) == (0, 0)
    assert isinstance(limiter._store._waiters, SharedQueue)  # type: ignore[attr-defined]
    assert not limiter._leases


def test_fifo_across_threads_and_loops() -> None:
    limiter = tb.Limiter(tokens_per_second=tb.Rate(1000, 1, burst=100))
    log = recorded(limiter)
    log.closed = True
    done: list[object] = []
    with loop_in_thread() as loop:
        for i in range(9):
            tokens = 10 + i
            if i % 2 == 0:

                def enter(tokens: float = tokens) -> None:
                    with limiter.acquire_blocking(tokens=tokens, timeout=WAIT):
                        pass

                done.append(in_thread(enter))
            else:
                done.append(submit(loop, _hold(limiter, tokens)))
            until(functools.partial(_waiting, limiter, i + 1))
        log.closed = False
        limiter._store._waiters.kick()  # type: ignore[attr-defined]
        for item in done:
            if isinstance(item, threading.Thread):
                item.join(WAIT)
            else:
                assert isinstance(item, Future)
                item.result(WAIT)
    assert [amounts[0] for _, amounts in log.grants] == [10.0 + i for i in range(9)]


def _waiting(limiter: tb.Limiter, count: int) -> bool:
    return limiter.statistics().waiters == count


async def _hold(limiter: tb.Limiter, tokens: float) -> None:
    async with limiter.acquire(tokens=tokens, timeout=WAIT):
        pass


def test_an_exception_inside_the_block_releases_the_slot() -> None:
    limiter = tb.Limiter(max_concurrency=1)

    def fail() -> None:
        with limiter.acquire_blocking(timeout=WAIT):
            raise KeyError("boom")

    with pytest.raises(KeyError):
        fail()
    assert limiter.statistics().in_flight == 0
    with limiter.acquire_blocking(timeout=0) as lease:
        assert limiter.statistics().in_flight == 1
        with pytest.raises(tb.AcquireTimeoutError), limiter.acquire_blocking(timeout=0.01):
            pass
    assert repr(lease).endswith("ended>")
    assert not limiter._leases


def test_a_thread_that_times_out_or_is_interrupted_takes_nothing() -> None:
    limiter = tb.Limiter(tokens_per_second=tb.Rate(0.001, 1, burst=10))
    log = recorded(limiter)
    with limiter.acquire_blocking(tokens=10):
        pass
    with pytest.raises(tb.AcquireTimeoutError), limiter.acquire_blocking(tokens=1, timeout=0.02):
        pass

    class Interrupted(Exception):
        pass

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Interrupted), limiter.acquire_blocking(tokens=1):
            pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    stats = limiter.statistics()
    assert (stats.waiters, stats.in_flight) == (0, 0)
    assert len(log.grants) == 1
    assert not limiter._leases


def test_settle_and_feedback_from_a_thread() -> None:
    limiter = tb.Limiter(tokens_per_minute=1_000)
    with limiter.acquire_blocking(tokens=600) as lease:
        lease.settle(tokens=100)
        lease.feedback({"x-ratelimit-remaining-tokens": "800"}, status=200)
    available = limiter.statistics().available["tokens"]
    assert 800 <= available <= 801  # settled back to 900, then told 800 are left


def test_a_group_makes_one_limiter_per_name_across_threads() -> None:
    group = tb.BucketGroup(default={"requests_per_second": 1000})
    barrier = threading.Barrier(16)

    def lookup(i: int) -> tb.Limiter:
        barrier.wait(WAIT)
        with group.acquire_blocking("new", timeout=WAIT):
            return group["new"]

    with ThreadPoolExecutor(16) as pool:
        limiters = list(pool.map(lookup, range(16)))
    assert all(limiter is limiters[0] for limiter in limiters)


def test_a_limiter_with_a_backend_that_cannot_serve_threads_says_so() -> None:
    class Elsewhere:  # a backend without for_threads
        def open(self, spec: object) -> object:
            return tb.RedisBackend("redis://127.0.0.1:1").open(spec)  # type: ignore[arg-type]

    limiter = tb.Limiter(requests_per_second=10, backend=Elsewhere(), key="blocking")  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError, match="threads"), limiter.acquire_blocking():
        pass
