"""Limiter.update on every backend: every process takes the change.

In memory the "other process" is the same limiter; on Redis it is another client of the
same keys, which learns of the change before it next reserves.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import pytest

import tokenbucket as tb
from tests.contract._support import HANG, Backend, clock, fits, settled_in

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

WINDOW = tb.Rate(100, 60.0)
BUCKET = tb.Rate(100, 60.0, burst=100)


def make(backend: Backend, rate: tb.Rate = WINDOW, **kwargs: object) -> tb.Limiter:
    key = "update" if backend is not None else None
    return tb.Limiter({"tokens": rate}, backend=backend, key=key, **kwargs)  # type: ignore[arg-type]


def two(
    kind: str, new_backend: Callable[[], Backend], rate: tb.Rate = WINDOW, **kwargs: object
) -> tuple[tb.Limiter, tb.Limiter, Backend]:
    """A limiter, and the same limits as another process sees them."""
    backend = new_backend()
    one = make(backend, rate, **kwargs)
    return one, make(new_backend(), rate, **kwargs) if kind == "redis" else one, backend


async def test_a_lower_window_holds_for_every_process(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    one, other, backend = two(kind, new_backend)
    async with other.acquire(tokens=10):  # (the other process has asked before)
        pass
    async with one.acquire(tokens=50):
        pass
    one.update(tokens_per_minute=tb.Rate(50, 60.0))
    assert one.rates["tokens"] == (tb.Rate(50, 60.0),)  # at once, here
    await settled_in(backend)
    # 60 in the window against 50 now: nothing more, in any process.
    assert not await fits(other, tokens=1)
    assert other.rates["tokens"] == (tb.Rate(50, 60.0),)
    assert not await fits(one, tokens=1)


async def test_a_raise_admits_more_in_every_process(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    one, other, backend = two(kind, new_backend)
    async with other.acquire(tokens=100):
        pass
    assert not await fits(one, tokens=1)
    one.update(tokens_per_minute=tb.Rate(150, 60.0))
    await settled_in(backend)
    assert await fits(other, tokens=50)
    assert not await fits(other, tokens=1)
    assert other.statistics().counters.admitted_units["tokens"] == 150


async def test_a_lower_bucket_keeps_at_most_its_new_burst(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    one, other, backend = two(kind, new_backend, BUCKET)
    async with one.acquire(tokens=20):  # 80 left
        pass
    one.update(tokens_per_minute=tb.Rate(60, 60.0, burst=50))
    await settled_in(backend)
    assert await fits(other, tokens=50)  # 50 on hand
    assert not await fits(other, tokens=2)  # then 1 a second
    assert other.rates["tokens"] == (tb.Rate(60, 60.0, burst=50),)


async def test_a_bucket_refills_at_its_new_rate_in_every_process(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    one, other, backend = two(kind, new_backend, BUCKET)
    async with one.acquire(tokens=100):  # empty: 0.6 s a token
        pass
    one.update(tokens_per_minute=tb.Rate(6000, 60.0, burst=100))  # 100 a second
    await settled_in(backend)
    start = clock()
    async with other.acquire(tokens=20, timeout=HANG):
        assert clock() - start < 2.0  # 12 s at the old rate


async def test_the_cap_changes_for_every_process(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    one, other, backend = two(kind, new_backend, tb.Rate(1000, 1.0), max_concurrency=1)
    async with one.acquire(tokens=1):
        assert not await fits(other, tokens=1)  # the one slot is held
        one.update(max_concurrency=2)
        await settled_in(backend)
        async with other.acquire(tokens=1, timeout=HANG):
            assert other.max_concurrency == 2
            assert not await fits(one, tokens=1)  # both slots held
    one.update(max_concurrency=1)
    await settled_in(backend)
    async with other.acquire(tokens=1):
        assert not await fits(one, tokens=1)
    assert one.max_concurrency == other.max_concurrency == 1


async def test_a_process_made_later_takes_the_change(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    backend = new_backend()
    one = make(backend)
    one.update(tokens_per_minute=tb.Rate(10, 60.0))
    await settled_in(backend)
    later = make(new_backend()) if kind == "redis" else one
    assert await fits(later, tokens=10)
    assert not await fits(later, tokens=1)
    assert later.rates["tokens"] == (tb.Rate(10, 60.0),)


async def test_a_reset_keeps_the_change(kind: str, new_backend: Callable[[], Backend]) -> None:
    one, other, backend = two(kind, new_backend)
    one.update(tokens_per_minute=tb.Rate(10, 60.0))
    one.reset()
    await settled_in(backend)
    assert await fits(other, tokens=10)
    assert not await fits(other, tokens=1)


async def test_updates_of_two_processes_both_hold(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    backend = new_backend()
    limits = {"requests": tb.Rate(100, 60.0), "tokens": tb.Rate(1000, 60.0)}
    key = "update" if backend is not None else None
    one = tb.Limiter(limits, backend=backend, key=key)
    other = tb.Limiter(limits, backend=new_backend(), key=key) if kind == "redis" else one
    one.update(requests_per_minute=tb.Rate(50, 60.0))
    await settled_in(backend)
    other.update(tokens_per_minute=tb.Rate(500, 60.0))  # (it has not asked since)
    await settled_in(backend)
    for limiter in (one, other):
        assert await fits(limiter, tokens=1)
        assert limiter.rates == {
            "requests": (tb.Rate(50, 60.0),),
            "tokens": (tb.Rate(500, 60.0),),
        }


async def test_an_update_from_a_thread_without_a_loop(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    one, other, _ = two(kind, new_backend)

    def work() -> None:
        one.update(tokens_per_minute=tb.Rate(10, 60.0))  # (Redis: sent before it returns)

    await asyncio.to_thread(work)
    assert await fits(other, tokens=10)
    assert not await fits(other, tokens=1)


async def test_a_members_update_is_seen_by_the_same_group_elsewhere(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    def group(backend: Backend) -> tb.BucketGroup:
        key = "update-group" if backend is not None else None
        return tb.BucketGroup(default={"tokens_per_minute": 100}, backend=backend, key=key)

    backend = new_backend()
    one = group(backend)
    other = group(new_backend()) if kind == "redis" else one
    one["a"].update(tokens_per_minute=10)
    await settled_in(backend)
    assert await fits(other["a"], tokens=10)
    assert not await fits(other["a"], tokens=1)


async def test_another_process_logs_the_change(
    kind: str, new_backend: Callable[[], Backend], caplog: pytest.LogCaptureFixture
) -> None:
    one, other, backend = two(kind, new_backend)
    caplog.set_level(logging.INFO, logger="tokenbucket")
    one.update(tokens_per_minute=tb.Rate(50, 60.0))
    await settled_in(backend)
    assert await fits(other, tokens=1)
    said = [r.getMessage() for r in caplog.records]
    assert [line for line in said if "updated to" in line] == [said[0]], said
    changed = [line for line in said if "changed by another process" in line]
    assert len(changed) == (1 if kind == "redis" else 0), said


async def test_threads_of_another_process_take_the_change(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    one, other, backend = two(kind, new_backend)

    def work(tokens: float) -> bool:
        try:
            with other.acquire_blocking(tokens=tokens, timeout=0.05):
                return True
        except tb.AcquireTimeoutError:
            return False

    assert await asyncio.to_thread(work, 10)  # (its threads have asked before)
    one.update(tokens_per_minute=tb.Rate(20, 60.0))
    await settled_in(backend)
    assert await asyncio.to_thread(work, 10)
    assert not await asyncio.to_thread(work, 1)
    assert other.rates["tokens"] == (tb.Rate(20, 60.0),)
