"""A Redis set up so that the limiter cannot use it is a configuration error, not an outage.

A wrong password, an unknown user, a user without a permission the limiter needs, or a
database index the server does not have: each raises :class:`BackendConfigurationError`
at once, with redis-py's exception as its cause and a message that says what to fix,
whatever the ``on_error`` policy ("wait" would otherwise retry forever, and "local" fail
open forever). Every test runs its own ``redis-server`` (``conftest.secured_server``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import pytest
import redis.exceptions

import tokenbucket as tb
from tests.redis_faults.conftest import PASSWORD, USER_PASSWORD
from tokenbucket._redis import RedisBackend

if TYPE_CHECKING:
    from tests.redis_faults.conftest import RedisServer

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

POLICIES = ("wait", "raise", "local")
LOGGER = "tokenbucket.redis"
# Far longer than a configuration error takes to surface (a few ms), far shorter than
# the "wait" policy's retries: a call still running after this is retrying.
PATIENCE = 2.0


def url(server: RedisServer, credentials: str = f":{PASSWORD}", db: int = 0) -> str:
    at = f"{credentials}@" if credentials else ""
    return f"redis://{at}127.0.0.1:{server.port}/{db}"


async def first_acquire(backend: RedisBackend, kind: str) -> None:
    if kind == "bucket":
        await tb.TokenBucket(rate=10, capacity=1, backend=backend, key="b").acquire()
    elif kind == "window":
        await tb.SlidingWindow(limit=1, window=1, backend=backend, key="w").acquire(timeout=5)
    else:
        limiter = tb.Limiter(requests_per_second=10, max_concurrency=1, backend=backend, key="l")
        async with limiter.acquire():
            pass


async def configuration_error(
    address: str, policy: str, kind: str = "bucket"
) -> tb.BackendConfigurationError:
    """The error the first acquire through ``address`` raises, checked to be prompt."""
    backend = RedisBackend(address, prefix="cfg", on_error=policy)  # type: ignore[arg-type]
    start = time.perf_counter()
    try:
        with pytest.raises(tb.BackendConfigurationError) as caught:
            await asyncio.wait_for(first_acquire(backend, kind), PATIENCE)
    finally:
        await asyncio.wait_for(backend.aclose(), 5.0)
    assert time.perf_counter() - start < PATIENCE / 2
    error = caught.value
    assert isinstance(error, tb.BackendError)
    assert not isinstance(error, tb.BackendUnavailableError)  # not an outage
    assert isinstance(error.__cause__, redis.exceptions.RedisError)
    return error


@pytest.mark.parametrize("policy", POLICIES)
async def test_wrong_password(secured_server: RedisServer, policy: str) -> None:
    error = await configuration_error(url(secured_server, ":wrong"), policy)
    assert "refused the credentials" in str(error)
    assert "password" in str(error)


@pytest.mark.parametrize("policy", POLICIES)
async def test_no_password(secured_server: RedisServer, policy: str) -> None:
    error = await configuration_error(url(secured_server, ""), policy)
    assert "password" in str(error)


@pytest.mark.parametrize("policy", POLICIES)
async def test_unknown_user(secured_server: RedisServer, policy: str) -> None:
    error = await configuration_error(url(secured_server, f"nobody:{USER_PASSWORD}"), policy)
    assert "user name" in str(error)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("user", ["noscripts", "noevalsha"])
async def test_user_without_script_rights(
    secured_server: RedisServer, policy: str, user: str
) -> None:
    error = await configuration_error(url(secured_server, f"{user}:{USER_PASSWORD}"), policy)
    message = str(error)
    assert "permission" in message
    assert "+evalsha" in message
    assert "~{cfg:*" in message  # the key pattern to grant


@pytest.mark.parametrize("kind", ["bucket", "window", "limiter"])
async def test_scripts_refused_a_command_inside(secured_server: RedisServer, kind: str) -> None:
    error = await configuration_error(
        url(secured_server, f"nowrites:{USER_PASSWORD}"), "wait", kind
    )
    assert "permission" in str(error)


@pytest.mark.parametrize("policy", POLICIES)
async def test_database_index_out_of_range(secured_server: RedisServer, policy: str) -> None:
    error = await configuration_error(url(secured_server, db=99), policy)
    assert "database index" in str(error)
    assert "databases" in str(error)


async def test_ping_names_a_configuration_error(secured_server: RedisServer) -> None:
    backend = RedisBackend(url(secured_server, ":wrong"), prefix="cfg")
    try:
        with pytest.raises(tb.BackendConfigurationError, match="refused the credentials"):
            await asyncio.wait_for(backend.ping(), PATIENCE)
    finally:
        await backend.aclose()


async def test_configuration_error_is_not_logged_as_an_outage(
    secured_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    await configuration_error(url(secured_server, ":wrong"), "local")
    assert not [r for r in caplog.records if "unreachable" in r.getMessage()]


async def test_the_right_credentials_work(secured_server: RedisServer) -> None:
    for credentials in (f":{PASSWORD}", f"full:{USER_PASSWORD}"):
        backend = RedisBackend(url(secured_server, credentials), prefix="cfg", on_error="raise")
        try:
            await backend.ping()
            for kind in ("bucket", "window", "limiter"):
                await asyncio.wait_for(first_acquire(backend, kind), PATIENCE)
        finally:
            await backend.aclose()
