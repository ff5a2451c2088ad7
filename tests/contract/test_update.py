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


async def sent(limiter: tb.Limiter) -> None:
    """Wait until the limiter's update has reached where its state lives: its own next
    request goes after it (on Redis, others' requests need not)."""
    async with limiter.acquire(tokens=0, timeout=HANG):
        pass


def make(backend: Backend, rate: tb.Rate = WINDOW, **kwargs: object) -> tb.Limiter:
    key = "update" if backend is not None else None
    return tb.Limiter({"tokens": rate}, backend=backend, key=key, **kwargs)  # type: ignore[arg-type]


def two(
    kind: str, new_backend: Callable[[], Backend], rate: tb.Rate = WINDOW, **kwargs: object
) -> tuple[tb.Limiter, tb.Limiter]:
    """A limiter, and the same limits as another process sees them."""
    one = make(new_backend(), rate, **kwargs)
    return one, make(new_backend(), rate, **kwargs) if kind == "redis" else one


async def test_a_lower_window_holds_for_every_process(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    one, other = two(kind, new_backend)
    async with other.acquire(tokens=10):  # (the other process has asked before)
        pass
    async with one.acquire(tokens=50):
        pass
    one.update(tokens_per_minute=tb.Rate(50, 60.0))
    await sent(one)
    assert one.rates["tokens"] == (tb.Rate(50, 60.0),)
    # 60 in the window against 50 now: nothing more, in any process.
    assert not await fits(other, tokens=1)
    assert other.rates["tokens"] == (tb.Rate(50, 60.0),)
    assert not await fits(one, tokens=1)


async def test_a_raise_admits_more_in_every_process(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    one, other = two(kind, new_backend)
    async with other.acquire(tokens=100):
        pass
    assert not await fits(one, tokens=1)
    one.update(tokens_per_minute=tb.Rate(150, 60.0))
    await sent(one)
    assert await fits(other, tokens=50)
    assert not await fits(other, tokens=1)
    assert other.statistics().counters.admitted_units["tokens"] == 150


async def test_a_lower_bucket_keeps_at_most_its_new_burst(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    one, other = two(kind, new_backend, BUCKET)
    async with one.acquire(tokens=20):  # 80 left
        pass
    one.update(tokens_per_minute=tb.Rate(60, 60.0, burst=50))
    await sent(one)
    assert await fits(other, tokens=50)  # 50 on hand
    assert not await fits(other, tokens=2)  # then 1 a second
    assert other.rates["tokens"] == (tb.Rate(60, 60.0, burst=50),)


async def test_a_bucket_refills_at_its_new_rate_in_every_process(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    one, other = two(kind, new_backend, BUCKET)
    async with one.acquire(tokens=100):  # empty: 0.6 s a token
        pass
    one.update(tokens_per_minute=tb.Rate(6000, 60.0, burst=100))  # 100 a second
    await sent(one)
    start = clock()
    async with other.acquire(tokens=20, timeout=HANG):
        assert clock() - start < 2.0  # 12 s at the old rate


async def test_the_cap_changes_for_every_process(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    one, other = two(kind, new_backend, tb.Rate(1000, 1.0), max_concurrency=1)
    async with one.acquire(tokens=1):
        assert not await fits(other, tokens=1)  # the one slot is held
        one.update(max_concurrency=2)
        await sent(one)
        async with other.acquire(tokens=1, timeout=HANG):
            assert other.max_concurrency == 2
            assert not await fits(one, tokens=1)  # both slots held
    one.update(max_concurrency=1)
    await sent(one)
    async with other.acquire(tokens=1):
        assert not await fits(one, tokens=1)
    assert one.max_concurrency == other.max_concurrency == 1


async def test_a_process_made_later_takes_the_change(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    backend = new_backend()
    one = make(backend)
    one.update(tokens_per_minute=tb.Rate(10, 60.0))
    await sent(one)
    later = make(new_backend()) if kind == "redis" else one
    assert await fits(later, tokens=10)
    assert not await fits(later, tokens=1)
    assert later.rates["tokens"] == (tb.Rate(10, 60.0),)


async def test_a_reset_keeps_the_change(kind: str, new_backend: Callable[[], Backend]) -> None:
    one, other = two(kind, new_backend)
    one.update(tokens_per_minute=tb.Rate(10, 60.0))
    one.reset()
    await sent(one)
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
    await sent(one)
    other.update(tokens_per_minute=tb.Rate(500, 60.0))  # (it has not asked since)
    for limiter in (other, one):  # (other's next request waits for its update to land)
        assert await fits(limiter, tokens=1)
        assert limiter.rates == {
            "requests": (tb.Rate(50, 60.0),),
            "tokens": (tb.Rate(500, 60.0),),
        }


async def test_an_update_from_a_thread_without_a_loop(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    one, other = two(kind, new_backend)

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
    await sent(one["a"])
    assert await fits(other["a"], tokens=10)
    assert not await fits(other["a"], tokens=1)


async def test_another_process_logs_the_change(
    kind: str, new_backend: Callable[[], Backend], caplog: pytest.LogCaptureFixture
) -> None:
    one, other = two(kind, new_backend)
    caplog.set_level(logging.INFO, logger="tokenbucket")
    one.update(tokens_per_minute=tb.Rate(50, 60.0))
    await sent(one)
    assert await fits(other, tokens=1)
    said = [r.getMessage() for r in caplog.records]
    assert [line for line in said if "updated to" in line] == [said[0]], said
    changed = [line for line in said if "follow the backend" in line]
    assert len(changed) == (1 if kind == "redis" else 0), said


async def test_threads_of_another_process_take_the_change(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    one, other = two(kind, new_backend)

    def work(tokens: float) -> bool:
        try:
            with other.acquire_blocking(tokens=tokens, timeout=0.05):
                return True
        except tb.AcquireTimeoutError:
            return False

    assert await asyncio.to_thread(work, 10)  # (its threads have asked before)
    one.update(tokens_per_minute=tb.Rate(20, 60.0))
    await sent(one)
    assert await asyncio.to_thread(work, 10)
    assert not await asyncio.to_thread(work, 1)
    assert other.rates["tokens"] == (tb.Rate(20, 60.0),)


async def test_a_thread_store_opened_after_an_update_shares_the_limit(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    one, other = two(kind, new_backend)
    async with other.acquire(tokens=100):
        pass
    one.update(tokens_per_minute=tb.Rate(150, 60.0))
    await sent(one)

    def work(tokens: float) -> bool:  # (the first call from a thread in this process)
        try:
            with one.acquire_blocking(tokens=tokens, timeout=0.05):
                return True
        except tb.AcquireTimeoutError:
            return False

    assert await asyncio.to_thread(work, 50)  # 100 of 150 were taken elsewhere
    assert not await asyncio.to_thread(work, 1)


async def test_a_settlement_elsewhere_after_a_lower_rate_is_charged_at_it(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    backend = new_backend()
    one = make(backend, tb.Rate(100, 1.0, burst=100))
    other = make(new_backend(), tb.Rate(100, 1.0, burst=100)) if kind == "redis" else one
    async with other.acquire(tokens=100) as lease:
        one.update(tokens_per_second=tb.Rate(10, 1.0, burst=100))  # 10 a second
        await sent(one)
        lease.settle(tokens=200)  # 100 more: 10 s at the new rate (1 s at the old)
    await settled_in(backend)  # (other's settlement, sent in the background)
    assert not await fits(one, tokens=1, timeout=2.0)


async def test_a_pool_of_one_member_is_not_updated_through_it(backend: Backend) -> None:
    key = "update-pool" if backend is not None else None
    group = tb.BucketGroup({"a": tb.Limiter(requests_per_minute=10, backend=backend, key=key)})
    group.share("org", ["a"], tokens_per_minute=100)
    with pytest.raises(tb.InvalidArgumentError, match="of its own"):
        group["a"].update(tokens_per_minute=10)
    assert group["a"].rates["tokens"] == (tb.per_minute(100),)


async def test_a_raised_cap_wakes_a_waiter_of_every_process(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    one, other = two(kind, new_backend, tb.Rate(1000, 1.0), max_concurrency=1)
    granted: list[float] = []

    async def wait(limiter: tb.Limiter) -> None:
        async with limiter.acquire(tokens=1, timeout=HANG):
            granted.append(clock())

    async with one.acquire(tokens=1):
        waiting = [asyncio.ensure_future(wait(limiter)) for limiter in (one, other)]
        await asyncio.sleep(0.2)  # both wait for the one slot
        assert not granted
        start = clock()
        one.update(max_concurrency=3)
        await asyncio.wait_for(asyncio.gather(*waiting), HANG)
    assert max(granted) - start < 2.0  # not at the slot's expiry, minutes away


async def test_two_updates_in_a_row_here_tell_no_change_from_elsewhere(
    kind: str, new_backend: Callable[[], Backend], caplog: pytest.LogCaptureFixture
) -> None:
    backend = new_backend()
    one = make(backend)
    caplog.set_level(logging.INFO, logger="tokenbucket")
    one.update(tokens_per_minute=tb.Rate(50, 60.0))
    one.update(tokens_per_minute=tb.Rate(20, 60.0))
    assert await fits(one, tokens=20)
    assert not await fits(one, tokens=1)
    assert one.rates["tokens"] == (tb.Rate(20, 60.0),)
    assert not [r for r in caplog.records if "follow the backend" in r.getMessage()]


async def test_a_settlement_right_after_an_update_is_read_in_the_rates_it_was_made_in(
    backend: Backend,
) -> None:
    limiter = make(backend, tb.Rate(1, 1.0, burst=100))  # 1 a second
    async with limiter.acquire(tokens=11) as lease:  # 89 left
        limiter.update(tokens_per_second=tb.Rate(20, 1.0, burst=100))
        lease.settle(tokens=60)  # 49 more, sent at once: 40 left
    await sent(limiter)
    await settled_in(backend)
    # 1 s away at 20 a second (read in the wrong rate: 88 left, at once).
    assert not await fits(limiter, tokens=60)
