"""BucketGroup on every backend: a shared limit holds across members and clients."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

import tokenbucket as tb
from tests.contract._support import EPS, HANG, PROBE, Backend, clock

if TYPE_CHECKING:
    from collections.abc import Callable

    from tokenbucket._redis import RedisBackend

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def test_group_shared_limit_across_two_names_and_clients(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    config: dict[str, Any] = {
        "a": {"requests_per_second": 100},
        "b": {"requests_per_second": 100},
    }
    # Both names draw on one pool: 4 at once, then 5 a second.
    shared = {"org": {"requests_per_second": {"limit": 5, "burst": 4}, "members": ["a", "b"]}}

    def make(backend: RedisBackend | None) -> tb.BucketGroup:
        key = "grp" if backend is not None else None
        return tb.BucketGroup.from_dict(config, shared=shared, backend=backend, key=key)

    first = make(new_backend())
    # On Redis, name "b" is used from another client's group: the pool is still one.
    second = make(new_backend()) if kind == "redis" else first
    start = clock()
    for group, name in ((first, "a"), (second, "b"), (first, "a"), (second, "b")):
        async with group.acquire(name, timeout=PROBE):
            pass
    for group, name in ((first, "a"), (second, "b")):
        with pytest.raises(tb.AcquireTimeoutError):
            async with group.acquire(name, timeout=PROBE):
                pass
    async with second.acquire("b", timeout=HANG):
        assert clock() - start >= 1 / 5 - EPS
    async with first.acquire("a", timeout=HANG):
        assert clock() - start >= 2 / 5 - EPS
