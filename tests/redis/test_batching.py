"""Round trips shared under a binding limit: requests held back while they could not be
admitted anyway (``RedisBackend(batch_delay=...)``).

Real time against the real Redis server: counts of round trips and reserved instants
(exact, on the server's clock) are checked; grant times measured here only from below.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

import tokenbucket as tb
from tests.redis._support import ROUNDING, RecordingBackend, bucket_excess
from tokenbucket._redis._protocol import RESERVE

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from tokenbucket._redis import RedisBackend

pytestmark = [pytest.mark.timeout(60)]

HANG = 10.0
# Where the first request's deadline is in a reserve call's ARGV (one shape, one meter).
DEADLINE = (
    len(RESERVE.head)
    + RESERVE.groups[0].stride
    + RESERVE.groups[1].stride
    + RESERVE.groups[2].fields.index("deadline")
)


async def saturate(bucket: tb.TokenBucket, tasks: int, seconds: float) -> tuple[int, list[float]]:
    """``tasks`` tasks acquiring in a loop for ``seconds``: admissions, and when each
    task was admitted (loop clock)."""
    loop = asyncio.get_running_loop()
    stamps: list[float] = []
    end = loop.time() + seconds

    async def worker() -> None:
        while loop.time() < end:
            await bucket.acquire()
            stamps.append(loop.time())

    workers = [asyncio.create_task(worker()) for _ in range(tasks)]
    await asyncio.sleep(seconds)
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    return len(stamps), stamps


@pytest.mark.asyncio
@pytest.mark.parametrize("tasks", [100, 1000])
async def test_binding_limit_shares_round_trips(
    backend_factory: Callable[..., RecordingBackend], tasks: int
) -> None:
    """Acquirers re-arriving one by one at the admission rate share round trips."""
    backend = backend_factory()
    bucket = tb.TokenBucket(2000, 20, backend=backend, key="binding")
    await bucket.acquire()  # the script is loaded
    trips = backend.round_trips
    first = len(backend.granted)
    admitted, _ = await saturate(bucket, tasks, 1.5)
    used = backend.round_trips - trips
    # Every request sent was reserved (no timeouts here), admitted or given back.
    reserved = len(backend.granted) - first
    ratio = used / reserved
    print(f"\n{tasks} acquirers, binding limit: {used} round trips for {reserved} reservations")
    assert admitted > 500
    assert ratio < 0.2
    instants = [grant.at for grant in backend.granted]
    assert bucket_excess(instants, 2000, 20) <= 0


@pytest.mark.asyncio
async def test_without_batch_delay_each_re_arrival_is_its_own_round_trip(
    backend_factory: Callable[..., RecordingBackend],
) -> None:
    """``batch_delay=0``: the same workload makes far more round trips (the control)."""
    held = backend_factory()
    eager = backend_factory(batch_delay=0)
    ratios = []
    for backend in (held, eager):
        bucket = tb.TokenBucket(2000, 20, backend=backend, key=f"control{id(backend)}")
        await bucket.acquire()
        trips = backend.round_trips
        first = len(backend.granted)
        await saturate(bucket, 100, 1.0)
        ratios.append((backend.round_trips - trips) / (len(backend.granted) - first))
    assert ratios[0] * 2 < ratios[1]


@pytest.mark.asyncio
async def test_held_request_is_not_admitted_later_than_without_holding(
    redis_backend: RecordingBackend,
) -> None:
    """A request held back is still reserved at the earliest instant the limit allows."""
    window = tb.SlidingWindow(5, 0.5, backend=redis_backend, key="behind")
    await asyncio.gather(*(window.acquire() for _ in range(5)))  # full for 0.5 s
    ahead = asyncio.create_task(window.acquire())  # reserved at the first expiry
    while len(redis_backend.granted) < 6:
        await asyncio.sleep(0.001)
    sent = redis_backend.round_trips
    late = asyncio.create_task(window.acquire())  # held: the limit is binding
    await asyncio.sleep(0)
    assert redis_backend.round_trips == sent  # not sent yet
    await asyncio.wait_for(asyncio.gather(ahead, late), HANG)
    grants = [grant.at for grant in redis_backend.granted]
    assert grants[5] == pytest.approx(grants[0] + 0.5, abs=ROUNDING)
    assert grants[6] == pytest.approx(grants[1] + 0.5, abs=ROUNDING)


@pytest.mark.asyncio
async def test_cancelled_while_held_reserves_nothing(redis_backend: RecordingBackend) -> None:
    bucket = tb.TokenBucket(10, 1, backend=redis_backend, key="cancel-held")
    await bucket.acquire()  # empty now; the next is reserved 0.1 s out
    ahead = asyncio.create_task(bucket.acquire())
    while len(redis_backend.granted) < 2:
        await asyncio.sleep(0.001)
    sent = redis_backend.round_trips
    victim = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0)  # held
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim
    assert redis_backend.round_trips == sent  # never sent
    after = asyncio.create_task(bucket.acquire())
    await asyncio.wait_for(asyncio.gather(ahead, after), HANG)
    grants = [grant.at for grant in redis_backend.granted]
    assert len(grants) == 3
    # `after` is right behind `ahead`: the cancelled request took no place.
    assert grants[2] == pytest.approx(grants[1] + 0.1, abs=ROUNDING)
    assert redis_backend._batch.held == {}
    assert redis_backend._batch.hold_timers == {}


@pytest.mark.asyncio
async def test_short_timeout_is_not_held_and_keeps_fifo(redis_backend: RecordingBackend) -> None:
    """A request whose timeout is shorter than the hold is sent at once, after (never
    before) the requests held ahead of it."""
    bucket = tb.TokenBucket(10, 1, backend=redis_backend, key="fifo")
    await bucket.acquire()
    ahead = asyncio.create_task(bucket.acquire())
    while len(redis_backend.granted) < 2:
        await asyncio.sleep(0.001)
    held = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0)
    assert redis_backend._batch.held  # held back
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(tb.AcquireTimeoutError):
        await bucket.acquire(timeout=0)
    assert loop.time() - start < 0.5
    await asyncio.wait_for(asyncio.gather(ahead, held), HANG)
    grants = [grant.at for grant in redis_backend.granted]
    assert grants == sorted(grants)
    assert grants[2] == pytest.approx(grants[1] + 0.1, abs=ROUNDING)


@pytest.mark.asyncio
async def test_held_timeout_counts_from_the_call(
    backend_factory: Callable[..., RecordingBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The time a request spends held is taken off the timeout it sends."""
    backend = backend_factory(batch_delay=0.05)
    bucket = tb.TokenBucket(10, 1, backend=backend, key="deadline")
    await bucket.acquire()
    queue = [asyncio.create_task(bucket.acquire()) for _ in range(4)]  # 0.1 .. 0.4 s out
    while len(backend.granted) < 5:
        await asyncio.sleep(0.001)
    sent: list[float] = []
    script = backend._script

    async def recording(name: str, keys: Any, args: Any) -> Any:
        if name == "reserve":
            sent.append(float(args[DEADLINE]))  # the first request's deadline
        return await script(name, keys, args)

    monkeypatch.setattr(backend, "_script", recording)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(tb.AcquireTimeoutError):
        await bucket.acquire(timeout=0.3)  # held 0.05 s: the next instant is 0.5 s out
    assert loop.time() - start >= 0.3 - 1e-3
    assert len(sent) == 1
    assert sent[0] <= 0.3 - 0.05 + 1e-3
    await asyncio.wait_for(asyncio.gather(*queue), HANG)
    assert len(backend.granted) == 5


@pytest.mark.asyncio
async def test_aclose_sends_what_is_held(backend_factory: Callable[..., RecordingBackend]) -> None:
    backend = backend_factory(batch_delay=5.0)
    bucket = tb.TokenBucket(1, 1, backend=backend, key="close")
    await bucket.acquire()
    ahead = asyncio.create_task(bucket.acquire())  # reserved 1 s out
    while len(backend.granted) < 2:
        await asyncio.sleep(0.001)
    held = asyncio.create_task(bucket.acquire())  # held 0.5 s (half the wait)
    await asyncio.sleep(0)
    assert backend._batch.held
    await backend.aclose(grace=0.5)
    # Closing sent it: it is reserved, not left waiting for its hold to end.
    assert not backend._batch.held
    assert len(backend.granted) == 3
    await asyncio.wait_for(asyncio.gather(ahead, held), HANG)


async def log_sums(admin: Any, key: str) -> tuple[float, float]:
    """(the 'all' sum kept beside a window log, the sum of the log's entries)."""
    kept = float(await admin.hget(f"{key}:sum", "all"))
    entries = await admin.zrange(key, 0, -1)
    return kept, sum(float(entry.split(":")[1]) for entry in entries)


@pytest.mark.asyncio
async def test_window_sums_follow_the_log(redis_backend: RecordingBackend, admin: Any) -> None:
    """The sums a window keeps beside its log match the log through grants, give-backs,
    settles and feedback; lost sums are counted again, and the limit still holds."""
    limiter = tb.Limiter({"tokens": tb.Rate(100, 0.5)}, backend=redis_backend, key="sums")
    async with limiter.acquire(tokens=30) as lease:
        lease.settle(tokens=10)
    async with limiter.acquire(tokens=20):
        pass
    waiter = asyncio.create_task(limiter.acquire(tokens=90).__aenter__())
    await asyncio.sleep(0.05)
    waiter.cancel()  # its reservation (about 0.5 s out) is given back
    await asyncio.gather(waiter, return_exceptions=True)
    await asyncio.sleep(0.05)
    (key,) = [
        k
        async for k in admin.scan_iter(match="*sums*")
        if not k.endswith(":sum") and ":call:" not in k
    ]
    kept, logged = await log_sums(admin, key)
    assert kept == pytest.approx(logged)
    assert logged == pytest.approx(30)
    # The sums are lost (evicted, say): they are counted again from the log.
    await admin.delete(f"{key}:sum")
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with limiter.acquire(tokens=80):  # 30 inside: must wait for them to leave
        pass
    assert loop.time() - start > 0.3
    kept, logged = await log_sums(admin, key)
    assert kept == pytest.approx(logged)
    # Reserved once the first grant (10 after settling) left the window, not before.
    assert redis_backend.granted[-1].at >= redis_backend.granted[0].at + 0.5 - ROUNDING


@pytest.fixture
def command_counter(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[RedisBackend], list[str]]:
    """Count the commands a backend's client sends (to check ``round_trips``)."""

    def count(backend: RedisBackend) -> list[str]:
        sent: list[str] = []
        execute: Callable[..., Awaitable[Any]] = backend.client.execute_command

        async def recording(*args: Any, **options: Any) -> Any:
            sent.append(str(args[0]))
            return await execute(*args, **options)

        monkeypatch.setattr(backend.client, "execute_command", recording)
        return sent

    return count


@pytest.mark.asyncio
async def test_batching_of_many_acquirers(
    redis_backend: RecordingBackend,
    command_counter: Callable[[RedisBackend], list[str]],
    record_property: Callable[[str, object], None],
) -> None:
    bucket = tb.TokenBucket(1_000_000, 10_000, backend=redis_backend, key="many")
    await bucket.acquire()  # the script is loaded
    sent = command_counter(redis_backend)
    trips = redis_backend.round_trips
    count = 1000
    await asyncio.wait_for(asyncio.gather(*(bucket.acquire() for _ in range(count))), HANG)
    used = redis_backend.round_trips - trips
    ratio = used / count
    record_property("round_trips_per_admission", ratio)
    print(f"\n{count} concurrent acquirers: {used} round trips ({ratio:.3f} per admission)")
    assert len(redis_backend.granted) == count + 1
    assert len(sent) == used  # the counter counts what is sent
    assert ratio < 0.2


@pytest.mark.asyncio
async def test_lone_acquirer_uses_one_round_trip(
    redis_backend: RecordingBackend, command_counter: Callable[[RedisBackend], list[str]]
) -> None:
    window = tb.SlidingWindow(100, 1, backend=redis_backend, key="lone")
    await window.acquire()  # the script is loaded
    sent = command_counter(redis_backend)
    for _ in range(5):
        trips = redis_backend.round_trips
        await window.acquire()
        assert redis_backend.round_trips - trips == 1
    assert sent == ["EVALSHA"] * 5
