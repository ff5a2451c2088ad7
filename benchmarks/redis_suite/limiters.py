"""The limiters of the Redis benchmark, each on its own redis-py pool of counted
connections, used the way its users write it; and the floor (an EVALSHA of ``return 1``)."""

from __future__ import annotations

import asyncio
import collections
import math
import time
import uuid
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

import tokenbucket as tb
from _harness import optional, version

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from redis.typing import EncodableT

    from redis_suite.runs import Config

# Every key the benchmark writes contains this; the database is only flushed when every
# key already in it does too (or with --allow-flush).
KEY_MARK = "tbbench"
FLOOR = "floor: EVALSHA `return 1`"
BATCHED = "floor: batched reserve.lua"
TB_BUCKET = "tokenbucket.TokenBucket"
TB_WINDOW = "tokenbucket.SlidingWindow"
# Commands the server reports as "container|subcommand" in INFO commandstats.
_CONTAINERS = frozenset(
    {"acl", "client", "cluster", "command", "config", "function", "latency", "memory"}
    | {"module", "object", "pubsub", "script", "slowlog", "xinfo"}
)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def command_name(args: tuple[Any, ...]) -> str:
    """The name INFO commandstats files a command under (``evalsha``, ``script|load``)."""
    words = text(args[0]).split()
    rest = [*words[1:], *args[1:]]
    name = words[0].lower()
    return f"{name}|{text(rest[0]).lower()}" if name in _CONTAINERS and rest else name


class Tally:
    """Commands sent, connections made, connects completed and re-connects, in one run."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.commands: collections.Counter[str] = collections.Counter()
        self.connections = self.connects = self.reconnects = 0


TALLY = Tally()


class CountingConnection(Connection):
    """A redis-py connection that counts every command it packs and every connection."""

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


@dataclass
class Subject:
    """A limiter set up for one run; ``close()`` runs after every worker has ended."""

    acquire: Callable[[], Awaitable[None]]
    close: Callable[[], Awaitable[None]]
    round_trips: Callable[[], int] | None = None
    schedule: Schedule | None = None  # tokenbucket only: what its backend reserved


@dataclass(frozen=True)
class Candidate:
    """``kind``: "window" or "bucket" (what "allowed" means for it), or "none"; ``make``
    sets it up the way its users write it, for ``rate`` units per ``window`` seconds
    (windows) or per second (buckets) with a burst of ``burst`` (buckets)."""

    name: str
    kind: str
    make: Callable[[str, Config, int, int], Awaitable[Subject]]
    regimes: tuple[str, ...] = ("generous", "binding")


async def _floor(url: str, cfg: Config, rate: int, burst: int) -> Subject:
    client, close = _client(url, cfg)
    sha = await client.script_load("return 1")

    async def acquire() -> None:
        await client.evalsha(sha, 0)

    return Subject(acquire, close)


async def _batched(url: str, cfg: Config, rate: int, burst: int) -> Subject:
    """tokenbucket's own reserve script on a bucket, called bare: every acquirer queues a
    future, one sender sends whatever queued as one call (as tokenbucket's backend does)
    and sets the futures; no limiter, no store, no waiting for the reserved instant."""
    from tokenbucket._redis import _protocol, _scripts

    client, close_client = _client(url, cfg)
    sha = await client.script_load(_scripts.source("reserve"))
    meter = _protocol.MeterSpec("b", f"{{{KEY_MARK}:floor}}:0", float(rate), float(burst))
    shape = _protocol.Shape((meter,), f"{{{KEY_MARK}:floor}}:pause")
    loop = asyncio.get_running_loop()
    queued: list[asyncio.Future[None]] = []
    calls = 0
    name = uuid.uuid4().hex  # the calls' ids: recorded in Redis, unique
    wake = asyncio.Event()

    async def sender() -> None:
        nonlocal queued, calls
        while True:
            await wake.wait()
            wake.clear()
            batch, queued = queued, []
            calls += 1
            keys, args = _protocol.encode_batch(
                "", f"{name}-{calls}", [(shape, (1.0,), None)] * len(batch), 300.0
            )
            replies = _protocol.decode_replies(
                await client.evalsha(sha, len(keys), *keys, *args), keys
            )
            for future, reply in zip(batch, replies, strict=True):
                if reply.status != _protocol.RESERVED:
                    raise RuntimeError(f"the generous bucket refused a unit: {reply}")
                if not future.done():  # its worker may have been cancelled
                    future.set_result(None)

    task = loop.create_task(sender())

    async def acquire() -> None:
        future = loop.create_future()
        queued.append(future)
        wake.set()
        await future

    async def close() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await close_client()

    return Subject(acquire, close, lambda: calls)


def _client(url: str, cfg: Config) -> tuple[Any, Callable[[], Awaitable[None]]]:
    """A client on a pool of its own, and what closes both."""
    pool = cfg.pool(url)
    client: Any = aioredis.Redis(connection_pool=pool)

    async def close() -> None:
        await client.aclose()
        await pool.disconnect()

    return client, close


class Schedule:
    """What tokenbucket's backend reserved, logged by wrapping ``backend.reserve``.

    ``grants``: every reserved instant (Redis server clock). ``admissions`` pairs each
    admission (``time.monotonic()``) with its reserved instant. ``offset``: local minus
    server clock, from the reply that reached its task soonest. ``calls``: (reply read,
    seconds since sent) of every EVALSHA the backend's client makes.
    """

    def __init__(self, backend: Any) -> None:
        self.grants: list[float] = []
        self.admissions: list[tuple[float, float]] = []
        self.offset = math.inf
        self.calls: list[tuple[float, float]] = []
        last: dict[asyncio.Task[Any] | None, float] = {}
        self._last = last
        reserve, client = backend.reserve, backend.client
        evalsha = client.evalsha

        async def timed(*args: Any, **kwargs: Any) -> Any:
            sent = time.monotonic()
            try:
                return await evalsha(*args, **kwargs)
            finally:
                done = time.monotonic()
                self.calls.append((done, done - sent))

        async def logged(*args: Any, **kwargs: Any) -> Any:
            status, wait, reservation = await reserve(*args, **kwargs)
            if status == 1:
                self.grants.append(reservation.at)
                last[asyncio.current_task()] = reservation.at
                self.offset = min(self.offset, time.monotonic() - (reservation.at - wait))
            return status, wait, reservation

        client.evalsha = timed
        backend.reserve = logged

    def admitted(self) -> None:
        if (at := self._last.get(asyncio.current_task())) is not None:
            self.admissions.append((time.monotonic(), at))

    def lateness(self) -> list[tuple[float, float]]:
        """(admission instant, seconds after its reserved instant) for every admission."""
        return [(stamp, stamp - (at + self.offset)) for stamp, at in self.admissions]


async def _tokenbucket(
    url: str, cfg: Config, rate: int, burst: int, *, window: bool, logged: bool = True
) -> Subject:
    """``logged=False``: no :class:`Schedule` (no grants, no lateness) and ``acquire`` is
    the limiter's own: nothing of the harness's between the task and the library."""
    pool = cfg.pool(url)
    backend_class: Any = tb.RedisBackend  # public, imported on first use
    backend = backend_class(aioredis.Redis(connection_pool=pool), prefix=KEY_MARK)
    limiter: tb.TokenBucket | tb.SlidingWindow
    if window:
        limiter = tb.SlidingWindow(limit=rate, window=cfg.window, backend=backend, key="bench")
    else:
        limiter = tb.TokenBucket(rate=rate, capacity=burst, backend=backend, key="bench")
    # The schedule reads the backend's seam (reserve, client); without it, no grants column.
    schedule = Schedule(backend) if logged and hasattr(backend, "reserve") else None

    async def logged_acquire() -> None:
        await limiter.acquire()
        if schedule is not None:
            schedule.admitted()

    acquire = limiter.acquire if schedule is None else logged_acquire

    async def close() -> None:
        await backend.aclose()  # waits for the give-backs of cancelled reservations
        await pool.disconnect()

    trips = (lambda: int(backend.round_trips)) if hasattr(backend, "round_trips") else None
    return Subject(acquire, close, trips, schedule)


async def _limits(url: str, cfg: Config, rate: int, burst: int, *, strategy: str) -> Subject:
    pool = cfg.pool(url)
    storage = optional("limits.aio.storage").RedisStorage(
        "async+" + url,
        implementation="redispy",
        key_prefix=f"{KEY_MARK}-limits",
        connection_pool=pool,
    )
    limiter = getattr(optional("limits.aio.strategies"), strategy)(storage)
    item = optional("limits").RateLimitItemPerSecond(rate)

    async def acquire() -> None:
        # `limits` never waits: poll, sleeping until the reset it reports (wall clock).
        while not await limiter.hit(item, "bench"):
            reset_time, _remaining = await limiter.get_window_stats(item, "bench")
            await asyncio.sleep(max(reset_time - time.time(), cfg.limits_min_poll))

    async def close() -> None:
        await storage.bridge.storage.aclose()
        await pool.disconnect()

    return Subject(acquire, close)


async def _pyrate(url: str, cfg: Config, rate: int, burst: int, *, state: bool) -> Subject:
    pyrate = optional("pyrate_limiter")
    client, close_client = _client(url, cfg)
    if state:
        store = pyrate.RedisStateStore(client, f"{KEY_MARK}-pyrate-gcra")
        rates = [pyrate.Rate(rate, pyrate.Duration.SECOND, burst=burst)]
        bucket = pyrate.StateBucket(rates, store=store, algorithm=pyrate.TokenBucket())
    else:
        rates = [pyrate.Rate(rate, int(cfg.window * 1000))]
        bucket = await pyrate.RedisBucket.init(rates, client, f"{KEY_MARK}-pyrate-log")
    limiter = pyrate.Limiter(bucket, buffer_ms=cfg.pyrate_buffer_ms)

    async def acquire() -> None:
        if not await limiter.try_acquire_async("bench"):  # v4: blocks by default
            raise RuntimeError("pyrate-limiter refused a unit")

    async def close() -> None:
        limiter.close()
        await close_client()

    return Subject(acquire, close)


def _major_minor(distribution: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version(distribution).split(".")[:2])
    except ValueError:
        return (0, 0)


def candidates() -> tuple[list[Candidate], list[str]]:
    """The limiters to run, and a note for each peer left out."""
    found = [
        Candidate(FLOOR, "none", _floor, ("generous",)),
        Candidate(BATCHED, "none", _batched, ("generous",)),
        Candidate(TB_BUCKET, "bucket", partial(_tokenbucket, window=False)),
        Candidate(TB_WINDOW, "window", partial(_tokenbucket, window=True)),
    ]
    notes = []
    if _major_minor("limits") >= (4, 2):
        for kind in ("MovingWindow", "SlidingWindowCounter"):
            make = partial(_limits, strategy=f"{kind}RateLimiter")
            found.append(Candidate(f"limits {kind} (polled)", "window", make))
    else:
        notes.append("limits >= 4.2 (async RedisStorage on redis-py) is not installed.")
    if _major_minor("pyrate-limiter") >= (4, 5):
        found.append(Candidate("pyrate RedisBucket", "window", partial(_pyrate, state=False)))
        found.append(
            Candidate("pyrate StateBucket(RedisStateStore)", "bucket", partial(_pyrate, state=True))
        )
    else:
        notes.append("pyrate-limiter >= 4.5 (RedisBucket and RedisStateStore) is not installed.")
    return found, notes
