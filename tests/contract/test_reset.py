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
    backend = new_backend()
    one = make(backend, rate)
    other = make(new_backend(), rate) if kind == "redis" else one
    async with one.acquire(tokens=100):
        pass
    assert not await fits(other, tokens=50)  # a minute to wait
    one.reset()
    await settled_in(backend)  # (another process: the keys are deleted in the background)
    start = clock()
    async with other.acquire(tokens=100, timeout=HANG):
        assert clock() - start < 0.5


async def test_a_reset_ends_a_pause(kind: str, new_backend: Callable[[], Backend]) -> None:
    one = make(new_backend(), tb.Rate(1000, 1.0))
    one.pause(30)
    one.reset()  # (this process's next request goes after the reset, itself after the pause)
    async with one.acquire(tokens=1, timeout=HANG):
        pass


async def test_a_lease_held_across_a_reset_gives_nothing_back(
    backend: Backend,
) -> None:
    limiter = make(backend, tb.Rate(100, 60.0))
    async with limiter.acquire(tokens=100) as lease:
        limiter.reset()
        lease.settle(tokens=10)  # 90 less: forgotten, nothing back
    await settled_in(backend)
    async with limiter.acquire(tokens=100, timeout=0.5):  # at once: the window is new
        pass
    assert not await fits(limiter, tokens=1)


async def test_a_reset_from_a_thread_without_a_loop(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    limiter = make(new_backend(), tb.Rate(100, 60.0))

    def work() -> None:
        with limiter.acquire_blocking(tokens=100):
            pass
        limiter.reset()  # (Redis: blocks for the deletion, made in the portal's loop)
        with limiter.acquire_blocking(tokens=100, timeout=0.5):
            pass

    await asyncio.to_thread(work)


async def test_a_reset_leaves_a_groups_shared_pool_alone(backend: Backend) -> None:
    group = tb.BucketGroup(
        {
            "a": tb.Limiter(requests_per_minute=10, backend=backend, key="a" if backend else None),
            "b": tb.Limiter(requests_per_minute=10, backend=backend, key="b" if backend else None),
        }
    )
    group.share("org", ["a"], tokens_per_minute=100)  # a pool with one member so far
    async with group.acquire("a", tokens=100):
        pass
    group.reset("a")
    await settled_in(backend)
    assert not await fits(group["a"], tokens=50)
