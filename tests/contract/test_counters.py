"""statistics().counters: what a limiter did since it was made, on every backend.

Every counter asserted here starts at 0 and is driven to a value the test computes, so
a backend that never counts (or counts twice) fails. With Redis the counts are this
process's.
"""

from __future__ import annotations

import asyncio

import pytest

import tokenbucket as tb
from tests.contract._support import HANG, Backend, settled_in, until

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def limiter(backend: Backend, key: str, **kwargs: object) -> tb.Limiter:
    return tb.Limiter(backend=backend, key=key if backend is not None else None, **kwargs)  # type: ignore[arg-type]


async def test_counters_start_at_zero(backend: Backend) -> None:
    counters = limiter(backend, "zero", tokens_per_minute=1000).statistics().counters
    assert counters.admitted == 0
    assert counters.admitted_units == {"tokens": 0.0}
    assert counters.waited == counters.timeouts == counters.cancellations == 0
    assert sum(counters.wait_histogram.values()) == 0
    assert list(counters.wait_histogram) == list(tb.LimiterCounters.WAIT_BOUNDS)


async def test_counters_count_grants_units_and_settlements(backend: Backend) -> None:
    subject = limiter(backend, "units", requests_per_minute=1000, tokens_per_minute=100_000)
    async with subject.acquire(tokens=500) as lease:
        lease.settle(tokens=200)  # 300 back
    async with subject.acquire(tokens=100) as lease:
        lease.settle(tokens=160)  # 60 more
    async with subject.acquire(tokens=50):
        pass  # never settled
    await settled_in(backend)
    counters = subject.statistics().counters
    assert counters.admitted == 3
    assert counters.admitted_units == {"requests": 3.0, "tokens": 650.0}
    assert counters.settles == 2
    assert counters.refunded == {"requests": 0.0, "tokens": 300.0}
    assert counters.debt == {"requests": 0.0, "tokens": 60.0}
    assert counters.waited == 0  # (on Redis each took a round trip, and no wait)
    assert counters.wait_histogram[0.0] == 3
    assert sum(counters.wait_histogram.values()) == 3


async def test_a_wait_is_counted_and_told_to_the_lease(backend: Backend) -> None:
    # One unit at once, then one every 0.25 s.
    subject = limiter(backend, "wait", limits={"units": tb.Rate(4, 1.0, burst=1)})
    async with subject.acquire(units=1) as first:
        assert first.waited == 0.0 or backend is not None
        assert first.binding is None
    async with subject.acquire(units=1) as second:
        pass
    assert 0.2 <= second.waited <= 0.25 + 0.2
    if backend is None:
        assert second.binding == "units 4/second burst 1"
    counters = subject.statistics().counters
    assert counters.admitted == 2
    assert counters.wait_seconds >= second.waited
    assert counters.wait_histogram[1.0] == 1  # 0.1 s < 0.25 s <= 1 s
    assert counters.wait_histogram[0.0] == 1
    assert counters.waited == 1


async def test_a_wait_for_a_slot_names_the_cap(backend: Backend) -> None:
    subject = limiter(backend, "slot", requests_per_second=1000, max_concurrency=1)
    release = asyncio.Event()

    async def holder() -> None:
        async with subject.acquire():
            await release.wait()

    task = asyncio.create_task(holder())
    await until(lambda: subject.statistics().in_flight == 1)
    asyncio.get_running_loop().call_later(0.1, release.set)
    async with subject.acquire(timeout=HANG) as lease:
        assert lease.waited >= 0.09
        assert lease.binding == "max_concurrency"
    await task


async def test_timeouts_and_cancellations_are_counted(backend: Backend) -> None:
    subject = limiter(backend, "left", limits={"units": tb.Rate(1, 10.0, burst=1)})
    async with subject.acquire(units=1):
        pass
    with pytest.raises(tb.AcquireTimeoutError):
        async with subject.acquire(units=1, timeout=0.05):
            pass
    with pytest.raises(tb.AcquireTimeoutError):
        async with subject.acquire(units=1, timeout=0):
            pass

    async def wait_long() -> None:
        async with subject.acquire(units=1):
            pass

    task = asyncio.create_task(wait_long())
    await until(lambda: subject.statistics().waiters == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    counters = subject.statistics().counters
    assert counters.timeouts == 2
    assert counters.cancellations == 1
    assert counters.failures == 0
    assert counters.admitted == 1


async def test_reports_count_429s_pauses_and_corrections(backend: Backend) -> None:
    subject = limiter(backend, "reports", requests_per_minute=100)
    async with subject.acquire() as lease:
        # The server has 10 of 100 left for 30 s: a correction.
        lease.feedback(
            {
                "x-ratelimit-limit-requests": "100",
                "x-ratelimit-remaining-requests": "10",
                "x-ratelimit-reset-requests": "30s",
            },
            status=200,
        )
    subject.feedback({"retry-after": "0.2"}, status=429)
    subject.pause(0.1)
    await settled_in(backend)
    counters = subject.statistics().counters
    assert counters.rejections == 1
    assert counters.pauses == 2
    assert counters.paused_seconds == pytest.approx(0.3)
    assert counters.corrections == 1


async def test_a_report_that_lowers_nothing_is_no_correction() -> None:
    subject = tb.Limiter(requests_per_minute=100)
    subject.feedback({"x-ratelimit-remaining-requests": "100", "x-ratelimit-reset-requests": "1s"})
    assert subject.statistics().counters.corrections == 0
