"""Acquiring under virtual time: grants at exact instants, several rates per
dimension, allowing debt."""

from __future__ import annotations

import random

import anyio
import pytest

import tokenbucket as tb
from tests.virtual._support import TOL, max_in_period, non_decreasing, now

pytestmark = pytest.mark.anyio


async def test_bucket_grants_at_exact_times() -> None:
    bucket = tb.TokenBucket(rate=10, capacity=20)
    start = now()
    times = []
    for _ in range(25):
        await bucket.acquire()
        times.append(now() - start)
    assert times[:20] == [0.0] * 20
    assert times[20:] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5], abs=TOL)


async def test_bucket_waits_only_for_the_deficit() -> None:
    bucket = tb.TokenBucket(rate=2, capacity=10)
    assert bucket.try_acquire(9)
    start = now()
    await bucket.acquire(4)  # 1 left, 3 missing: 1.5 s, not 4 / 2 = 2 s
    assert now() - start == pytest.approx(1.5, abs=TOL)


async def test_window_grants_at_exact_times() -> None:
    window = tb.SlidingWindow(limit=15, window=60)
    start = now()
    for _ in range(15):
        await window.acquire()
    assert now() == start
    await window.acquire()
    assert now() - start == pytest.approx(60, abs=TOL)
    await window.acquire(14)
    assert now() - start == pytest.approx(60, abs=TOL)
    await window.acquire()
    assert now() - start == pytest.approx(120, abs=TOL)


async def test_window_frees_exactly_what_leaves_it() -> None:
    window = tb.SlidingWindow(limit=10, window=5)
    await window.acquire(4)
    await anyio.sleep(1)
    await window.acquire(6)
    start = now()
    await window.acquire(5)  # needs the 4 from t=0 (free at 5) and 1 from t=1 (at 6)
    assert now() - start == pytest.approx(5, abs=TOL)


async def test_per_minute_and_per_day_of_one_dimension_both_hold() -> None:
    limiter = tb.Limiter(requests_per_minute=10, requests_per_day=25)
    start = now()
    times: list[float] = []
    for _ in range(60):
        async with limiter.acquire():
            times.append(now() - start)
    day = 86_400.0
    one_day = [0.0] * 10 + [60.0] * 10 + [120.0] * 5
    expected = one_day + [day + t for t in one_day] + [2 * day] * 10
    assert times == pytest.approx(expected, abs=TOL)
    grants = [(t, 1.0) for t in times]
    assert max_in_period(grants, 60) == 10
    assert max_in_period(grants, day) == 25


async def test_token_costs_conform_to_per_minute_and_per_day_at_once() -> None:
    limiter = tb.Limiter(tokens_per_minute=1_000, tokens_per_day=4_000)
    rng = random.Random(7)
    costs = [rng.choice([1, 50, 200, 499, 700, 1_000]) for _ in range(40)]
    gaps = [rng.choice([0.0, 0.0, 1.0, 7.5, 30.0]) for _ in range(40)]
    start = now()
    grants: list[tuple[int, float, float]] = []

    async def call(index: int, tokens: float) -> None:
        async with limiter.acquire(tokens=tokens):
            grants.append((index, now() - start, tokens))

    async with anyio.create_task_group() as tg:
        for index, (tokens, gap) in enumerate(zip(costs, gaps, strict=True)):
            tg.start_soon(call, index, tokens)
            await anyio.wait_all_tasks_blocked()
            await anyio.sleep(gap)
    assert len(grants) == 40
    log = [(t, amount) for _, t, amount in grants]
    assert max_in_period(log, 60) <= 1_000
    assert max_in_period(log, 86_400) <= 4_000
    # FIFO across whole requests: grant times follow arrival order.
    assert non_decreasing([t for _, t, _ in sorted(grants)])
    # The day limit did bind (otherwise this test would check only the minute rate).
    assert max(t for _, t, _ in grants) > 86_400


@pytest.mark.parametrize("kind", ["window", "bucket"])
async def test_allow_debt_lets_a_big_request_through_and_later_callers_wait_it_off(
    kind: str,
) -> None:
    rate = tb.per_minute(100) if kind == "window" else tb.per_minute(100, burst=100)
    limiter = tb.Limiter({"tokens": rate}, allow_debt=True)
    start = now()
    async with limiter.acquire(tokens=250) as lease:
        assert now() == start
        assert lease.reserved == {"tokens": 250}
    assert limiter.statistics().available["tokens"] == pytest.approx(-150, abs=TOL)
    async with limiter.acquire(tokens=1):
        # Window: the 250 leave the window after 60 s. Bucket: 151 tokens to refill at
        # 100/60 per second.
        expected = 60.0 if kind == "window" else 151 * 0.6
        assert now() - start == pytest.approx(expected, abs=TOL)


async def test_allow_debt_waits_for_a_full_meter_first() -> None:
    limiter = tb.Limiter(tokens_per_minute=100, allow_debt=True)
    start = now()
    async with limiter.acquire(tokens=10):
        pass
    await anyio.sleep(30)
    async with limiter.acquire(tokens=250):
        assert now() - start == pytest.approx(60, abs=TOL)  # when the 10 have left
    async with limiter.acquire(tokens=1):
        assert now() - start == pytest.approx(120, abs=TOL)


def test_rates_given_every_way_are_read_the_same() -> None:
    limiter = tb.Limiter(
        {"tokens": ["800000/minute", tb.per_day(50_000_000)], "input_tokens": "10/s"},
        requests_per_minute=tb.per_minute(500),
        max_concurrency=8,
        name="gpt",
    )
    assert limiter.dimensions == ("tokens", "input_tokens", "requests")
    assert limiter.rates == {
        "tokens": (tb.per_minute(800_000), tb.per_day(50_000_000)),
        "input_tokens": (tb.per_second(10),),
        "requests": (tb.per_minute(500),),
    }
    assert limiter.max_concurrency == 8
    assert "gpt" in repr(limiter)
