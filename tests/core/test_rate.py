"""Rates: ``Rate``, ``per_second`` ... ``per_day`` and ``Rate.parse``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

import tokenbucket as tb
from tokenbucket import Rate, per_day, per_hour, per_minute, per_second

if TYPE_CHECKING:
    from collections.abc import Callable


def test_rate_fields() -> None:
    rate = Rate(500, 60)
    assert rate.amount == 500.0
    assert rate.period == 60.0
    assert rate.per_second == 500 / 60
    assert isinstance(rate.amount, float)
    assert isinstance(rate.period, float)


@pytest.mark.parametrize(
    ("make", "period"),
    [(per_second, 1.0), (per_minute, 60.0), (per_hour, 3600.0), (per_day, 86400.0)],
)
@pytest.mark.parametrize("amount", [1, 500, 0.5, 1e6])
def test_per_unit_helpers(make: Callable[[float], Rate], period: float, amount: float) -> None:
    rate = make(amount)
    assert rate == Rate(amount, period)
    assert rate.amount == amount
    assert rate.period == period
    assert rate.per_second == amount / period


def test_rate_is_immutable() -> None:
    rate = per_minute(500)
    with pytest.raises(AttributeError):
        setattr(rate, "amount", 1.0)  # noqa: B010
    with pytest.raises(AttributeError):
        setattr(rate, "period", 1.0)  # noqa: B010
    with pytest.raises(AttributeError):
        setattr(rate, "extra", 1.0)  # noqa: B010
    assert rate == Rate(500, 60)


GOOD = [
    ("500/minute", Rate(500, 60)),
    ("500/min", Rate(500, 60)),
    ("500/m", Rate(500, 60)),
    ("500 / minutes", Rate(500, 60)),
    ("  500/minute  ", Rate(500, 60)),
    ("500/MINUTE", Rate(500, 60)),
    ("10 per second", Rate(10, 1)),
    ("10 PER SECOND", Rate(10, 1)),
    ("10/s", Rate(10, 1)),
    ("10/sec", Rate(10, 1)),
    ("10/seconds", Rate(10, 1)),
    ("100/5s", Rate(100, 5)),
    ("100 / 5 s", Rate(100, 5)),
    ("10 per 2s", Rate(10, 2)),
    ("2/0.5s", Rate(2, 0.5)),
    ("10/1.5 minutes", Rate(10, 90)),
    ("1.5/h", Rate(1.5, 3600)),
    ("3/hour", Rate(3, 3600)),
    ("3/hours", Rate(3, 3600)),
    ("4/d", Rate(4, 86400)),
    ("4/day", Rate(4, 86400)),
    ("4/days", Rate(4, 86400)),
    ("1e3/day", Rate(1000, 86400)),
    ("2.5E2/min", Rate(250, 60)),
    ("7./s", Rate(7, 1)),
]


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_parse_good_strings(text: str, expected: Rate) -> None:
    rate = Rate.parse(text)
    assert rate == expected
    assert rate.amount == expected.amount
    assert rate.period == expected.period


BAD_SYNTAX = [
    "",
    "   ",
    "minute",
    "500",
    "500/",
    "/minute",
    "500 minute",
    "-5/minute",
    "+5/minute",
    "5/-1s",
    "five/minute",
    "5/fortnight",
    "5/ms",
    "5/week",
    "nan/s",
    "inf/s",
    "5//s",
    "5/s/s",
    "5/minute extra",
    "0x10/s",
    "5,0/s",
    ".5/s",
    "5 per",
    "5per second",
    "½/s",
    "\u0665/s",  # ARABIC-INDIC DIGIT FIVE
    "5/\u0455",  # CYRILLIC SMALL LETTER DZE, looks like "s"
]


@pytest.mark.parametrize("text", BAD_SYNTAX)
def test_parse_bad_strings(text: str) -> None:
    with pytest.raises(tb.InvalidArgumentError) as info:
        Rate.parse(text)
    assert info.value.argument == "rate"
    assert "rate" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("text", ["0/minute", "0.0/s", "1e999/s", "5/0s", "5/0.0 minutes"])
def test_parse_unusable_numbers(text: str) -> None:
    """Well-formed strings whose numbers make no rate are rejected too."""
    with pytest.raises(tb.InvalidArgumentError):
        Rate.parse(text)


@pytest.mark.parametrize("value", [500, 8.3, None, b"500/minute", ["500/minute"], Rate(1, 1)])
def test_parse_non_strings(value: object) -> None:
    anything: Any = value
    with pytest.raises(tb.ArgumentTypeError) as info:
        Rate.parse(anything)
    assert isinstance(info.value, TypeError)
    assert info.value.argument == "rate"


def test_equality_and_hash() -> None:
    a = Rate(500, 60)
    b = per_minute(500)
    c = Rate.parse("500/minute")
    assert a == b == c
    assert hash(a) == hash(b) == hash(c)
    assert a != Rate(500, 61)
    assert a != Rate(501, 60)
    assert a != per_hour(500)
    assert len({a, b, c, Rate(1, 1)}) == 2
    assert {a: "x"}[c] == "x"
    assert a != 500 / 60
    assert a != "500/minute"
    assert Rate(1, 1) == Rate(1.0, 1.0)
    assert hash(Rate(1, 1)) == hash(Rate(1.0, 1.0))


@pytest.mark.parametrize(
    ("rate", "text"),
    [
        (Rate(500, 60), "Rate(500, 60)"),
        (Rate(0.5, 1), "Rate(0.5, 1)"),
        (Rate(10, 0.25), "Rate(10, 0.25)"),
        (per_day(2), "Rate(2, 86400)"),
    ],
)
def test_repr(rate: Rate, text: str) -> None:
    assert repr(rate) == text


@pytest.mark.parametrize(
    "rate",
    [
        Rate(500, 60),
        Rate(0.5, 1),
        per_day(2),
        Rate(1234567, 60),
        Rate(1 / 3, 1),
        Rate(10, 0.1),
        Rate(1e-7, 3600),
    ],
    ids=repr,
)
def test_repr_recreates_the_rate(rate: Rate) -> None:
    """``repr`` reads like a constructor call, so it must build the same (equal) rate."""
    rebuilt = eval(repr(rate), {"Rate": Rate})
    assert rebuilt == rate


@pytest.mark.parametrize(
    ("rate", "text"),
    [
        (per_second(10), "10/second"),
        (per_minute(500), "500/minute"),
        (per_hour(5), "5/hour"),
        (per_day(2), "2/day"),
        (Rate(100, 5), "100/5s"),
        (Rate(0.5, 1), "0.5/second"),
        (Rate(3, 0.5), "3/0.5s"),
    ],
)
def test_str_is_parseable(rate: Rate, text: str) -> None:
    assert str(rate) == text
    assert Rate.parse(str(rate)) == rate


def test_token_bucket_accepts_a_rate_string() -> None:
    assert tb.TokenBucket(rate="500/minute", capacity=10).rate == 500 / 60
    assert tb.TokenBucket(rate=per_minute(500), capacity=10).rate == 500 / 60
    assert tb.TokenBucket(rate=Rate(1, 2), capacity=10).rate == 0.5
    assert tb.TokenBucket(rate="10 per 2s", capacity=10).rate == 5.0
    assert tb.TokenBucket(rate=7, capacity=10).rate == 7.0


@pytest.mark.parametrize("rate", [Rate(1e-300, 1e300), Rate(1e300, 1e-300)])
def test_token_bucket_rejects_a_rate_that_is_zero_or_infinite_per_second(rate: Rate) -> None:
    with pytest.raises(tb.InvalidArgumentError) as info:
        tb.TokenBucket(rate=rate, capacity=10)
    assert info.value.argument == "rate"
