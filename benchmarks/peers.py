"""The limiters compared by ``run_all.py``, each used the way its own documentation shows.

Every peer is described by a :class:`Peer`: how to build it for the uncontended workload
(capacity that never runs out) and for a rated workload (``rate`` units per second with a
burst of ``capacity``), inside the running event loop, and why it cannot take part in a
workload when it cannot. The peers' modules are imported lazily, on first use, so that a
worker process only imports what it runs and a missing peer only loses its rows.

How each peer is configured for "``rate`` per second, burst ``capacity``" (``r``, ``c``):

- ``aiolimiter.AsyncLimiter(max_rate=c, time_period=c / r)``: a leaky bucket of ``c``.
- ``asyncio_throttle.Throttler(rate_limit=c, period=c / r)``, entered with
  ``async with``: a log of the last ``c`` grants that polls every ``retry_interval``
  (default 10 ms) while full.
- ``limits``: ``RateLimitItemPerSecond(r)`` (its periods are whole seconds, so the burst is
  a second's worth, ``r``) with ``MovingWindowRateLimiter`` or
  ``SlidingWindowCounterRateLimiter`` on the async ``MemoryStorage``. ``limits`` never
  waits; its users poll: ``while not await hit(...)``, sleeping until the reset time
  ``get_window_stats`` reports.
- ``pyrate_limiter``: ``Limiter(BucketAsyncWrapper(StateBucket([Rate(r, Duration.SECOND,
  burst=c)], algorithm=TokenBucket())))`` and ``await limiter.try_acquire_async(name)``
  (v4: blocking by default, default ``buffer_ms=50``).
- ``throttled``: ``Throttled(using=TOKEN_BUCKET, quota=per_sec(r, burst=c),
  store=MemoryStore(), timeout=...)`` and ``await throttle.limit(key)``: its wait-and-retry
  mode, which sleeps ``max(min(retry_after, 0.5), 0.2)`` s between attempts.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import importlib.util
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import tokenbucket as tb

Acquire = Callable[[], Awaitable[None]]

# Big enough never to run out in the uncontended workload, and an int for the peers
# that take only ints.
UNLIMITED = 10**12

# throttled-py gives up once a wait would exceed its timeout; every run here is shorter.
THROTTLED_TIMEOUT = 600.0

# The shortest sleep of the `limits` polling loop (when its reset time has passed).
LIMITS_MIN_POLL = 0.001


def _nothing() -> None:
    """No clean-up needed."""


@dataclass(frozen=True)
class Made:
    """A limiter built inside the running loop: ``acquire()`` returns once one unit is
    granted; ``close()`` runs after every task of the run has ended."""

    acquire: Acquire
    close: Callable[[], None] = _nothing


@dataclass(frozen=True)
class Peer:
    """One limiter under test.

    ``uncontended()`` and ``rated(rate, capacity)`` build it (``None``: cannot run that
    workload, see ``not_applicable``). ``distribution`` names the installed package
    whose version the report prints; ``how`` says how it is configured and awaited.
    """

    name: str
    distribution: str
    module: str
    how: str
    uncontended: Callable[[], Made] | None
    rated: Callable[[float, float], Made] | None
    # workload -> why this peer cannot express it ("uncontended", "saturation", ...)
    not_applicable: dict[str, str] = field(default_factory=dict)
    # How this peer's configuration differs from "rate r, burst c", if it does.
    caveat: str = ""

    @property
    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def why_not(self, workload: str) -> str | None:
        """The reason this peer has no figures for ``workload``, or None."""
        if not self.installed:
            return f"{self.distribution} is not installed"
        return self.not_applicable.get(workload)


def version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _module(name: str) -> Any:
    return importlib.import_module(name)


# -- tokenbucket -------------------------------------------------------------------------


def _tb_bucket(rate: float, capacity: float) -> Made:
    return Made(tb.TokenBucket(rate=rate, capacity=capacity).acquire)


def _tb_window() -> Made:
    return Made(tb.SlidingWindow(limit=1e12, window=1.0).acquire)


# -- aiolimiter --------------------------------------------------------------------------


def _aiolimiter(rate: float, capacity: float) -> Made:
    limiter = _module("aiolimiter").AsyncLimiter(max_rate=capacity, time_period=capacity / rate)
    acquire: Acquire = limiter.acquire
    return Made(acquire)


def _aiolimiter_uncontended() -> Made:
    acquire: Acquire = _module("aiolimiter").AsyncLimiter(1e12, 1).acquire
    return Made(acquire)


# -- asyncio-throttle --------------------------------------------------------------------


def _throttle(rate: float, capacity: float) -> Made:
    throttler = _module("asyncio_throttle").Throttler(
        rate_limit=round(capacity), period=capacity / rate
    )

    async def acquire() -> None:
        async with throttler:
            pass

    return Made(acquire)


def _throttle_uncontended() -> Made:
    return _throttle(UNLIMITED, UNLIMITED)


# -- limits (polled) ---------------------------------------------------------------------


def _limits(strategy: str, rate: float) -> Made:
    limits = _module("limits")
    storage = _module("limits.aio.storage").MemoryStorage()
    limiter = getattr(_module("limits.aio.strategies"), strategy)(storage)
    item = limits.RateLimitItemPerSecond(round(rate))
    hit = limiter.hit
    stats = limiter.get_window_stats
    wall = time.time

    async def acquire() -> None:
        # `limits` never waits: poll, sleeping until the reset time it reports
        # (wall-clock seconds), at least LIMITS_MIN_POLL.
        while not await hit(item, "bench"):
            reset_time, _remaining = await stats(item, "bench")
            await asyncio.sleep(max(reset_time - wall(), LIMITS_MIN_POLL))

    return Made(acquire)


def _limits_moving(rate: float, capacity: float) -> Made:
    return _limits("MovingWindowRateLimiter", rate)


def _limits_counter(rate: float, capacity: float) -> Made:
    return _limits("SlidingWindowCounterRateLimiter", rate)


def _limits_moving_uncontended() -> Made:
    return _limits("MovingWindowRateLimiter", UNLIMITED)


def _limits_counter_uncontended() -> Made:
    return _limits("SlidingWindowCounterRateLimiter", UNLIMITED)


# -- pyrate-limiter ----------------------------------------------------------------------


def _pyrate(rate: float, capacity: float) -> Made:
    pyrate = _module("pyrate_limiter")
    bucket = pyrate.StateBucket(
        [pyrate.Rate(round(rate), pyrate.Duration.SECOND, burst=round(capacity))],
        algorithm=pyrate.TokenBucket(),
    )
    limiter = pyrate.Limiter(pyrate.BucketAsyncWrapper(bucket))
    try_acquire = limiter.try_acquire_async

    async def acquire() -> None:
        if not await try_acquire("bench"):
            raise RuntimeError("pyrate-limiter refused while blocking")

    return Made(acquire, limiter.close)


def _pyrate_uncontended() -> Made:
    return _pyrate(UNLIMITED, UNLIMITED)


# -- throttled-py ------------------------------------------------------------------------


def _throttled(rate: float, capacity: float) -> Made:
    aio = _module("throttled.asyncio")
    throttle = aio.Throttled(
        key="bench",
        using=aio.RateLimiterType.TOKEN_BUCKET.value,
        quota=aio.rate_limiter.per_sec(round(rate), burst=round(capacity)),
        # A store per limiter: the default global store would outlive the event loop.
        store=aio.store.MemoryStore(),
        timeout=THROTTLED_TIMEOUT,
    )
    limit = throttle.limit

    async def acquire() -> None:
        if (await limit()).limited:
            raise RuntimeError("throttled-py gave up waiting")

    return Made(acquire)


def _throttled_uncontended() -> Made:
    return _throttled(UNLIMITED, UNLIMITED)


# -- the list ----------------------------------------------------------------------------

TOKENBUCKET = "tokenbucket.TokenBucket"

_LIMITS_CAVEAT = "periods are whole seconds: configured as r per 1 s, so its burst is r, not c"
_NO_WEIGHT = "no cost/weight argument: cannot charge tokens"


def all_peers() -> list[Peer]:
    """tokenbucket first, then the peers, in the order of the tables."""
    return [
        Peer(
            TOKENBUCKET,
            "tokenbucket",
            "tokenbucket",
            "`await TokenBucket(rate=r, capacity=c).acquire()`",
            lambda: _tb_bucket(1e12, 1e12),
            _tb_bucket,
        ),
        Peer(
            "tokenbucket.SlidingWindow",
            "tokenbucket",
            "tokenbucket",
            "`await SlidingWindow(limit=n, window=w).acquire()` (uncontended only here)",
            _tb_window,
            None,
        ),
        Peer(
            "aiolimiter.AsyncLimiter",
            "aiolimiter",
            "aiolimiter",
            "`await AsyncLimiter(max_rate=c, time_period=c / r).acquire()`",
            _aiolimiter_uncontended,
            _aiolimiter,
        ),
        Peer(
            "limits MovingWindow (polled)",
            "limits",
            "limits",
            "`while not await MovingWindowRateLimiter(MemoryStorage()).hit(per_second(r)): "
            "sleep(reset - now)`",
            _limits_moving_uncontended,
            _limits_moving,
            caveat=_LIMITS_CAVEAT,
        ),
        Peer(
            "limits SlidingWindowCounter (polled)",
            "limits",
            "limits",
            "`while not await SlidingWindowCounterRateLimiter(MemoryStorage())"
            ".hit(per_second(r)): sleep(reset - now)`",
            _limits_counter_uncontended,
            _limits_counter,
            caveat=_LIMITS_CAVEAT,
        ),
        Peer(
            "pyrate_limiter.Limiter",
            "pyrate-limiter",
            "pyrate_limiter",
            "`await Limiter(BucketAsyncWrapper(StateBucket([Rate(r, SECOND, burst=c)], "
            "algorithm=TokenBucket()))).try_acquire_async(name)` (buffer_ms=50)",
            _pyrate_uncontended,
            _pyrate,
        ),
        Peer(
            "throttled.asyncio.Throttled",
            "throttled-py",
            "throttled",
            "`await Throttled(using=TOKEN_BUCKET, quota=per_sec(r, burst=c), "
            "store=MemoryStore(), timeout=600).limit()` (wait-and-retry mode)",
            _throttled_uncontended,
            _throttled,
        ),
        Peer(
            "asyncio_throttle.Throttler",
            "asyncio-throttle",
            "asyncio_throttle",
            "`async with Throttler(rate_limit=c, period=c / r):` (polls every 10 ms)",
            _throttle_uncontended,
            _throttle,
            not_applicable={"llm": _NO_WEIGHT},
        ),
    ]


def rated_peers() -> list[Peer]:
    return [p for p in all_peers() if p.rated is not None]


NO_WEIGHT = _NO_WEIGHT
