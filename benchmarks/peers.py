"""The one registry of limiters under test, each used the way its own documentation shows.

A :class:`Peer` is one row of the tables: how it is built (inside the running loop) for
each workload it takes part in, how it is awaited, and why it cannot take part in a
workload when it cannot. Builders: ``uncontended()`` (capacity that never runs out),
``rated(r, c)`` (``r`` units per second, burst ``c``) and ``llm(R, T)`` (R requests and
T tokens per second; its ``acquire(cost)`` charges one request of ``cost`` tokens). The
peers' modules are imported on first use, so a missing peer only loses its rows.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import tokenbucket as tb
from _harness import Loop, Made

if TYPE_CHECKING:
    from collections.abc import Callable

# Never runs out in the uncontended workload, and an int for the peers that take ints.
UNLIMITED = 10**12
# throttled-py gives up once a wait would exceed its timeout; every run here is shorter.
THROTTLED_TIMEOUT = 600.0
# The shortest sleep of the `limits` polling loop (when its reset time has passed).
LIMITS_MIN_POLL = 0.001
TRIO_NA = "asyncio-only library (trio runs tokenbucket only)"
NO_WEIGHT = "no cost/weight argument: cannot charge tokens"
LIMITS_CAVEAT = "periods are whole seconds: configured as r per 1 s, so its burst is r, not c"
_mod = importlib.import_module  # a peer's module, imported when its limiter is built


@dataclass(frozen=True)
class Peer:
    name: str
    distribution: str
    how: str
    uncontended: Callable[[], Made] | None = None
    rated: Callable[[float, float], Made] | None = None
    llm: Callable[[int, int], Made] | None = None
    llm_how: str = ""
    not_applicable: dict[str, str] = field(default_factory=dict)
    caveat: str = ""
    module: str = ""  # the module to import; default: the distribution's name

    @property
    def ours(self) -> bool:
        return self.distribution == "tokenbucket"

    def builder(self, workload: str) -> Any:
        """Uncontended, by default: ``rated`` with a rate and a burst that never run out."""
        if workload == "uncontended" and self.uncontended is None and self.rated is not None:
            return partial(self.rated, UNLIMITED, UNLIMITED)
        return {"uncontended": self.uncontended, "llm": self.llm}.get(workload, self.rated)

    def build(self, workload: str, *args: float) -> Callable[[], Made]:
        """What builds this peer's limiter for ``workload`` (inside the running loop)."""
        builder = self.builder(workload)
        assert builder is not None
        return lambda: builder(*args)

    def why_not(self, workload: str, loop: Loop | None = None) -> str | None:
        """Why this peer has no figures for ``workload`` (on ``loop``), or None."""
        module = self.module or self.distribution.replace("-", "_")
        if importlib.util.find_spec(module) is None:
            return f"{self.distribution} is not installed"
        if loop is not None and loop.is_trio and (not self.ours or "gather" in self.name):
            return TRIO_NA
        return self.not_applicable.get(workload)


def _entered(context: Callable[[], Any]) -> Made:
    async def acquire() -> None:
        async with context():
            pass  # the request would be sent here

    return Made(acquire)


# -- tokenbucket -------------------------------------------------------------------------


def _tb_limiter(concurrency: int | None = None) -> Made:
    limiter = tb.Limiter(
        requests_per_minute=UNLIMITED, tokens_per_minute=UNLIMITED, max_concurrency=concurrency
    )
    return _entered(lambda: limiter.acquire(tokens=10))


def _tb_sequential() -> Made:
    requests = tb.TokenBucket(rate=1e12, capacity=1e12)
    tokens = tb.TokenBucket(rate=1e12, capacity=1e12)

    async def acquire() -> None:
        await requests.acquire()
        await tokens.acquire(10)

    return Made(acquire)


def _tb_limiter_llm(r: int, t: int) -> Made:
    limiter = tb.Limiter(requests_per_second=r, tokens_per_second=t)

    async def acquire(cost: int) -> None:
        async with limiter.acquire(tokens=cost):
            pass

    return Made(acquire)


def _gather(requests: Any, tokens: Any) -> Made:
    async def acquire(cost: int = 10) -> None:
        await asyncio.gather(requests.acquire(1), tokens.acquire(cost))

    return Made(acquire)


# -- the peers ---------------------------------------------------------------------------


def _aiolimiter(rate: float, capacity: float) -> Made:
    limiter = _mod("aiolimiter").AsyncLimiter(max_rate=capacity, time_period=capacity / rate)
    return Made(limiter.acquire)


def _throttle(rate: float, capacity: float) -> Made:
    throttler = _mod("asyncio_throttle").Throttler(
        rate_limit=round(capacity), period=capacity / rate
    )
    return _entered(lambda: throttler)


def _limits(strategy: str, per_second: float, tokens: float | None = None) -> Made:
    """``limits`` never waits: its users poll, sleeping until the reset time it reports
    (wall-clock seconds), at least LIMITS_MIN_POLL. With ``tokens``: requests, then tokens."""
    limits = _mod("limits")
    limiter = getattr(_mod("limits.aio.strategies"), strategy)(
        _mod("limits.aio.storage").MemoryStorage()
    )
    items = [limits.RateLimitItemPerSecond(round(per_second))]
    if tokens is not None:
        items.append(limits.RateLimitItemPerSecond(round(tokens)))
    hit, stats, wall = limiter.hit, limiter.get_window_stats, time.time

    async def take(item: Any, cost: int) -> None:
        while not await hit(item, "bench", cost=cost):
            reset_time, _remaining = await stats(item, "bench")
            await asyncio.sleep(max(reset_time - wall(), LIMITS_MIN_POLL))

    async def acquire(cost: int = 1) -> None:
        await take(items[0], 1)
        if len(items) > 1:
            await take(items[1], cost)

    return Made(acquire)


def _pyrate(rate: float, capacity: float) -> Made:
    pyrate = _mod("pyrate_limiter")
    bucket = pyrate.StateBucket(
        [pyrate.Rate(round(rate), pyrate.Duration.SECOND, burst=round(capacity))],
        algorithm=pyrate.TokenBucket(),
    )
    limiter = pyrate.Limiter(pyrate.BucketAsyncWrapper(bucket))

    async def acquire() -> None:
        if not await limiter.try_acquire_async("bench"):  # v4: blocks by default
            raise RuntimeError("pyrate-limiter refused while blocking")

    return Made(acquire, limiter.close)


def _pyrate_llm(r: int, t: int) -> Made:
    # One Limiter per dimension: a bucket's rates all count the same item weights.
    pyrate = _mod("pyrate_limiter")
    second = pyrate.Duration.SECOND
    requests = pyrate.Limiter(pyrate.InMemoryBucket([pyrate.Rate(r, second)]))
    tokens = pyrate.Limiter(pyrate.InMemoryBucket([pyrate.Rate(t, second)]))

    async def acquire(cost: int) -> None:
        if not await requests.try_acquire_async("requests"):
            raise RuntimeError("pyrate-limiter refused a request")
        if not await tokens.try_acquire_async("tokens", weight=cost):
            raise RuntimeError(f"pyrate-limiter refused {cost} tokens")

    def close() -> None:
        requests.close()
        tokens.close()

    return Made(acquire, close)


def _throttled(rate: float, capacity: float, algorithm: str = "TOKEN_BUCKET") -> Any:
    aio = _mod("throttled.asyncio")
    quota = aio.rate_limiter.per_sec(round(rate), burst=round(capacity))
    return aio.Throttled(
        key="bench",
        using=getattr(aio.RateLimiterType, algorithm).value,
        quota=quota,
        store=aio.store.MemoryStore(),  # the global default store would outlive the loop
        timeout=THROTTLED_TIMEOUT,
    )


def _throttled_rated(rate: float, capacity: float) -> Made:
    limit = _throttled(rate, capacity).limit

    async def acquire() -> None:
        if (await limit()).limited:
            raise RuntimeError("throttled-py gave up waiting")

    return Made(acquire)


def _throttled_llm(r: int, t: int) -> Made:
    # GCRA, as in throttled-py's wait-and-retry example; per_sec(n) holds a second's worth.
    requests, tokens = _throttled(r, r, "GCRA"), _throttled(t, t, "GCRA")

    async def acquire(cost: int) -> None:
        if (await requests.limit(cost=1)).limited or (await tokens.limit(cost=cost)).limited:
            raise RuntimeError("throttled-py gave up waiting")

    return Made(acquire)


def _limits_peer(kind: str, llm_how: str) -> Peer:
    strategy = f"{kind}RateLimiter"
    return Peer(
        f"limits {kind} (polled)",
        "limits",
        f"{_POLL} on {strategy}(MemoryStorage()), per_second(r)",
        lambda: _limits(strategy, UNLIMITED),
        lambda r, c: _limits(strategy, r),
        llm=lambda r, t: _limits(strategy, r, t),
        llm_how=("the polling loop " if kind == "MovingWindow" else "the same polling loop ")
        + llm_how,
        caveat=LIMITS_CAVEAT,
    )


TOKENBUCKET = "tokenbucket.TokenBucket"
LIMITER = "tokenbucket.Limiter"
LIMITER_CONCURRENCY = "tokenbucket.Limiter (max_concurrency)"
TB_PAIR = "tokenbucket.TokenBucket x2 (sequential)"
AIO_GATHER = "aiolimiter.AsyncLimiter x2 (gather)"
_GATHER_HOW = "`gather(req.acquire(1), tok.acquire(c))`"
_POLL = "`while not await hit(item): sleep(reset - now)`"


def all_peers() -> list[Peer]:
    """tokenbucket first, then the peers, in the order of the tables."""
    return [
        Peer(
            TOKENBUCKET,
            "tokenbucket",
            "`await TokenBucket(rate=r, capacity=c).acquire()`",
            rated=lambda r, c: Made(tb.TokenBucket(rate=r, capacity=c).acquire),
        ),
        Peer(
            "tokenbucket.SlidingWindow",
            "tokenbucket",
            "`await SlidingWindow(limit=n, window=w).acquire()` (uncontended only)",
            lambda: Made(tb.SlidingWindow(limit=1e12, window=1.0).acquire),
        ),
        Peer(
            LIMITER,
            "tokenbucket",
            "`async with Limiter(requests_per_minute=R, tokens_per_minute=T)"
            ".acquire(tokens=10):` (uncontended; LLM: per second, tokens=c)",
            _tb_limiter,
            llm=_tb_limiter_llm,
            llm_how="one `async with limiter.acquire(tokens=c)` (exact sliding windows)",
        ),
        Peer(
            LIMITER_CONCURRENCY,
            "tokenbucket",
            "the same with `max_concurrency=...` (uncontended only)",
            lambda: _tb_limiter(UNLIMITED),
        ),
        Peer(
            TB_PAIR,
            "tokenbucket",
            "`await requests.acquire(); await tokens.acquire(10)` on two TokenBuckets",
            _tb_sequential,
        ),
        Peer(
            "tokenbucket.TokenBucket x2 (gather)",
            "tokenbucket",
            "LLM workload only",
            llm=lambda r, t: _gather(
                tb.TokenBucket(rate=r, capacity=r), tb.TokenBucket(rate=t, capacity=t)
            ),
            llm_how=f"{_GATHER_HOW}, TokenBucket(R, R) and (T, T)",
        ),
        Peer(
            "aiolimiter.AsyncLimiter",
            "aiolimiter",
            "`await AsyncLimiter(max_rate=c, time_period=c / r).acquire()`",
            lambda: Made(_mod("aiolimiter").AsyncLimiter(1e12, 1).acquire),
            _aiolimiter,
        ),
        Peer(
            AIO_GATHER,
            "aiolimiter",
            f"{_GATHER_HOW} on AsyncLimiter(R, 60) and (T, 60): the pattern Limiter replaces",
            lambda: _gather(*(_mod("aiolimiter").AsyncLimiter(UNLIMITED, 60) for _ in "rt")),
            llm=lambda r, t: _gather(
                _mod("aiolimiter").AsyncLimiter(r, 1.0), _mod("aiolimiter").AsyncLimiter(t, 1.0)
            ),
            llm_how=f"{_GATHER_HOW}, AsyncLimiter(R, 1) and (T, 1)",
        ),
        _limits_peer("MovingWindow", "with `cost=c`, requests then tokens, one MemoryStorage"),
        _limits_peer("SlidingWindowCounter", "on SlidingWindowCounterRateLimiter"),
        Peer(
            "pyrate_limiter.Limiter",
            "pyrate-limiter",
            "`await Limiter(BucketAsyncWrapper(StateBucket([Rate(r, SECOND, burst=c)], "
            "algorithm=TokenBucket()))).try_acquire_async(name)` (buffer_ms=50)",
            rated=_pyrate,
            llm=_pyrate_llm,
            llm_how="two Limiters: `await req.try_acquire_async(...)` then `await tok."
            "try_acquire_async(..., weight=c)`, InMemoryBucket([Rate(R, SECOND)]) and (T)",
        ),
        Peer(
            "throttled.asyncio.Throttled",
            "throttled-py",
            "`await Throttled(using=TOKEN_BUCKET, quota=per_sec(r, burst=c), "
            "store=MemoryStore(), timeout=600).limit()` (wait-and-retry mode)",
            rated=_throttled_rated,
            llm=_throttled_llm,
            llm_how="two GCRA Throttled: `await req.limit(cost=1)` then "
            "`await tok.limit(cost=c)`, per_sec(R) and per_sec(T), timeout=600",
            module="throttled",
        ),
        Peer(
            "asyncio_throttle.Throttler",
            "asyncio-throttle",
            "`async with Throttler(rate_limit=c, period=c / r):` (polls every 10 ms)",
            rated=_throttle,
            not_applicable={"llm": NO_WEIGHT},
        ),
    ]


def distributions() -> list[str]:
    return sorted({p.distribution for p in all_peers()} - {"tokenbucket"})


def for_workload(workload: str, loop: Loop) -> list[Peer]:
    """The peers that run ``workload`` on ``loop``."""
    return [p for p in all_peers() if p.builder(workload) and p.why_not(workload, loop) is None]


def not_applicable(workload: str, loop: Loop) -> list[tuple[str, str]]:
    """(row, reason) for the peers that cannot run ``workload`` on ``loop``."""
    if loop.is_trio:
        return [("every peer", TRIO_NA)]
    return [
        (p.name, reason)
        for p in all_peers()
        if (p.builder(workload) or workload in p.not_applicable)
        and (reason := p.why_not(workload, loop)) is not None
    ]


def by_name(name: str) -> Peer:
    return next(p for p in all_peers() if p.name == name)
