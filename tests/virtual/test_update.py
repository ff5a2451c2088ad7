"""Limiter.update under virtual time: the new rates hold at once, for waiters too."""

from __future__ import annotations

import anyio
import pytest

import tokenbucket as tb
from tests.virtual._support import TOL, now

pytestmark = pytest.mark.anyio


async def test_a_lower_window_counts_the_grants_already_in_it() -> None:
    limiter = tb.Limiter(tokens_per_minute=1000)
    async with limiter.acquire(tokens=600):
        pass
    limiter.update(tokens_per_minute=500)  # 600 in the window: nothing more for a minute
    assert limiter.rates["tokens"] == (tb.per_minute(500),)
    assert limiter.statistics().available == {"tokens": -100.0}
    start = now()
    async with limiter.acquire(tokens=500):
        assert now() - start == pytest.approx(60, abs=TOL)
    with pytest.raises(tb.AmountExceedsLimitError):
        limiter.acquire(tokens=501)


async def test_a_raise_wakes_the_waiters_that_now_fit_in_order() -> None:
    limiter = tb.Limiter(tokens_per_minute=100)
    async with limiter.acquire(tokens=100):
        pass
    order: list[tuple[str, float]] = []

    async def call(name: str, tokens: float) -> None:
        async with limiter.acquire(tokens=tokens):
            order.append((name, now()))

    start = now()
    async with anyio.create_task_group() as tg:
        for name, tokens in (("a", 50), ("b", 40), ("c", 30)):
            tg.start_soon(call, name, tokens)
            await anyio.wait_all_tasks_blocked()
        await anyio.sleep(5)
        limiter.update(tokens_per_minute=200)  # 100 more: a and b now, c at the minute
    # (Tasks woken at one instant run in any order: the order of grants is a property
    # test's, tests/properties/test_update.py.)
    assert {name: t - start for name, t in order} == pytest.approx(
        {"a": 5, "b": 5, "c": 60}, abs=TOL
    )


async def test_a_lower_bucket_keeps_at_most_its_new_burst_and_retimes_the_head() -> None:
    limiter = tb.Limiter(tokens_per_second=tb.per_second(10, burst=100))
    start = now()
    async with anyio.create_task_group() as tg:

        async def big() -> None:
            async with limiter.acquire(tokens=100):
                pass
            async with limiter.acquire(tokens=8):  # due at 0.8 s at 10/s...
                assert now() - start == pytest.approx(1.1, abs=TOL)  # ...then 3 more at 5/s

        tg.start_soon(big)
        await anyio.sleep(0.5)  # 5 back
        limiter.update(tokens_per_second=tb.per_second(5, burst=10))
    assert limiter.statistics().available["tokens"] == pytest.approx(0, abs=1e-6)


async def test_a_lower_cap_keeps_the_leases_held_and_admits_no_more_until_below_it() -> None:
    limiter = tb.Limiter(requests_per_second=1000, max_concurrency=3)
    held = [limiter.acquire() for _ in range(3)]
    for lease in held:
        await lease.__aenter__()
    limiter.update(max_concurrency=1)
    assert limiter.max_concurrency == 1
    granted: list[float] = []

    async def call() -> None:
        async with limiter.acquire():
            granted.append(now())

    start = now()
    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        for k, lease in enumerate(held):
            await anyio.sleep(1)
            await lease.__aexit__(None, None, None)
            if k < 2:
                await anyio.wait_all_tasks_blocked()
                assert granted == []  # still 2, then 1 held: not below the cap yet
    assert [t - start for t in granted] == pytest.approx([3], abs=TOL)


async def test_a_waiter_larger_than_a_lowered_limit_is_granted_in_debt() -> None:
    limiter = tb.Limiter(tokens_per_second=tb.per_second(10, burst=10))
    async with limiter.acquire(tokens=10):
        pass
    start = now()
    async with anyio.create_task_group() as tg:

        async def call() -> None:
            async with limiter.acquire(tokens=8):
                assert now() - start == pytest.approx(0.5, abs=TOL)  # a full burst of 5

        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        limiter.update(tokens_per_second=tb.per_second(10, burst=5))
    assert limiter.statistics().available["tokens"] == pytest.approx(-3, abs=1e-6)


async def test_what_update_refuses_changes_nothing() -> None:
    limiter = tb.Limiter(tokens_per_minute=1000, requests_per_second=tb.per_second(5, burst=5))
    before = dict(limiter.rates)
    with pytest.raises(tb.InvalidArgumentError, match="no rate per 3600 s"):
        limiter.update(tokens_per_hour=5)
    with pytest.raises(tb.InvalidArgumentError, match="exact window"):
        limiter.update(tokens_per_minute=tb.per_minute(500, burst=100))
    with pytest.raises(tb.InvalidArgumentError, match="a bucket"):
        limiter.update(requests_per_second=3)
    with pytest.raises(tb.InvalidArgumentError, match="made without max_concurrency"):
        limiter.update(tokens_per_minute=500, max_concurrency=4)
    with pytest.raises(tb.InvalidArgumentError, match="given twice"):
        limiter.update({"tokens": ["500/minute"]}, tokens_per_minute=400)
    with pytest.raises(tb.InvalidArgumentError):
        limiter.update(tokens_per_minute=-1)
    assert limiter.rates == before


async def test_a_shared_pool_is_not_changed_through_a_member() -> None:
    group = tb.BucketGroup(
        {"a": tb.Limiter(requests_per_second=10), "b": tb.Limiter(requests_per_second=10)}
    )
    group.share("org", ["a", "b"], tokens_per_second=100)
    with pytest.raises(tb.InvalidArgumentError, match="of its own"):
        group["a"].update(tokens_per_second=50)
    group["a"].update(requests_per_second=20)
    assert group["a"].rates["requests"] == (tb.per_second(20),)


async def test_what_a_server_said_still_holds_after_a_raise() -> None:
    # A window told "10 left for a minute": a raise of the limit must not make it 110.
    window = tb.Limiter(tokens_per_minute=100)
    async with window.acquire(tokens=1):
        pass
    window.feedback({"x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "60s"})
    assert window.statistics().available["tokens"] == pytest.approx(10)
    window.update(tokens_per_minute=200)
    assert window.statistics().available["tokens"] == pytest.approx(10)
    # A bucket fitted to a server of 100 a minute: a lower configuration of 500 a
    # minute must not give it back its own 500.
    bucket = tb.Limiter(tokens_per_minute=tb.per_minute(1000, burst=1000))
    async with bucket.acquire(tokens=1):
        pass
    bucket.feedback(
        {
            "x-ratelimit-limit-tokens": "100",
            "x-ratelimit-remaining-tokens": "10",
            "x-ratelimit-reset-tokens": "54s",
        }
    )
    bucket.update(tokens_per_minute=tb.per_minute(500, burst=500))
    got = 0.0
    with anyio.move_on_after(60):
        while True:
            async with bucket.acquire(tokens=10):
                got += 10
    assert got <= 10 + 100 + 10  # what was left, a minute of the server's refill, rounding


def test_an_update_before_any_loop_binds_nothing() -> None:
    import trio
    from trio.testing import MockClock

    limiter = tb.Limiter(requests_per_second=tb.per_second(10, burst=1))
    limiter.update(requests_per_second=tb.per_second(2, burst=1))  # at configuration time

    async def main() -> float:
        async with limiter.acquire():
            pass
        start = trio.current_time()
        async with limiter.acquire():
            return trio.current_time() - start

    assert trio.run(main, clock=MockClock(autojump_threshold=0)) == pytest.approx(0.5)


async def test_an_updated_member_made_from_the_default_is_not_forgotten() -> None:
    group = tb.BucketGroup(default={"requests_per_second": 1000})
    group["u"].update(requests_per_second=1)
    await anyio.sleep(2)
    for name in range(3000):  # enough lookups of others to tidy and sweep the group
        group[str(name)]
    assert group["u"].rates["requests"] == (tb.per_second(1),)
