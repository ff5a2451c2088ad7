"""Waiting for a concurrency slot, and giving slots back, on the Redis backend.

Each test runs its own ``redis-server`` (``conftest.py``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis

import tokenbucket as tb
from tests.redis_faults._support import until
from tokenbucket._redis._protocol import wake_key

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.redis_faults._proxy import Proxy
    from tests.redis_faults.conftest import RedisServer
    from tokenbucket._redis import RedisBackend

    MakeBackend = Callable[..., RedisBackend]

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

PREFIX = "slots"
LOGGER = "tokenbucket.redis"
SLOTS = f"{{{PREFIX}:s}}:slots"


# -- a blocking wait that Redis refuses ------------------------------------------------------


async def refuse_blocking(admin: aioredis.Redis, redis_server: RedisServer, how: str) -> str:
    """The URL of a client whose ``BLPOP`` on the wake list fails at once."""
    if how == "acl":
        await admin.acl_setuser(
            "noblock",
            enabled=True,
            passwords=["+secret"],
            keys=["*"],
            channels=["*"],
            commands=["+@all", "-@blocking"],
        )
        return f"redis://noblock:secret@127.0.0.1:{redis_server.port}/0"
    await admin.set(wake_key(SLOTS), "not a list")
    return redis_server.url


@pytest.mark.parametrize("how", ["acl", "wrong type"])
async def test_a_refused_blocking_wait_falls_back_to_a_timed_wait(
    make_backend: MakeBackend,
    admin: aioredis.Redis,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    holder = tb.Limiter(max_concurrency=1, backend=make_backend(), key="s")
    lease = holder.acquire()
    await lease.__aenter__()
    url = await refuse_blocking(admin, redis_server, how)
    backend = make_backend(url)
    waiter = tb.Limiter(max_concurrency=1, backend=backend, key="s")
    loop = asyncio.get_running_loop()
    entered: list[float] = []

    async def wait() -> None:
        async with waiter.acquire():
            entered.append(loop.time())

    tasks = [asyncio.create_task(wait()) for _ in range(3)]
    await asyncio.sleep(0.2)
    before = backend.round_trips
    await asyncio.sleep(1.0)
    calls = backend.round_trips - before
    assert calls <= 20, f"{calls} script calls in 1 s while waiting"
    released = loop.time()
    await lease.__aexit__(None, None, None)
    await asyncio.wait_for(asyncio.gather(*tasks), 5.0)
    assert entered[0] - released < 0.5  # the timed wait notices the free slot
    refusals = [r for r in caplog.records if "blocking wait" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in caplog.records]
    assert refusals[0].levelno == logging.WARNING
    assert await admin.zcard(SLOTS) == 0


# -- releasing many slots at once ------------------------------------------------------------


async def test_many_releases_share_round_trips_within_a_small_pool(
    make_backend: MakeBackend,
    admin: aioredis.Redis,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    client = aioredis.Redis.from_url(redis_server.url, max_connections=100)
    backend = make_backend(client, on_error="raise")
    limiter = tb.Limiter(max_concurrency=300, backend=backend, key="s")
    errors: list[BaseException] = []

    async def cycle() -> None:
        try:
            for _ in range(10):
                async with limiter.acquire():
                    await asyncio.sleep(0)
        except tb.TokenBucketError as exc:
            errors.append(exc)

    await asyncio.wait_for(asyncio.gather(*(cycle() for _ in range(300))), 30.0)
    assert errors == []
    assert [r.getMessage() for r in caplog.records] == []
    assert limiter.statistics().in_flight == 0
    assert await admin.zcard(SLOTS) == 0  # every slot is back, none left to expire


# -- the slots of a dead holder ----------------------------------------------------------------


async def test_expired_slots_of_a_dead_holder_all_come_back_at_once(
    make_backend: MakeBackend, admin: aioredis.Redis
) -> None:
    lease_ttl = 1.0
    dead = make_backend(lease_ttl=lease_ttl)
    holder = tb.Limiter(max_concurrency=4, backend=dead, key="s")
    loop = asyncio.get_running_loop()
    asked = loop.time()
    for _ in range(4):
        await holder.acquire().__aenter__()  # never released: the holder died
    await dead.client.aclose()
    assert await admin.zcard(SLOTS) == 4
    waiter = tb.Limiter(max_concurrency=4, backend=make_backend(lease_ttl=lease_ttl), key="s")
    entered: list[float] = []
    done = asyncio.Event()

    async def wait() -> None:
        async with waiter.acquire():
            entered.append(loop.time() - asked)
            await done.wait()  # each keeps its slot

    tasks = [asyncio.create_task(wait()) for _ in range(4)]
    await until_all(entered, 4, 4 * lease_ttl + 2.0)
    done.set()
    await asyncio.gather(*tasks)
    assert min(entered) >= lease_ttl - 0.05, entered
    assert max(entered) < lease_ttl + 0.3, entered


async def until_all(entered: list[float], count: int, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while len(entered) < count and loop.time() < deadline:  # a test polls
        await asyncio.sleep(0.01)


# -- a timed wait for a slot ends at its deadline ------------------------------------------------

TIMEOUT = 0.5
LATE = 0.025  # how late a timed acquire may end (loopback, a loaded machine)


async def warm(backend: RedisBackend) -> None:
    """Load the scripts through ``backend`` (the delay of a proxy not yet set)."""
    warmed = tb.Limiter(max_concurrency=1, backend=backend, key="warm")
    async with warmed.acquire():
        pass


async def _held_elsewhere(
    make_backend: MakeBackend, proxy: Proxy, delay: float
) -> tuple[tb.LeaseContext, tb.Limiter]:
    """The one slot of limiter "s", held by another backend, and a limiter of it whose
    round trips through the proxy take ``delay`` more."""
    holder = tb.Limiter(max_concurrency=1, backend=make_backend(), key="s")
    lease = holder.acquire()
    await lease.__aenter__()
    backend = make_backend(proxy.url, on_error="raise")
    await warm(backend)
    proxy.delay = delay
    return lease, tb.Limiter(max_concurrency=1, backend=backend, key="s")


@pytest.mark.parametrize("waiters", [1, 3])
@pytest.mark.parametrize("delay", [0.0, 0.2])
async def test_a_timed_wait_for_a_slot_ends_at_its_time_whatever_the_round_trip(
    make_backend: MakeBackend, admin: aioredis.Redis, proxy: Proxy, delay: float, waiters: int
) -> None:
    lease, waiter = await _held_elsewhere(make_backend, proxy, delay)
    loop = asyncio.get_running_loop()

    async def timed() -> float:
        start = loop.time()
        with pytest.raises(tb.AcquireTimeoutError):
            async with waiter.acquire(timeout=TIMEOUT):
                pass
        return loop.time() - start - TIMEOUT

    late = await asyncio.wait_for(asyncio.gather(*(timed() for _ in range(waiters))), 5.0)
    assert all(-0.01 <= t <= LATE for t in late), late
    assert waiter.statistics().waiters == 0
    await lease.__aexit__(None, None, None)
    assert await admin.zcard(SLOTS) == 0


@pytest.mark.parametrize("delay", [0.1, 0.3])
async def test_a_slot_granted_after_the_deadline_is_given_back(
    make_backend: MakeBackend, admin: aioredis.Redis, proxy: Proxy, delay: float
) -> None:
    # The slot is released just before the waiter's deadline: woken, it asks again, and
    # that round trip ends after the deadline. The caller leaves at its deadline, and
    # the slot that Redis granted it then comes back.
    lease, waiter = await _held_elsewhere(make_backend, proxy, delay)
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def timed() -> None:
        async with waiter.acquire(timeout=TIMEOUT + delay):
            pass

    task = asyncio.create_task(timed())
    await asyncio.sleep(TIMEOUT)
    await lease.__aexit__(None, None, None)  # woken before its deadline: it asks again
    with pytest.raises(tb.AcquireTimeoutError):
        await asyncio.wait_for(task, 5.0)
    late = loop.time() - start - (TIMEOUT + delay)
    assert -0.01 <= late <= LATE, late
    # Nothing leaked: the slot it was granted late is free again, and taken at once.
    await until(lambda: _no_lease(admin), 2.0)
    proxy.delay = 0.0
    other = tb.Limiter(max_concurrency=1, backend=make_backend(), key="s")
    entered = loop.time()
    async with other.acquire(timeout=1.0):
        assert loop.time() - entered < 0.1
    assert waiter.statistics().in_flight == 0


async def _no_lease(admin: aioredis.Redis) -> bool:
    return await admin.zcard(SLOTS) == 0


async def test_closing_does_not_wait_for_a_caller_blocked_on_a_slot(
    make_backend: MakeBackend, admin: aioredis.Redis
) -> None:
    holder = tb.Limiter(max_concurrency=1, backend=make_backend(), key="s")
    lease = holder.acquire()
    await lease.__aenter__()
    backend = make_backend()
    waiter = tb.Limiter(max_concurrency=1, backend=backend, key="s")
    loop = asyncio.get_running_loop()

    async def wait(timeout: float | None) -> None:
        async with waiter.acquire(timeout=timeout):
            pass

    tasks = [asyncio.create_task(wait(timeout)) for timeout in (None, 5.0)]
    await asyncio.sleep(0.2)  # one blocks on the wake list, the other queues behind it
    start = loop.time()
    await backend.aclose()
    assert loop.time() - start < 0.1
    # The callers still wait (the client reconnects), and get the slot once it is free.
    await asyncio.sleep(0.1)
    assert not any(task.done() for task in tasks)
    await lease.__aexit__(None, None, None)
    await asyncio.wait_for(asyncio.gather(*tasks), 5.0)
    assert await admin.zcard(SLOTS) == 0


@pytest.mark.parametrize("policy", ["raise", "local"])
async def test_a_slot_released_while_redis_is_out_of_reach_is_released_once_it_answers(
    proxy: Proxy, make_backend: Callable[..., RedisBackend], admin: aioredis.Redis, policy: str
) -> None:
    """Under "raise" and "local" a release that fails is made again once Redis answers:
    the slot does not stay held until its lease expires (300 s)."""
    backend = make_backend(proxy.url, on_error=policy, max_backoff=0.1)
    limiter = tb.Limiter(max_concurrency=1, backend=backend, key="s")
    async with limiter.acquire():
        proxy.cut()  # the release below cannot reach Redis
    proxy.mend()
    await until(lambda: _no_slot_held(admin), 5.0)
    async with limiter.acquire(timeout=2.0):
        pass


async def _no_slot_held(admin: aioredis.Redis) -> bool:
    return await admin.zcard(SLOTS) == 0


async def test_a_call_retried_in_the_background_outlasts_a_cluster_failover(
    make_backend: Callable[..., RedisBackend], caplog: pytest.LogCaptureFixture
) -> None:
    """A failover in progress (CLUSTERDOWN, TRYAGAIN) is an outage for the calls made
    again in the background too: they keep trying, they do not give up at the first."""
    from redis.exceptions import ClusterDownError, TryAgainError

    caplog.set_level(logging.WARNING)
    backend = make_backend(on_error="raise", max_backoff=0.05)
    errors: list[Exception] = [ClusterDownError("CLUSTERDOWN"), TryAgainError("TRYAGAIN")]
    calls = 0

    async def failing_over(name: str, keys: Any, args: Any) -> Any:
        nonlocal calls
        calls += 1
        if errors:
            raise errors.pop(0)
        return 1

    backend._script = failing_over  # type: ignore[method-assign]
    backend._retry_later("release", [SLOTS, wake_key(SLOTS)], [1000, 1, "lease"], 5.0, "release")
    await until(lambda: _called(calls, 3), 5.0)
    assert not [r for r in caplog.records if "could not" in r.getMessage()]


async def _called(calls: int, times: int) -> bool:
    return calls >= times
