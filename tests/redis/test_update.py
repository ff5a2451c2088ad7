"""Limiter.update on Redis, where it can go wrong: a change Redis never took, a rates hash
that was lost, a group's updated member (see tests/contract/test_update.py for what
every backend does alike)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import pytest

import tokenbucket as tb
from tests.contract._support import fits
from tokenbucket._errors import BackendUnavailableError

if TYPE_CHECKING:
    from collections.abc import Callable

    import redis.asyncio as aioredis

    from tests.redis._support import RecordingBackend

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def make(backend: RecordingBackend) -> tb.Limiter:
    return tb.Limiter(tokens_per_minute=100, backend=backend, key="update")


async def landed(limiter: tb.Limiter) -> None:
    """Wait until what the limiter sent to Redis in the background has landed."""
    store: Any = limiter._store
    while store._charging is not None and not store._charging.done():
        await asyncio.sleep(0.005)


async def test_a_change_redis_did_not_take_changes_nothing(
    backend_factory: Callable[..., RecordingBackend],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = backend_factory(on_error="raise")
    one, other = make(backend), make(backend_factory())
    assert await fits(one, tokens=1)

    async def unreachable(*args: object) -> dict[str, str]:
        raise BackendUnavailableError("Redis is out of reach")

    monkeypatch.setattr(backend, "update", unreachable)
    caplog.set_level(logging.INFO, logger="tokenbucket")
    one.update(tokens_per_minute=10)
    await landed(one)
    said = [r.getMessage() for r in caplog.records]
    assert any("Redis did not change the limits" in line for line in said), said
    assert not any("updated to" in line for line in said), said
    # Nothing changed, here or elsewhere.
    assert one.rates["tokens"] == other.rates["tokens"] == (tb.per_minute(100),)
    assert await fits(one, tokens=50)


async def test_a_lost_rates_hash_never_passes_for_a_version_seen(
    backend_factory: Callable[..., RecordingBackend], admin: aioredis.Redis
) -> None:
    first, second = backend_factory(), backend_factory()
    one, other = make(first), make(second)
    one.update(tokens_per_minute=10)
    await landed(one)
    assert await fits(other, tokens=1)
    assert other.rates["tokens"] == (tb.per_minute(10),)
    await admin.delete(first.key("update", "rates"))  # (an eviction, a restart...)
    other.update(tokens_per_minute=50)  # a new hash, whose version one has never seen
    await landed(other)
    assert await fits(one, tokens=1)
    assert one.rates["tokens"] == (tb.per_minute(50),)


async def test_an_updated_member_is_not_at_rest(
    backend_factory: Callable[..., RecordingBackend],
) -> None:
    backend = backend_factory()
    group = tb.BucketGroup(default={"tokens_per_minute": 100}, backend=backend, key="g")
    assert await fits(group["u"], tokens=1)
    assert group["u"]._at_rest()
    group["u"].update(tokens_per_minute=10)  # (a group would forget it, and its limits)
    await landed(group["u"])
    assert not group["u"]._at_rest()


async def test_a_pending_update_does_not_outlast_a_callers_timeout(
    backend_factory: Callable[..., RecordingBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = backend_factory()
    one = make(backend)
    assert await fits(one, tokens=1)
    sent = backend.update

    async def slow(*args: Any) -> dict[str, str]:
        await asyncio.sleep(3.0)
        return await sent(*args)

    monkeypatch.setattr(backend, "update", slow)
    one.update(tokens_per_minute=10)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(tb.AcquireTimeoutError):
        async with one.acquire(tokens=1, timeout=0.1):
            pass
    assert loop.time() - start < 1.5  # its timeout, and a moment for Redis to answer
    await landed(one)
    assert one.rates["tokens"] == (tb.per_minute(10),)
