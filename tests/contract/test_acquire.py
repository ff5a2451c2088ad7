"""Acquiring: the burst, then the rate; several dimensions and a concurrency cap in one
await, on every backend."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

import tokenbucket as tb
from tests.contract._support import (
    EPS,
    HANG,
    Backend,
    MakeSubject,
    assert_exact,
    assert_not_early,
    build,
    clock,
    stamped,
)
from tests.redis._support import Limit, ideal_schedule

if TYPE_CHECKING:
    from collections.abc import Callable

    from tokenbucket._redis import RedisBackend

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def test_acquire_grants_the_burst_then_the_rate(
    make_subject: MakeSubject, backend: Backend
) -> None:
    subject = make_subject(bucket=(20, 5), window=(4, 0.15))
    count = 13
    stamps = await stamped(count, subject.acquire)
    ideal = ideal_schedule(count, [subject.limit])
    # The burst is there at once, then the rate: 5 at 0, then every 50 ms (bucket), or
    # 4 per 150 ms window.
    assert ideal[-1] >= 0.4
    assert_not_early(stamps, ideal)
    if backend is not None:
        assert_exact(backend.granted, [subject.limit], count)


async def test_acquire_several_dimensions_in_one_await(backend: Backend) -> None:
    key = "multi" if backend is not None else None
    limiter = tb.Limiter(
        {"requests": tb.Rate(5, 0.2), "tokens": tb.Rate(200, 1.0, burst=40)},
        backend=backend,
        key=key,
    )
    limits = [Limit("window", 5, 0.2), Limit("bucket", 200, 40, amount=10)]

    async def acquire() -> None:
        async with limiter.acquire(tokens=10) as lease:
            assert lease.reserved == {"requests": 1, "tokens": 10}

    count = 12
    stamps = await stamped(count, acquire)
    assert_not_early(stamps, ideal_schedule(count, limits))
    if backend is not None:
        assert_exact(backend.granted, limits, count)


async def test_acquire_concurrency_cap_holds_across_tasks_and_clients(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    def make(backend: RedisBackend | None) -> tb.Limiter:
        return tb.Limiter(
            requests_per_second=1000,
            tokens_per_second=100_000,
            max_concurrency=3,
            backend=backend,
            key="capped" if backend is not None else None,
        )

    # On Redis two clients (as two processes would be) on one key.
    limiters = [make(new_backend()), make(new_backend())] if kind == "redis" else [make(None)]
    open_now = 0
    peak = 0

    async def call(limiter: tb.Limiter) -> None:
        nonlocal open_now, peak
        async with limiter.acquire(tokens=10):
            open_now += 1
            peak = max(peak, open_now)
            await asyncio.sleep(0.03)
            open_now -= 1

    start = clock()
    await asyncio.wait_for(
        asyncio.gather(*(call(limiters[i % len(limiters)]) for i in range(24))), HANG
    )
    assert peak <= 3
    assert peak == 3  # the cap is used, not just respected
    assert clock() - start >= 8 * 0.03 - EPS


async def test_acquire_lease_knows_its_limiter_and_what_it_reserved(
    limiter_api: str, backend: Backend
) -> None:
    limiter = build(limiter_api, backend, bucket=(100, 10), window=(10, 1)).limiter
    assert isinstance(limiter, tb.Limiter)
    async with limiter.acquire(units=3, timeout=HANG) as lease:
        assert lease.limiter is limiter
        assert lease.reserved == {"units": 3}
        assert "open" in repr(lease)
    assert "ended" in repr(lease)
    group = tb.BucketGroup.from_dict(
        {"a": {"requests_per_second": 10}},
        backend=backend,
        key="group" if backend is not None else None,
    )
    async with group.acquire("a", timeout=HANG) as lease:
        assert lease.limiter is group["a"]
