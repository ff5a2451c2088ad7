"""The counters under virtual time: exact waits, their histogram, and what bound them."""

from __future__ import annotations

import anyio
import pytest

import tokenbucket as tb
from tests.virtual._support import TOL, now

pytestmark = pytest.mark.anyio


async def test_waits_are_exact_and_land_in_their_buckets() -> None:
    # Five at once (burst), then one a second: waits of 1, 2, ... 12 s for 12 more.
    limiter = tb.Limiter(requests_per_second=tb.per_second(1, burst=5))
    leases: list[tb.Lease] = []

    async def one() -> None:
        async with limiter.acquire() as lease:
            leases.append(lease)

    start = now()
    async with anyio.create_task_group() as tg:
        for _ in range(17):
            tg.start_soon(one)
            await anyio.wait_all_tasks_blocked()
    assert now() - start == pytest.approx(12, abs=TOL)
    waits = sorted(lease.waited for lease in leases)
    assert waits[:5] == [0.0] * 5
    assert waits[5:] == pytest.approx([float(k) for k in range(1, 13)], abs=TOL)
    assert {lease.binding for lease in leases[5:]} == {"requests 1/second burst 5"}
    counters = limiter.statistics().counters
    assert counters.admitted == 17
    assert counters.waited == 12
    assert counters.wait_seconds == pytest.approx(sum(range(1, 13)), abs=12 * TOL)
    # 0: five; (0.1, 1]: the first; (1, 10]: 2 .. 10 s; (10, 60]: 11 and 12 s.
    assert counters.wait_histogram == {
        0.0: 5,
        0.001: 0,
        0.01: 0,
        0.1: 0,
        1.0: 1,
        10.0: 9,
        60.0: 2,
        float("inf"): 0,
    }


async def test_a_pause_binds_and_is_counted() -> None:
    limiter = tb.Limiter(requests_per_second=100, tokens_per_second=1000)
    limiter.feedback({"retry-after": "3"}, status=429)
    start = now()
    async with limiter.acquire(tokens=10) as lease:
        assert now() - start == pytest.approx(3, abs=TOL)
    assert lease.waited == pytest.approx(3, abs=TOL)
    assert lease.binding == "paused"
    counters = limiter.statistics().counters
    assert (counters.rejections, counters.pauses, counters.waited) == (1, 1, 1)
    assert counters.paused_seconds == pytest.approx(3)
    assert counters.admitted_units == {"requests": 1.0, "tokens": 10.0}


async def test_a_shared_pool_counts_on_each_member() -> None:
    group = tb.BucketGroup(
        {"a": tb.Limiter(requests_per_second=100), "b": tb.Limiter(requests_per_second=100)}
    )
    group.share("org", ["a", "b"], tokens_per_second=tb.per_second(10, burst=10))
    async with group.acquire("a", tokens=10):
        pass
    start = now()
    async with group.acquire("b", tokens=5) as lease:
        pass
    assert now() - start == pytest.approx(0.5, abs=TOL)
    assert lease.binding == "tokens 10/second burst 10"
    a, b = group["a"].statistics().counters, group["b"].statistics().counters
    assert (a.admitted, a.admitted_units["tokens"], a.waited) == (1, 10.0, 0)
    assert (b.admitted, b.admitted_units["tokens"], b.waited) == (1, 5.0, 1)
