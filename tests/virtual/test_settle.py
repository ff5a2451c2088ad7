"""Settling under virtual time: a refund reaches a waiter in the same instant; debt
is waited off exactly."""

from __future__ import annotations

import anyio
import pytest

from tests.virtual._support import KINDS, TOL, now, settle_while_one_waits, token_limiter

pytestmark = pytest.mark.anyio


@KINDS
async def test_settle_less_refunds_and_wakes_a_waiter_at_once(kind: str) -> None:
    limiter = token_limiter(kind)
    await settle_while_one_waits(
        limiter.acquire(tokens=100), limiter.acquire(tokens=50), 6, tokens=30
    )
    left = limiter.statistics().available["tokens"]
    # Window: 100 - 30 - 50. Bucket: 0 + 10 refilled + 70 refunded - 50.
    assert left == pytest.approx(20 if kind == "window" else 30, abs=TOL)


@KINDS
async def test_settle_more_is_debt_that_later_callers_wait_off(kind: str) -> None:
    limiter = token_limiter(kind)
    start = now()
    async with limiter.acquire(tokens=10) as lease:
        await anyio.sleep(10)
        lease.settle(tokens=150)
    assert limiter.statistics().available["tokens"] == pytest.approx(
        -50 if kind == "window" else -40, abs=TOL
    )
    async with limiter.acquire(tokens=1):
        # Window: the 140 overrun, charged at 10 s, leaves the window at 70 s.
        # Bucket: full (100) at 10 s, -40 after the overrun; 41 to refill at 100/60.
        expected = 70.0 if kind == "window" else 10 + 41 * 0.6
        assert now() - start == pytest.approx(expected, abs=TOL)
