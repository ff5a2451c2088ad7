"""Redis benchmarks: admissions per second and round trips per admission, against peers.

Usage::

    python benchmarks/redis_bench.py            # full run, about three minutes
    python benchmarks/redis_bench.py --quick    # smoke run for CI, about fifteen seconds
    python benchmarks/redis_bench.py --json benchmarks/results/redis.json

1, 10, 100 and 1,000 asyncio tasks in one process each loop on "acquire 1 unit" against
ONE limit kept in Redis (``redis://127.0.0.1:6379/14`` unless ``--url``; that database is
flushed before every run), in two regimes:

(a) a generous limit that never binds: raw throughput and round trips per admission,
    next to a floor (the same tasks looping on an EVALSHA of ``return 1``);
(b) a binding limit of 2,000 per second: achieved rate against the limit (and never
    above it), round trips per admission.

Peers, each used the way its users write it: ``limits`` (its async ``RedisStorage`` with
the moving window and the sliding window counter, polled, since it never waits) and
``pyrate-limiter`` (v4 ``Limiter`` on its ``RedisBucket``, and on a ``StateBucket`` with a
``RedisStateStore``). Round trips are counted three ways: tokenbucket's own
``backend.round_trips``, every command the clients send, and the server's
``INFO commandstats`` deltas. Every run gets a fresh event loop; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import importlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

import tokenbucket as tb
from tokenbucket._redis import RedisBackend

if TYPE_CHECKING:
    from types import ModuleType

    from redis.typing import EncodableT

T = TypeVar("T")

AcquireFn = Callable[[], Awaitable[None]]


def _optional_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


limits = _optional_module("limits")
limits_aio_storage = _optional_module("limits.aio.storage")
limits_aio_strategies = _optional_module("limits.aio.strategies")
pyrate_limiter = _optional_module("pyrate_limiter")

DEFAULT_URL = "redis://127.0.0.1:6379/14"
# Every key the benchmark writes contains this; the database is only flushed when every
# key already in it does too (or with --allow-flush).
KEY_MARK = "tbbench"


# -- configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Sizes of one run (``--quick`` or full); the limits are shared."""

    mode: str
    acquirers: tuple[int, ...]
    # (a) generous limit
    free_warmup: float
    free_duration: float
    # (b) binding limit
    bound_warmup: float
    bound_duration: float
    # After the warm-up, wait up to this long for connections still being opened.
    settle_max: float
    # After the interval, workers get this long to finish their acquire before they are
    # cancelled.
    grace: float
    # A limit no run can reach: 10**9 units per second (bursts of as much).
    generous: int = 10**9
    # The binding limit: windows allow `bound_rate` per `window` seconds; buckets refill
    # `bound_rate` per second and hold `bound_burst` (10 ms of refill).
    bound_rate: int = 2_000
    bound_burst: int = 20
    window: float = 1.0
    # Every library gets its client on a redis-py BlockingConnectionPool of this size:
    # redis-py's default pool size, waiting for a free connection instead of raising
    # MaxConnectionsError at the 101st concurrent command.
    pool_size: int = 100
    # The shortest sleep of the `limits` polling loop (when its reset time has passed).
    limits_min_poll: float = 0.001
    # pyrate-limiter's Limiter default (sleeps this much past every computed wait).
    pyrate_buffer_ms: int = 50


FULL = Config(
    mode="full",
    acquirers=(1, 10, 100, 1_000),
    free_warmup=0.3,
    free_duration=1.2,
    bound_warmup=1.0,
    bound_duration=2.0,
    settle_max=1.0,
    grace=1.0,
)

QUICK = Config(
    mode="quick",
    acquirers=(1, 10, 100),
    free_warmup=0.05,
    free_duration=0.12,
    bound_warmup=0.08,
    bound_duration=0.15,
    settle_max=0.1,
    grace=0.05,
)

REGIMES = ("generous", "binding")
# The lag probe: a task sleeping this long in a loop, noting how late each wake-up is.
PROBE_PERIOD = 0.005


# -- counting commands at the client ---------------------------------------------------

# Commands the server reports as "container|subcommand" in INFO commandstats.
_CONTAINERS = frozenset(
    {"acl", "client", "cluster", "command", "config", "function", "latency", "memory"}
    | {"module", "object", "pubsub", "script", "slowlog", "xinfo"}
)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def command_name(args: tuple[Any, ...]) -> str:
    """The name INFO commandstats files a command under (``evalsha``, ``script|load``)."""
    words = _text(args[0]).split()
    rest = [*words[1:], *args[1:]]
    name = words[0].lower()
    if name in _CONTAINERS and rest:
        name = f"{name}|{_text(rest[0]).lower()}"
    return name


class _Tally:
    """Commands sent, connections made, connects completed and connects of a connection
    that had been connected before (re-opened after a drop), in one run."""

    def __init__(self) -> None:
        self.commands: collections.Counter[str] = collections.Counter()
        self.connections = 0
        self.connects = 0
        self.reconnects = 0

    def reset(self) -> None:
        self.commands.clear()
        self.connections = 0
        self.connects = 0
        self.reconnects = 0


TALLY = _Tally()


class CountingConnection(Connection):
    """A redis-py connection that counts every command it packs (pipelines included,
    one per command) and every connection made, in the module's ``TALLY``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connected_before = False
        TALLY.connections += 1

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        TALLY.commands[command_name(args)] += 1
        return super().pack_command(*args)

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        await super().on_connect_check_health(check_health=check_health)
        TALLY.connects += 1
        TALLY.reconnects += self._connected_before
        self._connected_before = True


def _pool(url: str, cfg: Config) -> aioredis.BlockingConnectionPool:
    return aioredis.BlockingConnectionPool.from_url(
        url, max_connections=cfg.pool_size, timeout=None, connection_class=CountingConnection
    )


class _WarningCount(logging.Handler):
    """Counts the records tokenbucket's Redis backend logs (and keeps them off stderr)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.messages) < 3:
            self.messages.append(record.getMessage())


# -- limiters under test ---------------------------------------------------------------


@dataclass
class Subject:
    """One limiter set up for a run: ``acquire()`` returns once one unit is admitted;
    ``close()`` runs after every worker has ended."""

    acquire: AcquireFn
    close: Callable[[], Awaitable[None]]
    round_trips: Callable[[], int] | None = None
    # tokenbucket only: what its backend reserved.
    schedule: _Schedule | None = None


@dataclass(frozen=True)
class Limit:
    """The limit a run uses, as each kind of limiter expresses it."""

    regime: str
    rate: int  # units per `window` seconds (windows) or per second (buckets)
    burst: int  # buckets only
    window: float


@dataclass(frozen=True)
class Candidate:
    """A limiter under test. ``make(url, cfg, limit)`` runs inside the fresh event loop
    of each run; ``kind`` is "window" or "bucket" (what "allowed" means for it)."""

    name: str
    kind: str
    pattern: str
    make: Callable[[str, Config, Limit], Awaitable[Subject]]
    regimes: tuple[str, ...] = REGIMES


async def _floor(url: str, cfg: Config, limit: Limit) -> Subject:
    pool = _pool(url, cfg)
    client: Any = aioredis.Redis(connection_pool=pool)
    sha = await client.script_load("return 1")

    async def acquire() -> None:
        await client.evalsha(sha, 0)

    async def close() -> None:
        await client.aclose()
        await pool.disconnect()

    return Subject(acquire, close)


class _Schedule:
    """What tokenbucket's backend reserved, logged by wrapping ``backend.reserve``.

    ``grants`` holds every reserved instant (Redis server clock). ``admissions`` pairs
    each admission (``time.monotonic()`` when ``acquire`` returned) with the instant
    reserved for it. ``offset`` estimates local clock minus server clock: the smallest
    (local time when ``reserve`` returned - server time when the script ran) seen, i.e.
    from the reply that reached its task soonest (a round trip's worth late at most).
    ``calls`` times every EVALSHA the backend's client makes.
    """

    def __init__(self) -> None:
        self.grants: list[float] = []
        self.admissions: list[tuple[float, float]] = []
        self.offset = math.inf
        self._last: dict[asyncio.Task[Any] | None, float] = {}
        # (instant the reply was read, seconds since the call was sent) per script call
        self.calls: list[tuple[float, float]] = []

    def hook(self, backend: RedisBackend) -> None:
        reserve = backend.reserve
        client: Any = backend.client
        evalsha = client.evalsha

        async def timed(*args: Any, **kwargs: Any) -> Any:
            sent = time.monotonic()
            try:
                return await evalsha(*args, **kwargs)
            finally:
                done = time.monotonic()
                self.calls.append((done, done - sent))

        client.evalsha = timed

        async def logged(*args: Any, **kwargs: Any) -> tuple[int, float, Any]:
            status, wait, reservation = await reserve(*args, **kwargs)
            if status == 1:
                self.grants.append(reservation.at)
                self._last[asyncio.current_task()] = reservation.at
                self.offset = min(self.offset, time.monotonic() - (reservation.at - wait))
            return status, wait, reservation

        backend.reserve = logged  # type: ignore[method-assign]

    def admitted(self) -> None:
        """Note that the current task was just admitted."""
        self.admissions.append((time.monotonic(), self._last[asyncio.current_task()]))

    def lateness(self) -> list[tuple[float, float]]:
        """(admission instant, seconds after its reserved instant) for every admission."""
        return [(stamp, stamp - (at + self.offset)) for stamp, at in self.admissions]


async def _tokenbucket(url: str, cfg: Config, limit: Limit, *, window: bool) -> Subject:
    pool = _pool(url, cfg)
    backend = RedisBackend(aioredis.Redis(connection_pool=pool), prefix=KEY_MARK)
    limiter: tb.TokenBucket | tb.SlidingWindow
    if window:
        limiter = tb.SlidingWindow(
            limit=limit.rate, window=limit.window, backend=backend, key="bench"
        )
    else:
        limiter = tb.TokenBucket(
            rate=limit.rate, capacity=limit.burst, backend=backend, key="bench"
        )
    schedule = _Schedule()
    schedule.hook(backend)

    async def acquire() -> None:
        await limiter.acquire()
        schedule.admitted()

    async def close() -> None:
        await backend.aclose()  # waits for the give-backs of cancelled reservations
        await pool.disconnect()

    return Subject(acquire, close, lambda: backend.round_trips, schedule)


async def _tb_bucket(url: str, cfg: Config, limit: Limit) -> Subject:
    return await _tokenbucket(url, cfg, limit, window=False)


async def _tb_window(url: str, cfg: Config, limit: Limit) -> Subject:
    return await _tokenbucket(url, cfg, limit, window=True)


async def _limits(url: str, cfg: Config, limit: Limit, strategy: str) -> Subject:
    assert limits is not None
    assert limits_aio_storage is not None
    assert limits_aio_strategies is not None
    pool = _pool(url, cfg)
    storage = limits_aio_storage.RedisStorage(
        "async+" + url,
        implementation="redispy",
        key_prefix=f"{KEY_MARK}-limits",
        connection_pool=pool,
    )
    limiter = getattr(limits_aio_strategies, strategy)(storage)
    # A per-second item of `rate` (RateLimitItemPerSecond(2000) or (10**9)).
    item = limits.RateLimitItemPerSecond(limit.rate)
    floor = cfg.limits_min_poll

    async def acquire() -> None:
        # `limits` never waits: poll, sleeping until the reset get_window_stats reports
        # (wall-clock seconds), at least `floor`.
        while not await limiter.hit(item, "bench"):
            reset_time, _remaining = await limiter.get_window_stats(item, "bench")
            await asyncio.sleep(max(reset_time - time.time(), floor))

    async def close() -> None:
        await storage.bridge.storage.aclose()
        await pool.disconnect()

    return Subject(acquire, close)


async def _limits_moving(url: str, cfg: Config, limit: Limit) -> Subject:
    return await _limits(url, cfg, limit, "MovingWindowRateLimiter")


async def _limits_counter(url: str, cfg: Config, limit: Limit) -> Subject:
    return await _limits(url, cfg, limit, "SlidingWindowCounterRateLimiter")


async def _pyrate(url: str, cfg: Config, limit: Limit, *, state: bool) -> Subject:
    assert pyrate_limiter is not None
    pool = _pool(url, cfg)
    client: Any = aioredis.Redis(connection_pool=pool)
    second = pyrate_limiter.Duration.SECOND
    if state:
        rates = [pyrate_limiter.Rate(limit.rate, second, burst=limit.burst)]
        store = pyrate_limiter.RedisStateStore(client, f"{KEY_MARK}-pyrate-gcra")
        bucket = pyrate_limiter.StateBucket(
            rates, store=store, algorithm=pyrate_limiter.TokenBucket()
        )
    else:
        rates = [pyrate_limiter.Rate(limit.rate, int(limit.window * 1000))]
        bucket = await pyrate_limiter.RedisBucket.init(rates, client, f"{KEY_MARK}-pyrate-log")
    limiter = pyrate_limiter.Limiter(bucket, buffer_ms=cfg.pyrate_buffer_ms)

    async def acquire() -> None:
        # Blocking by default (v4): waits, then returns True.
        if not await limiter.try_acquire_async("bench"):
            raise RuntimeError("pyrate-limiter refused a unit")

    async def close() -> None:
        limiter.close()
        await client.aclose()
        await pool.disconnect()

    return Subject(acquire, close)


async def _pyrate_log(url: str, cfg: Config, limit: Limit) -> Subject:
    return await _pyrate(url, cfg, limit, state=False)


async def _pyrate_state(url: str, cfg: Config, limit: Limit) -> Subject:
    return await _pyrate(url, cfg, limit, state=True)


FLOOR = "floor: EVALSHA `return 1`"
TB_BUCKET = "tokenbucket.TokenBucket"
TB_WINDOW = "tokenbucket.SlidingWindow"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _major_minor(distribution: str) -> tuple[int, int]:
    try:
        major, minor, *_ = importlib.metadata.version(distribution).split(".")
        return int(major), int(minor)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return (0, 0)


def candidates() -> tuple[list[Candidate], list[str]]:
    """The limiters to run, and a note for each peer left out."""
    found = [
        Candidate(
            FLOOR,
            "none",
            "`await client.evalsha(sha, 0)` on a plain redis-py client (not a limiter)",
            _floor,
            ("generous",),
        ),
        Candidate(
            TB_BUCKET,
            "bucket",
            "`await bucket.acquire()`, `TokenBucket(rate, capacity, backend=RedisBackend("
            "client), key=...)`: GCRA reservation, requests batched per round trip",
            _tb_bucket,
        ),
        Candidate(
            TB_WINDOW,
            "window",
            "`await window.acquire()`, `SlidingWindow(limit, window, backend=..., key=...)`:"
            " exact sliding window (sorted set), reserved and batched the same way",
            _tb_window,
        ),
    ]
    notes: list[str] = []
    if limits_aio_strategies is not None and _major_minor("limits") >= (4, 2):
        found += [
            Candidate(
                "limits MovingWindow (polled)",
                "window",
                "`while not await hit(item, 'bench'): sleep(get_window_stats().reset - "
                "now)`, MovingWindowRateLimiter(RedisStorage('async+redis://...', "
                "implementation='redispy'))",
                _limits_moving,
            ),
            Candidate(
                "limits SlidingWindowCounter (polled)",
                "window",
                "the same polling loop on SlidingWindowCounterRateLimiter (approximate: "
                "weights the previous fixed window)",
                _limits_counter,
            ),
        ]
    else:
        notes.append("limits >= 4.2 (async RedisStorage on redis-py) is not installed.")
    if pyrate_limiter is not None and _major_minor("pyrate-limiter") >= (4, 5):
        found += [
            Candidate(
                "pyrate RedisBucket",
                "window",
                "`await limiter.try_acquire_async('bench')`, Limiter(await RedisBucket.init("
                "[Rate(r, 1000 ms)], async client, key)): sliding window log (sorted set)",
                _pyrate_log,
            ),
            Candidate(
                "pyrate StateBucket(RedisStateStore)",
                "bucket",
                "the same call on Limiter(StateBucket([Rate(r, SECOND, burst=b)], "
                "store=RedisStateStore(async client, key), algorithm=TokenBucket()))",
                _pyrate_state,
            ),
        ]
    else:
        notes.append("pyrate-limiter >= 4.5 (RedisBucket and RedisStateStore) is not installed.")
    return found, notes


# -- harness ---------------------------------------------------------------------------


def run_fresh(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` in a new event loop; fail if it leaves a task behind."""
    gc.collect()
    loop = asyncio.new_event_loop()
    try:
        result = loop.run_until_complete(main())
        leftovers = asyncio.all_tasks(loop)
        if leftovers:  # pragma: no cover - a bug in this file
            for task in leftovers:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            raise RuntimeError(f"{len(leftovers)} tasks leaked out of a timed run")
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        return result
    finally:
        loop.close()


async def _cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again those still running.

    On Python < 3.12 ``asyncio.wait_for`` (which redis-py wraps around every socket
    write) can swallow a cancellation that arrives as the write completes; the task
    then goes on to its next command, so one ``cancel()`` is not always enough.
    """
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)


async def _cancel_others() -> None:
    """Cancel and await every other task of the loop (the libraries' own, e.g.
    pyrate-limiter's leak task, which outlives ``Limiter.close()``)."""
    me = asyncio.current_task()
    await _cancel_all(t for t in asyncio.all_tasks() if t is not me)


def _progress(message: str) -> None:
    if sys.stderr.isatty():
        print(f"  {message}", file=sys.stderr, flush=True)


async def _commandstats(client: Any) -> dict[str, tuple[int, int]]:
    """{command: (calls, usec)} from INFO commandstats."""
    info = await client.info("commandstats")
    stats: dict[str, tuple[int, int]] = {}
    for key, value in info.items():
        if key.startswith("cmdstat_") and isinstance(value, dict):
            stats[key[len("cmdstat_") :]] = (int(value["calls"]), int(value["usec"]))
    return stats


@dataclass
class _Reading:
    """The counters read at one boundary of the measured interval."""

    clock: float
    cpu: float
    admitted: int
    round_trips: int | None
    commands: dict[str, int]
    connections: int
    connects: int
    reconnects: int
    server: dict[str, tuple[int, int]]


async def _read(subject: Subject, stamps: list[float], stats: Any) -> _Reading:
    # Local counters first, then the server's: the same order at both ends, so both
    # intervals are shifted alike by the INFO round trip.
    clock = time.monotonic()
    cpu = time.process_time()
    admitted = len(stamps)
    round_trips = subject.round_trips() if subject.round_trips else None
    commands = dict(TALLY.commands)
    connections = TALLY.connections
    connects = TALLY.connects
    reconnects = TALLY.reconnects
    server = await _commandstats(stats)
    return _Reading(
        clock, cpu, admitted, round_trips, commands, connections, connects, reconnects, server
    )


async def _one_run(
    candidate: Candidate, url: str, cfg: Config, limit: Limit, acquirers: int
) -> dict[str, Any]:
    stats: Any = aioredis.Redis.from_url(url)
    await stats.flushdb()
    TALLY.reset()
    warnings = _WarningCount()
    logger = logging.getLogger("tokenbucket.redis")
    logger.addHandler(warnings)
    warmup = cfg.free_warmup if limit.regime == "generous" else cfg.bound_warmup
    duration = cfg.free_duration if limit.regime == "generous" else cfg.bound_duration
    subject = await candidate.make(url, cfg, limit)
    stamps: list[float] = []
    clock = time.monotonic

    lags: list[tuple[float, float]] = []
    running = True

    async def worker() -> None:
        while running:
            await subject.acquire()
            stamps.append(clock())

    async def probe() -> None:
        # How late the loop runs a timer: a measure of event-loop lag.
        while True:
            before = clock()
            await asyncio.sleep(PROBE_PERIOD)
            now = clock()
            lags.append((now, now - before - PROBE_PERIOD))

    try:
        start = clock()
        workers = [asyncio.create_task(worker()) for _ in range(acquirers)]
        prober = asyncio.create_task(probe())
        try:
            await asyncio.sleep(warmup)
            # Connections are opened on demand; with many acquirers on a busy loop the
            # last ones can still be connecting: let them finish.
            for _ in range(round(cfg.settle_max / 0.01)):
                if TALLY.connects - TALLY.reconnects >= TALLY.connections:
                    break
                await asyncio.sleep(0.01)
            first = await _read(subject, stamps, stats)
            warned = warnings.count
            await asyncio.sleep(duration)
            last = await _read(subject, stamps, stats)
            warned = warnings.count - warned
            # Let the workers finish the acquire they are in (cancelling a redis-py
            # command is slow, see _cancel_all), then cancel those still waiting.
            running = False
            await asyncio.wait(workers, timeout=cfg.grace)
        finally:
            await _cancel_all([*workers, prober])
        await subject.close()
        await _cancel_others()
    finally:
        logger.removeHandler(warnings)
        await stats.flushdb()
        await stats.aclose()
    return {
        "start": start,
        "first": first,
        "last": last,
        "stamps": stamps,
        "schedule": subject.schedule,
        "lags": [lag for at, lag in lags if first.clock <= at <= last.clock],
        "warnings": warned,
        "warnings_total": warnings.count,
        "warning_messages": warnings.messages,
    }


# -- measures --------------------------------------------------------------------------


def peak_in_window(times: list[float], window: float) -> int:
    """The most timestamps (sorted) in any window ``[t, t + window)``."""
    best = 0
    first = 0
    for last, stamp in enumerate(times):
        while stamp - times[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


def rolling_mean(stamps: list[float], t0: float, t1: float, window: float) -> float | None:
    """The mean, over every window ``[u, u + window)`` with ``t0 <= u <= t1 - window``, of
    the admissions in it; ``None`` when the interval is shorter than one window.

    Admission ``s`` lies in the windows whose start ``u`` is in ``(s - window, s]``, so
    the mean is the sum of those ranges (clipped to the starts allowed) over their span.
    """
    span = t1 - window - t0
    if span <= 0:
        return None
    total = 0.0
    for s in stamps:
        low = max(t0, s - window)
        high = min(t1 - window, s)
        if high > low:
            total += high - low
    return total / span


@dataclass
class RunResult:
    """One run. ``server_commands`` are the INFO commandstats deltas (calls) of the
    commands the clients sent during the interval (evalsha, script|load, ...), i.e. the
    round trips seen by the server; ``server_all`` also counts commands run inside
    scripts. ``server_usec`` is the server time of the former (a script's time includes
    the commands it runs). ``agree`` is False when the server counted more (or fewer)
    than the clients sent, beyond the boundary slack: another client was busy on the
    same server during the interval, so the server figures include its commands."""

    regime: str
    name: str
    kind: str
    acquirers: int
    limit: float
    burst: float
    allowed: float | None
    duration: float
    admitted: int
    per_second: float
    vs_floor: float | None
    achieved: float | None
    plain_achieved: float | None
    peak: int | None
    steady_peak: int | None
    grant_peak: int | None
    # tokenbucket only: seconds from the reserved instant to the admission (max, p99;
    # over the whole run and over the measured interval).
    lateness: dict[str, float] | None
    # tokenbucket only: mean seconds per script call in the interval, and the share of
    # the interval with one in flight.
    call_mean: float | None
    call_busy: float | None
    total_admitted: int
    round_trips: int | None
    client_commands: int
    client_by_name: dict[str, int]
    server_commands: int
    server_by_name: dict[str, int]
    server_all: int
    server_usec: int
    agree: bool
    cpu_seconds: float
    connections: int
    reconnects: int
    lag_max: float
    lag_p99: float
    warnings: int
    warnings_total: int
    warning_messages: list[str] = field(default_factory=list)
    skipped: str | None = None


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _per(value: float, admitted: int) -> float:
    return value / admitted if admitted else math.nan


# A command is counted by the client when sent and by the server when run, so those in
# flight when a boundary is read (at most one per connection in use) can fall on either
# side of it: the counts may differ by twice that, plus this, before the server figure
# is flagged.
AGREE_SLACK = 3


def bench_run(
    candidate: Candidate, url: str, cfg: Config, regime: str, acquirers: int
) -> RunResult:
    limit = Limit(
        regime,
        cfg.generous if regime == "generous" else cfg.bound_rate,
        cfg.generous if regime == "generous" else cfg.bound_burst,
        cfg.window,
    )
    raw = run_fresh(lambda: _one_run(candidate, url, cfg, limit, acquirers))
    first: _Reading = raw["first"]
    last: _Reading = raw["last"]
    duration = last.clock - first.clock
    admitted = last.admitted - first.admitted
    stamps: list[float] = raw["stamps"]
    lags: list[float] = raw["lags"]
    client_by_name = {
        name: count - first.commands.get(name, 0)
        for name, count in last.commands.items()
        if count - first.commands.get(name, 0)
    }
    server_delta = {
        name: (calls - first.server.get(name, (0, 0))[0], usec - first.server.get(name, (0, 0))[1])
        for name, (calls, usec) in last.server.items()
    }
    # INFO is the harness's own command (on its own connection, not counted by the
    # clients); everything else the server ran in the interval is the limiter's.
    server_delta.pop("info", None)
    top = set(client_by_name) | {"evalsha", "eval", "script|load"}
    server_by_name = {n: server_delta[n][0] for n in sorted(top) if server_delta.get(n, (0, 0))[0]}
    client_commands = sum(client_by_name.values())
    server_commands = sum(server_by_name.values())
    # Commands the server does not know (redis-py sends CLIENT SETINFO and CLIENT
    # MAINT_NOTIFICATIONS on connecting; Redis < 7.2 rejects them) have no commandstats
    # entry: compare the rest.
    known = sum(count for name, count in client_by_name.items() if name in last.server)
    in_flight = min(acquirers, last.connections)
    allowed: float | None = None
    achieved = plain = None
    peak = steady_peak = grant_peak = None
    schedule: _Schedule | None = raw["schedule"]
    lateness: dict[str, float] | None = None
    if regime == "binding" and candidate.kind != "none":
        per_window = limit.rate * cfg.window / (1.0 if candidate.kind == "bucket" else cfg.window)
        allowed = per_window + (limit.burst if candidate.kind == "bucket" else 0)
        rate = limit.rate if candidate.kind == "bucket" else limit.rate / cfg.window
        mean = rolling_mean(stamps, first.clock, last.clock, cfg.window)
        achieved = None if mean is None else mean / cfg.window / rate
        plain = admitted / duration / rate
        peak = peak_in_window(stamps, cfg.window)
        steady_peak = peak_in_window([t for t in stamps if t >= first.clock], cfg.window)
        if schedule is not None and schedule.grants:
            grant_peak = peak_in_window(sorted(schedule.grants), cfg.window)
    call_mean = call_busy = None
    if schedule is not None:
        spans = [span for end, span in schedule.calls if first.clock <= end <= last.clock]
        if spans:
            call_mean = sum(spans) / len(spans)
            call_busy = sum(spans) / duration
    if schedule is not None and schedule.admissions:
        late = schedule.lateness()
        late_all = [lag for _, lag in late]
        late_in = [lag for at, lag in late if first.clock <= at <= last.clock]
        lateness = {
            "max": max(late_all),
            "p99": _quantile(late_all, 0.99),
            "interval_max": max(late_in, default=math.nan),
            "interval_p99": _quantile(late_in, 0.99),
        }
    round_trips = (
        None
        if first.round_trips is None or last.round_trips is None
        else last.round_trips - first.round_trips
    )
    result = RunResult(
        regime=regime,
        name=candidate.name,
        kind=candidate.kind,
        acquirers=acquirers,
        limit=limit.rate,
        burst=limit.burst if candidate.kind == "bucket" else 0,
        allowed=allowed,
        duration=duration,
        admitted=admitted,
        per_second=admitted / duration,
        vs_floor=None,
        achieved=achieved,
        plain_achieved=plain,
        peak=peak,
        steady_peak=steady_peak,
        grant_peak=grant_peak,
        lateness=lateness,
        call_mean=call_mean,
        call_busy=call_busy,
        total_admitted=len(stamps),
        round_trips=round_trips,
        client_commands=client_commands,
        client_by_name=client_by_name,
        server_commands=server_commands,
        server_by_name=server_by_name,
        server_all=sum(calls for calls, _ in server_delta.values()),
        server_usec=sum(server_delta.get(n, (0, 0))[1] for n in server_by_name),
        agree=abs(server_commands - known) <= 2 * in_flight + AGREE_SLACK,
        cpu_seconds=last.cpu - first.cpu,
        connections=last.connections,
        reconnects=last.reconnects - first.reconnects,
        lag_max=max(lags, default=math.nan),
        lag_p99=_quantile(lags, 0.99),
        warnings=raw["warnings"],
        warnings_total=raw["warnings_total"],
        warning_messages=raw["warning_messages"],
    )
    _progress(
        f"{regime} {candidate.name} x{acquirers}: {result.per_second:,.0f}/s, "
        f"{_per(server_commands, admitted):.3f} commands/adm"
    )
    return result


# -- the report ------------------------------------------------------------------------


def markdown_table(headers: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        padded = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [("-" * (w - 1) + ":") if i in right else "-" * w for i, w in enumerate(widths)]
    return "\n".join([line(headers), "| " + " | ".join(rule) + " |", *map(line, rows)])


def _percent(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value * 100:.{digits}f}%"


def _ratio(value: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _common_cells(r: RunResult) -> list[str]:
    """Round trips, commands, server time, CPU and connections of a row."""
    server = _ratio(_per(r.server_commands, r.admitted))
    if not r.agree:
        server += " (!)"
    return [
        "-" if r.round_trips is None else _ratio(_per(r.round_trips, r.admitted)),
        _ratio(_per(r.client_commands, r.admitted)),
        server,
        _ratio(_per(r.server_usec, r.admitted), 1),
        _ratio(_per(r.cpu_seconds * 1e6, r.admitted), 1),
        str(r.connections),
    ]


_COMMON_HEADERS = [
    "round trips / adm (tb)",
    "commands / adm (client)",
    "commands / adm (server)",
    "Redis us / adm",
    "CPU ms / 1k adm",
    "conns",
]


def _skipped_row(r: RunResult, width: int) -> list[str]:
    return [r.name, f"{r.acquirers:,}", f"skipped: {r.skipped}", *([""] * (width - 3))]


def generous_table(results: list[RunResult]) -> str:
    headers = ["limiter", "acquirers", "adm/s", "vs floor", *_COMMON_HEADERS]
    rows = []
    for r in results:
        if r.skipped:
            rows.append(_skipped_row(r, len(headers)))
            continue
        rows.append(
            [
                r.name,
                f"{r.acquirers:,}",
                f"{r.per_second:,.0f}",
                "n/a" if r.vs_floor is None else f"{r.vs_floor:.2f}x",
                *_common_cells(r),
            ]
        )
    return markdown_table(headers, rows, set(range(1, len(headers))))


def binding_table(results: list[RunResult], cfg: Config) -> str:
    headers = [
        "limiter",
        "acquirers",
        "adm/s",
        "% of limit",
        f"peak in {cfg.window:g} s / allowed",
        "loop lag max ms",
        *_COMMON_HEADERS,
    ]
    rows = []
    for r in results:
        if r.skipped:
            rows.append(_skipped_row(r, len(headers)))
            continue
        peak = "n/a" if r.peak is None or r.allowed is None else f"{r.peak:,} / {r.allowed:,.0f}"
        extra = [] if r.steady_peak is None else [f"steady {r.steady_peak:,}"]
        if r.grant_peak is not None:
            extra.append(f"grants {r.grant_peak:,}")
        if extra:
            peak += f" ({', '.join(extra)})"
        rows.append(
            [
                r.name,
                f"{r.acquirers:,}",
                f"{r.per_second:,.0f}",
                _percent(r.achieved) if r.achieved is not None else _percent(r.plain_achieved),
                peak,
                _ratio(r.lag_max * 1e3, 1),
                *_common_cells(r),
            ]
        )
    return markdown_table(headers, rows, set(range(1, len(headers))))


def _find(results: list[RunResult], regime: str, name: str, n: int) -> RunResult | None:
    for r in results:
        if r.regime == regime and r.name == name and r.acquirers == n and not r.skipped:
            return r
    return None


def targets(results: list[RunResult], cfg: Config) -> list[dict[str, str]]:
    """The issue's targets for tokenbucket (generous limit), and never-above (binding)."""
    checks: list[dict[str, str]] = []

    def check(target: str, ok: bool, detail: str) -> None:
        checks.append({"target": target, "met": f"{'yes' if ok else 'NO'} ({detail})"})

    def counts(r: RunResult, ok: Callable[[float], bool]) -> tuple[bool, str]:
        """Judge on tokenbucket's own count and on the commands its client sent (both
        exact for this process), and on the server's count unless other clients were
        busy on the server too."""
        rt = _per(r.round_trips or 0, r.admitted)
        sent = _per(r.client_commands, r.admitted)
        server = _per(r.server_commands, r.admitted)
        met = ok(rt) and ok(sent) and (ok(server) or not r.agree)
        detail = (
            f"backend.round_trips {rt:.4f}, client {sent:.4f}, server {server:.4f}"
            + ("" if r.agree else " (other clients' commands included)")
            + f"; {r.admitted:,} adm"
        )
        return met, detail

    lone = _find(results, "generous", TB_BUCKET, 1)
    if lone is not None and lone.round_trips is not None:
        check(
            "lone acquirer: exactly 1 round trip per admission",
            *counts(lone, lambda value: abs(value - 1) < 0.005),
        )
    most = max(cfg.acquirers)
    crowd = _find(results, "generous", TB_BUCKET, most)
    if crowd is not None and crowd.round_trips is not None:
        check(
            f"{most:,} acquirers, generous limit: < 0.2 round trips per admission",
            *counts(crowd, lambda value: value < 0.2),
        )
        bound = _find(results, "binding", TB_BUCKET, most)
        if bound is not None and bound.round_trips is not None:
            rt = _per(bound.round_trips, bound.admitted)
            check(
                f"{most:,} acquirers, binding limit: < 0.2 round trips per admission "
                "(the target's figure, for reference)",
                rt < 0.2,
                f"{rt:.3f}: {rt / 0.2:.1f}x the target; mean batch "
                f"{_per(bound.admitted, bound.round_trips):.2f} requests",
            )
    for r in results:
        if r.regime == "binding" and r.name.startswith("tokenbucket") and not r.skipped:
            if r.grant_peak is None or r.allowed is None:
                continue
            check(
                f"{r.name} x{r.acquirers:,}: reservations never above the limit "
                f"(server clock, any {cfg.window:g} s)",
                r.grant_peak <= r.allowed,
                f"{r.grant_peak:,} / {r.allowed:,.0f}",
            )
    return checks


# Admission counts taken from task resumptions are exact only to a few admissions (see
# bench.py's SLACK_ADMISSIONS); a peak this much above "allowed" is reported as excess.
SLACK_ADMISSIONS = 3


def reading(results: list[RunResult], cfg: Config) -> list[str]:
    """What this run's numbers say about peaks and tokenbucket's round trips."""
    lines: list[str] = []
    over = [
        r
        for r in results
        if not r.skipped
        and r.peak is not None
        and r.allowed is not None
        and r.peak > r.allowed + SLACK_ADMISSIONS
    ]
    if over:
        lines.append(
            f"- Peaks above the limit (more than {SLACK_ADMISSIONS} admissions over, counted "
            "at task resumption): "
            + "; ".join(
                f"{r.name} x{r.acquirers:,}: {r.peak:,} / {r.allowed:,.0f} (steady "
                f"{r.steady_peak:,}"
                + ("" if r.grant_peak is None else f", reserved {r.grant_peak:,}")
                + f", loop lag up to {r.lag_max * 1e3:.0f} ms)"
                for r in over
            )
            + ". A limiter's decision and the resumption of the task it admits are apart by "
            "at least one event-loop turn; when the loop falls behind, admissions due "
            "before a stall land after it, in a window that also holds those admitted on "
            "time. 'steady' counts only admissions from the measured interval on (the "
            "opening second excluded); 'reserved' counts tokenbucket's reserved instants on "
            "the server's clock."
        )
    late = [
        r
        for r in results
        if r.regime == "binding" and not r.skipped and r.lateness and r.lateness["max"] > 0.010
    ]
    if late:
        lines.append(
            "- tokenbucket's admissions came after the instants Redis reserved for them: "
            + "; ".join(
                f"{r.name} x{r.acquirers:,}: up to {r.lateness['max'] * 1e3:.0f} ms (99th "
                f"percentile {r.lateness['p99'] * 1e3:.0f} ms; in the measured interval "
                f"{r.lateness['interval_max'] * 1e3:.0f} and "
                f"{r.lateness['interval_p99'] * 1e3:.0f} ms)"
                for r in late
                if r.lateness is not None
            )
            + ". The wait a reservation returns counts from the script's clock reading, "
            "at the start of the call, and each task starts sleeping it only when it "
            "resumes after the reply: admissions come late by the call's duration (the "
            "script's run time included: long for SlidingWindow) plus the time the loop "
            "spent resuming the tasks ahead of it in the batch (worst in the opening "
            "batch, with every acquirer in it)."
        )
    spacing = 1 / cfg.bound_rate
    batches = []
    for n in cfg.acquirers:
        bound = _find(results, "binding", TB_BUCKET, n)
        if bound is None or not bound.round_trips or n == 1 or bound.call_mean is None:
            continue
        batches.append(
            f"{n:,} acquirers: {bound.round_trips / bound.admitted:.3f} round trips per "
            f"admission = batches of {bound.admitted / bound.round_trips:.2f}; a reserve call "
            f"took {bound.call_mean * 1e3:.2f} ms on average (from sending it to its reply "
            f"being read), and one was in flight {bound.call_busy:.0%} of the time"
        )
    if batches:
        lines.append(
            f"- {TB_BUCKET}, binding limit: " + "; ".join(batches) + ". Each acquirer "
            "sleeps until its own reserved instant, and those instants are "
            f"{spacing * 1e3:.2f} ms apart (1 / {cfg.bound_rate:,}/s) whatever the number of "
            "acquirers; a woken acquirer asks again at once, so requests reach the backend "
            f"at {cfg.bound_rate:,}/s, one or two per event-loop turn. Sent as they come, "
            "a batch would gather only the requests that arrive while the previous call is "
            "in flight (about max(1, call time / spacing)). When the last reply put the "
            "limiter's next free instant at least 2 ms ahead, the backend holds new "
            "requests for min(batch_delay = 10 ms, half the time left until that instant) "
            "and sends them together: they could not be admitted earlier anyway. With few "
            "acquirers the next free instant is close, so requests are sent at once."
        )
    return lines


@dataclass
class Results:
    environment: dict[str, Any]
    config: dict[str, Any]
    runs: list[RunResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[dict[str, str]] = field(default_factory=list)
    reading: list[str] = field(default_factory=list)


def environment(cfg: Config, url: str, server: str) -> dict[str, Any]:
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "tokenbucket": tb.__version__,
        "redis-py": _version("redis"),
        "redis server": server,
        "limits": _version("limits"),
        "pyrate-limiter": _version("pyrate-limiter"),
        "url": url,
        "mode": cfg.mode,
    }


def header_line(env: dict[str, Any]) -> str:
    return (
        f"tokenbucket Redis benchmarks ({env['mode']}): {env['date']} | {env['python']} | "
        f"{env['platform']} | {env['cpus']} CPUs | tokenbucket {env['tokenbucket']} | "
        f"redis-py {env['redis-py']} | Redis {env['redis server']} | limits {env['limits']} | "
        f"pyrate-limiter {env['pyrate-limiter']} | asyncio"
    )


def report(results: Results, cfg: Config) -> str:
    parts = [header_line(results.environment), ""]
    generous = [r for r in results.runs if r.regime == "generous"]
    binding = [r for r in results.runs if r.regime == "binding"]
    legend = (
        "round trips / adm (tb): tokenbucket's `backend.round_trips` (script calls). "
        "commands / adm (server): `INFO commandstats` deltas of the commands the clients "
        "sent (EVALSHA, SCRIPT LOAD, ...; not those run inside scripts); no library "
        "pipelines here, so each is one round trip. (!): the server counted other "
        "clients' commands too. Redis us / adm: server time of those commands."
    )
    if generous:
        parts += [
            f"## (a) Generous limit ({cfg.generous:.0e}/s, never binds), "
            f"{cfg.free_duration:g} s measured after {cfg.free_warmup:g} s warm-up",
            "",
            generous_table(_ordered(generous)),
            "",
        ]
    if binding:
        parts += [
            f"## (b) Binding limit: {cfg.bound_rate:,} per {cfg.window:g} s (windows) or "
            f"{cfg.bound_rate:,}/s with a burst of {cfg.bound_burst} (buckets), "
            f"{cfg.bound_duration:g} s measured after {cfg.bound_warmup:g} s warm-up",
            "",
            binding_table(_ordered(binding), cfg),
            "",
            "% of limit: mean over every rolling second inside the measured interval "
            "(plain count / time when the interval is shorter). peak: the most admissions "
            "(task resumptions) in any rolling second of the whole run, opening burst "
            "included; allowed is the limit (windows) or rate + burst (buckets); "
            "(grants: the same, counted from tokenbucket's reserved instants on the Redis "
            "server's clock).",
            "",
        ]
    if generous or binding:
        parts += [legend, ""]
    if results.notes:
        parts += [*(f"Note: {note}" for note in results.notes), ""]
    if results.targets:
        rows = [[c["target"], c["met"]] for c in results.targets]
        parts += ["## Targets (tokenbucket)", ""]
        if cfg.mode == "quick":
            parts += ["--quick sizes are too small to judge the targets: indicative only.", ""]
        parts += [markdown_table(["target", "met"], rows, set()), ""]
    if results.reading:
        parts += ["## Reading", "", *results.reading, ""]
    return "\n".join(parts)


def _ordered(runs: list[RunResult]) -> list[RunResult]:
    names: list[str] = []
    for r in runs:
        if r.name not in names:
            names.append(r.name)
    return sorted(runs, key=lambda r: (names.index(r.name), r.acquirers))


# -- main ------------------------------------------------------------------------------


async def _prepare(url: str, allow_flush: bool) -> str:
    """Check the server answers and the database holds only this benchmark's keys;
    return the server's version."""
    client: Any = aioredis.Redis.from_url(url)
    try:
        info = await client.info("server")
        foreign = []
        async for key in client.scan_iter(count=1000):
            if KEY_MARK not in _text(key):
                foreign.append(_text(key))
                if len(foreign) >= 3:
                    break
        if foreign and not allow_flush:
            raise SystemExit(
                f"{url} holds keys this benchmark did not write ({', '.join(foreign)}, ...); "
                "it flushes its database before every run. Point --url at a spare database "
                "or pass --allow-flush."
            )
        return str(info.get("redis_version", "?"))
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run with small sizes")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    parser.add_argument(
        "--url",
        default=os.environ.get("TOKENBUCKET_BENCH_REDIS_URL", DEFAULT_URL),
        help=f"Redis database to use and FLUSH before every run (default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--allow-flush",
        action="store_true",
        help="flush the database even if it holds keys this benchmark did not write",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="TEXT",
        help="run only limiters whose name contains TEXT (repeatable; the floor always runs)",
    )
    parser.add_argument(
        "--regime", action="append", choices=REGIMES, help="run only this regime (repeatable)"
    )
    parser.add_argument(
        "--acquirers",
        metavar="N,N,...",
        help="concurrent acquirers (default 1,10,100,1000; --quick 1,10,100)",
    )
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.acquirers:
        cfg = Config(
            **{**asdict(cfg), "acquirers": tuple(int(n) for n in args.acquirers.split(","))}
        )
    try:
        server = asyncio.run(_prepare(args.url, args.allow_flush))
    except (OSError, aioredis.RedisError) as exc:
        print(
            f"cannot reach Redis at {args.url}: {exc}\n"
            "start one (e.g. `redis-server` or `docker run -p 6379:6379 redis`) or pass --url",
            file=sys.stderr,
        )
        return 2
    found, notes = candidates()
    if args.only:
        found = [c for c in found if c.name == FLOOR or any(t in c.name for t in args.only)]
    results = Results(environment(cfg, args.url, server), asdict(cfg), notes=notes)
    regimes = args.regime or list(REGIMES)
    for regime in REGIMES:
        if regime not in regimes:
            continue
        for n in cfg.acquirers:
            floor: RunResult | None = None
            for candidate in found:
                if regime not in candidate.regimes:
                    continue
                result = bench_run(candidate, args.url, cfg, regime, n)
                if candidate.name == FLOOR:
                    floor = result
                if floor is not None and regime == "generous":
                    result.vs_floor = result.per_second / floor.per_second
                results.runs.append(result)
    dropped = [r for r in results.runs if r.reconnects > 0]
    if dropped:
        results.notes.append(
            "connections re-opened during the interval (dropped by the server or a fault "
            "elsewhere): "
            + ", ".join(f"{r.name} x{r.acquirers} {r.regime}: {r.reconnects}" for r in dropped)
        )
    if any(r.warnings_total for r in results.runs):
        results.notes.append(
            "tokenbucket logged warnings: "
            + ", ".join(
                f"{r.name} x{r.acquirers} {r.regime}: {r.warnings} in the interval, "
                f"{r.warnings_total} in all ({'; '.join(r.warning_messages)})"
                for r in results.runs
                if r.warnings_total
            )
        )
    results.targets = targets(results.runs, cfg)
    results.reading = reading(results.runs, cfg)
    print(report(results, cfg))
    if args.json:
        directory = os.path.dirname(args.json)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(asdict(results), file, indent=2)
            file.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
