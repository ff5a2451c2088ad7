"""Limiter under virtual time (trio and asyncio): every dimension in one await.

What is checked is what a user is promised: each rate conforms over every rolling
period (computed from the grant timestamps), the concurrency cap holds and its slot
comes back on every way out of the block, waiters are served in arrival order, nothing
is held while waiting, failed calls consume nothing, leases settle exactly, and server
feedback pauses or lowers the limiter but never raises it.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from typing import Any

import anyio
import pytest

import tokenbucket as tb

pytestmark = pytest.mark.anyio

# looptime keeps time in whole microseconds; trio's MockClock is exact.
TOL = 1e-5


def now() -> float:
    return anyio.current_time()


def max_in_period(grants: list[tuple[float, float]], period: float) -> float:
    """The largest amount granted in any rolling period ``[s, s + period)``.

    It is enough to look at periods starting at a grant: any other period can be
    shifted right to its first grant without losing anything.
    """
    grants = sorted(grants)
    best = 0.0
    for i, (start, _) in enumerate(grants):
        total = 0.0
        for t, amount in grants[i:]:
            if t >= start + period - 1e-6:
                break
            total += amount
        best = max(best, total)
    return best


def non_decreasing(values: list[float]) -> bool:
    return all(a <= b + 1e-9 for a, b in itertools.pairwise(values))


def argument_of(error: BaseException, kind: type[Exception]) -> str:
    """The argument a tokenbucket argument error names, after checking its classes."""
    assert isinstance(error, (tb.InvalidArgumentError, tb.ArgumentTypeError))
    assert isinstance(error, tb.TokenBucketError)
    assert isinstance(error, ValueError if kind is tb.InvalidArgumentError else TypeError)
    return error.argument


# --- several rates, one await ---------------------------------------------------------


async def test_per_minute_and_per_day_of_one_dimension_both_hold() -> None:
    limiter = tb.Limiter(requests_per_minute=10, requests_per_day=25)
    start = now()
    times: list[float] = []
    for _ in range(60):
        async with limiter.acquire():
            times.append(now() - start)
    day = 86_400.0
    one_day = [0.0] * 10 + [60.0] * 10 + [120.0] * 5
    expected = one_day + [day + t for t in one_day] + [2 * day] * 10
    assert times == pytest.approx(expected, abs=TOL)
    grants = [(t, 1.0) for t in times]
    assert max_in_period(grants, 60) == 10
    assert max_in_period(grants, day) == 25


async def test_token_costs_conform_to_per_minute_and_per_day_at_once() -> None:
    limiter = tb.Limiter(tokens_per_minute=1_000, tokens_per_day=4_000)
    rng = random.Random(7)
    costs = [rng.choice([1, 50, 200, 499, 700, 1_000]) for _ in range(40)]
    gaps = [rng.choice([0.0, 0.0, 1.0, 7.5, 30.0]) for _ in range(40)]
    start = now()
    grants: list[tuple[int, float, float]] = []

    async def call(index: int, tokens: float) -> None:
        async with limiter.acquire(tokens=tokens):
            grants.append((index, now() - start, tokens))

    async with anyio.create_task_group() as tg:
        for index, (tokens, gap) in enumerate(zip(costs, gaps, strict=True)):
            tg.start_soon(call, index, tokens)
            await anyio.wait_all_tasks_blocked()
            await anyio.sleep(gap)
    assert len(grants) == 40
    log = [(t, amount) for _, t, amount in grants]
    assert max_in_period(log, 60) <= 1_000
    assert max_in_period(log, 86_400) <= 4_000
    # FIFO across whole requests: grant times follow arrival order.
    assert non_decreasing([t for _, t, _ in sorted(grants)])
    # The day limit did bind (otherwise this test would check only the minute rate).
    assert max(t for _, t, _ in grants) > 86_400


async def test_requests_tokens_and_concurrency_together_exact_times() -> None:
    # 4 requests/s, 30 tokens/s (3 calls of 10), 2 in flight; each call lasts 0.25 s.
    limiter = tb.Limiter(requests_per_second=4, tokens_per_second=30, max_concurrency=2)
    start = now()
    grants: list[float] = []
    open_now = 0
    peak = 0

    async def call() -> None:
        nonlocal open_now, peak
        async with limiter.acquire(tokens=10):
            open_now += 1
            peak = max(peak, open_now)
            assert limiter.statistics().in_flight <= 2
            grants.append(now() - start)
            await anyio.sleep(0.25)
            open_now -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(call)
    # At k: two calls (the slots bind); at k + 0.25: one more (the tokens bind).
    assert sorted(grants) == pytest.approx([0, 0, 0.25, 1, 1, 1.25, 2, 2], abs=TOL)
    assert peak == 2
    log = [(t, 10.0) for t in grants]
    assert max_in_period(log, 1.0) <= 30
    assert max_in_period([(t, 1.0) for t in grants], 1.0) <= 4
    assert limiter.statistics().in_flight == 0


async def test_concurrency_only_limiter_is_a_fifo_semaphore() -> None:
    limiter = tb.Limiter(max_concurrency=2)
    assert limiter.dimensions == ()
    start = now()
    grants: list[tuple[int, float]] = []

    async def call(index: int) -> None:
        async with limiter.acquire():
            grants.append((index, now() - start))
            await anyio.sleep(1)

    async with anyio.create_task_group() as tg:
        for index in range(5):
            tg.start_soon(call, index)
            await anyio.wait_all_tasks_blocked()
    assert sorted(grants) == [
        (0, 0.0),
        (1, 0.0),
        (2, pytest.approx(1, abs=TOL)),
        (3, pytest.approx(1, abs=TOL)),
        (4, pytest.approx(2, abs=TOL)),
    ]
    with pytest.raises(tb.InvalidArgumentError):
        limiter.acquire(tokens=1)


async def test_slot_released_on_normal_exit_error_and_cancellation() -> None:
    limiter = tb.Limiter(requests_per_second=1_000, max_concurrency=1)
    async with limiter.acquire():
        assert limiter.statistics().in_flight == 1
    assert limiter.statistics().in_flight == 0

    async def fail_inside() -> None:
        async with limiter.acquire():
            assert limiter.statistics().in_flight == 1
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await fail_inside()
    assert limiter.statistics().in_flight == 0

    with anyio.CancelScope() as scope:
        async with limiter.acquire():
            assert limiter.statistics().in_flight == 1
            scope.cancel()
            await anyio.sleep(10)
    assert scope.cancelled_caught
    assert limiter.statistics().in_flight == 0

    with anyio.move_on_after(3) as timer:
        async with limiter.acquire():
            await anyio.sleep(10)
    assert timer.cancelled_caught
    assert limiter.statistics().in_flight == 0

    # After all that the one slot is free: granted at once.
    start = now()
    async with limiter.acquire():
        assert now() == start


async def test_a_cancelled_holder_hands_its_slot_to_the_waiter_at_once() -> None:
    limiter = tb.Limiter(requests_per_second=1_000, max_concurrency=1)
    start = now()
    granted: list[float] = []
    holder = anyio.CancelScope()

    async def hold() -> None:
        with holder:
            async with limiter.acquire():
                await anyio.sleep(math.inf)

    async def wait() -> None:
        async with limiter.acquire():
            granted.append(now() - start)

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(wait)
        await anyio.sleep(3)
        assert granted == []
        snapshot = limiter.statistics()
        assert (snapshot.in_flight, snapshot.waiters) == (1, 1)
        holder.cancel()
    assert granted == [pytest.approx(3, abs=TOL)]
    assert limiter.statistics().in_flight == 0


async def test_next_wakeup_is_none_while_the_head_waits_for_a_slot() -> None:
    limiter = tb.Limiter(requests_per_second=1_000, max_concurrency=1)
    async with limiter.acquire(), anyio.create_task_group() as tg:
        tg.start_soon(_enter, limiter.acquire())
        await anyio.wait_all_tasks_blocked()
        snapshot = limiter.statistics()
        assert snapshot.waiters == 1
        tg.cancel_scope.cancel()
    assert snapshot.next_wakeup is None


async def test_fifo_large_token_request_not_overtaken_by_later_small_ones() -> None:
    limiter = tb.Limiter(requests_per_second=1_000, tokens_per_second=10)
    async with limiter.acquire(tokens=10):
        pass
    start = now()
    times: dict[str, float] = {}

    async def take(name: str, tokens: float) -> None:
        async with limiter.acquire(tokens=tokens):
            times[name] = now() - start

    async with anyio.create_task_group() as tg:
        tg.start_soon(take, "small-0", 1)
        await anyio.sleep(0.01)
        tg.start_soon(take, "big", 10)
        await anyio.sleep(0.01)
        for i in range(1, 20):
            tg.start_soon(take, f"small-{i}", 1)
            await anyio.sleep(0.01)
    arrival = ["small-0", "big"] + [f"small-{i}" for i in range(1, 20)]
    assert non_decreasing([times[name] for name in arrival])
    # small-0 at 1 s; the big one needs the whole window: 2 s (room was 9 at 1 s).
    assert times["small-0"] == pytest.approx(1, abs=TOL)
    assert times["big"] == pytest.approx(2, abs=TOL)
    assert min(times[f"small-{i}"] for i in range(1, 20)) == pytest.approx(3, abs=TOL)


async def test_a_waiter_blocked_on_tokens_holds_no_request_and_no_slot() -> None:
    limiter = tb.Limiter(requests_per_second=2, tokens_per_second=10, max_concurrency=1)
    async with limiter.acquire(tokens=10):
        pass
    start = now()
    outcome: list[str] = []

    async def blocked() -> None:
        try:
            async with limiter.acquire(tokens=5, timeout=0.5):
                outcome.append("granted")  # pragma: no cover - must not happen
        except tb.AcquireTimeoutError:
            outcome.append(f"timeout at {now() - start:.6f}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(blocked)
        await anyio.wait_all_tasks_blocked()
        snapshot = limiter.statistics()
        assert snapshot.waiters == 1
        assert snapshot.in_flight == 0
        assert snapshot.available["requests"] == 1
        assert snapshot.available["tokens"] == 0
    assert outcome == ["timeout at 0.500000"]
    # The request and the slot it did not hold are there for the next caller at once.
    async with limiter.acquire():
        assert now() - start == pytest.approx(0.5, abs=TOL)
        assert limiter.statistics().available["requests"] == 0


async def test_a_waiter_blocked_on_the_slot_holds_no_tokens() -> None:
    limiter = tb.Limiter(requests_per_second=100, tokens_per_second=10, max_concurrency=1)
    release = anyio.Event()
    start = now()
    times: list[float] = []

    async def hold() -> None:
        async with limiter.acquire(tokens=1):
            await release.wait()

    async def wait_for_slot() -> None:
        with pytest.raises(tb.AcquireTimeoutError):
            async with limiter.acquire(tokens=5, timeout=0.5):
                pass  # pragma: no cover - must not happen

    async def big_after() -> None:
        async with limiter.acquire(tokens=9):
            times.append(now() - start)

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(wait_for_slot)
        await anyio.wait_all_tasks_blocked()
        assert limiter.statistics().available["tokens"] == 9
        await anyio.sleep(0.75)
        tg.start_soon(big_after)
        await anyio.wait_all_tasks_blocked()
        release.set()
    # The timed-out waiter took none of the 9 tokens left.
    assert times == [pytest.approx(0.75, abs=TOL)]


# --- fail fast ------------------------------------------------------------------------


async def test_amount_above_a_limit_raises_at_once_and_takes_nothing() -> None:
    limiter = tb.Limiter(
        tokens_per_minute=1_000, tokens_per_day=500, requests_per_minute=3, max_concurrency=1
    )
    with pytest.raises(tb.AmountExceedsLimitError) as info:
        limiter.acquire(tokens=501)
    assert isinstance(info.value, ValueError)
    assert "tokens" in str(info.value)
    with pytest.raises(tb.AmountExceedsLimitError):
        limiter.acquire(requests=4)
    async with anyio.create_task_group() as tg:
        # Also at once while others wait: it does not queue behind them.
        async with limiter.acquire(tokens=500, requests=3):
            tg.start_soon(_enter, limiter.acquire(tokens=1))
            await anyio.wait_all_tasks_blocked()
            start = now()
            with pytest.raises(tb.AmountExceedsLimitError):
                async with limiter.acquire(tokens=10_000):
                    pass  # pragma: no cover
            assert now() == start
        tg.cancel_scope.cancel()
    fresh = tb.Limiter(tokens_per_minute=1_000, tokens_per_day=500, requests_per_minute=3)
    with pytest.raises(tb.AmountExceedsLimitError):
        fresh.acquire(tokens=501)
    snapshot = fresh.statistics()
    assert dict(snapshot.available) == {"tokens": 500, "requests": 3}
    start = now()
    async with fresh.acquire(tokens=500):
        assert now() == start


async def _enter(context: tb.LeaseContext) -> None:
    async with context:
        pass


@pytest.mark.parametrize("kind", ["window", "bucket"])
async def test_allow_debt_lets_a_big_request_through_and_later_callers_wait_it_off(
    kind: str,
) -> None:
    rate = tb.per_minute(100) if kind == "window" else tb.per_minute(100, burst=100)
    limiter = tb.Limiter({"tokens": rate}, allow_debt=True)
    start = now()
    async with limiter.acquire(tokens=250) as lease:
        assert now() == start
        assert lease.reserved == {"tokens": 250}
    assert limiter.statistics().available["tokens"] == pytest.approx(-150, abs=TOL)
    async with limiter.acquire(tokens=1):
        # Window: the 250 leave the window after 60 s. Bucket: 151 tokens to refill at
        # 100/60 per second.
        expected = 60.0 if kind == "window" else 151 * 0.6
        assert now() - start == pytest.approx(expected, abs=TOL)


async def test_allow_debt_waits_for_a_full_meter_first() -> None:
    limiter = tb.Limiter(tokens_per_minute=100, allow_debt=True)
    start = now()
    async with limiter.acquire(tokens=10):
        pass
    await anyio.sleep(30)
    async with limiter.acquire(tokens=250):
        assert now() - start == pytest.approx(60, abs=TOL)  # when the 10 have left
    async with limiter.acquire(tokens=1):
        assert now() - start == pytest.approx(120, abs=TOL)


BAD_AMOUNTS: list[tuple[object, type[Exception]]] = [
    (-1, tb.InvalidArgumentError),
    (math.nan, tb.InvalidArgumentError),
    (math.inf, tb.InvalidArgumentError),
    (-math.inf, tb.InvalidArgumentError),
    (True, tb.ArgumentTypeError),
    (None, tb.ArgumentTypeError),
    ("5", tb.ArgumentTypeError),
    (1j, tb.ArgumentTypeError),
]


@pytest.mark.parametrize(("amount", "error"), BAD_AMOUNTS)
async def test_bad_amounts_name_the_dimension_and_take_nothing(
    amount: object, error: type[Exception]
) -> None:
    limiter = tb.Limiter(requests_per_second=1, tokens_per_second=10, max_concurrency=1)
    amounts: dict[str, Any] = {"tokens": amount}
    with pytest.raises(error) as info:
        limiter.acquire(**amounts)
    assert argument_of(info.value, error) == "tokens"
    assert "tokens" in str(info.value)
    with pytest.raises(error) as other:
        limiter.acquire(requests=amount, tokens=1)  # type: ignore[arg-type]
    assert argument_of(other.value, error) == "requests"
    start = now()
    async with limiter.acquire(tokens=10):
        assert now() == start
        assert limiter.statistics().in_flight == 1


async def test_unknown_dimension_and_bad_timeouts_raise_and_take_nothing() -> None:
    limiter = tb.Limiter(requests_per_second=1, tokens_per_second=10)
    with pytest.raises(tb.InvalidArgumentError) as info:
        limiter.acquire(apples=1)
    assert info.value.argument == "apples"
    assert "apples" in str(info.value)
    assert "tokens" in str(info.value)  # lists what there is
    bad_timeouts: list[tuple[object, type[Exception]]] = [
        (-1, tb.InvalidArgumentError),
        (math.nan, tb.InvalidArgumentError),
        ("1", tb.ArgumentTypeError),
        (True, tb.ArgumentTypeError),
    ]
    for timeout, error in bad_timeouts:
        with pytest.raises(error) as bad:
            limiter.acquire(tokens=1, timeout=timeout)  # type: ignore[arg-type]
        assert argument_of(bad.value, error) == "timeout"
    start = now()
    async with limiter.acquire(tokens=10, timeout=math.inf):
        assert now() == start


@pytest.mark.parametrize(
    ("kwargs", "error", "argument", "says"),
    [
        ({"tokens_per_fortnight": 5}, tb.InvalidArgumentError, "tokens_per_fortnight", "unit"),
        ({"tokens_per_minute": -1}, tb.InvalidArgumentError, "tokens_per_minute", ">"),
        ({"tokens_per_minute": 0}, tb.InvalidArgumentError, "tokens_per_minute", ">"),
        ({"tokens_per_minute": math.nan}, tb.InvalidArgumentError, "tokens_per_minute", "NaN"),
        ({"tokens_per_minute": math.inf}, tb.InvalidArgumentError, "tokens_per_minute", "finite"),
        ({"tokens_per_minute": True}, tb.ArgumentTypeError, "tokens_per_minute", "bool"),
        ({"tokens_per_minute": "5"}, tb.ArgumentTypeError, "tokens_per_minute", "str"),
        (
            {"tokens_per_minute": tb.per_second(5)},
            tb.InvalidArgumentError,
            "tokens_per_minute",
            "period",
        ),
        ({"max_concurrency": 0}, tb.InvalidArgumentError, "max_concurrency", ">= 1"),
        ({"max_concurrency": -2}, tb.InvalidArgumentError, "max_concurrency", ">= 1"),
        ({"max_concurrency": True}, tb.ArgumentTypeError, "max_concurrency", "bool"),
        ({"max_concurrency": 1.5}, tb.ArgumentTypeError, "max_concurrency", "float"),
        ({"max_concurrency": "4"}, tb.ArgumentTypeError, "max_concurrency", "str"),
        ({"allow_debt": 1, "tokens_per_minute": 5}, tb.ArgumentTypeError, "allow_debt", "bool"),
        ({}, tb.InvalidArgumentError, "limits", "at least one rate"),
        ({"limits": {"tokens": [5]}}, tb.ArgumentTypeError, "limits['tokens']", "int"),
        (
            {"limits": {"tokens": "5 a fortnight"}},
            tb.InvalidArgumentError,
            "limits['tokens']",
            "5 a fortnight",
        ),
        ({"limits": {"tokens": []}}, tb.InvalidArgumentError, "limits", "'tokens'"),
        ({"limits": {"my tokens": "5/minute"}}, tb.InvalidArgumentError, "limits", "my tokens"),
    ],
)
def test_bad_constructor_arguments_name_the_argument(
    kwargs: dict[str, Any], error: type[Exception], argument: str, says: str
) -> None:
    with pytest.raises(error) as info:
        tb.Limiter(**kwargs)
    assert argument_of(info.value, error) == argument
    assert says in str(info.value)


def test_a_bare_number_as_a_rate_in_limits_is_an_argument_type_error() -> None:
    with pytest.raises(tb.ArgumentTypeError) as info:
        tb.Limiter({"tokens": 5})  # type: ignore[dict-item]
    assert info.value.argument == "limits['tokens']"


def test_rates_given_every_way_are_read_the_same() -> None:
    limiter = tb.Limiter(
        {"tokens": ["800000/minute", tb.per_day(50_000_000)], "input_tokens": "10/s"},
        requests_per_minute=tb.per_minute(500),
        max_concurrency=8,
        name="gpt",
    )
    assert limiter.dimensions == ("tokens", "input_tokens", "requests")
    assert limiter.rates == {
        "tokens": (tb.per_minute(800_000), tb.per_day(50_000_000)),
        "input_tokens": (tb.per_second(10),),
        "requests": (tb.per_minute(500),),
    }
    assert limiter.max_concurrency == 8
    assert "gpt" in repr(limiter)


async def test_timeout_raises_a_timeout_error_at_the_deadline_and_takes_nothing() -> None:
    limiter = tb.Limiter(requests_per_second=5, tokens_per_second=10, max_concurrency=3)
    async with limiter.acquire(tokens=8):
        pass
    start = now()
    events: list[tuple[str, float]] = []
    errors: list[BaseException] = []

    async def head() -> None:
        try:
            async with limiter.acquire(tokens=5, timeout=0.3):
                events.append(("head granted", now() - start))  # pragma: no cover
        except tb.AcquireTimeoutError as exc:
            errors.append(exc)
            events.append(("head timed out", now() - start))

    async def second() -> None:
        async with limiter.acquire(tokens=1):
            events.append(("second granted", now() - start))

    async with anyio.create_task_group() as tg:
        tg.start_soon(head)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(second)
    assert isinstance(errors[0], TimeoutError)
    assert isinstance(errors[0], tb.TokenBucketError)
    # The head left at 0.3 s; the second's token was there all along: granted then.
    assert dict(events) == {
        "head timed out": pytest.approx(0.3, abs=TOL),
        "second granted": pytest.approx(0.3, abs=TOL),
    }
    snapshot = limiter.statistics()
    assert dict(snapshot.available) == {"requests": 3, "tokens": 1}
    assert (snapshot.in_flight, snapshot.waiters) == (0, 0)
    # timeout=0: only what is there right now, else a timeout at once.
    with pytest.raises(tb.AcquireTimeoutError):
        async with limiter.acquire(tokens=2, timeout=0):
            pass  # pragma: no cover
    assert now() - start == pytest.approx(0.3, abs=TOL)
    async with limiter.acquire(tokens=1, timeout=0):
        pass
    assert limiter.statistics().available["tokens"] == 0


# --- leases and settle ----------------------------------------------------------------


def token_limiter(kind: str, **options: Any) -> tb.Limiter:
    rate = tb.per_minute(100) if kind == "window" else tb.per_minute(100, burst=100)
    return tb.Limiter({"tokens": rate}, requests_per_minute=1_000, **options)


KINDS = pytest.mark.parametrize("kind", ["window", "bucket"])


@KINDS
async def test_settle_less_refunds_and_wakes_a_waiter_at_once(kind: str) -> None:
    limiter = token_limiter(kind)
    start = now()
    granted: list[float] = []

    async def waiter() -> None:
        async with limiter.acquire(tokens=50):
            granted.append(now() - start)

    async with limiter.acquire(tokens=100) as lease, anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(6)
        assert granted == []
        lease.settle(tokens=30)
        await anyio.wait_all_tasks_blocked()
        assert granted == [pytest.approx(6, abs=TOL)]
    left = limiter.statistics().available["tokens"]
    # Window: 100 - 30 - 50. Bucket: 0 + 10 refilled + 70 refunded - 50.
    assert left == pytest.approx(20 if kind == "window" else 30, abs=TOL)


@KINDS
async def test_settle_more_is_debt_that_later_callers_wait_off(kind: str) -> None:
    limiter = token_limiter(kind)
    start = now()
    async with limiter.acquire(tokens=10) as lease:
        await anyio.sleep(10)
        lease.settle(tokens=150)
    assert limiter.statistics().available["tokens"] == pytest.approx(
        -50 if kind == "window" else -40, abs=TOL
    )
    async with limiter.acquire(tokens=1):
        # Window: the 140 overrun, charged at 10 s, leaves the window at 70 s.
        # Bucket: full (100) at 10 s, -40 after the overrun; 41 to refill at 100/60.
        expected = 70.0 if kind == "window" else 10 + 41 * 0.6
        assert now() - start == pytest.approx(expected, abs=TOL)


async def test_settle_only_the_dimensions_named_and_report_reserved() -> None:
    limiter = tb.Limiter(requests_per_minute=10, tokens_per_minute=100)
    async with limiter.acquire(tokens=40) as lease:
        assert lease.reserved == {"requests": 1, "tokens": 40}
        assert lease.limiter is limiter
        lease.settle(tokens=25)
        assert "settled" in repr(lease)
    assert dict(limiter.statistics().available) == {"requests": 9, "tokens": 75}
    async with limiter.acquire(tokens=1) as lease:
        lease.settle(requests=0, tokens=0)
    assert dict(limiter.statistics().available) == {"requests": 9, "tokens": 75}


async def test_settle_twice_after_the_block_or_with_bad_input_raises() -> None:
    limiter = tb.Limiter(requests_per_minute=10, tokens_per_minute=100)
    async with limiter.acquire(tokens=40) as lease:
        with pytest.raises(tb.InvalidArgumentError) as unknown:
            lease.settle(apples=3)
        assert unknown.value.argument == "apples"
        # A failed settle changes nothing, not even the valid part of it.
        with pytest.raises(tb.InvalidArgumentError):
            lease.settle(tokens=5, apples=3)
        with pytest.raises(tb.InvalidArgumentError):
            lease.settle(tokens=-5)
        with pytest.raises(tb.ArgumentTypeError):
            lease.settle(tokens="5")  # type: ignore[arg-type]
        with pytest.raises(tb.InvalidArgumentError):
            lease.settle(tokens=math.nan)
        assert limiter.statistics().available["tokens"] == 60
        lease.settle(tokens=10)
        assert limiter.statistics().available["tokens"] == 90
        with pytest.raises(tb.LeaseError):
            lease.settle(tokens=5)
        assert limiter.statistics().available["tokens"] == 90
    with pytest.raises(tb.LeaseError):
        lease.settle(tokens=5)
    async with limiter.acquire(tokens=10) as late:
        pass
    with pytest.raises(tb.LeaseError) as after:
        late.settle(tokens=0)
    assert isinstance(after.value, RuntimeError)
    assert limiter.statistics().available["tokens"] == 80
    context = limiter.acquire(tokens=1)
    async with context:
        pass
    with pytest.raises(tb.LeaseError):
        async with context:
            pass  # pragma: no cover


async def test_cancelled_at_the_grant_keeps_the_lease_or_gives_it_back() -> None:
    """Cancel a waiter in the very instant it is granted, before it runs, many times:
    either it took its lease (and then gave the slot back on the way out) or it took
    nothing; no capacity and no slot is lost either way."""
    for _ in range(30):
        limiter = tb.Limiter(tokens_per_second=4, max_concurrency=1)
        start = now()
        scope = anyio.CancelScope()
        outcome: list[str] = []
        follower: list[float] = []

        async def hold(limiter: tb.Limiter = limiter) -> None:
            async with limiter.acquire(tokens=2):
                await anyio.sleep(1)

        async def victim(
            limiter: tb.Limiter = limiter,
            scope: anyio.CancelScope = scope,
            outcome: list[str] = outcome,
        ) -> None:
            with scope:
                async with limiter.acquire(tokens=1):
                    outcome.append("granted")  # no checkpoint between grant and this
                    await anyio.sleep(5)
            outcome.append("left")

        async def follow(
            limiter: tb.Limiter = limiter, follower: list[float] = follower, start: float = start
        ) -> None:
            async with limiter.acquire(tokens=1):
                follower.append(now() - start)

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(victim)
            await anyio.wait_all_tasks_blocked()
            await anyio.sleep(1)  # the holder's exit grants the victim in this instant
            scope.cancel()
            tg.start_soon(follow)
        assert outcome[-1] == "left"
        took = outcome[0] == "granted"
        # The follower never waits for the victim's slot or tokens beyond this instant.
        assert follower == [pytest.approx(1, abs=TOL)]
        snapshot = limiter.statistics()
        assert (snapshot.in_flight, snapshot.waiters) == (0, 0)
        # The holder's 2 tokens left the window at 1 s; the follower took 1.
        assert snapshot.available["tokens"] == 4 - 1 - took


def test_asyncio_granted_then_cancelled_before_running_gives_the_grant_back() -> None:
    """asyncio: the head leaves, which grants `second`; `second` is cancelled before it
    runs; its tokens and its slot go to `third` in the same instant."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        limiter = tb.Limiter(tokens_per_second=4, max_concurrency=2)
        release = asyncio.Event()
        times: list[float] = []
        in_flight: list[int] = []

        async def take(tokens: float) -> None:
            async with limiter.acquire(tokens=tokens):
                times.append(loop.time() - start)
                in_flight.append(limiter.statistics().in_flight)
                await release.wait()

        start = loop.time()
        holder = asyncio.create_task(take(3))  # 1 token and 1 slot left
        await asyncio.sleep(0)
        head = asyncio.create_task(take(4))  # due at 1 s
        await asyncio.sleep(0)
        second = asyncio.create_task(take(1))
        await asyncio.sleep(0)
        third = asyncio.create_task(take(1))
        await asyncio.sleep(0.5)
        head.cancel()
        loop.call_soon(second.cancel)
        with pytest.raises(asyncio.CancelledError):
            await second
        with pytest.raises(asyncio.CancelledError):
            await head
        while len(times) < 2:
            await asyncio.sleep(0)
        # Without the hand-back, `third` would wait for tokens until 1 s, and forever
        # for the slot.
        assert times == [0.0, pytest.approx(0.5, abs=TOL)]
        assert in_flight == [1, 2]
        release.set()
        await asyncio.gather(holder, third)
        snapshot = limiter.statistics()
        assert (snapshot.in_flight, snapshot.waiters) == (0, 0)
        assert snapshot.available["tokens"] == 0

    import looptime

    loop = looptime.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 100))
    finally:
        loop.close()


async def test_cancelling_the_head_and_the_next_together_loses_nothing() -> None:
    for _ in range(20):
        limiter = tb.Limiter(tokens_per_second=4, max_concurrency=2)
        start = now()
        scopes = [anyio.CancelScope(), anyio.CancelScope()]
        times: list[float] = []

        async def take(
            tokens: float,
            scope: anyio.CancelScope | None = None,
            limiter: tb.Limiter = limiter,
            times: list[float] = times,
            start: float = start,
        ) -> None:
            with scope or anyio.CancelScope():
                async with limiter.acquire(tokens=tokens):
                    times.append(now() - start)
                    await anyio.sleep(10)

        async with anyio.create_task_group() as tg:
            tg.start_soon(take, 3)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(take, 4, scopes[0])
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(take, 1, scopes[1])
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(take, 1)
            await anyio.wait_all_tasks_blocked()
            await anyio.sleep(0.5)
            for scope in scopes:
                scope.cancel()
        assert times[0] == 0.0
        # Whether the second was granted before its cancellation or not, the last
        # one gets the token it needs at 0.5 s.
        assert times[-1] == pytest.approx(0.5, abs=TOL)
        assert len(times) in (2, 3)
        snapshot = limiter.statistics()
        assert (snapshot.in_flight, snapshot.waiters) == (0, 0)


# --- server feedback ------------------------------------------------------------------


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
        tg.start_soon(hold)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
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


async def test_feedback_after_traffic_holds_only_until_the_reset() -> None:
    limiter = tb.Limiter(requests_per_minute=100, tokens_per_minute=1_000)
    start = now()
    async with limiter.acquire(tokens=100) as lease:
        lease.feedback({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "2s"})
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
    limiter = tb.Limiter(requests_per_minute=100, tokens_per_minute=1_000)
    start = now()
    async with limiter.acquire(tokens=100) as lease:
        lease.feedback({"x-ratelimit-remaining-tokens": "50", "x-ratelimit-reset-tokens": "2s"})
    assert limiter.statistics().available["tokens"] == 50
    async with limiter.acquire(tokens=50):
        assert now() == start
    async with limiter.acquire(tokens=1):
        assert now() - start >= 2 - TOL


async def test_feedback_never_raises_what_the_limiter_grants() -> None:
    limiter = tb.Limiter(requests_per_minute=100, tokens_per_minute=1_000)
    start = now()
    async with limiter.acquire(tokens=900):
        pass
    before = dict(limiter.statistics().available)
    limiter.feedback(
        {
            "x-ratelimit-remaining-tokens": "1000",
            "x-ratelimit-reset-tokens": "1s",
            "x-ratelimit-remaining-requests": "5000",
            "anthropic-ratelimit-tokens-remaining": "1000000",
        }
    )
    assert dict(limiter.statistics().available) == before
    async with limiter.acquire(tokens=200):
        assert now() - start == pytest.approx(60, abs=TOL)


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


async def test_malformed_headers_only_warn_and_change_nothing() -> None:
    limiter = tb.Limiter(requests_per_minute=100, tokens_per_minute=1_000)
    start = now()
    with pytest.warns(tb.RateLimitHeaderWarning) as record:
        info = limiter.feedback(
            {
                "x-ratelimit-remaining-tokens": "lots",
                "x-ratelimit-reset-tokens": "soon",
                "retry-after": "whenever",
            }
        )
    messages = " ".join(str(warning.message) for warning in record)
    for name in ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens", "retry-after"):
        assert name in messages
    assert (info.limits, info.retry_after) == ((), None)
    snapshot = limiter.statistics()
    assert dict(snapshot.available) == {"requests": 100, "tokens": 1_000}
    assert snapshot.paused_until is None
    async with limiter.acquire(tokens=1_000):
        assert now() == start


async def test_statistics_and_repr_show_the_state() -> None:
    limiter = tb.Limiter(requests_per_second=1, tokens_per_second=10, max_concurrency=4)
    start = now()
    async with limiter.acquire(tokens=10), anyio.create_task_group() as tg:
        tg.start_soon(_enter, limiter.acquire(tokens=5))
        await anyio.wait_all_tasks_blocked()
        snapshot = limiter.statistics()
        assert snapshot.waiters == 1
        assert snapshot.in_flight == 1
        assert snapshot.max_concurrency == 4
        assert snapshot.next_wakeup == pytest.approx(start + 1, abs=TOL)
        assert "waiters=1" in repr(limiter)
        assert "max_concurrency 4" in repr(limiter)
    snapshot = limiter.statistics()
    assert (snapshot.waiters, snapshot.in_flight, snapshot.next_wakeup) == (0, 0, None)
