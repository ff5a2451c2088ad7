"""The local stand-in of a Redis-backed limiter (``on_error="local"``), configured and
charged without processes: its rates and bursts at ``local_share``, its buckets empty
when the outage began, its windows holding what Redis granted this process in them.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

import pytest

import tokenbucket as tb
from tests.redis._support import RecordingBackend, bucket_excess, window_peak
from tokenbucket import Rate
from tokenbucket._backend import StoreSpec, open_store
from tokenbucket._core import BucketState, Meter, MultiState, WindowLog

if TYPE_CHECKING:
    from tests.redis_faults._proxy import Proxy
    from tests.redis_faults.conftest import RedisServer
    from tokenbucket._memory import MemoryStore
    from tokenbucket._redis.store import RedisStore

pytestmark = pytest.mark.timeout(30)

LAG = 0.05  # a task resumes this long after its grant at most (a loaded machine)


class _Capture:
    """A backend that keeps the spec it is asked to open."""

    spec: StoreSpec

    def open(self, spec: StoreSpec) -> Any:
        self.spec = spec
        return object()


def _stand_in(meters: list[Meter], share: float) -> MemoryStore:
    backend = _Capture()
    open_store(backend, "k", None, ("requests", "tokens"), meters, None)
    assert backend.spec.fallback is not None
    return backend.spec.fallback(share)


def test_stand_in_scales_rates_and_bursts_by_the_share() -> None:
    bucket = Meter("tokens", Rate(100, 1.0, burst=50))
    window = Meter("requests", Rate(50, 1.0))
    local = _stand_in([window, bucket], 0.25)
    cores = {m.dim: m.core for m in local._multi.meters}
    assert isinstance(cores["tokens"], BucketState)
    assert (cores["tokens"].rate, cores["tokens"].capacity) == (25.0, 12.5)
    assert isinstance(cores["requests"], WindowLog)
    assert (cores["requests"].limit, cores["requests"].window) == (12.5, 1.0)
    # N stand-ins at 1/N together: one burst and the rate, one window's limit.
    assert 4 * cores["tokens"].capacity == 50
    assert 4 * cores["requests"].limit == 50


def test_prime_empties_buckets_when_the_outage_began() -> None:
    bucket = Meter("tokens", Rate(100, 1.0, burst=50))
    multi = MultiState(("tokens",), [bucket], None)
    # Granted before the outage (10.0): already counted by the bucket in Redis; after
    # it (reserved before, admitted during): charged.
    multi.prime(10.0, [])
    assert bucket.core.level(10.0) == 0.0
    multi.prime(10.0, [(9.9, (5.0,)), (10.2, (3.0,))])
    assert bucket.core.level(10.2) == pytest.approx(100 * 0.2 - 3)
    assert bucket.core.level(20.0) == 50.0  # refills to its capacity


def test_prime_charges_windows_with_the_grants_in_them() -> None:
    window = Meter("requests", Rate(50, 1.0))
    multi = MultiState(("requests",), [window], None)
    multi.prime(10.0, [(9.5, (10.0,)), (10.2, (5.0,))])
    assert window.core.level(10.2) == 35.0
    assert window.core.level(10.6) == 45.0  # the grant at 9.5 has left the window
    assert window.core.level(11.3) == 50.0


def _store(limiter: tb.TokenBucket | tb.SlidingWindow) -> RedisStore:
    store = limiter._remote
    assert store is not None
    return store  # type: ignore[return-value]


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["bucket", "window"])
async def test_stand_in_is_charged_with_this_process_grants(kind: str, dead_port: int) -> None:
    backend = tb.RedisBackend(
        f"redis://127.0.0.1:{dead_port}/0", on_error="local", local_share=0.25
    )
    limiter: tb.TokenBucket | tb.SlidingWindow
    if kind == "bucket":
        limiter = tb.TokenBucket(100, 50, backend=backend, key="k")
    else:
        limiter = tb.SlidingWindow(50, 1.0, backend=backend, key="k")
    store = _store(limiter)
    now = asyncio.get_running_loop().time()
    # Redis granted this process 10 units 0.4 s ago, before the outage began (0.1 s
    # ago), and 2 just now (reserved before it).
    store._record(now - 0.4, (10.0,))
    store._down_since = now - 0.1
    store._record(now, (2.0,))
    local = store._stand_in()
    available = local._multi.available(now)["units"]
    if kind == "bucket":
        # Empty when the outage began, refilled at 25/s since, less the grant after it.
        assert available == pytest.approx(25 * 0.1 - 2)
    else:
        assert available == 12.5 - 12  # both grants are in the window
    await backend.aclose()


@pytest.mark.asyncio
async def test_stand_in_waits_for_the_reservations_still_due(dead_port: int) -> None:
    """A caller that falls back while this process still has callers sleeping to
    instants Redis reserved before the outage waits for the last of them first."""
    backend = tb.RedisBackend(
        f"redis://127.0.0.1:{dead_port}/0", on_error="local", local_share=0.25
    )
    limiter = tb.SlidingWindow(50, 1.0, backend=backend, key="k")
    store = _store(limiter)
    loop = asyncio.get_running_loop()
    due = loop.time() + 0.3
    store.queued.append(due)  # one reserved, admitted at `due`
    try:
        await limiter.acquire()
        assert loop.time() >= due
    finally:
        store.queued.remove(due)
        await backend.aclose()


@pytest.mark.asyncio
async def test_stand_in_bucket_starts_empty(dead_port: int) -> None:
    """No local burst at the outage: a bucket stand-in earns what it grants."""
    backend = tb.RedisBackend(
        f"redis://127.0.0.1:{dead_port}/0", on_error="local", local_share=0.25
    )
    limiter = tb.TokenBucket(100, 50, backend=backend, key="k")
    loop = asyncio.get_running_loop()
    start = loop.time()
    count = 0

    async def take_all() -> None:
        nonlocal count
        while True:
            await limiter.acquire()
            count += 1

    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(take_all(), 0.3)
    # 25/s for 0.3 s (the old stand-in granted its full burst of 50 at once).
    assert count <= math.floor(25 * (loop.time() - start)) + 1
    await backend.aclose()


@pytest.mark.asyncio
async def test_callers_waiting_in_the_stand_in_go_back_to_redis(
    redis_server: RedisServer,
) -> None:
    """When Redis answers again, the callers queued in the stand-in leave it and are
    granted by Redis, instead of draining locally."""
    backend = RecordingBackend(redis_server.url, on_error="local", local_share=0.25)
    limiter = tb.SlidingWindow(10, 1.0, backend=backend, key="back")  # locally: 2 in 1 s
    loop = asyncio.get_running_loop()
    try:
        await backend.ping()
        redis_server.kill()
        remote: list[bool] = []

        async def one() -> float:
            backend.last.set(None)
            await limiter.acquire()
            remote.append(backend.last.get() is not None)
            return loop.time()

        tasks = [asyncio.create_task(one()) for _ in range(8)]
        await asyncio.sleep(0.3)
        assert remote == [False, False]  # the stand-in's share; the others wait in it
        redis_server.start()
        back = loop.time()
        done = await asyncio.wait_for(asyncio.gather(*tasks), 5.0)
        assert max(done) - back < 0.5  # not 3 s more of local windows
        assert remote.count(True) == 6
    finally:
        if not redis_server.running:
            redis_server.start()
        await backend.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["bucket", "window"])
async def test_the_limit_holds_across_the_return_of_redis(kind: str, proxy: Proxy) -> None:
    """Redis out of reach (its data kept) and back: what the stand-in admitted is
    charged to Redis before anything else goes there, so no window (bucket interval)
    across the return holds more than the limit."""
    backend = RecordingBackend(proxy.url, on_error="local", local_share=1.0)  # N = 1
    limiter: tb.TokenBucket | tb.SlidingWindow
    if kind == "bucket":  # 20/s, bursts of 10
        limiter = tb.TokenBucket(20, 10, backend=backend, key=f"return-{kind}")
    else:  # 20 in any 1 s
        limiter = tb.SlidingWindow(20, 1.0, backend=backend, key=f"return-{kind}")
    loop = asyncio.get_running_loop()
    grants: list[tuple[float, bool]] = []  # (instant, granted by Redis)

    async def worker() -> None:
        while True:
            backend.last.set(None)
            await limiter.acquire()
            grants.append((loop.time(), backend.last.get() is not None))

    workers = [asyncio.create_task(worker()) for _ in range(10)]
    try:
        await asyncio.sleep(1.2)
        proxy.cut()
        # (A window's stand-in first waits until this process's last window of Redis
        # grants, those reserved before the cut included, has left it.)
        await asyncio.sleep(1.5 if kind == "bucket" else 2.5)
        proxy.mend()
        back = loop.time()
        await asyncio.sleep(1.5)
    finally:
        proxy.mend()
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await backend.aclose()
    local = [at for at, remote in grants if not remote]
    assert local, "the stand-in never granted"
    assert max(local) < back + 0.5, "the stand-in did not hand back"
    assert any(remote and at > back for at, remote in grants)
    instants = [at for at, _ in grants]
    if kind == "bucket":
        assert bucket_excess(instants, 20, 10 + 20 * LAG) <= 0
    else:
        assert window_peak(instants, 1.0 - LAG) <= 20


@pytest.mark.asyncio
@pytest.mark.parametrize("cancel_first", [True, False])
async def test_a_caller_cancelled_as_redis_returns_is_cancelled(
    dead_port: int, cancel_first: bool
) -> None:
    """Redis's return stops the stand-in's waits without cancelling their callers: a
    caller cancelled in the same moment ends cancelled, whichever came first."""
    backend = tb.RedisBackend(
        f"redis://127.0.0.1:{dead_port}/0", on_error="local", local_share=0.25
    )
    limiter = tb.SlidingWindow(4, 10.0, backend=backend, key="k")  # locally: 1 in 10 s
    store = _store(limiter)
    try:
        await limiter.acquire()  # the stand-in's one
        waiter = asyncio.create_task(limiter.acquire())
        while not store._local_tasks:
            await asyncio.sleep(0.01)
        if cancel_first:
            waiter.cancel()
            store._hand_back()
        else:
            store._hand_back()
            waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.sleep(0)
        assert not store._stopped  # the stand-in's wait it left has ended too
    finally:
        await backend.aclose()


@pytest.mark.asyncio
async def test_a_short_outage_charges_redis_only_with_what_the_stand_in_granted(
    proxy: Proxy,
) -> None:
    """A stand-in bucket starts empty; Redis is charged with its grants, not with the
    burst it never had: after a blip in which it granted nothing, the burst is there."""
    backend = tb.RedisBackend(proxy.url, on_error="local", local_share=1.0)
    bucket = tb.TokenBucket(1, 100, backend=backend, key="blip")  # 1/s, bursts of 100
    try:
        await bucket.acquire()  # through Redis: 99 left
        proxy.cut()
        waiter = asyncio.create_task(bucket.acquire())  # waits in the empty stand-in
        await asyncio.sleep(0.3)
        proxy.mend()
        await asyncio.wait_for(waiter, 5.0)  # granted by Redis once it answers
        admitted = 0
        for _ in range(100):
            try:
                await bucket.acquire(timeout=0)
            except tb.AcquireTimeoutError:
                break
            admitted += 1
        assert admitted >= 95  # 98 left, less what a second of refill rounds away
    finally:
        proxy.mend()
        await backend.aclose()
