"""Server feedback under virtual time: pauses and reports hold exactly as long as
the server said."""

from __future__ import annotations

import anyio
import pytest
from fake_provider.provider import Admitted, Provider
from fake_provider.provider import ChatRequest as ServerRequest

import tokenbucket as tb
from tests.virtual._support import TOL, now, start_in_order

pytestmark = pytest.mark.anyio


async def test_pause_holds_every_waiter_and_keeps_their_order() -> None:
    limiter = tb.Limiter(requests_per_second=2, tokens_per_second=1_000)
    start = now()
    limiter.pause(5)
    assert limiter.statistics().paused_until == pytest.approx(start + 5, abs=TOL)
    grants: list[tuple[int, float]] = []

    async def call(index: int) -> None:
        async with limiter.acquire(tokens=10):
            grants.append((index, now() - start))

    async with anyio.create_task_group() as tg:
        for index in range(5):
            tg.start_soon(call, index)
            await anyio.wait_all_tasks_blocked()
        await anyio.sleep(2)
        limiter.pause(1)  # shorter: does not shorten the pause in force
        assert limiter.statistics().paused_until == pytest.approx(start + 5, abs=TOL)
        with pytest.raises(tb.AcquireTimeoutError):
            async with limiter.acquire(timeout=2.5):
                pass  # pragma: no cover
    by_arrival = [t for _, t in sorted(grants)]
    assert by_arrival == pytest.approx([5, 5, 6, 6, 7], abs=TOL)
    assert limiter.statistics().paused_until is None


async def test_pause_also_holds_a_waiter_whose_slot_frees_during_it() -> None:
    limiter = tb.Limiter(requests_per_second=100, max_concurrency=1)
    start = now()
    granted: list[float] = []

    async def hold() -> None:
        async with limiter.acquire():
            await anyio.sleep(1)

    async def wait() -> None:
        async with limiter.acquire():
            granted.append(now() - start)

    async with anyio.create_task_group() as tg:
        await start_in_order(tg, hold, wait)
        limiter.pause(4)
    assert granted == [pytest.approx(4, abs=TOL)]


@pytest.mark.parametrize(
    ("headers", "status", "pause"),
    [
        ({"Retry-After": "3"}, 429, 3.0),
        ({"retry-after-ms": "2500", "retry-after": "9"}, 429, 2.5),
        ({}, 429, 1.0),
        ({"retry-after": "4"}, None, 4.0),
    ],
)
async def test_feedback_retry_after_pauses_every_waiter(
    headers: dict[str, str], status: int | None, pause: float
) -> None:
    limiter = tb.Limiter(requests_per_second=1_000)
    start = now()
    grants: list[tuple[int, float]] = []

    async def call(index: int) -> None:
        async with limiter.acquire():
            grants.append((index, now() - start))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, 0)
        await anyio.wait_all_tasks_blocked()
        info = limiter.feedback(headers, status=status)
        assert info.retry_after == (None if not headers else pause)
        for index in range(1, 4):
            tg.start_soon(call, index)
            await anyio.wait_all_tasks_blocked()
        await anyio.sleep(pause / 2)
        limiter.feedback({"retry-after": "0"}, status=429)  # cannot shorten it
    assert grants[0] == (0, 0.0)
    assert [t for _, t in sorted(grants)[1:]] == pytest.approx([pause] * 3, abs=TOL)


async def test_feedback_openai_headers_lower_the_limit_until_the_reset() -> None:
    limiter = tb.Limiter(requests_per_minute=100, tokens_per_minute=1_000)
    start = now()
    info = limiter.feedback(
        {
            "x-ratelimit-limit-tokens": "1000",
            "x-ratelimit-remaining-tokens": "100",
            "x-ratelimit-reset-tokens": "6s",
        }
    )
    assert [(x.dimension, x.remaining, x.reset_after) for x in info.limits] == [("tokens", 100, 6)]
    assert limiter.statistics().available["tokens"] == 100
    assert limiter.statistics().available["requests"] == 100
    async with limiter.acquire(tokens=100):
        assert now() == start
    async with limiter.acquire(tokens=1):
        assert now() - start == pytest.approx(6, abs=TOL)
    # From the reset on, only the local state counts: 101 used in the last minute.
    async with limiter.acquire(tokens=899):
        assert now() - start == pytest.approx(6, abs=TOL)
    async with limiter.acquire(tokens=1):
        assert now() - start == pytest.approx(60, abs=TOL)


async def after_a_call_of_100_tokens(remaining_tokens: str) -> tuple[tb.Limiter, float]:
    """A limiter of 100 requests and 1 000 tokens a minute, and the instant it started,
    after a call of 100 tokens whose response reported ``remaining_tokens``, reset in 2 s."""
    limiter = tb.Limiter(requests_per_minute=100, tokens_per_minute=1_000)
    start = now()
    headers = {"x-ratelimit-remaining-tokens": remaining_tokens, "x-ratelimit-reset-tokens": "2s"}
    async with limiter.acquire(tokens=100) as lease:
        lease.feedback(headers)
    return limiter, start


async def test_feedback_after_traffic_holds_only_until_the_reset() -> None:
    limiter, start = await after_a_call_of_100_tokens("0")
    async with limiter.acquire(tokens=1):
        assert now() - start == pytest.approx(2, abs=TOL)


async def test_feedback_requests_remaining_zero_holds_until_the_reset() -> None:
    limiter = tb.Limiter(requests_per_minute=100, tokens_per_minute=1_000)
    start = now()
    async with limiter.acquire(tokens=1):
        pass
    lease_feedback = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"}
    async with limiter.acquire(tokens=1) as lease:
        lease.feedback(lease_feedback)
    async with limiter.acquire(tokens=1):
        assert now() - start == pytest.approx(2, abs=TOL)


async def test_feedback_holds_at_least_until_the_reset() -> None:
    # What does hold today: nothing more than the server's remaining before its reset.
    limiter, start = await after_a_call_of_100_tokens("50")
    assert limiter.statistics().available["tokens"] == 50
    async with limiter.acquire(tokens=50):
        assert now() == start
    async with limiter.acquire(tokens=1):
        assert now() - start >= 2 - TOL


async def test_feedback_anthropic_and_bucket_meters() -> None:
    limiter = tb.Limiter(
        {"input_tokens": tb.per_minute(1_000), "output_tokens": tb.per_second(10, burst=10)}
    )
    start = now()
    limiter.feedback(
        {
            "anthropic-ratelimit-input-tokens-remaining": "10",
            "anthropic-ratelimit-output-tokens-remaining": "0",
        }
    )
    assert dict(limiter.statistics().available) == {"input_tokens": 10, "output_tokens": 0}
    async with limiter.acquire(input_tokens=10):
        assert now() == start
    async with limiter.acquire(output_tokens=10):
        assert now() - start == pytest.approx(1, abs=TOL)  # refilled from 0 at 10/s
    async with limiter.acquire(input_tokens=1):
        # No reset given: held for one window.
        assert now() - start == pytest.approx(60, abs=TOL)


async def test_feedback_accepts_parsed_feedback_and_ignores_other_dimensions() -> None:
    limiter = tb.Limiter(requests_per_minute=100)
    parsed = tb.parse_rate_limit_headers(
        {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-remaining-requests": "50"}
    )
    assert limiter.feedback(parsed) is parsed
    assert dict(limiter.statistics().available) == {"requests": 50}


async def serve(
    limiter: tb.Limiter, provider: Provider, count: int, *, latency: float, attempts: int = 3
) -> tuple[list[float], int]:
    """``count`` requests at once, each through ``limiter`` to ``provider`` (which sees it
    when granted and answers ``latency`` later), retried through the limiter after a 429
    like an SDK does; the instants the server admitted them, and its 429s."""
    admitted: list[float] = []
    refused = 0

    async def call(index: int) -> None:
        nonlocal refused
        request = ServerRequest("m", [{"role": "user", "content": f"request {index}"}], 1)
        for _ in range(attempts):
            async with limiter.acquire() as lease:
                answer = provider.chat(request, now())
                await anyio.sleep(latency)
                status = 200 if isinstance(answer, Admitted) else 429
                lease.feedback(answer.headers, status=status)
            if status == 200:
                admitted.append(now())
                return
            refused += 1

    async with anyio.create_task_group() as tg:
        for index in range(count):
            tg.start_soon(call, index)
    return admitted, refused


async def test_openai_capacity_comes_back_at_the_rate_the_headers_imply() -> None:
    # 75 requests, a limiter set to 500 a minute, a server allowing 60 a minute (a bucket
    # refilling at 1/s, reporting the time until full as its reset): 15 are refused in
    # the first burst, and then come through one a second, not after the whole minute.
    limiter = tb.Limiter(requests_per_minute=500)
    start = now()
    provider = Provider(rpm=60, tpm=10**9, period=60, now=start)
    admitted, refused = await serve(limiter, provider, 75, latency=0.5)
    assert len(admitted) == 75
    assert refused == 15  # only the first burst, before any report came back
    assert max(admitted) - start <= 18  # 15 s to refill 15, and the round trips


async def test_a_limiter_set_5x_too_high_runs_at_the_servers_limit() -> None:
    # A limiter of 300 a minute against a server of 60 a minute, kept busy for ten
    # minutes: after the first report it admits at the server's rate, and the server
    # refuses nothing more.
    limiter = tb.Limiter(requests_per_minute=300, max_concurrency=8)
    start = now()
    provider = Provider(rpm=60, tpm=10**9, period=60, now=start)
    admitted, refused = await serve(limiter, provider, 660, latency=0.3)
    assert len(admitted) == 660
    assert refused <= 8  # the calls in flight before the first report
    after_first_minute = [t for t in admitted if t - start >= 60]
    rate = len(after_first_minute) / (max(admitted) - start - 60)
    assert rate >= 0.9  # of the server's 1 request/s


@pytest.mark.parametrize("burst", [1_000])
async def test_a_report_on_a_lease_counts_the_grants_made_since_it(burst: int) -> None:
    # The server counted `remaining` when the lease's request reached it: the 300 granted
    # here after it are not in that count yet. (A bucket orders its grants exactly; a
    # window's log merges those of one instant, and takes a report as of now.)
    limiter = tb.Limiter({"tokens": tb.Rate(1_000, 60.0, burst=burst)})
    report = {"x-ratelimit-remaining-tokens": "500", "x-ratelimit-reset-tokens": "30s"}
    async with limiter.acquire(tokens=100) as first:
        async with limiter.acquire(tokens=300):
            pass
        first.feedback(report)
        assert limiter.statistics().available["tokens"] == 200
    # Told by no lease, the same report is read as of now.
    other = tb.Limiter({"tokens": tb.Rate(1_000, 60.0, burst=burst)})
    async with other.acquire(tokens=100), other.acquire(tokens=300):
        other.feedback(report)
    assert other.statistics().available["tokens"] == 500
