"""Fail fast under virtual time: an impossible or bad amount raises at once, even
while others wait, and takes nothing."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import tokenbucket as tb
from tests.virtual._support import BAD_AMOUNTS, argument_of, enter, now

pytestmark = pytest.mark.anyio


async def test_amount_above_a_limit_raises_at_once_and_takes_nothing() -> None:
    limiter = tb.Limiter(
        tokens_per_minute=1_000, tokens_per_day=500, requests_per_minute=3, max_concurrency=1
    )
    with pytest.raises(tb.AmountExceedsLimitError) as info:
        limiter.acquire(tokens=501)
    assert isinstance(info.value, ValueError)
    assert "tokens" in str(info.value)
    with pytest.raises(tb.AmountExceedsLimitError):
        limiter.acquire(requests=4)
    async with anyio.create_task_group() as tg:
        # Also at once while others wait: it does not queue behind them.
        async with limiter.acquire(tokens=500, requests=3):
            tg.start_soon(enter, limiter.acquire(tokens=1))
            await anyio.wait_all_tasks_blocked()
            start = now()
            with pytest.raises(tb.AmountExceedsLimitError):
                async with limiter.acquire(tokens=10_000):
                    pass  # pragma: no cover
            assert now() == start
        tg.cancel_scope.cancel()
    fresh = tb.Limiter(tokens_per_minute=1_000, tokens_per_day=500, requests_per_minute=3)
    with pytest.raises(tb.AmountExceedsLimitError):
        fresh.acquire(tokens=501)
    snapshot = fresh.statistics()
    assert dict(snapshot.available) == {"tokens": 500, "requests": 3}
    start = now()
    async with fresh.acquire(tokens=500):
        assert now() == start


@pytest.mark.parametrize(("amount", "error"), BAD_AMOUNTS)
async def test_bad_amounts_name_the_dimension_and_take_nothing(
    amount: object, error: type[Exception]
) -> None:
    limiter = tb.Limiter(requests_per_second=1, tokens_per_second=10, max_concurrency=1)
    amounts: dict[str, Any] = {"tokens": amount}
    with pytest.raises(error) as info:
        limiter.acquire(**amounts)
    assert argument_of(info.value, error) == "tokens"
    assert "tokens" in str(info.value)
    with pytest.raises(error) as other:
        limiter.acquire(requests=amount, tokens=1)  # type: ignore[arg-type]
    assert argument_of(other.value, error) == "requests"
    start = now()
    async with limiter.acquire(tokens=10):
        assert now() == start
        assert limiter.statistics().in_flight == 1


async def test_the_implied_request_is_checked_against_the_limit() -> None:
    limiter = tb.Limiter(requests_per_second=0.5)
    with pytest.raises(tb.AmountExceedsLimitError):
        async with limiter.acquire():
            pass
    assert limiter.statistics().available["requests"] == 0.5


async def test_awaiting_an_acquire_context_says_what_to_do() -> None:
    limiter = tb.Limiter(requests_per_second=1)
    with pytest.raises(TypeError, match="async with"):
        await limiter.acquire()
