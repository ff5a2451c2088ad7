"""Limiter.reset on every backend: what it granted is forgotten, by every process."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

import tokenbucket as tb
from tests.contract._support import HANG, Backend, clock, fits, settled_in

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def make(backend: Backend, rate: tb.Rate) -> tb.Limiter:
    key = "reset" if backend is not None else None
    return tb.Limiter({"tokens": rate}, backend=backend, key=key)


@pytest.mark.parametrize(
    "rate", [tb.Rate(100, 60.0), tb.Rate(100, 60.0, burst=100)], ids=["window", "bucket"]
)
async def test_a_reset_is_seen_by_every_process(
    kind: str, new_backend: Callable[[], Backend], rate: tb.Rate
) -> None:
    one = make(new_backend(), rate)
    other = make(new_backend(), rate) if kind == "redis" else one
    async with one.acquire(tokens=100):
        pass
    await settled_in(None)
    assert not await fits(other, tokens=50)  # a minute to wait
    one.reset()
    await asyncio.sleep(0.05)  # the keys are deleted in the background
    start = clock()
    async with other.acquire(tokens=100, timeout=HANG):
        assert clock() - start < 0.5


async def test_a_reset_ends_a_pause(kind: str, new_backend: Callable[[], Backend]) -> None:
    one = make(new_backend(), tb.Rate(1000, 1.0))
    one.pause(30)
    one.reset()
    await asyncio.sleep(0.05)
    async with one.acquire(tokens=1, timeout=HANG):
        pass


async def test_a_lease_held_across_a_reset_gives_nothing_back(
    backend: Backend,
) -> None:
    limiter = make(backend, tb.Rate(100, 60.0))
    async with limiter.acquire(tokens=100) as lease:
        limiter.reset()
        await asyncio.sleep(0.05)
        lease.settle(tokens=10)  # 90 less: forgotten, nothing back
    await settled_in(backend)
    async with limiter.acquire(tokens=100, timeout=HANG):
        pass
    assert not await fits(limiter, tokens=1)
