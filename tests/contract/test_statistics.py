"""statistics(): what a user debugging a stall reads must be true on every backend.

Every figure asserted here changes during the test (0 -> n -> 0, None -> an instant ->
None), so a backend that always answers the same cannot pass. With a backend (Redis)
the counts are this process's, and ``available`` is not known without a round trip:
``None`` for a single limiter, ``{}`` for a ``Limiter``.
"""

from __future__ import annotations

import asyncio

import pytest

import tokenbucket as tb
from tests.contract._support import EPS, HANG, LATE, Backend, MakeSubject, clock, settled_in, until

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

# Loop-clock instants a store reports may differ from the ones measured here by a
# round trip to Redis (and scheduling on a busy machine).
NEAR = 0.05


async def test_statistics_waiters_and_next_wakeup_come_and_go(
    make_subject: MakeSubject, backend: Backend
) -> None:
    subject = make_subject(bucket=(4, 1), window=(1, 0.25))  # a unit every 0.25 s
    limiter = subject.limiter
    await subject.acquire()
    granted = clock()
    stats = limiter.statistics()
    assert (stats.waiters, stats.next_wakeup) == (0, None)
    if isinstance(stats, tb.LimitStatistics):
        assert stats.queued == 0
        assert stats.limit == 1
        assert stats.available == (None if backend is not None else pytest.approx(0, abs=0.1))
    else:
        assert stats.available == (
            {} if backend is not None else {"units": pytest.approx(0, abs=0.1)}
        )
    stamps: list[float] = []

    async def waiter() -> None:
        await subject.acquire()
        stamps.append(clock())

    tasks = [asyncio.create_task(waiter()) for _ in range(3)]  # due at 0.25, 0.5, 0.75 s
    await until(lambda: subject.next_wakeup is not None)
    stats = limiter.statistics()
    assert stats.waiters == 3
    if isinstance(stats, tb.LimitStatistics):
        assert stats.queued == 3
    wakeup = stats.next_wakeup
    assert wakeup is not None
    assert granted + 0.25 - NEAR <= wakeup <= granted + 0.25 + NEAR
    await until(lambda: len(stamps) == 1)
    assert stamps[0] >= wakeup - EPS  # the instant it said is the one the waiter slept to
    stats = limiter.statistics()
    assert stats.waiters == 2
    assert stats.next_wakeup is not None
    assert stats.next_wakeup >= wakeup + 0.25 - NEAR
    await asyncio.wait_for(asyncio.gather(*tasks), HANG)
    stats = limiter.statistics()
    assert (stats.waiters, stats.next_wakeup) == (0, None)
    if isinstance(stats, tb.LimitStatistics):
        assert stats.queued == 0


def bursty(api: str, backend: Backend) -> tb.Limiter:
    """Two units at once, then one every 0.25 s (bucket) or two per 0.5 s (window);
    two calls in flight at most."""
    rate = tb.Rate(4, 1.0, burst=2) if api == "Limiter-bucket" else tb.Rate(2, 0.5)
    return tb.Limiter(
        {"units": rate},
        max_concurrency=2,
        backend=backend,
        key="stats" if backend is not None else None,
    )


async def test_statistics_in_flight_counts_leases_holding_a_slot(
    limiter_api: str, backend: Backend
) -> None:
    limiter = bursty(limiter_api, backend)
    stats = limiter.statistics()
    assert (stats.in_flight, stats.max_concurrency, stats.waiters) == (0, 2, 0)
    assert stats.available == ({} if backend is not None else {"units": 2})
    async with limiter.acquire(units=1, timeout=HANG):
        assert limiter.statistics().in_flight == 1
        async with limiter.acquire(units=1, timeout=HANG):
            assert limiter.statistics().in_flight == 2
            # A third waits for a slot: a waiter, but no instant to wake at yet.
            third = limiter.acquire(units=0, timeout=HANG)
            entering = asyncio.create_task(third.__aenter__())
            await until(lambda: limiter.statistics().waiters == 1)
            stats = limiter.statistics()
            assert (stats.in_flight, stats.next_wakeup) == (2, None)
        lease = await asyncio.wait_for(entering, HANG)
        assert lease.limiter is limiter
        stats = limiter.statistics()
        assert (stats.in_flight, stats.waiters) == (2, 0)
        await third.__aexit__(None, None, None)
        assert limiter.statistics().in_flight == 1
    stats = limiter.statistics()
    assert (stats.in_flight, stats.waiters) == (0, 0)


async def test_statistics_last_wait_is_the_last_grants_wait(
    limiter_api: str, backend: Backend
) -> None:
    limiter = bursty(limiter_api, backend)
    assert limiter.statistics().last_wait is None
    first = clock()
    for _ in range(2):
        async with limiter.acquire(units=1, timeout=HANG):
            pass
    last = limiter.statistics().last_wait
    assert last is not None
    assert 0 <= last < NEAR  # granted at once (a round trip, on Redis)
    start = clock()
    async with limiter.acquire(units=1, timeout=HANG):
        waited = clock() - start
    last = limiter.statistics().last_wait
    assert last is not None
    # The grant's wait, from the call: the third unit comes 0.25 s or more after the
    # first was taken, which was before this call by the two calls' own time.
    assert 0.25 - (start - first) - EPS <= last <= waited + EPS
    assert last < 0.5 + LATE


async def test_statistics_paused_until_reflects_a_pause(limiter_api: str, backend: Backend) -> None:
    limiter = bursty(limiter_api, backend)
    assert limiter.statistics().paused_until is None
    limiter.feedback({"retry-after-ms": "300"}, status=429)
    paused = clock()
    until_ = limiter.statistics().paused_until
    assert until_ is not None
    assert paused + 0.3 - NEAR <= until_ <= paused + 0.3 + NEAR
    limiter.pause(0.1)  # shorter: the pause in force stays
    assert limiter.statistics().paused_until == until_
    await settled_in(backend)
    async with limiter.acquire(units=1, timeout=HANG):
        assert clock() >= until_ - EPS
    assert limiter.statistics().paused_until is None
