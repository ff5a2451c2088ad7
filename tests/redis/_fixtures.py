"""Fixtures for the tests against a real Redis server (``tests/redis``, ``tests/contract``).

The server is ``TOKENBUCKET_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``). Each test
gets its own key prefix; its keys are deleted afterwards (the database is never flushed,
so other users of it are left alone).

When Redis cannot be reached, a test that needs it is *skipped* on a developer machine
(with the command that starts one) and *fails* when the environment variable ``CI`` is
set, so a CI run without Redis is red, not silently green.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis.client import Redis as SyncRedis
from redis.exceptions import RedisError

from tests.redis._support import START_HINT, RecordingBackend, configured_url

__all__ = [
    "admin",
    "backend_factory",
    "prefix",
    "pytest_runtest_call",
    "pytest_runtest_setup",
    "redis_backend",
    "redis_url",
]

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

_REDIS_FIXTURES = frozenset({"redis_url", "backend_factory", "redis_backend", "admin"})
_unreachable: list[str | None] = []  # [reason] or [None] once checked


def _reachability() -> str | None:
    """Why Redis cannot be reached, or ``None`` when it answers (checked once per run)."""
    if not _unreachable:
        url = configured_url()
        client = SyncRedis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        except (RedisError, OSError) as exc:
            _unreachable.append(
                f"Redis at {url} is unreachable ({exc}). Start one with:\n"
                f"    {START_HINT}\n"
                "or point TOKENBUCKET_REDIS_URL at one."
            )
        else:
            _unreachable.append(None)
        finally:
            client.close()
    return _unreachable[0]


def _needs_redis(item: pytest.Item) -> bool:
    names = set(getattr(item, "fixturenames", ()))
    if not names & _REDIS_FIXTURES:
        return False
    callspec = getattr(item, "callspec", None)
    # Tests parametrised over the backend need Redis only in their "redis" variant.
    return callspec is None or callspec.params.get("kind", "redis") != "memory"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if _needs_redis(item):
        reason = _reachability()
        if reason is not None and not os.environ.get("CI"):
            pytest.skip(reason)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    # In CI the test body does not run: it fails here, as a failure, with the reason.
    if _needs_redis(item):
        reason = _reachability()
        if reason is not None:
            pytest.fail(f"CI is set and this test needs Redis. {reason}", pytrace=False)


@pytest.fixture
def redis_url() -> str:
    """The URL of the Redis server the tests use."""
    return configured_url()


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"tbtest:{uuid.uuid4().hex[:12]}"


@pytest_asyncio.fixture
async def admin(redis_url: str, prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client for looking at (and finally deleting) this test's keys."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        if _reachability() is None:
            keys = [key async for key in client.scan_iter(match=f"*{prefix}*", count=1000)]
            if keys:
                await client.delete(*keys)
        await client.aclose()


@pytest_asyncio.fixture
async def backend_factory(
    redis_url: str, prefix: str, admin: aioredis.Redis
) -> AsyncIterator[Callable[..., RecordingBackend]]:
    """Make RedisBackends on the test's prefix (each its own connection pool, as another
    process would have); all are closed after the test, before its keys are deleted."""
    made: list[RecordingBackend] = []

    def make(**options: Any) -> RecordingBackend:
        options.setdefault("prefix", prefix)
        backend = RecordingBackend(aioredis.Redis.from_url(redis_url), **options)
        made.append(backend)
        return backend

    try:
        yield make
    finally:
        for backend in made:
            await backend.aclose()


@pytest_asyncio.fixture
async def redis_backend(backend_factory: Callable[..., RecordingBackend]) -> RecordingBackend:
    """A RedisBackend with this test's prefix (closed, and its keys deleted, after)."""
    return backend_factory()
