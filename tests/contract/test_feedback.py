"""Server feedback: one policy for every backend (see ``tokenbucket._feedback``)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

import tokenbucket as tb
from tests.contract._support import EPS, HANG, Backend, clock, fits, settled_in

if TYPE_CHECKING:
    from collections.abc import Callable

    from tokenbucket._redis import RedisBackend

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def test_feedback_retry_after_pauses_everyone(
    kind: str, new_backend: Callable[[], Backend]
) -> None:
    def make(backend: RedisBackend | None) -> tb.Limiter:
        key = "paused" if backend is not None else None
        return tb.Limiter(requests_per_second=1000, backend=backend, key=key)

    one = make(new_backend())
    # Another process on the same limit (in memory: other tasks on the same limiter).
    other = make(new_backend()) if kind == "redis" else one
    async with one.acquire() as lease:
        info = lease.feedback({"retry-after-ms": "300"}, status=429)
        paused = clock()
    assert info.retry_after == pytest.approx(0.3)
    await asyncio.sleep(0.02)  # the pause has reached the shared state
    stamps: list[float] = []

    async def call(limiter: tb.Limiter) -> None:
        async with limiter.acquire():
            stamps.append(clock() - paused)

    await asyncio.wait_for(asyncio.gather(*(call(lim) for lim in (one, other) * 3)), HANG)
    assert min(stamps) >= 0.3 - EPS


async def test_feedback_429_without_retry_after_pauses_one_second(
    backend: Backend,
) -> None:
    limiter = tb.Limiter(requests_per_second=1000, backend=backend, key="p429" if backend else None)
    async with limiter.acquire() as lease:
        lease.feedback({}, status=429)  # one second, by the documented default
        paused = clock()
    await asyncio.sleep(0.02)
    with pytest.raises(tb.AcquireTimeoutError):
        async with limiter.acquire(timeout=0.5):
            pass
    async with limiter.acquire(timeout=HANG):
        assert clock() - paused >= 1.0 - EPS


async def test_feedback_retry_after_pauses_queued_waiters(backend: Backend) -> None:
    limiter = tb.Limiter(
        {"requests": tb.Rate(1, 0.1)}, backend=backend, key="pq" if backend else None
    )
    async with limiter.acquire():
        pass
    stamps: list[float] = []

    async def waiter() -> None:
        async with limiter.acquire():
            stamps.append(clock())

    tasks = [asyncio.create_task(waiter()) for _ in range(3)]  # due at 0.1, 0.2, 0.3 s
    await asyncio.sleep(0.02)
    limiter.feedback({"retry-after-ms": "500"}, status=429)
    paused = clock()
    await asyncio.wait_for(asyncio.gather(*tasks), HANG)
    first = min(stamps) - paused
    assert first >= 0.5 - EPS, f"a queued waiter went {first:.3f} s into a 0.5 s pause"


async def test_feedback_shorter_retry_after_does_not_shorten_a_pause(
    backend: Backend,
) -> None:
    limiter = tb.Limiter(requests_per_second=1000, backend=backend, key="p" if backend else None)
    limiter.feedback({"retry-after-ms": "600"}, status=429)
    paused = clock()
    await asyncio.sleep(0.05)
    for headers in ({"retry-after-ms": "100"}, {"retry-after": "0"}):
        info = limiter.feedback(headers, status=429)
        assert info.retry_after is not None
        assert info.retry_after < 0.6
    limiter.pause(0.1)
    await settled_in(backend)
    assert not await fits(limiter, timeout=0.3)
    async with limiter.acquire(timeout=HANG):
        assert clock() - paused >= 0.6 - EPS


def requests_meters(api: str, backend: Backend) -> tb.Limiter:
    """Two rates of requests: a short one that lets a request through again within
    0.25 s of a report lowering it to 0, and a long one that does not for 1.5 s."""
    if api == "Limiter-bucket":
        short, long = tb.Rate(4, 1.0, burst=4), tb.Rate(40, 60.0, burst=40)
    else:
        short, long = tb.Rate(4, 0.25), tb.Rate(40, 60.0)
    return tb.Limiter(
        {"requests": [long, short]}, backend=backend, key="meters" if backend else None
    )


ZERO_FOR_30S = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30s"}


@pytest.mark.parametrize(
    ("report", "lowered"),
    [
        # The server's limit is nearest to one of the limiter's own amounts: that one.
        pytest.param(
            {**ZERO_FOR_30S, "x-ratelimit-limit-requests": "5"}, "short", id="nearest-short"
        ),
        pytest.param(
            {**ZERO_FOR_30S, "x-ratelimit-limit-requests": "40"}, "long", id="nearest-long"
        ),
        # (In the IETF form: OpenAI's would say the server's 1,000 come back at 32/s.)
        pytest.param(
            {"RateLimit-Limit": "1000", "RateLimit-Remaining": "0", "RateLimit-Reset": "30"},
            "long",
            id="above-both",
        ),
        # No limit reported: the shortest period (providers report per-minute limits),
        # until the server's reset or, without one, for that period.
        pytest.param(ZERO_FOR_30S, "short", id="no-limit"),
        pytest.param({"RateLimit-Remaining": "0"}, "short", id="no-limit-no-reset"),
    ],
)
async def test_feedback_report_lowers_only_the_meter_it_describes(
    limiter_api: str, backend: Backend, report: dict[str, str], lowered: str
) -> None:
    limiter = requests_meters(limiter_api, backend)
    info = limiter.feedback(report)
    assert [(x.dimension, x.remaining) for x in info.limits] == [("requests", 0)]
    await settled_in(backend)
    assert not await fits(limiter)  # lowered to nothing, whichever meter it was
    # The short meter lets a request through again within 0.25 s; the long one holds it
    # until the server's reset (30 s) or its own refill (1.5 s).
    assert await fits(limiter, timeout=0.6) == (lowered == "short")


@pytest.mark.parametrize(
    "rate",
    [
        pytest.param(lambda n: n, id="window"),
        pytest.param(lambda n: {"limit": n, "burst": n}, id="bucket"),
    ],
)
async def test_feedback_report_leaves_a_shared_pool_alone(
    backend: Backend, rate: Callable[[int], Any]
) -> None:
    group = tb.BucketGroup.from_dict(
        {"gpt": {"tokens_per_hour": rate(2000)}, "o3": {"tokens_per_hour": rate(2000)}},
        shared={"org": {"tokens_per_hour": rate(1000), "members": ["gpt", "o3"]}},
        backend=backend,
        key="group" if backend is not None else None,
    )
    async with group.acquire("gpt", tokens=10, timeout=HANG) as lease:
        # The reported limit is the pool's amount exactly: still gpt's own meter is the
        # one lowered, since one member's report says nothing of the others' use.
        lease.feedback(
            {
                "x-ratelimit-limit-tokens": "1000",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": "30s",
            }
        )
    await settled_in(backend)
    assert not await fits(group["gpt"], tokens=1)
    # The pool holds 990: o3 takes 900 of them at once, and no more than that.
    assert await fits(group["o3"], tokens=900)
    assert not await fits(group["o3"], tokens=100)


async def test_feedback_never_raises_what_the_limiter_grants(
    limiter_api: str, backend: Backend
) -> None:
    rate = (
        tb.Rate(100, 100.0, burst=100) if limiter_api == "Limiter-bucket" else tb.Rate(100, 100.0)
    )
    limiter = tb.Limiter(
        {"requests": rate, "tokens": rate}, backend=backend, key="raise" if backend else None
    )
    async with limiter.acquire(tokens=90, timeout=HANG) as lease:
        lease.feedback(
            {
                "x-ratelimit-remaining-tokens": "1000",
                "x-ratelimit-reset-tokens": "1s",
                "x-ratelimit-remaining-requests": "5000",
                "anthropic-ratelimit-tokens-remaining": "1000000",
            }
        )
    await settled_in(backend)
    assert await fits(limiter, tokens=10)
    assert not await fits(limiter, tokens=1)


async def test_feedback_malformed_headers_only_warn_and_change_nothing(
    limiter_api: str, backend: Backend
) -> None:
    rate = (
        tb.Rate(100, 100.0, burst=100) if limiter_api == "Limiter-bucket" else tb.Rate(100, 100.0)
    )
    limiter = tb.Limiter({"tokens": rate}, backend=backend, key="bad" if backend else None)
    with pytest.warns(tb.RateLimitHeaderWarning) as record:
        info = limiter.feedback(
            {
                "x-ratelimit-remaining-tokens": "lots",
                "x-ratelimit-reset-tokens": "soon",
                "retry-after": "whenever",
            },
            status=503,
        )
    messages = " ".join(str(warning.message) for warning in record)
    for name in ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens", "retry-after"):
        assert name in messages
    assert (info.limits, info.retry_after) == ((), None)
    assert limiter.statistics().paused_until is None
    await settled_in(backend)
    assert await fits(limiter, tokens=100)


@pytest.mark.parametrize("burst", [None, 1000], ids=["window", "bucket"])
async def test_a_report_covers_the_grants_before_it_which_give_nothing_back(
    backend: Backend, burst: int | None
) -> None:
    # The server's count covers every call it has seen (what each used, or all of it if
    # it gives nothing back): settling a call made before the report must not add to
    # what the report says is left.
    limiter = tb.Limiter(
        {"tokens": tb.Rate(1000, 3600.0, burst=burst)},
        backend=backend,
        key="covered" if backend is not None else None,
    )
    async with limiter.acquire(tokens=500, timeout=HANG) as early:
        limiter.feedback({"x-ratelimit-remaining-tokens": "100", "x-ratelimit-reset-tokens": "30s"})
        early.settle(tokens=10)  # 490 unused: not given back
    await settled_in(backend)
    assert not await fits(limiter, tokens=150)
    async with limiter.acquire(tokens=100, timeout=HANG) as later:
        later.settle(tokens=50)  # after the report: its unused part goes back
    await settled_in(backend)
    assert await fits(limiter, tokens=50)
    assert not await fits(limiter, tokens=1)


@pytest.mark.parametrize("burst", [None, 100], ids=["window", "bucket"])
async def test_a_limiter_set_too_high_is_fitted_to_the_servers_bucket(
    backend: Backend, burst: int | None
) -> None:
    # 100 a second configured; the server allows 20 a second (a bucket, empty now, full
    # again in 1 s): from this report on, about 19 a second get through, not 100.
    limiter = tb.Limiter(
        {"requests": tb.Rate(100, 1.0, burst=burst)},
        backend=backend,
        key="fitted" if backend is not None else None,
    )
    info = limiter.feedback(
        {
            "x-ratelimit-limit-requests": "20",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1.000s",
        }
    )
    assert info.limits[0].refill_rate == pytest.approx(19 / 1.001)
    await settled_in(backend)
    start = clock()
    granted = 0
    while clock() - start < 1.0:
        if await fits(limiter, timeout=0.2):
            granted += 1
    assert 1 <= granted <= 21


async def test_a_request_waiting_while_its_meter_is_fitted_is_granted(backend: Backend) -> None:
    # On Redis, a request queued before the fit sends the meters of the shape it is
    # granted with (the fit adds the server's bucket beside a window).
    limiter = tb.Limiter(
        requests_per_second=100,
        max_concurrency=1,
        backend=backend,
        key="refit" if backend is not None else None,
    )
    granted = asyncio.Event()

    async def second() -> None:
        async with limiter.acquire(timeout=HANG):
            granted.set()

    async with limiter.acquire(timeout=HANG) as lease:
        waiter = asyncio.ensure_future(second())
        await asyncio.sleep(0.05)  # it waits for the slot
        lease.feedback(
            {
                "x-ratelimit-limit-requests": "20",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "1.000s",
            }
        )
        await settled_in(backend)
    await asyncio.wait_for(waiter, HANG)
    assert granted.is_set()


async def test_a_limiter_fitted_to_its_server_is_not_at_rest(backend: Backend) -> None:
    # A group drops members at rest that it made from its default: one fitted to the
    # server's limits holds knowledge a new one would not have.
    limiter = tb.Limiter(
        requests_per_second=100, backend=backend, key="rest" if backend is not None else None
    )
    assert limiter._store.at_rest()
    limiter.feedback(
        {
            "x-ratelimit-limit-requests": "20",
            "x-ratelimit-remaining-requests": "20",
            "x-ratelimit-reset-requests": "0s",
        }
    )
    assert limiter._store.at_rest()  # nothing to learn from a full server
    limiter.feedback(
        {
            "x-ratelimit-limit-requests": "20",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1.000s",
        }
    )
    await settled_in(backend)
    await asyncio.sleep(1.1)  # every meter back at rest, but the fit stays
    assert not limiter._store.at_rest()
