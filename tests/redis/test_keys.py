"""Redis only: every key is namespaced under the prefix, carries a TTL, and one
limiter's (one group's) keys share one hash slot, so nothing spans slots on a Cluster."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

import pytest
from redis.crc import key_slot

import tokenbucket as tb
from tests.redis._support import hash_tag

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from tests.redis._support import RecordingBackend

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def test_keys_carry_ttls_and_hash_tags(
    redis_backend: RecordingBackend, admin: aioredis.Redis, prefix: str
) -> None:
    backend = redis_backend
    await tb.TokenBucket(10, 5, backend=backend, key="tb").acquire()
    await tb.SlidingWindow(5, 1, backend=backend, key="sw").acquire()
    limiter = tb.Limiter(
        requests_per_second=10,
        tokens_per_minute=1000,
        max_concurrency=2,
        backend=backend,
        key="lim",
    )
    async with limiter.acquire(tokens=10) as lease:
        lease.feedback({"retry-after-ms": "100"}, status=429)
        lease.settle(tokens=5)
    group = tb.BucketGroup.from_dict(
        {"a": {"requests_per_second": 10, "max_concurrency": 2}},
        default={"requests_per_second": 5},
        shared={"org": {"requests_per_second": {"limit": 20, "burst": 4}, "members": ["a"]}},
        backend=backend,
        key="grp",
    )
    async with group.acquire("a"):
        pass
    async with group.acquire("someone"):
        pass
    await asyncio.sleep(0.05)  # background give-backs, settles and feedback have landed
    keys = [key async for key in admin.scan_iter(match=f"*{prefix}*")]
    assert len(keys) >= 6, keys
    pattern = re.compile(r"^\{" + re.escape(prefix) + r":[^{}]+\}")
    for key in keys:
        assert pattern.match(key), f"{key!r} is not hash-tagged under the prefix"
        ttl = await admin.pttl(key)
        assert ttl > 0, f"{key!r} has no TTL ({ttl})"
    # One hash tag per limiter (per group): a limiter's keys live in one slot.
    tags = {hash_tag(key) for key in keys}
    assert {f"{prefix}:{name}" for name in ("tb", "sw", "lim", "grp")} <= tags, tags


async def test_group_keys_share_one_hash_slot(
    redis_backend: RecordingBackend, admin: aioredis.Redis, prefix: str
) -> None:
    # Known limitation: BucketGroup members keep their meters under the group's tag ({prefix:grp})
    # but RemoteLimiter makes their pause and slots keys with the tag "grp:<name>"
    # ({prefix:grp:a}:pause), so one reserve call spans two hash slots: CROSSSLOT on
    # Redis Cluster.
    group = tb.BucketGroup.from_dict(
        {"a": {"requests_per_second": 10, "max_concurrency": 2}},
        shared={"org": {"requests_per_second": 20, "members": ["a"]}},
        backend=redis_backend,
        key="grp",
    )
    async with group.acquire("a") as lease:
        lease.feedback({"retry-after-ms": "100"}, status=429)
    await asyncio.sleep(0.05)
    keys = [key async for key in admin.scan_iter(match=f"*{prefix}*")]
    assert len(keys) >= 3, keys
    assert {key_slot(k.encode()) for k in keys} == {key_slot(f"{{{prefix}:grp}}".encode())}, keys


async def test_each_script_call_stays_in_one_hash_slot(
    redis_backend: RecordingBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Known limitation: a batch carries the requests of every limiter of the process in one EVALSHA,
    # whatever their keys, so two limiters used at once (different hash tags) make one
    # script call that spans hash slots: refused on Redis Cluster (CROSSSLOT).
    calls: list[tuple[str, ...]] = []
    evalsha = redis_backend.client.evalsha

    def recording(sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        calls.append(tuple(str(k) for k in keys_and_args[:numkeys]))
        return evalsha(sha, numkeys, *keys_and_args)

    monkeypatch.setattr(redis_backend.client, "evalsha", recording)
    one = tb.TokenBucket(100, 10, backend=redis_backend, key="one")
    two = tb.SlidingWindow(10, 1, backend=redis_backend, key="two")
    await asyncio.gather(*(lim.acquire() for lim in (one, two) * 3))
    assert calls
    spanning = [keys for keys in calls if len({key_slot(k.encode()) for k in keys}) > 1]
    assert not spanning, f"script calls over several hash slots: {spanning}"


# Pairs of distinct (group key, member) names, or (limiter key, None), that a naive
# joining of the parts with "\x00" or ":" would map to the same Redis keys.
CLASHES = [
    (("iso\x00b", "m"), ("iso", "b\x00m")),  # a group's key and its member's name
    (("iso\x00b", None), ("iso", "b")),  # a limiter's key and a group's member
    (("iso}:b", None), ("iso", "b}")),  # the end of the hash tag
    (("g", "a:0"), ("g:a", "0")),  # the parts' separator
    (("g", "m%3A"), ("g", "m:")),  # the escape itself
]


def named(backend: RecordingBackend, key: str, member: str | None) -> tb.Limiter:
    if member is None:
        return tb.Limiter(requests_per_second=1, backend=backend, key=key)
    group = tb.BucketGroup.from_dict({member: {"requests_per_second": 1}}, backend=backend, key=key)
    return group[member]


@pytest.mark.parametrize(("first", "second"), CLASHES)
async def test_distinct_names_never_share_keys(
    redis_backend: RecordingBackend,
    admin: aioredis.Redis,
    prefix: str,
    first: tuple[str, str | None],
    second: tuple[str, str | None],
) -> None:
    """Two limiters with distinct names never share state: the second's first unit is
    not held back by the first's, and their keys differ."""
    one, two = named(redis_backend, *first), named(redis_backend, *second)
    await asyncio.wait_for(one.acquire().__aenter__(), 5.0)
    seen = {key async for key in admin.scan_iter(match=f"*{prefix}*")}
    await asyncio.wait_for(two.acquire(timeout=0).__aenter__(), 5.0)  # not limited by one
    after = {key async for key in admin.scan_iter(match=f"*{prefix}*")}
    assert len(after - seen) == len(seen), (seen, after)
