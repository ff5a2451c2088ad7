"""The counters of a Limiter used at once by threads and a loop in another thread: exact
(no update lost to a race), in the GIL's absence too."""

from __future__ import annotations

import asyncio
import threading

import pytest

import tokenbucket as tb

from .test_shared import WAIT, loop_in_thread, submit

THREADS = 6
EACH = 300


def test_counts_are_exact_under_threads_and_a_loop() -> None:
    # Fast enough that most grants come at once, tight enough that some wait, and a cap
    # that makes threads queue.
    limiter = tb.Limiter(
        requests_per_second=tb.per_second(20_000, burst=50),
        tokens_per_second=tb.per_second(10**7, burst=10**6),
        max_concurrency=3,
    )
    start = threading.Barrier(THREADS)
    timed_out: list[int] = []

    def call(k: int) -> bool:
        """One call; whether it timed out (every 50th may not wait)."""
        try:
            with limiter.acquire_blocking(tokens=10, timeout=None if k % 50 else 0) as lease:
                lease.settle(tokens=4 if k % 2 else 13)
        except tb.AcquireTimeoutError:
            return True
        return False

    async def call_async(k: int) -> bool:
        try:
            async with limiter.acquire(tokens=10, timeout=None if k % 50 else 0) as lease:
                lease.settle(tokens=4 if k % 2 else 13)
        except tb.AcquireTimeoutError:
            return True
        return False

    def work(index: int) -> None:
        start.wait(WAIT)
        timed_out.append(sum(call(k) for k in range(EACH)))

    async def tasks() -> int:
        return sum([await call_async(k) for k in range(EACH)])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS - 1)]
    for thread in threads:
        thread.start()
    with loop_in_thread() as loop:
        done = submit(loop, tasks())
        work(THREADS - 1)
        loop_lost = done.result(WAIT * 6)
    for thread in threads:
        thread.join(WAIT)
    lost = sum(timed_out) + loop_lost
    calls = (THREADS + 1) * EACH
    counters = limiter.statistics().counters
    assert counters.timeouts == lost
    granted = calls - lost
    assert counters.admitted == granted
    assert counters.admitted_units == {
        "requests": pytest.approx(granted),
        "tokens": pytest.approx(10 * granted),
    }
    assert counters.settles == granted
    assert sum(counters.wait_histogram.values()) == granted
    assert counters.waited == granted - counters.wait_histogram[0.0]
    assert counters.waited > 0  # the cap made some wait
    assert counters.cancellations == counters.failures == 0
    assert limiter.statistics().in_flight == 0


def test_a_blocked_thread_tells_its_wait_and_grant_from_its_own_thread() -> None:
    limiter = tb.Limiter(requests_per_second=tb.per_second(20, burst=1), name="t")
    seen: list[tuple[str, str, float]] = []
    limiter.subscribe(lambda e: seen.append((e.kind, threading.current_thread().name, e.waited)))
    results: list[tb.Lease] = []

    def worker() -> None:
        with limiter.acquire_blocking() as lease:
            results.append(lease)

    for name in ("first", "second"):
        thread = threading.Thread(target=worker, name=name)
        thread.start()
        thread.join(WAIT)
    assert [(kind, name) for kind, name, _ in seen] == [
        ("grant", "first"),
        ("wait", "second"),
        ("grant", "second"),
    ]
    assert seen[0][2] == 0.0
    assert 0.03 <= seen[2][2] == results[1].waited <= 0.05 + 0.5
    assert results[1].binding == "requests 20/second burst 1"


def test_an_update_from_another_threads_loop_applies_in_the_loop_served() -> None:
    limiter = tb.Limiter(tokens_per_second=1000)
    with loop_in_thread() as loop:

        async def use() -> None:
            async with limiter.acquire(tokens=1):
                pass

        submit(loop, use()).result(WAIT)

        async def update() -> None:
            limiter.update(tokens_per_second=100)

        asyncio.run(update())  # a loop of this thread: posted to the loop served

        async def big() -> None:
            with pytest.raises(tb.AmountExceedsLimitError):
                limiter.acquire(tokens=500)

        submit(loop, big()).result(WAIT)
    assert limiter.rates["tokens"] == (tb.per_second(100),)
