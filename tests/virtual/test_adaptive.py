"""An adaptive concurrency cap under virtual time: fed by the leases that end."""

from __future__ import annotations

import anyio
import pytest

import tokenbucket as tb
from tests.virtual._support import now

pytestmark = pytest.mark.anyio


def one_call_windows(**tuning: float) -> tb.Adaptive:
    """AIMD that moves after every call (for tests that follow one lease: a window of
    one dropped call is a window all dropped, which halves the cap)."""
    return tb.adaptive(initial=10, min=2, max=100, policy="aimd", window=1, **tuning)


async def test_a_429_lowers_the_cap_once_and_the_history_says_why() -> None:
    limiter = tb.Limiter(max_concurrency=one_call_windows())
    async with limiter.acquire() as lease:
        await anyio.sleep(0.5)
        lease.feedback({}, status=429)
    assert limiter.max_concurrency == 5
    assert [(c.limit, c.reason) for c in limiter.statistics().limit_history] == [
        (10, "initial"),
        (5, "drop"),
    ]


@pytest.mark.parametrize(
    ("error", "lowered"),
    [(TimeoutError(), True), (ConnectionResetError(), True), (ValueError(), False)],
    ids=["timeout", "connection", "other"],
)
async def test_what_a_lease_left_with_tells(error: Exception, lowered: bool) -> None:
    limiter = tb.Limiter(max_concurrency=one_call_windows())
    with pytest.raises(type(error)):
        async with limiter.acquire():
            raise error
    assert limiter.max_concurrency == (5 if lowered else 10)


async def test_an_sdk_error_is_told_by_its_name() -> None:
    class RateLimitError(Exception):  # (as openai's and anthropic's are named)
        pass

    limiter = tb.Limiter(max_concurrency=one_call_windows())
    with pytest.raises(RateLimitError):
        async with limiter.acquire():
            raise RateLimitError
    assert limiter.max_concurrency == 5


async def test_a_drop_in_a_window_of_ten_lowers_the_cap_by_a_tenth() -> None:
    limiter = tb.Limiter(max_concurrency=tb.adaptive(initial=10, policy="aimd"))
    for status in [200] * 9 + [503]:
        async with limiter.acquire() as lease:
            lease.feedback({}, status=status)
    assert limiter.max_concurrency == 9


async def test_this_librarys_own_errors_are_no_drop() -> None:
    limiter = tb.Limiter(max_concurrency=one_call_windows())
    inner = tb.Limiter(tokens_per_minute=10)
    async with inner.acquire(tokens=10):
        pass
    with pytest.raises(tb.AcquireTimeoutError):  # (a TimeoutError, but the limiter's)
        async with limiter.acquire(), inner.acquire(tokens=5, timeout=0):
            pass
    assert limiter.max_concurrency == 10


async def test_an_error_with_a_status_is_told_by_it() -> None:
    class StatusError(Exception):
        def __init__(self, status: int) -> None:
            self.status_code = status

    limiter = tb.Limiter(max_concurrency=one_call_windows())
    with pytest.raises(StatusError):
        async with limiter.acquire():
            raise StatusError(404)
    assert limiter.max_concurrency == 10
    with pytest.raises(StatusError):
        async with limiter.acquire():
            raise StatusError(529)
    assert limiter.max_concurrency == 5


async def test_a_cancelled_call_tells_nothing() -> None:
    limiter = tb.Limiter(max_concurrency=one_call_windows())
    with anyio.move_on_after(1.0):
        async with limiter.acquire():
            await anyio.sleep(5)
    assert [c.reason for c in limiter.statistics().limit_history] == ["initial"]


async def test_a_lower_cap_keeps_the_leases_held_and_admits_none_until_below_it() -> None:
    limiter = tb.Limiter(max_concurrency=one_call_windows())
    release = anyio.Event()

    async def hold() -> None:
        async with limiter.acquire():
            await release.wait()

    async with anyio.create_task_group() as tg:
        for _ in range(9):
            tg.start_soon(hold)
        await anyio.wait_all_tasks_blocked()
        async with limiter.acquire() as lease:  # the tenth
            lease.feedback({}, status=503)
        assert limiter.max_concurrency == 5  # 9 held: none more
        with anyio.move_on_after(1.0) as waited:
            async with limiter.acquire():
                pass
        assert waited.cancelled_caught
        release.set()
    async with limiter.acquire():  # below it again
        pass


async def test_it_finds_the_knee_of_a_queueing_server() -> None:
    """50 workers, 0.1 s a call: more calls in flight queue; past 100 the server answers
    503 at once. 300 tasks call it in a loop for two minutes."""
    workers, service, bound = 50, 0.1, 100
    limiter = tb.Limiter(max_concurrency=tb.adaptive(initial=4, min=1, max=1000))
    in_server = 0
    served = 0
    latencies: list[float] = []

    async def client() -> None:
        nonlocal in_server, served
        while now() < 120:
            async with limiter.acquire() as lease:
                in_server += 1
                if in_server > bound:
                    await anyio.sleep(0.001)
                    lease.feedback({}, status=503)
                else:
                    latency = service * max(1.0, in_server / workers)
                    await anyio.sleep(latency)
                    if now() > 60:
                        served += 1
                        latencies.append(latency)
                in_server -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(300):
            tg.start_soon(client)
    # Every worker busy, the queue short: at least 90 % of the server's 500 calls a
    # second over the second minute, 99 % of them within 1.7x the latency without load.
    assert served / 60 >= 0.9 * workers / service
    assert sorted(latencies)[int(len(latencies) * 0.99)] <= 1.7 * service
    reasons = {change.reason for change in limiter.statistics().limit_history}
    assert {"grow", "latency"} <= reasons


async def test_its_bounds_hold_and_its_cap_is_not_updated_by_hand() -> None:
    limiter = tb.Limiter(max_concurrency=tb.adaptive(initial=2, min=2, max=3, policy="aimd"))
    async with anyio.create_task_group() as tg:
        for _ in range(20):

            async def call() -> None:
                for _ in range(20):
                    async with limiter.acquire():
                        await anyio.sleep(0.01)

            tg.start_soon(call)
    assert limiter.max_concurrency == 3
    with pytest.raises(tb.InvalidArgumentError, match="adaptive"):
        limiter.update(max_concurrency=10)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"min": 0}, tb.InvalidArgumentError),
        ({"min": 8, "max": 4}, tb.InvalidArgumentError),
        ({"initial": 600}, tb.InvalidArgumentError),
        ({"initial": 1.5}, tb.ArgumentTypeError),
        ({"policy": "vegas"}, tb.InvalidArgumentError),
        ({"policy": "aimd", "tolerance": 2.0}, tb.InvalidArgumentError),
        ({"backoff": 1.5}, tb.InvalidArgumentError),
        ({"window": "ten"}, tb.ArgumentTypeError),
        ({"window": 2.5}, tb.InvalidArgumentError),
        ({"tolerance": 0.9}, tb.InvalidArgumentError),
        ({"smoothing": 1.5}, tb.InvalidArgumentError),
        ({"probe_every": 0}, tb.InvalidArgumentError),
    ],
)
async def test_bad_arguments_are_refused(kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        tb.adaptive(**kwargs)  # type: ignore[arg-type]
