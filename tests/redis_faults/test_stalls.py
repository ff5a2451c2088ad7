"""A round trip that never ends: a connection whose traffic is swallowed (half-dead).

The backend's own client times such a round trip out, drops the connection, and the next
try (the ``on_error`` policy's, or redis-py's own retry) goes over a new one, so
admissions stop for about the read timeout, not for good.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

import tokenbucket as tb
from tokenbucket._redis import RedisBackend
from tokenbucket._redis._backend import CONNECT_TIMEOUT, READ_TIMEOUT

from .conftest import close

if TYPE_CHECKING:
    from tests.redis_faults.conftest import RedisServer

    from ._proxy import Proxy

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

PREFIX = "stalls"
TOL = 0.5  # a reconnect and a round trip, on a loaded test machine


async def test_the_backends_own_client_has_timeouts() -> None:
    backend = RedisBackend("redis://127.0.0.1:1/0")
    assert isinstance(backend.client, aioredis.Redis)
    options = backend.client.connection_pool.connection_kwargs
    assert options["socket_timeout"] == READ_TIMEOUT
    assert options["socket_connect_timeout"] == CONNECT_TIMEOUT
    assert options["socket_keepalive"] is True
    await backend.aclose()
    # The URL's own settings win.
    backend = RedisBackend("redis://127.0.0.1:1/0?socket_timeout=0.5")
    assert isinstance(backend.client, aioredis.Redis)
    assert backend.client.connection_pool.connection_kwargs["socket_timeout"] == 0.5
    await backend.aclose()


@pytest.mark.parametrize("policy", ["wait", "raise"])
async def test_a_swallowed_round_trip_times_out_and_admissions_resume(
    proxy: Proxy, policy: str
) -> None:
    backend = RedisBackend(proxy.url, prefix=PREFIX, on_error=policy)  # type: ignore[arg-type]
    try:
        bucket = tb.TokenBucket(rate=1000, capacity=1000, backend=backend, key="b")
        await bucket.acquire()  # a connection is open (and back in the pool)
        proxy.swallow()
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            await asyncio.wait_for(bucket.acquire(), 10.0)
        except tb.BackendUnavailableError:
            assert policy == "raise"  # the documented outcome; the next call goes through
            await asyncio.wait_for(bucket.acquire(), 10.0)
        took = loop.time() - start
        assert READ_TIMEOUT - 0.1 <= took < READ_TIMEOUT + TOL, took
        # The half-dead connection was replaced: the next admissions are prompt.
        start = loop.time()
        for _ in range(5):
            await asyncio.wait_for(bucket.acquire(), 1.0)
        assert loop.time() - start < TOL
        assert proxy.accepted >= 2
    finally:
        await close(backend)


async def test_a_slot_waiter_on_a_swallowed_connection_still_gets_the_slot(
    proxy: Proxy, redis_server: RedisServer
) -> None:
    backend = RedisBackend(proxy.url, prefix=PREFIX)
    holder_backend = RedisBackend(redis_server.url, prefix=PREFIX)
    try:
        holder = tb.Limiter(max_concurrency=1, backend=holder_backend, key="s")
        waiter = tb.Limiter(max_concurrency=1, backend=backend, key="s")
        async with waiter.acquire():
            pass  # the waiter's backend has a connection open
        lease = holder.acquire()
        await lease.__aenter__()
        loop = asyncio.get_running_loop()
        entered = asyncio.Event()

        async def wait() -> None:
            async with waiter.acquire():
                entered.set()

        task = asyncio.create_task(wait())
        await asyncio.sleep(0.2)  # blocked waiting for the slot
        proxy.swallow()
        await lease.__aexit__(None, None, None)
        start = loop.time()
        await asyncio.wait_for(entered.wait(), 10.0)
        assert loop.time() - start < READ_TIMEOUT + TOL
        await task
    finally:
        await close(backend)
        await close(holder_backend)
