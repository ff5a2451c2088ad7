"""Timeouts: one deadline from the call; a timed-out caller consumes nothing."""

from __future__ import annotations

import asyncio

import pytest

import tokenbucket as tb
from tests.contract._support import EPS, HANG, LATE, PROBE, Backend, MakeSubject, clock

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def test_timeout_raises_at_its_deadline_and_takes_nothing(
    make_subject: MakeSubject, backend: Backend
) -> None:
    # One unit at once, then one every 0.5 s.
    subject = make_subject(bucket=(2, 1), window=(1, 0.5))
    await subject.acquire()
    granted = clock()
    with pytest.raises(tb.AcquireTimeoutError) as caught:
        await subject.acquire(timeout=0.2)
    waited = clock() - granted
    assert isinstance(caught.value, TimeoutError)
    assert isinstance(caught.value, tb.TokenBucketError)
    # Not before the deadline, and not at the unit's instant (0.5 s) either.
    assert 0.2 - EPS <= waited < 0.2 + LATE
    # Had the timed-out request taken the unit due at 0.5 s, the next would be due at
    # 1 s and this would fail (unless the machine stalled past 1 s).
    await asyncio.sleep(granted + 0.5 + 0.03 - clock())
    await subject.acquire(timeout=PROBE)


async def test_timeout_zero_takes_only_what_is_there(
    make_subject: MakeSubject, backend: Backend
) -> None:
    # Two units at once, then the next at 0.2 s.
    subject = make_subject(bucket=(10, 2), window=(2, 0.2))
    start = clock()
    await subject.acquire(2, timeout=0)
    granted = clock()
    with pytest.raises(tb.AcquireTimeoutError):
        await subject.acquire(1, timeout=0)
    assert clock() - granted < 0.15  # at once: never waits for the unit due at 0.1 s
    await asyncio.sleep(granted + 0.2 + 0.03 - clock())
    # The failed request took nothing: two units again.
    await subject.acquire(2, timeout=0)
    with pytest.raises(tb.AcquireTimeoutError):
        await subject.acquire(1, timeout=0)
    assert clock() - start < HANG


async def test_timeout_is_one_deadline_across_the_slot_and_the_rate(
    limiter_api: str, backend: Backend
) -> None:
    """A waiter first blocked on the concurrency slot, then on the rate, still times
    out at the one deadline computed at the call (not a new one per wait)."""
    rate = tb.Rate(1, 1.0, burst=1) if limiter_api == "Limiter-bucket" else tb.Rate(1, 1.0)
    limiter = tb.Limiter(
        {"units": rate},
        max_concurrency=1,
        backend=backend,
        key="deadline" if backend is not None else None,
    )
    errors: list[BaseException] = []
    start = clock()

    async def wait() -> None:
        try:
            async with limiter.acquire(units=1, timeout=0.4):
                pass  # pragma: no cover - must not happen
        except tb.AcquireTimeoutError as exc:
            errors.append(exc)

    async with limiter.acquire(units=1, timeout=HANG):  # the unit; the next is due at 1 s
        waiter = asyncio.create_task(wait())
        await asyncio.sleep(0.2)  # the waiter waits for the slot ...
    await asyncio.wait_for(waiter, HANG)  # ... then for the unit due at 1 s
    waited = clock() - start
    assert len(errors) == 1
    assert 0.4 - EPS <= waited < 0.4 + LATE
    snapshot = limiter.statistics()
    assert (snapshot.waiters, snapshot.in_flight) == (0, 0)
    # It took neither the slot nor the unit: both free at 1 s for the next caller.
    await asyncio.sleep(start + 1.0 + 0.03 - clock())
    async with limiter.acquire(units=1, timeout=PROBE):
        pass
