"""G6: bad arguments fail fast, name the argument, and consume nothing."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import anyio.lowlevel
import pytest

import tokenbucket as tb

if TYPE_CHECKING:
    from collections.abc import Callable


class Bad(NamedTuple):
    value: object
    error: type[tb.TokenBucketError]


HUGE = 10**400  # does not fit in a float
ENORMOUS = 10**5000  # has more digits than int -> str conversion allows by default

NOT_NUMBERS = [
    pytest.param(Bad(True, tb.ArgumentTypeError), id="True"),
    pytest.param(Bad(False, tb.ArgumentTypeError), id="False"),
    pytest.param(Bad(None, tb.ArgumentTypeError), id="None"),
    pytest.param(Bad("1", tb.ArgumentTypeError), id="str"),
    pytest.param(Bad([1], tb.ArgumentTypeError), id="list"),
    pytest.param(Bad(1 + 0j, tb.ArgumentTypeError), id="complex"),
    pytest.param(Bad(object(), tb.ArgumentTypeError), id="object"),
]
NEGATIVE = [
    pytest.param(Bad(-1, tb.InvalidArgumentError), id="-1"),
    pytest.param(Bad(-0.5, tb.InvalidArgumentError), id="-0.5"),
    pytest.param(Bad(Fraction(-1, 3), tb.InvalidArgumentError), id="-1/3"),
    pytest.param(Bad(-HUGE, tb.InvalidArgumentError), id="-huge"),
    pytest.param(Bad(-math.inf, tb.InvalidArgumentError), id="-inf"),
]
NAN = [pytest.param(Bad(math.nan, tb.InvalidArgumentError), id="nan")]
INFINITE = [
    pytest.param(Bad(math.inf, tb.InvalidArgumentError), id="inf"),
    pytest.param(Bad(HUGE, tb.InvalidArgumentError), id="huge"),
]
ZERO = [
    pytest.param(Bad(0, tb.InvalidArgumentError), id="0"),
    pytest.param(Bad(0.0, tb.InvalidArgumentError), id="0.0"),
    pytest.param(Bad(-0.0, tb.InvalidArgumentError), id="-0.0"),
]
# A positive, finite number is required (capacity, limit, window, Rate's fields, ...).
BAD_POSITIVE = NOT_NUMBERS + NEGATIVE + NAN + INFINITE + ZERO


def check(error: pytest.ExceptionInfo[tb.TokenBucketError], expected: type, name: str) -> None:
    """The error is of the expected class, and names the argument in ``argument`` and text."""
    exc: object = error.value
    builtin = ValueError if issubclass(expected, ValueError) else TypeError
    assert isinstance(exc, expected), repr(exc)
    assert isinstance(exc, builtin), repr(exc)
    assert getattr(exc, "argument", None) == name, repr(exc)
    assert name in str(exc)


def anything(value: object) -> Any:
    """Pass a deliberately ill-typed value past the type checker."""
    return value


# -- constructors ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_POSITIVE)
def test_token_bucket_capacity(bad: Bad) -> None:
    with pytest.raises(tb.TokenBucketError) as info:
        tb.TokenBucket(rate=1, capacity=anything(bad.value))
    check(info, bad.error, "capacity")


# ``rate`` also takes a string, so a string is checked as a rate and is a ValueError.
BAD_RATE = [p for p in BAD_POSITIVE if p.id != "str"] + [
    pytest.param(Bad("1", tb.InvalidArgumentError), id="str-number"),
    pytest.param(Bad("fast", tb.InvalidArgumentError), id="str-word"),
    pytest.param(Bad("", tb.InvalidArgumentError), id="str-empty"),
    pytest.param(Bad("0/minute", tb.InvalidArgumentError), id="str-zero"),
    pytest.param(Bad("1e999/s", tb.InvalidArgumentError), id="str-infinite"),
    pytest.param(Bad("5/0s", tb.InvalidArgumentError), id="str-zero-period"),
    pytest.param(Bad(b"500/minute", tb.ArgumentTypeError), id="bytes"),
    pytest.param(Bad(tb.Rate(1e-300, 1e300), tb.InvalidArgumentError), id="Rate-zero"),
    pytest.param(Bad(tb.Rate(1e300, 1e-300), tb.InvalidArgumentError), id="Rate-infinite"),
]


@pytest.mark.parametrize("bad", BAD_RATE)
def test_token_bucket_rate(bad: Bad) -> None:
    with pytest.raises(tb.TokenBucketError) as info:
        tb.TokenBucket(rate=anything(bad.value), capacity=10)
    check(info, bad.error, "rate")


@pytest.mark.parametrize("bad", BAD_POSITIVE)
def test_sliding_window_limit(bad: Bad) -> None:
    with pytest.raises(tb.TokenBucketError) as info:
        tb.SlidingWindow(limit=anything(bad.value), window=10)
    check(info, bad.error, "limit")


@pytest.mark.parametrize("bad", BAD_POSITIVE)
def test_sliding_window_window(bad: Bad) -> None:
    with pytest.raises(tb.TokenBucketError) as info:
        tb.SlidingWindow(limit=10, window=anything(bad.value))
    check(info, bad.error, "window")


@pytest.mark.parametrize("bad", BAD_POSITIVE)
def test_rate_amount(bad: Bad) -> None:
    with pytest.raises(tb.TokenBucketError) as info:
        tb.Rate(anything(bad.value), 60)
    check(info, bad.error, "amount")


@pytest.mark.parametrize("bad", BAD_POSITIVE)
def test_rate_period(bad: Bad) -> None:
    with pytest.raises(tb.TokenBucketError) as info:
        tb.Rate(10, anything(bad.value))
    check(info, bad.error, "period")


@pytest.mark.parametrize("make", [tb.per_second, tb.per_minute, tb.per_hour, tb.per_day])
@pytest.mark.parametrize("bad", BAD_POSITIVE)
def test_per_unit_amount(make: Callable[[float], tb.Rate], bad: Bad) -> None:
    with pytest.raises(tb.TokenBucketError) as info:
        make(anything(bad.value))
    check(info, bad.error, "amount")


POSITIONAL: dict[str, Callable[[], object]] = {
    "capacity": lambda: tb.TokenBucket(1, 0),
    "rate": lambda: tb.TokenBucket(0, 1),
    "limit": lambda: tb.SlidingWindow(0, 1),
    "window": lambda: tb.SlidingWindow(1, 0),
}


@pytest.mark.parametrize("name", POSITIONAL)
def test_positional_arguments_are_named_too(name: str) -> None:
    with pytest.raises(tb.InvalidArgumentError) as info:
        POSITIONAL[name]()
    assert info.value.argument == name


GOOD_REALS = [Fraction(1, 2), Fraction(7, 3), 3, 2.5]


@pytest.mark.parametrize("value", GOOD_REALS)
def test_constructors_accept_any_real_number(value: float) -> None:
    bucket = tb.TokenBucket(rate=value, capacity=value)
    assert bucket.rate == float(value)
    assert bucket.capacity == float(value)
    assert isinstance(bucket.capacity, float)
    window = tb.SlidingWindow(limit=value, window=value)
    assert window.limit == float(value)
    assert window.window == float(value)
    rate = tb.Rate(value, value)
    assert rate.per_second == 1.0


@pytest.mark.parametrize("value", [HUGE, ENORMOUS], ids=["huge", "enormous"])
def test_a_huge_int_capacity_is_a_clear_error(value: int) -> None:
    """An int too large for a float would be an infinite capacity: a clear, named error."""
    with pytest.raises(tb.InvalidArgumentError) as info:
        tb.TokenBucket(rate=1, capacity=value)
    assert info.value.argument == "capacity"
    assert "capacity" in str(info.value)
    assert "finite" in str(info.value)


# Ints with more digits than ``str(int)`` allows by default (sys.get_int_max_str_digits).
CALLS: dict[str, Callable[[object], object]] = {
    "capacity": lambda v: tb.TokenBucket(rate=1, capacity=anything(v)),
    "rate": lambda v: tb.TokenBucket(rate=anything(v), capacity=1),
    "limit": lambda v: tb.SlidingWindow(limit=anything(v), window=1),
    "window": lambda v: tb.SlidingWindow(limit=1, window=anything(v)),
    "amount": lambda v: tb.Rate(anything(v), 1),
    "period": lambda v: tb.Rate(1, anything(v)),
}


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("value", [ENORMOUS, -ENORMOUS], ids=["enormous", "-enormous"])
def test_an_enormous_int_is_a_named_error(name: str, value: int) -> None:
    with pytest.raises(tb.InvalidArgumentError) as info:
        CALLS[name](value)
    assert info.value.argument == name


# -- acquire / try_acquire ---------------------------------------------------------------------

CAPACITY = 5.0


Single = tb.TokenBucket | tb.SlidingWindow


def make(kind: str) -> Single:
    if kind == "bucket":
        # A slow refill: a test's run time adds at most ~1e-6 units.
        return tb.TokenBucket(rate=1e-6, capacity=CAPACITY)
    return tb.SlidingWindow(limit=CAPACITY, window=1e6)


BAD_AMOUNT = NOT_NUMBERS + NEGATIVE + NAN + INFINITE
# None (wait forever), 0 and every non-negative number, infinity included, are valid.
BAD_TIMEOUT = [p for p in NOT_NUMBERS if p.id != "None"] + NEGATIVE + NAN


@pytest.fixture(params=["bucket", "window"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def limiter(kind: str) -> Single:
    """A limiter bound to the running loop, with 2 of its 5 units taken."""
    limiter = make(kind)
    assert limiter.try_acquire(2)
    assert limiter.statistics().available == pytest.approx(3.0, abs=1e-3)
    return limiter


async def assert_untouched(limiter: Single) -> None:
    """Exactly the 3 units the ``limiter`` fixture left remain; the limiter works normally."""
    stats = limiter.statistics()
    assert stats.available == pytest.approx(3.0, abs=1e-3)
    assert stats.waiters == 0
    assert not limiter.try_acquire(3.5)
    await limiter.acquire(3, timeout=0)
    assert not limiter.try_acquire(0.5)
    with pytest.raises(tb.AcquireTimeoutError):
        await limiter.acquire(0.5, timeout=0)


async def take(limiter: Single, call: str, amount: object) -> None:
    """``amount`` asked for by ``call``: acquire, acquire with a timeout, or try_acquire."""
    if call == "try_acquire":
        limiter.try_acquire(anything(amount))
    elif call == "acquire-with-timeout":
        await limiter.acquire(anything(amount), timeout=1)
    else:
        await limiter.acquire(anything(amount))


@pytest.mark.anyio
@pytest.mark.parametrize("bad", BAD_AMOUNT)
@pytest.mark.parametrize("call", ["acquire", "acquire-with-timeout", "try_acquire"])
async def test_acquire_and_try_acquire_amount(limiter: Single, bad: Bad, call: str) -> None:
    with anyio.fail_after(10), pytest.raises(tb.TokenBucketError) as info:
        await take(limiter, call, bad.value)
    check(info, bad.error, "amount")
    await assert_untouched(limiter)


@pytest.mark.anyio
@pytest.mark.parametrize("amount", [1, 0, 3, 4])
@pytest.mark.parametrize("bad", BAD_TIMEOUT)
async def test_acquire_timeout(limiter: Single, amount: float, bad: Bad) -> None:
    """A bad timeout is reported whether or not the amount is available (or zero)."""
    with anyio.fail_after(10), pytest.raises(tb.TokenBucketError) as info:
        await limiter.acquire(amount, timeout=anything(bad.value))
    check(info, bad.error, "timeout")
    await assert_untouched(limiter)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "amount", [6, 5.000001, math.nextafter(CAPACITY, math.inf), Fraction(11, 2), 1e300]
)
@pytest.mark.parametrize("timeout", [None, 0, 1, math.inf])
async def test_acquire_more_than_the_limit_fails_at_once(
    limiter: Single, amount: float, timeout: float | None
) -> None:
    with anyio.fail_after(10), pytest.raises(tb.AmountExceedsLimitError) as info:
        await limiter.acquire(amount, timeout=timeout)
    assert info.value.argument == "amount"
    assert "amount" in str(info.value)
    assert info.value.amount == float(amount)
    assert info.value.maximum == CAPACITY
    assert isinstance(info.value, tb.InvalidArgumentError)
    assert isinstance(info.value, ValueError)
    await assert_untouched(limiter)


@pytest.mark.anyio
@pytest.mark.parametrize("amount", [6, 5.000001, Fraction(11, 2), 1e300])
async def test_try_acquire_more_than_the_limit_fails_at_once(
    limiter: Single, amount: float
) -> None:
    with pytest.raises(tb.AmountExceedsLimitError) as info:
        limiter.try_acquire(amount)
    assert info.value.argument == "amount"
    await assert_untouched(limiter)


@pytest.mark.anyio
async def test_more_than_the_limit_fails_at_once_even_while_others_wait(limiter: Single) -> None:
    await limiter.acquire(3)
    async with anyio.create_task_group() as tg:
        tg.start_soon(limiter.acquire, 1)
        with anyio.fail_after(10):
            while limiter.statistics().waiters == 0:
                await anyio.lowlevel.checkpoint()
        with anyio.fail_after(10), pytest.raises(tb.AmountExceedsLimitError):
            await limiter.acquire(6)
        with pytest.raises(tb.AmountExceedsLimitError):
            limiter.try_acquire(6)
        assert limiter.statistics().waiters == 1
        tg.cancel_scope.cancel()


# -- valid values ------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("amount", [0, 0.0, Fraction(0)])
async def test_zero_amount_is_accepted_and_takes_nothing(limiter: Single, amount: float) -> None:
    await limiter.acquire(amount)
    await limiter.acquire(amount, timeout=0)
    assert limiter.try_acquire(amount)
    await assert_untouched(limiter)


@pytest.mark.anyio
async def test_zero_amount_is_granted_even_when_empty(limiter: Single) -> None:
    await limiter.acquire(3)
    assert limiter.try_acquire(0)
    with anyio.fail_after(10):
        await limiter.acquire(0, timeout=0)
        await limiter.acquire(0)


@pytest.mark.anyio
@pytest.mark.parametrize("timeout", [0, 0.0, None, math.inf, 1, 0.5, Fraction(1, 10), HUGE])
async def test_valid_timeouts_are_accepted(limiter: Single, timeout: float | None) -> None:
    with anyio.fail_after(10):
        await limiter.acquire(1, timeout=timeout)
        await limiter.acquire(2, timeout=timeout)
    assert limiter.statistics().available == pytest.approx(0.0, abs=1e-3)


@pytest.mark.anyio
@pytest.mark.parametrize("timeout", [0, 0.0])
async def test_zero_timeout_takes_only_what_is_available(limiter: Single, timeout: float) -> None:
    with pytest.raises(tb.AcquireTimeoutError):
        await limiter.acquire(4, timeout=timeout)
    await assert_untouched(limiter)


@pytest.mark.anyio
async def test_fractional_amounts_are_accepted(limiter: Single) -> None:
    await limiter.acquire(anything(Fraction(1, 2)))
    assert limiter.try_acquire(anything(Fraction(1, 2)))
    assert limiter.statistics().available == pytest.approx(2.0, abs=1e-3)
    await limiter.acquire(2)  # the whole remaining amount, exactly
    assert not limiter.try_acquire(0.5)


@pytest.mark.anyio
async def test_the_whole_limit_is_a_valid_amount(kind: str) -> None:
    limiter = make(kind)
    with anyio.fail_after(10):
        await limiter.acquire(CAPACITY, timeout=0)
    assert not limiter.try_acquire(0.5)


@pytest.mark.anyio
async def test_async_with_takes_one_unit(limiter: Single) -> None:
    async with limiter:
        pass
    assert limiter.statistics().available == pytest.approx(2.0, abs=1e-3)


def test_try_acquire_outside_an_event_loop_shares_the_limiter() -> None:
    bucket = tb.TokenBucket(rate=1, capacity=1)
    # Validation comes first, and names the argument.
    with pytest.raises(tb.InvalidArgumentError) as info:
        bucket.try_acquire(-1)
    assert info.value.argument == "amount"
    assert bucket.try_acquire(1)  # from a thread without a loop: the limiter is shared
    assert not bucket.try_acquire(1)


@pytest.mark.anyio
async def test_an_enormous_int_amount_is_a_named_error(limiter: Single) -> None:
    for value in (ENORMOUS, -ENORMOUS):
        with pytest.raises(tb.InvalidArgumentError) as info:
            await limiter.acquire(value)
        assert info.value.argument == "amount"
        with pytest.raises(tb.InvalidArgumentError) as info:
            limiter.try_acquire(value)
        assert info.value.argument == "amount"
    with pytest.raises(tb.InvalidArgumentError) as info:
        await limiter.acquire(1, timeout=-ENORMOUS)
    assert info.value.argument == "timeout"
    await limiter.acquire(1, timeout=ENORMOUS)  # as good as waiting forever
    await limiter.acquire(2)
    assert not limiter.try_acquire(0.5)


# -- Limiter constructor ---------------------------------------------------------------------


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
    exc: object = info.value
    assert isinstance(exc, error)
    assert isinstance(exc, ValueError if issubclass(error, ValueError) else TypeError)
    assert getattr(exc, "argument", None) == argument
    assert says in str(exc)


def test_a_bare_number_as_a_rate_in_limits_is_an_argument_type_error() -> None:
    with pytest.raises(tb.ArgumentTypeError) as info:
        tb.Limiter({"tokens": 5})  # type: ignore[dict-item]
    assert info.value.argument == "limits['tokens']"
