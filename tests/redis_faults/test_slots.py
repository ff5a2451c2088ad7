"""Waiting for a concurrency slot, and giving slots back, on the Redis backend.

Each test runs its own ``redis-server`` (``conftest.py``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

import tokenbucket as tb
from tokenbucket._redis._protocol import wake_key

if TYPE_CHECKING:
    from collections.abc import Callable

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
