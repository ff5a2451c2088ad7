"""What the contract tests share: the limiters under test, built the same way on every
backend, and real-time helpers.

Redis has its own clock, so the contract runs in real time on both backends: grant
times measured in this process are checked from below (a limiter must never be early)
and against generous upper bounds that only catch hangs or a wait of a whole period
that should not have happened. Where "taking nothing" or "not delaying the next waiter"
must be shown, a probe with a short ``timeout`` (``PROBE``: room for a round trip, far
less than the delay a wrong answer would cause) is used where it can be.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol, TypeAlias

import pytest

import tokenbucket as tb
from tests.redis._support import Limit, RecordingBackend, schedule_errors

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from tests.redis._support import Grant
    from tokenbucket._redis import RedisBackend

# A grant measured on this process's clock may precede the instant Redis reserved by no
# more than rounding: the reservation is made before the caller sleeps its whole wait.
EPS = 1e-3
# A probe's timeout: room for a round trip to Redis; every probe would have to wait at
# least 0.2 s if the limiter were wrong.
PROBE = 0.05
# Only to catch hangs: real-time tests on a busy machine can be late, never early.
HANG = 10.0
# How late a timeout may fire on a busy machine, at most (real time, Redis included).
LATE = 0.5

# Where a limiter under test keeps its state: in memory (None), or in Redis.
Backend: TypeAlias = "RecordingBackend | None"

APIS = ["TokenBucket", "SlidingWindow", "Limiter-bucket", "Limiter-window"]
LIMITER_APIS = ["Limiter-bucket", "Limiter-window"]


class Subject:
    """One limiter under test, acquired the same way whatever its type (a ``Limiter``
    has one dimension, ``units``)."""

    def __init__(
        self, limiter: tb.TokenBucket | tb.SlidingWindow | tb.Limiter, limit: Limit
    ) -> None:
        self.limiter = limiter
        self.limit = limit

    async def acquire(self, amount: float = 1, *, timeout: float | None = None) -> None:
        if isinstance(self.limiter, tb.Limiter):
            async with self.limiter.acquire(units=amount, timeout=timeout):
                pass
        else:
            await self.limiter.acquire(amount, timeout=timeout)

    @property
    def waiters(self) -> int:
        return self.limiter.statistics().waiters

    @property
    def next_wakeup(self) -> float | None:
        return self.limiter.statistics().next_wakeup


class MakeSubject(Protocol):
    def __call__(
        self, *, bucket: tuple[float, float], window: tuple[float, float], key: str = ...
    ) -> Subject: ...


def build(
    api: str,
    backend: RedisBackend | None,
    *,
    bucket: tuple[float, float],
    window: tuple[float, float],
    key: str = "subject",
) -> Subject:
    """``api`` with ``bucket`` = (rate, capacity) or ``window`` = (limit, seconds)."""
    name = key if backend is not None else None
    rate, capacity = bucket
    size, seconds = window
    if api == "TokenBucket":
        return Subject(
            tb.TokenBucket(rate, capacity, backend=backend, key=name),
            Limit("bucket", rate, capacity),
        )
    if api == "SlidingWindow":
        return Subject(
            tb.SlidingWindow(size, seconds, backend=backend, key=name),
            Limit("window", size, seconds),
        )
    if api == "Limiter-bucket":
        return Subject(
            tb.Limiter({"units": tb.Rate(rate, 1.0, burst=capacity)}, backend=backend, key=name),
            Limit("bucket", rate, capacity),
        )
    assert api == "Limiter-window"
    return Subject(
        tb.Limiter({"units": tb.Rate(size, seconds)}, backend=backend, key=name),
        Limit("window", size, seconds),
    )


def limitation(
    reason: str,
    raises: type[BaseException] | tuple[type[BaseException], ...] = AssertionError,
) -> pytest.MarkDecorator:
    """What the in-memory limiters do and the Redis backend does not (documented in
    docs/redis.md): the test must fail, and fail this way (so that Redis missing in CI
    makes it fail rather than pass as an expected failure)."""
    return pytest.mark.xfail(strict=True, raises=raises, reason=f"known limitation: {reason}")


def clock() -> float:
    return asyncio.get_running_loop().time()


async def stamped(count: int, acquire: Callable[[], Awaitable[None]]) -> list[float]:
    """Start ``count`` acquisitions together; when each was granted, from the start."""
    start = clock()
    stamps: list[float] = []

    async def one() -> None:
        await acquire()
        stamps.append(clock() - start)

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), HANG)
    return sorted(stamps)


async def fits(limiter: tb.Limiter, *, timeout: float = PROBE, **amounts: float) -> bool:
    """Whether ``amounts`` are granted within ``timeout`` (at once, by default); a grant
    is kept."""
    try:
        async with limiter.acquire(timeout=timeout, **amounts):
            return True
    except tb.AcquireTimeoutError:
        return False


async def settled_in(backend: RedisBackend | None) -> None:
    """Let what a Redis store sends in the background (settles, feedback, give-backs)
    land; nothing to wait for in memory."""
    if backend is not None:
        await asyncio.sleep(0.05)


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition`` holds (a hang is caught by HANG)."""
    end = clock() + HANG
    while not condition():
        assert clock() < end, "the condition never held"
        await asyncio.sleep(0.001)


def assert_not_early(stamps: list[float], ideal: list[float]) -> None:
    early = [(k, s, i) for k, (s, i) in enumerate(zip(stamps, ideal, strict=True)) if s < i - EPS]
    assert not early, f"granted before the limits allow (index, at, earliest): {early}"


def assert_exact(grants: list[Grant], limits: list[Limit], count: int) -> None:
    assert len(grants) == count
    errors = schedule_errors(grants, limits)
    assert not errors, "\n".join(errors)


def check(error: BaseException, expected: type[Exception], argument: str) -> None:
    """``error`` is ``expected`` (and its built-in twin) and names ``argument``."""
    exc: object = error
    builtin = ValueError if issubclass(expected, ValueError) else TypeError
    assert isinstance(exc, expected), repr(exc)
    assert isinstance(exc, builtin), repr(exc)
    assert getattr(exc, "argument", None) == argument, repr(exc)
    assert argument in str(exc)
