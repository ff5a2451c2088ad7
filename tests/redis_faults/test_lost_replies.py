"""Replies lost on the way back, and slow round trips, through a proxy (``_proxy.py``).

A reserve call whose reply is lost has run: its reservations are in Redis. A retry of it
must be charged once ("wait"), and a caller that got an error instead of its grant
("raise") must leave nothing behind. A settle whose reply is lost is retried and
settles once. A round trip that takes long must not push an ``acquire(timeout=t)`` past
``t``.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

import tokenbucket as tb
from tests.redis_faults._support import Recorder, until
from tests.redis_faults.conftest import close
from tokenbucket._redis import BackendUnavailableError, RedisBackend, _scripts

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import redis.asyncio as aioredis

    from tests.redis_faults._proxy import Proxy


pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

PREFIX = "lost"
LIMIT = 10  # units per WINDOW (a window's limit, a bucket's capacity)
WINDOW = 1.0
BATCH = 5  # the requests whose reply is lost
# The reserve and adjust scripts' SHAs: the bytes that mark their EVALSHAs on the wire.
RESERVE = hashlib.sha1(_scripts.source("reserve").encode()).hexdigest().encode()
ADJUST = hashlib.sha1(_scripts.source("adjust").encode()).hexdigest().encode()
CANCEL = hashlib.sha1(_scripts.source("cancel").encode()).hexdigest().encode()


@pytest_asyncio.fixture
async def backends(proxy: Proxy) -> AsyncIterator[list[RedisBackend]]:
    made: list[RedisBackend] = []
    yield made
    for backend in made:
        await close(backend)


def through(proxy: Proxy, made: list[RedisBackend], on_error: str) -> RedisBackend:
    backend = RedisBackend(proxy.url, prefix=PREFIX, on_error=on_error, max_backoff=0.1)  # type: ignore[arg-type]
    made.append(backend)
    return backend


def limiter(kind: str, backend: RedisBackend) -> tb.SlidingWindow | tb.TokenBucket:
    if kind == "window":
        return tb.SlidingWindow(limit=LIMIT, window=WINDOW, backend=backend, key=kind)
    return tb.TokenBucket(rate=LIMIT / WINDOW, capacity=LIMIT, backend=backend, key=kind)


async def charged(admin: aioredis.Redis, kind: str) -> float:
    """What Redis counts against the limiter now: a window's running sum (checked
    against the entries it sums) or the units a bucket's schedule holds."""
    keys = [text(k) for k in await admin.keys(f"{{{PREFIX}:{kind}}}:0:*")]
    found = [k for k in keys if not k.endswith((":last", ":sum"))]
    key = found[0] if found else ""
    # One transaction: a give-back running between two reads would tear them apart.
    async with admin.pipeline(transaction=True) as pipe:
        pipe.time()
        if key and kind == "window":
            pipe.hget(key + ":sum", "all")
            pipe.zrange(key, 0, -1, withscores=True)
        elif key:
            pipe.get(key)
        (seconds, micros), *read = await pipe.execute()
    now = float(seconds) + float(micros) / 1e6
    if kind == "window":
        if not key:
            return 0.0
        counted = float(read[0] or 0)
        listed: list[Any] = read[1]
        entries = [(float(text(e).rpartition(":")[2]), float(score)) for e, score in listed]
        assert counted == pytest.approx(sum(a for a, _ in entries)), (counted, entries)
        # Those inside the window that ends now (the sums drop older ones lazily).
        return sum(amount for amount, at in entries if at > now - WINDOW)
    tat = float(read[0] or 0) if key else 0.0
    return max(0.0, tat - now) * LIMIT / WINDOW


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def warm(backend: RedisBackend) -> None:
    """Load the scripts through the backend, so the next reserve is one EVALSHA."""
    await tb.SlidingWindow(limit=100, window=1.0, backend=backend, key="warm").acquire()


# -- a reply lost after the script ran ----------------------------------------------------


@pytest.mark.parametrize("kind", ["window", "bucket"])
async def test_lost_reply_is_charged_once_on_retry(
    proxy: Proxy, backends: list[RedisBackend], admin: aioredis.Redis, kind: str
) -> None:
    backend = through(proxy, backends, "wait")
    await warm(backend)
    recorder = Recorder(limiter(kind, backend))
    loop = asyncio.get_running_loop()
    proxy.lose_reply(RESERVE)
    start = loop.time()
    await asyncio.wait_for(asyncio.gather(*(recorder.take() for _ in range(BATCH))), 5.0)
    assert proxy.lost == 1
    assert max(recorder.grants) - start < 0.3  # retried at once, granted at once
    # Redis counts what the callers were granted, once.
    assert await charged(admin, kind) == pytest.approx(BATCH, abs=1.5)

    # The limit admits its full rate afterwards: the rest of the first LIMIT at once,
    # then LIMIT per WINDOW.
    more = 2 * LIMIT + (LIMIT - BATCH)
    await asyncio.wait_for(asyncio.gather(*(recorder.take() for _ in range(more))), 10.0)
    grants = sorted(recorder.grants)
    assert grants[LIMIT - 1] - start < 0.3, [round(g - start, 3) for g in grants]
    assert grants[-1] - start < 2 * WINDOW + 0.3, [round(g - start, 3) for g in grants]
    await charged(admin, kind)  # a window's running sum is still the sum of its entries


@pytest.mark.parametrize("kind", ["window", "bucket"])
async def test_lost_reply_under_raise_leaves_nothing_reserved(
    proxy: Proxy, backends: list[RedisBackend], admin: aioredis.Redis, kind: str
) -> None:
    backend = through(proxy, backends, "raise")
    await warm(backend)
    recorder = Recorder(limiter(kind, backend))
    proxy.lose_reply(RESERVE)
    results = await asyncio.wait_for(
        asyncio.gather(*(recorder.take() for _ in range(BATCH)), return_exceptions=True), 5.0
    )
    assert proxy.lost == 1
    assert all(isinstance(r, BackendUnavailableError) for r in results), results
    assert not recorder.grants

    # What the call reserved for callers that got an error is given back at once.
    async def nothing_charged() -> bool:
        return await charged(admin, kind) < 0.5

    await until(nothing_charged, 1.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.wait_for(asyncio.gather(*(recorder.take() for _ in range(LIMIT))), 5.0)
    assert max(recorder.grants) - start < 0.3  # the whole limit, at once


# -- a settle whose reply is lost -----------------------------------------------------------

GRANTED = 10.0  # the tokens a lease is granted (then settled at more, or fewer)


async def schedule(admin: aioredis.Redis, key: str) -> tuple[float, float]:
    """A limiter's meter in Redis: a window's running sum and the sum of its entries, or
    a bucket's schedule (epoch seconds; Redis's clock when it has none: full) twice."""
    found = [text(k) for k in await admin.keys(f"{{{PREFIX}:{key}}}:0:*")]
    meters = [k for k in found if not k.endswith((":last", ":sum"))]
    if not meters:  # a bucket given everything back
        seconds, micros = await admin.time()
        return seconds + micros / 1e6, seconds + micros / 1e6
    (meter,) = meters
    if await admin.type(meter) in (b"zset", "zset"):
        counted = float(await admin.hget(meter + ":sum", "all") or 0)
        listed: list[Any] = await admin.zrange(meter, 0, -1, withscores=True)
        entries = [float(text(e).rpartition(":")[2]) for e, _ in listed]
        return counted, sum(entries)
    tat = float(await admin.get(meter) or 0)
    return tat, tat


@pytest.mark.parametrize(
    ("kind", "settled"),
    [("bucket", 30.0), ("bucket", 2.0), ("window", 30.0), ("window", 2.0)],
)
async def test_lost_settle_reply_settles_once_on_retry(
    proxy: Proxy, backends: list[RedisBackend], admin: aioredis.Redis, kind: str, settled: float
) -> None:
    backend = through(proxy, backends, "wait")
    # A bucket of 1 token a second (its schedule moves 1 s per token), or a window of a
    # minute: nothing refills or leaves during the test.
    rate = tb.Rate(1, 1.0, burst=100) if kind == "bucket" else tb.Rate(100, 60.0)
    warmed = tb.Limiter({"tokens": rate}, backend=backend, key="warm-settle")
    async with warmed.acquire(tokens=GRANTED) as lease:  # loads both scripts
        lease.settle(tokens=0)
    await backend._background.drain(asyncio.get_running_loop().time() + 5.0)
    limiter = tb.Limiter({"tokens": rate}, backend=backend, key=f"settle-{kind}")
    async with limiter.acquire(tokens=GRANTED) as lease:
        before, _ = await schedule(admin, f"settle-{kind}")
        proxy.lose_reply(ADJUST)
        lease.settle(tokens=settled)
    await backend._background.drain(asyncio.get_running_loop().time() + 5.0)
    assert proxy.lost == 1
    after, listed = await schedule(admin, f"settle-{kind}")
    if kind == "bucket":
        # Charged the overrun, or given the unused part back, once: the schedule moves
        # by (settled - granted) / rate.
        assert after - before == pytest.approx(settled - GRANTED, abs=0.1)
    else:
        # The grant's entry holds the settled amount, once; the running sum agrees.
        assert (before, after, listed) == (GRANTED, settled, settled)


# -- slow round trips and the caller's timeout ---------------------------------------------

DELAY = 0.2  # added to each round trip
TIMEOUT = 0.5
SPACING = 0.6  # one unit per SPACING seconds: the next is free just after TIMEOUT


@pytest.mark.parametrize("kind", ["window", "bucket", "full window"])
async def test_timeout_ends_at_its_time_whatever_the_round_trip(
    proxy: Proxy, backends: list[RedisBackend], kind: str
) -> None:
    backend = through(proxy, backends, "raise")
    await warm(backend)
    if kind == "bucket":
        limit: tb.SlidingWindow | tb.TokenBucket = tb.TokenBucket(
            rate=1 / SPACING, capacity=1, backend=backend, key=kind
        )
    else:
        window = SPACING if kind == "window" else 10 * SPACING
        limit = tb.SlidingWindow(limit=1, window=window, backend=backend, key="w" + kind[:4])
    loop = asyncio.get_running_loop()
    await limit.acquire()
    taken = loop.time()
    # Reserved (on Redis's clock) for SPACING after the first grant: within TIMEOUT of
    # when the script runs, DELAY after the call, but not of the call.
    proxy.delay = DELAY
    start = loop.time()
    with pytest.raises(tb.AcquireTimeoutError):
        await asyncio.wait_for(limit.acquire(timeout=TIMEOUT), 5.0)
    ended = loop.time() - start
    assert TIMEOUT - 0.01 <= ended <= TIMEOUT + 0.05, ended
    if kind != "full window":
        # What it had reserved was given back (once that call is through the proxy):
        # the next caller gets that instant, not the one after it (2 * SPACING).
        await asyncio.sleep(DELAY + 0.05)
        proxy.delay = 0.0
        await asyncio.wait_for(limit.acquire(), 5.0)
        assert loop.time() - taken < SPACING + DELAY + 0.15


# -- many waiters cancelled at once --------------------------------------------------------

STORM = 1000  # waiters cancelled together
ROUND_TRIP = 0.01  # a Redis a few network hops away


@pytest.mark.parametrize("kind", ["window", "bucket"])
async def test_a_storm_of_cancellations_is_given_back_within_the_close(
    proxy: Proxy, backends: list[RedisBackend], admin: aioredis.Redis, kind: str
) -> None:
    # A timeout storm, or a shutdown: STORM waiters on a binding limit, cancelled
    # together, then the backend closed. Their give-backs share calls (one per hash tag,
    # a bounded number of reservations each), so all of them land within the close's
    # grace even when each round trip takes ROUND_TRIP, and nothing keeps counting.
    backend = through(proxy, backends, "wait")
    await warm(backend)
    if kind == "window":
        limit: tb.SlidingWindow | tb.TokenBucket = tb.SlidingWindow(
            limit=1, window=1.0, backend=backend, key="storm"
        )
    else:
        limit = tb.TokenBucket(rate=10, capacity=1, backend=backend, key="storm")
    await limit.acquire()
    keys = [text(k) for k in await admin.keys(f"{{{PREFIX}:storm}}:0:*")]
    key = next(k for k in keys if not k.endswith((":last", ":sum")))
    first = 0.0 if kind == "window" else float(await admin.get(key) or 0)
    tasks = [asyncio.create_task(limit.acquire()) for _ in range(STORM)]
    tat = 0.0

    async def all_reserved() -> bool:
        nonlocal tat
        if kind == "window":
            return int(await admin.zcard(key)) == STORM + 1
        # Each reservation moves the bucket's schedule 0.1 s on, however long they take.
        tat = float(await admin.get(key) or 0)
        return tat >= first + STORM / 10 - 1e-6

    await until(all_reserved, 10.0)
    proxy.delay = ROUND_TRIP
    calls = backend.round_trips
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await backend.aclose()  # grace: 0.5 s
    assert backend.round_trips - calls <= 2 * (STORM // 128 + 1)
    if kind == "window":
        assert await admin.zcard(key) == 1  # the first grant's entry, nothing else
    else:
        # The latest reservation went back (the only one a bucket can give back).
        assert float(await admin.get(key) or 0) == pytest.approx(tat - 0.1, abs=1e-6)


async def test_a_batch_of_give_backs_whose_reply_is_lost_gives_back_once(
    proxy: Proxy, backends: list[RedisBackend], admin: aioredis.Redis
) -> None:
    backend = through(proxy, backends, "wait")
    await warm(backend)
    window = tb.SlidingWindow(limit=1, window=WINDOW, backend=backend, key="lost-cancel")
    await window.acquire()
    tasks = [asyncio.create_task(window.acquire()) for _ in range(BATCH)]
    key = ""

    async def all_reserved() -> bool:
        nonlocal key
        keys = [text(k) for k in await admin.keys(f"{{{PREFIX}:lost-cancel}}:0:*")]
        key = next(k for k in keys if not k.endswith(":sum"))
        return bool(await admin.zcard(key) == BATCH + 1)

    await until(all_reserved, 5.0)
    proxy.lose_reply(CANCEL)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await backend._background.drain(asyncio.get_running_loop().time() + 5.0)
    assert proxy.lost == 1  # the call ran, its reply was lost, and it was sent again
    assert await admin.zcard(key) == 1
    assert float(await admin.hget(key + ":sum", "all") or 0) == pytest.approx(1.0)
