"""Limiter.reset and BucketGroup.reset under virtual time: what is forgotten and what is
kept."""

from __future__ import annotations

import anyio
import pytest

import tokenbucket as tb
from tests.virtual._support import TOL, now

pytestmark = pytest.mark.anyio


async def test_a_reset_grants_the_waiters_that_now_fit_at_once() -> None:
    limiter = tb.Limiter(tokens_per_minute=100, requests_per_second=tb.per_second(1, burst=1))
    async with limiter.acquire(tokens=100):
        pass
    granted: list[float] = []

    async def call() -> None:
        async with limiter.acquire(tokens=60):
            granted.append(now())

    start = now()
    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await anyio.sleep(2)
        assert granted == []
        limiter.reset()
    assert [t - start for t in granted] == pytest.approx([2], abs=TOL)
    assert limiter.statistics().available == {"tokens": 40.0, "requests": 0.0}


async def test_a_reset_ends_a_pause_and_drops_what_a_server_said() -> None:
    limiter = tb.Limiter(tokens_per_minute=tb.per_minute(1000, burst=1000))
    async with limiter.acquire(tokens=1):
        pass
    limiter.feedback(
        {
            "x-ratelimit-limit-tokens": "100",
            "x-ratelimit-remaining-tokens": "10",
            "x-ratelimit-reset-tokens": "54s",
            "retry-after": "30",
        },
        status=429,
    )
    assert limiter.statistics().paused_until is not None
    limiter.reset()
    stats = limiter.statistics()
    assert stats.paused_until is None
    assert stats.available == {"tokens": 1000.0}  # its own burst, not the server's 100
    start = now()
    async with limiter.acquire(tokens=1000):
        assert now() == start


async def test_leases_held_keep_their_slots_and_forgotten_grants_give_nothing_back() -> None:
    limiter = tb.Limiter(tokens_per_minute=1000, max_concurrency=2)
    held = limiter.acquire(tokens=500)
    lease = await held.__aenter__()
    over = await limiter.acquire(tokens=100).__aenter__()
    limiter.reset()
    assert limiter.statistics().in_flight == 2
    lease.settle(tokens=100)  # 400 less: forgotten, nothing back
    over.settle(tokens=300)  # 200 more: charged
    assert limiter.statistics().available == {"tokens": 800.0}
    await held.__aexit__(None, None, None)
    assert limiter.statistics().in_flight == 1
    counters = limiter.statistics().counters
    assert counters.admitted == 2  # the counters are kept


async def test_a_reset_leaves_shared_pools_alone() -> None:
    group = tb.BucketGroup(
        {"a": tb.Limiter(requests_per_minute=10), "b": tb.Limiter(requests_per_minute=10)}
    )
    group.share("org", ["a", "b"], tokens_per_minute=100)
    async with group.acquire("a", tokens=100):
        pass
    group.reset("a")
    assert group["a"].statistics().available == {"requests": 10.0, "tokens": 0.0}


async def test_a_group_resets_a_name_and_knows_the_names_it_cannot() -> None:
    group = tb.BucketGroup(
        {"fixed": tb.Limiter(requests_per_minute=1)}, default={"requests_per_minute": 1}
    )
    async with group.acquire("fixed"):
        pass
    async with group.acquire("made"):
        pass
    group.reset("fixed")
    group.reset("made")
    group.reset("never used")  # nothing to forget
    assert "never used" not in group
    for name in ("fixed", "made"):
        assert group[name].statistics().available == {"requests": 1.0}
    with pytest.raises(tb.UnknownNameError):
        tb.BucketGroup({"x": tb.Limiter(requests_per_minute=1)}).reset("y")


async def test_after_a_reset_a_window_takes_a_servers_report_as_a_new_one_would() -> None:
    def made() -> tb.Limiter:
        return tb.Limiter(tokens_per_minute=1000)

    fitted, fresh = made(), made()
    async with fitted.acquire(tokens=1):
        pass
    fitted.feedback(  # OpenAI's headers of a server of 1,000 a minute: a shadow bucket
        {
            "x-ratelimit-limit-tokens": "1000",
            "x-ratelimit-remaining-tokens": "900",
            "x-ratelimit-reset-tokens": "6.000s",
        }
    )
    assert fitted._multi.shadows
    fitted.reset()
    report = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6s"}
    for limiter in (fitted, fresh):
        limiter.feedback(report)
    await anyio.sleep(1)
    assert fitted.statistics().available["tokens"] == pytest.approx(
        fresh.statistics().available["tokens"]
    )
    assert fresh.statistics().available["tokens"] == pytest.approx(0)
