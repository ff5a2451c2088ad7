"""Faults of the Redis backend: each has a defined outcome, and loses no grant.

Every test runs its own ``redis-server`` on a free port (``conftest.py``) and may kill and
restart it. "No grant is lost" is checked the same way throughout: a caller that holds a
reservation when the fault happens is still admitted at its instant (it sleeps locally and
needs no Redis for that), every acquirer either is admitted or gets the documented error,
and the grants made before the fault keep counting against the limit.

Times are the event loop's clock; a grant is observed a little after its instant in
Redis (a reply's latency), so comparisons allow ``TOL``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import pytest

import tokenbucket as tb
from tests.redis_faults._support import Recorder, until
from tokenbucket._redis import BackendError, BackendUnavailableError, RedisBackend

if TYPE_CHECKING:
    from collections.abc import Callable

    import redis.asyncio as aioredis

    from tests.redis_faults.conftest import RedisServer

    MakeBackend = Callable[..., RedisBackend]

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

PREFIX = "faults"
PERIOD = 0.3  # the give-back tests' limit: one unit per PERIOD seconds
TOL = 0.03
LOGGER = "tokenbucket.redis"


# -- helpers -----------------------------------------------------------------------------


async def meter_key(admin: aioredis.Redis, tag: str) -> str:
    """The Redis key of the (only) meter of the limiter with ``key=tag``."""
    found = [
        k.decode() if isinstance(k, bytes) else k
        for k in await admin.keys(f"{{{PREFIX}:{tag}}}:0:*")
    ]
    keys = [k for k in found if not k.endswith((":last", ":sum"))]
    assert len(keys) == 1, keys
    return keys[0]


def most_in_window(stamps: list[float], window: float) -> int:
    """The most grants in any window ``[s, s + window)`` (shortened by ``TOL``)."""
    ordered = sorted(stamps)
    return max(
        (sum(1 for t in ordered if s <= t < s + window - TOL) for s in ordered),
        default=0,
    )


async def reserved_caller(backend: RedisBackend) -> tuple[asyncio.Task[float], float]:
    """A caller that holds a reservation (for about 0.4 s from now) when the test goes
    on: its task, and the earliest instant it may be admitted."""
    slow = Recorder(tb.SlidingWindow(limit=1, window=0.4, backend=backend, key="reserved"))
    first = await slow.take()
    task = asyncio.create_task(slow.take())
    await asyncio.sleep(0.1)  # its reservation is made (one round trip) and it sleeps
    assert not task.done()
    return task, first + 0.4


async def enter(limiter: tb.Limiter, timeout: float | None = None) -> None:
    async with limiter.acquire(timeout=timeout):
        pass


# -- 1. Redis stopped before start -------------------------------------------------------


async def test_unreachable_at_start_raises_a_clear_error(dead_port: int) -> None:
    assert tb.BackendUnavailableError is BackendUnavailableError
    assert tb.BackendError is BackendError
    url = f"redis://127.0.0.1:{dead_port}/0"
    for policy in ("raise", "wait", "local"):  # ping() checks; it follows no policy
        backend = RedisBackend(url, prefix=PREFIX, on_error=policy)
        try:
            with pytest.raises(BackendUnavailableError) as caught:
                await asyncio.wait_for(backend.ping(), 5.0)
        finally:
            await backend.aclose()
        error = caught.value
        assert isinstance(error, ConnectionError)
        assert isinstance(error, tb.TokenBucketError)
        assert "Redis is unreachable" in str(error)
        assert f"127.0.0.1:{dead_port}" in str(error)
        assert error.__cause__ is not None

    backend = RedisBackend(url, prefix=PREFIX, on_error="raise")
    try:
        bucket = tb.TokenBucket(rate=10, capacity=1, backend=backend, key="bucket")
        with pytest.raises(BackendUnavailableError, match="Redis is unreachable"):
            await asyncio.wait_for(bucket.acquire(), 5.0)
        limiter = tb.Limiter(requests_per_second=10, max_concurrency=2, backend=backend, key="l")
        with pytest.raises(BackendUnavailableError, match="Redis is unreachable"):
            await asyncio.wait_for(enter(limiter), 5.0)
        assert limiter.statistics().in_flight == 0
    finally:
        await backend.aclose()


# -- 2. Redis killed mid-run, then restarted on the same port ----------------------------


async def test_killed_wait_policy_waits_with_backoff_and_resumes(
    redis_server: RedisServer, make_backend: MakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    backend = make_backend(on_error="wait", max_backoff=0.1)
    window = Recorder(tb.SlidingWindow(limit=4, window=0.3, backend=backend, key="w"))
    loop = asyncio.get_running_loop()
    for _ in range(4):
        await window.take()
    # Two callers hold reservations for the next window when Redis dies.
    reserved = [asyncio.create_task(window.take()) for _ in range(2)]
    await asyncio.sleep(0.1)
    redis_server.kill()
    killed = loop.time()
    waiting = [asyncio.create_task(window.take()) for _ in range(3)]
    await asyncio.sleep(0.7)

    # The reservations were honoured without Redis (no grant lost) ...
    assert all(task.done() for task in reserved)
    early = await asyncio.gather(*reserved)
    assert all(killed < t for t in early)
    assert all(t >= window.grants[0] + 0.3 - TOL for t in early)
    # ... and the new callers wait (fail closed), retrying with a logged backoff.
    assert not any(task.done() for task in waiting)
    retries = [r for r in caplog.records if r.getMessage().startswith("Redis unreachable (")]
    assert all(r.levelno == logging.WARNING for r in retries)
    assert 2 <= len(retries) <= 30, len(retries)
    assert "retrying in 0.05 s" in retries[0].getMessage()
    assert "retrying in 0.10 s" in retries[-1].getMessage()  # backed off, up to the cap

    await asyncio.to_thread(redis_server.start)  # same port, empty: the state is lost
    restarted = loop.time()
    more = [asyncio.create_task(window.take()) for _ in range(5)]
    await asyncio.wait_for(asyncio.gather(*waiting, *more), 5.0)

    after = [t for t in window.grants if t >= restarted]
    assert len(window.grants) == 4 + 2 + 3 + 5
    assert len(after) == 8  # every waiter was admitted once Redis was back
    assert most_in_window(after, 0.3) <= 4  # limiting resumed
    assert max(after) - min(after) >= 0.3 - TOL


async def test_killed_raise_policy_raises_and_resumes(
    redis_server: RedisServer, make_backend: MakeBackend
) -> None:
    backend = make_backend(on_error="raise")
    window = Recorder(tb.SlidingWindow(limit=2, window=0.4, backend=backend, key="w"))
    limiter = tb.Limiter(requests_per_second=5, max_concurrency=1, backend=backend, key="l")
    loop = asyncio.get_running_loop()
    await window.take()
    await window.take()
    reserved, earliest = await reserved_caller(backend)
    redis_server.kill()

    start = loop.time()
    for _ in range(3):
        with pytest.raises(BackendUnavailableError, match="Redis is unreachable") as caught:
            await asyncio.wait_for(window.take(), 5.0)
        assert isinstance(caught.value, ConnectionError)
    with pytest.raises(BackendUnavailableError):
        await asyncio.wait_for(enter(limiter), 5.0)
    assert loop.time() - start < 3.0  # raised, not retried until Redis is back
    assert limiter.statistics().in_flight == 0
    # A reservation made before the kill is still honoured (no grant lost).
    assert await asyncio.wait_for(reserved, 2.0) >= earliest - TOL

    await asyncio.to_thread(redis_server.start)
    restarted = loop.time()
    await asyncio.wait_for(asyncio.gather(*(window.take() for _ in range(3))), 5.0)
    await asyncio.wait_for(enter(limiter), 5.0)
    after = [t for t in window.grants if t >= restarted]
    assert len(window.grants) == 2 + 3
    assert most_in_window(after, 0.4) <= 2  # limiting resumed
    assert max(after) >= min(after) + 0.4 - TOL


@pytest.mark.parametrize(
    ("kind", "least", "most"),
    [
        # limit 20 per second, share 0.5: exactly 10 in any second.
        ("window", 8, 10),
        # rate 20/s, capacity 2, share 0.5: rate 10/s, burst 2 -> at most 2 + 10 in a
        # second (one more at its closing instant).
        ("bucket", 8, 13),
    ],
)
async def test_killed_local_policy_limits_locally_at_the_share(
    redis_server: RedisServer,
    make_backend: MakeBackend,
    admin: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    least: int,
    most: int,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    backend = make_backend(on_error="local", local_share=0.5)
    limiter: tb.SlidingWindow | tb.TokenBucket
    if kind == "window":
        limiter = tb.SlidingWindow(limit=20, window=1.0, backend=backend, key=kind)
    else:
        limiter = tb.TokenBucket(rate=20, capacity=2, backend=backend, key=kind)
    recorder = Recorder(limiter)
    loop = asyncio.get_running_loop()
    await recorder.take()  # through Redis
    assert await admin.keys(f"{{{PREFIX}:{kind}}}:*")
    reserved, earliest = await reserved_caller(backend)
    redis_server.kill()
    killed = loop.time()

    async def worker() -> None:
        while loop.time() < killed + 1.0:
            await recorder.take()

    workers = [asyncio.create_task(worker()) for _ in range(8)]
    await asyncio.sleep(1.0)
    for task in workers:
        task.cancel()
    results = await asyncio.gather(*workers, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results

    during = [t for t in recorder.grants if killed <= t < killed + 1.0]
    assert least <= len(during) <= most, len(during)  # proceeds, at the reduced share
    assert any("limiting locally" in r.getMessage() for r in caplog.records)
    assert await asyncio.wait_for(reserved, 2.0) >= earliest - TOL  # no grant lost

    # Back on Redis once it answers: the limiter's state is written there again.
    await asyncio.to_thread(redis_server.start)
    await admin.connection_pool.disconnect()  # its connection died with the old server
    # (The restarted server is empty; a take within a probe period of its return may
    # still be the stand-in's, and its grants may already be charged to it.)

    async def written_there() -> bool:
        await asyncio.wait_for(recorder.take(), 5.0)
        return bool(await admin.keys(f"{{{PREFIX}:{kind}}}:*"))

    await until(written_there, 5.0)


async def killed_under_a_window(
    redis_server: RedisServer, make_backend: MakeBackend, caplog: pytest.LogCaptureFixture
) -> tuple[RedisBackend, tb.SlidingWindow]:
    """A window on a backend with the wait policy, one unit taken, then Redis killed."""
    caplog.set_level(logging.ERROR, logger=LOGGER)
    backend = make_backend(on_error="wait", max_backoff=0.1)
    window = tb.SlidingWindow(limit=5, window=1.0, backend=backend, key="w")
    await window.acquire()
    redis_server.kill()
    return backend, window


async def test_killed_wait_policy_keeps_the_callers_timeout(
    redis_server: RedisServer, make_backend: MakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    _, window = await killed_under_a_window(redis_server, make_backend, caplog)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(tb.AcquireTimeoutError):
        await asyncio.wait_for(window.acquire(timeout=0.3), 1.0)
    assert loop.time() - start < 0.8


async def test_killed_wait_policy_aclose_does_not_hang(
    redis_server: RedisServer, make_backend: MakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    backend, window = await killed_under_a_window(redis_server, make_backend, caplog)
    task = asyncio.create_task(window.acquire())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(backend.aclose(), 1.0)


# -- 3. SCRIPT FLUSH between acquires ----------------------------------------------------


async def test_script_flush_reloads_and_keeps_the_state(
    make_backend: MakeBackend, admin: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    backend = make_backend(on_error="raise")
    window = Recorder(tb.SlidingWindow(limit=3, window=0.4, backend=backend, key="w"))
    await window.take()
    await window.take()
    assert await admin.script_flush()
    trips = backend.round_trips
    await asyncio.wait_for(window.take(), 2.0)  # NOSCRIPT -> loaded again -> reserved
    assert backend.round_trips > trips + 1  # the reload cost an extra round trip
    assert window.grants[2] - window.grants[0] < 0.4 - TOL  # the third fits at once

    # The grants made before the flush still count (the flush removes scripts, not keys).
    assert await admin.script_flush()
    await asyncio.wait_for(window.take(), 2.0)
    assert window.grants[3] >= window.grants[0] + 0.4 - TOL

    # A batch of concurrent requests right after a flush.
    assert await admin.script_flush()
    await asyncio.wait_for(asyncio.gather(*(window.take() for _ in range(3))), 3.0)
    assert len(window.grants) == 7
    assert most_in_window(window.grants, 0.4) <= 3

    # release.lua after a flush: the slot is released, so it is free again at once.
    limiter = tb.Limiter(max_concurrency=1, backend=backend, key="c")
    async with limiter.acquire():
        assert await admin.script_flush()
    await asyncio.wait_for(enter(limiter, timeout=0.05), 2.0)

    # cancel.lua after a flush: a cancelled reservation is given back.
    reserved, _ = await reserved_caller(backend)
    key = await meter_key(admin, "reserved")
    assert await admin.zcard(key) == 2
    assert await admin.script_flush()
    reserved.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reserved

    async def given_back() -> bool:
        return bool(await admin.zcard(key) == 1)

    await until(given_back)
    assert not caplog.records  # nothing failed, nothing was retried


# -- 4. A key of the wrong type under the limiter's key ----------------------------------


@pytest.mark.parametrize("policy", ["raise", "wait"])
@pytest.mark.parametrize("kind", ["window", "bucket"])
async def test_wrong_type_key_raises_backend_error(
    make_backend: MakeBackend, admin: aioredis.Redis, kind: str, policy: str
) -> None:
    backend = make_backend(on_error=policy, max_backoff=0.1)
    limiter: tb.SlidingWindow | tb.TokenBucket
    if kind == "window":
        limiter = tb.SlidingWindow(limit=2, window=0.3, backend=backend, key=kind)
    else:
        limiter = tb.TokenBucket(rate=2 / 0.3, capacity=2, backend=backend, key=kind)
    other = Recorder(tb.SlidingWindow(limit=1, window=0.3, backend=backend, key="other"))
    await other.take()  # a grant on another key, returned before the fault
    await limiter.acquire()
    key = await meter_key(admin, kind)
    assert await admin.type(key) == (b"zset" if kind == "window" else b"string")
    await admin.delete(key)
    if kind == "window":
        await admin.set(key, "not a sorted set")
    else:
        await admin.hset(key, "not", "a number")

    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(BackendError) as caught:
        await asyncio.wait_for(limiter.acquire(), 2.0)  # nothing hangs
    assert loop.time() - start < 1.0  # not retried as if Redis were down
    error = caught.value
    assert not isinstance(error, BackendUnavailableError)
    assert "wrong type" in str(error)
    assert repr(PREFIX) in str(error)
    assert await admin.exists(key)  # the foreign value is left alone

    # The other limiter's earlier grant still counts, and the backend is not stuck.
    await asyncio.wait_for(other.take(), 2.0)
    assert other.grants[1] >= other.grants[0] + 0.3 - TOL
    await admin.delete(key)
    await asyncio.wait_for(limiter.acquire(), 2.0)


async def test_non_numeric_bucket_key_names_the_problem(
    make_backend: MakeBackend, admin: aioredis.Redis
) -> None:
    backend = make_backend(on_error="raise")
    bucket = tb.TokenBucket(rate=10, capacity=2, backend=backend, key="bucket")
    await bucket.acquire()
    key = await meter_key(admin, "bucket")
    await admin.set(key, "garbage")
    with pytest.raises(BackendError) as caught:
        await asyncio.wait_for(bucket.acquire(), 2.0)
    message = str(caught.value)
    assert key in message or "wrong type" in message, message


async def test_wrong_type_key_fails_only_its_own_request(
    make_backend: MakeBackend, admin: aioredis.Redis
) -> None:
    backend = make_backend(on_error="raise")
    good = tb.SlidingWindow(limit=2, window=5.0, backend=backend, key="good")
    bad = tb.SlidingWindow(limit=2, window=5.0, backend=backend, key="bad")
    await good.acquire()
    await bad.acquire()
    good_key, bad_key = await meter_key(admin, "good"), await meter_key(admin, "bad")
    await admin.delete(bad_key)
    await admin.set(bad_key, "not a sorted set")
    results = await asyncio.wait_for(
        asyncio.gather(good.acquire(), bad.acquire(), return_exceptions=True), 2.0
    )
    assert isinstance(results[1], BackendError)
    charged = await admin.zcard(good_key)
    assert results[0] is None, f"good: {results[0]!r}; its key holds {charged} grants"
    assert charged == 2


# -- 5. Cancellation while a script call is in flight ------------------------------------


async def cancel_in_flight(backend: RedisBackend, task: asyncio.Task[Any], steps: int) -> bool:
    """Cancel ``task`` once the backend's round trip for it has started, ``steps`` loop
    iterations later (``steps=-1``: before the task even runs); whether it was still
    running then (``False``: its reply came back sooner)."""
    if steps >= 0:
        trips = backend.round_trips
        for _ in range(1000):
            if backend.round_trips != trips:
                break
            await asyncio.sleep(0)
        assert backend.round_trips != trips, "the round trip never started"
        for _ in range(steps):
            await asyncio.sleep(0)
    return task.cancel()


async def test_cancelled_in_flight_other_replies_intact_and_given_back(
    make_backend: MakeBackend, admin: aioredis.Redis
) -> None:
    backend = make_backend(on_error="raise")
    warm = tb.SlidingWindow(limit=100, window=1.0, backend=backend, key="warm")
    await warm.acquire()  # the script is loaded: the next call is one EVALSHA
    loop = asyncio.get_running_loop()
    for steps in range(-1, 20):
        # Three limiters whose replies differ: a cancelled one, a full one, an empty one.
        cancelled = Recorder(tb.SlidingWindow(1, 5.0, backend=backend, key=f"a{steps}"))
        full = Recorder(tb.SlidingWindow(1, 0.1, backend=backend, key=f"f{steps}"))
        empty = Recorder(tb.SlidingWindow(1, 5.0, backend=backend, key=f"e{steps}"))
        filled = await full.take()
        victim = asyncio.create_task(cancelled.take())
        others = [asyncio.create_task(full.take()), asyncio.create_task(empty.take())]
        if not await cancel_in_flight(backend, victim, steps):
            # Admitted within `steps` iterations: every cancel point before was tried.
            assert steps > 1
            await asyncio.wait_for(asyncio.gather(victim, *others), 2.0)
            break
        with pytest.raises(asyncio.CancelledError):
            await victim
        start = loop.time()
        got_full, got_empty = await asyncio.wait_for(asyncio.gather(*others), 2.0)
        # Each got its own reply: the full one waited its window, the empty one did not.
        assert got_full >= filled + 0.1 - TOL
        assert got_empty - start < 0.15
        assert not cancelled.grants
        # The connection pool answers the right replies to plain commands too.
        probe = f"{{{PREFIX}:probe}}:{steps}"
        assert await backend.client.set(probe, f"value {steps}")
        assert await backend.client.get(probe) == f"value {steps}".encode()
        assert await backend.client.ping()

        # The cancelled caller's reservation (if it reached Redis) is given back: a
        # later caller on its limiter (limit 1 per 5 s) is admitted at once.
        async def settled(tag: str = f"a{steps}") -> bool:
            keys = await admin.keys(f"{{{PREFIX}:{tag}}}:0:*")
            names = [k.decode() if isinstance(k, bytes) else k for k in keys]
            logs = [k for k in names if not k.endswith(":sum")]
            return not logs or not await admin.zcard(logs[0])

        await until(settled)
        start = loop.time()
        assert await asyncio.wait_for(cancelled.take(), 2.0) - start < 0.15


@pytest.mark.parametrize(
    ("kind", "when"),
    [
        ("window", "in flight"),
        ("window", "sleeping"),
        pytest.param(
            "bucket",
            "in flight",
        ),
        pytest.param(
            "bucket",
            "sleeping",
        ),
    ],
)
async def test_cancelled_reservation_behind_a_later_one_keeps_the_limit(
    make_backend: MakeBackend, kind: str, when: str
) -> None:
    # A is cancelled after B has reserved behind it: A's place can no longer be given
    # back without letting a later caller C share B's instant. B may be delayed by A's
    # slot, but no two grants may come closer than the limit allows.
    #
    backend = make_backend(on_error="raise")
    limiter: tb.SlidingWindow | tb.TokenBucket
    if kind == "window":
        limiter = tb.SlidingWindow(limit=1, window=PERIOD, backend=backend, key=kind)
    else:
        limiter = tb.TokenBucket(rate=1 / PERIOD, capacity=1, backend=backend, key=kind)
    recorder = Recorder(limiter)
    warm = tb.SlidingWindow(limit=100, window=1.0, backend=backend, key="warm")
    await warm.acquire()  # the script is loaded: the next call is one EVALSHA
    loop = asyncio.get_running_loop()
    start = loop.time()
    if when == "sleeping":
        await recorder.take()  # A, then B, queue behind this grant
    a = asyncio.create_task(recorder.take())
    if when == "in flight":
        await cancel_in_flight(backend, a, 1)
        b = asyncio.create_task(recorder.take())  # queued while A's call is in flight
    else:
        await asyncio.sleep(0.05)  # A reserved, sleeping
        b = asyncio.create_task(recorder.take())
        await asyncio.sleep(0.05)  # B reserved behind A
        a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a
    await asyncio.sleep(0.1)  # A's give-back (if any) is done
    c = asyncio.create_task(recorder.take())
    got_b, got_c = await asyncio.wait_for(asyncio.gather(b, c), 5.0)

    late = PERIOD if when == "in flight" else 2 * PERIOD
    assert got_b - start < late + 0.15  # late by A's place at most
    assert got_c >= got_b + PERIOD - TOL, (got_b - start, got_c - start)
    assert most_in_window(recorder.grants, PERIOD) <= 1


# -- 6. A process dies holding a concurrency slot ----------------------------------------


async def hold_and_die(make_backend: MakeBackend, lease_ttl: float) -> float:
    """Take the only slot through one backend, then drop that backend's connection
    without releasing (a crashed process). Returns when the slot was asked for."""
    dead = make_backend(lease_ttl=lease_ttl)
    holder = tb.Limiter(max_concurrency=1, backend=dead, key="slots")
    loop = asyncio.get_running_loop()
    asked = loop.time()
    context = holder.acquire()
    await context.__aenter__()  # never exited
    await dead.client.aclose()
    return asked


async def test_slot_of_a_dead_holder_frees_when_its_lease_expires(
    make_backend: MakeBackend, admin: aioredis.Redis
) -> None:
    asked = await hold_and_die(make_backend, lease_ttl=0.5)
    assert await admin.zcard(f"{{{PREFIX}:slots}}:slots") == 1
    other = tb.Limiter(max_concurrency=1, backend=make_backend(lease_ttl=0.5), key="slots")
    loop = asyncio.get_running_loop()
    entered: list[float] = []

    async def use() -> None:
        async with other.acquire():
            entered.append(loop.time())

    await asyncio.wait_for(use(), 5.0)
    assert entered[0] >= asked + 0.5 - TOL  # not before the lease expired
    assert entered[0] < asked + 0.5 + 1.0  # and soon after
    # The slot is held by one lease at a time and released by the one who used it.
    assert await admin.zcard(f"{{{PREFIX}:slots}}:slots") == 0
    await asyncio.wait_for(use(), 1.0)


async def test_waiting_for_a_dead_holders_slot_keeps_the_timeout(
    make_backend: MakeBackend,
) -> None:
    asked = await hold_and_die(make_backend, lease_ttl=0.6)
    other = tb.Limiter(max_concurrency=1, backend=make_backend(lease_ttl=0.6), key="slots")
    loop = asyncio.get_running_loop()
    with pytest.raises(tb.AcquireTimeoutError):
        await asyncio.wait_for(enter(other, timeout=0.2), 3.0)
    assert loop.time() - asked < 0.2 + 0.3
