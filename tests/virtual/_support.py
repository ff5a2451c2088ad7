"""What the virtual-time tests share: limiters of a known shape and checks on grant logs."""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import tokenbucket as tb

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from anyio.abc import TaskGroup

# looptime keeps time in whole microseconds; trio's MockClock is exact.
TOL = 1e-5

Single = tb.TokenBucket | tb.SlidingWindow

KINDS = pytest.mark.parametrize("kind", ["bucket", "window"])


def now() -> float:
    return anyio.current_time()


def make(kind: str) -> Single:
    """A single limiter of 10 units: refilled at 1 a second, or per 10 s window."""
    if kind == "bucket":
        return tb.TokenBucket(rate=1, capacity=10)
    return tb.SlidingWindow(limit=10, window=10)


async def drain(limiter: Single) -> None:
    available = limiter.statistics().available
    assert available is not None
    if available > 0:
        assert limiter.try_acquire(available)


async def drained(kind: str) -> Single:
    """``make(kind)`` with nothing left to take."""
    limiter = make(kind)
    await drain(limiter)
    return limiter


def token_limiter(kind: str, **options: Any) -> tb.Limiter:
    """100 tokens a minute (a window, or a bucket of 100) and plenty of requests."""
    rate = tb.per_minute(100) if kind == "window" else tb.per_minute(100, burst=100)
    return tb.Limiter({"tokens": rate}, requests_per_minute=1_000, **options)


def shared_group() -> tb.BucketGroup:
    return tb.BucketGroup.from_dict(
        {"a": {"requests_per_second": 1000}, "b": {"requests_per_second": 1000}},
        shared={"org": {"tokens_per_second": 100, "members": ["a", "b"]}},
    )


async def start_in_order(tg: TaskGroup, *tasks: Callable[[], Coroutine[Any, Any, object]]) -> None:
    """Start ``tasks`` one after another, each once every task started is blocked, so
    that they arrive (and queue) in this order."""
    for task in tasks:
        tg.start_soon(task)
        await anyio.wait_all_tasks_blocked()


async def settle_while_one_waits(
    held: tb.LeaseContext, waiting: tb.LeaseContext, after: float, **settle: float
) -> None:
    """Hold ``held`` while ``waiting`` queues behind it; ``after`` seconds on, settle the
    lease with ``settle``: the waiter is granted at that same instant, not before."""
    start = now()
    granted: list[float] = []

    async def waiter() -> None:
        async with waiting:
            granted.append(now() - start)

    async with held as lease, anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(after)
        assert granted == []
        lease.settle(**settle)
        await anyio.wait_all_tasks_blocked()
        assert granted == [pytest.approx(after, abs=TOL)]


async def enter(context: tb.LeaseContext) -> None:
    async with context:
        pass


def max_in_period(grants: list[tuple[float, float]], period: float) -> float:
    """The largest amount granted in any rolling period ``[s, s + period)``.

    It is enough to look at periods starting at a grant: any other period can be
    shifted right to its first grant without losing anything.
    """
    grants = sorted(grants)
    best = 0.0
    for i, (start, _) in enumerate(grants):
        total = 0.0
        for t, amount in grants[i:]:
            if t >= start + period - 1e-6:
                break
            total += amount
        best = max(best, total)
    return best


def non_decreasing(values: list[float]) -> bool:
    return all(a <= b + 1e-9 for a, b in itertools.pairwise(values))


def argument_of(error: BaseException, kind: type[Exception]) -> str:
    """The argument a tokenbucket argument error names, after checking its classes."""
    assert isinstance(error, (tb.InvalidArgumentError, tb.ArgumentTypeError))
    assert isinstance(error, tb.TokenBucketError)
    assert isinstance(error, ValueError if kind is tb.InvalidArgumentError else TypeError)
    return error.argument


BAD_AMOUNTS: list[tuple[object, type[Exception]]] = [
    (-1, tb.InvalidArgumentError),
    (math.nan, tb.InvalidArgumentError),
    (math.inf, tb.InvalidArgumentError),
    (-math.inf, tb.InvalidArgumentError),
    (True, tb.ArgumentTypeError),
    (None, tb.ArgumentTypeError),
    ("5", tb.ArgumentTypeError),
    (1j, tb.ArgumentTypeError),
]
