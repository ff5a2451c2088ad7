"""The lexical forms of header values: decimal numbers, Go durations, RFC 3339 times and
HTTP-dates, each read by a pure function of the text (and ``now``) that never raises.

What each form means in a header, and what a malformed one does there, is in
``test_families.py``; the tables of values are shared with it.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenbucket._headers import _syntax
from tokenbucket._headers._syntax import (
    decimal,
    go_duration,
    go_duration_resolution,
    seconds_until_http_date,
    seconds_until_rfc3339,
)

from ._support import (
    ANTHROPIC_SDK_357_DATE,
    DURATIONS,
    MALFORMED_DECIMALS,
    MALFORMED_DURATIONS,
    MALFORMED_LIMITS,
    MALFORMED_RETRY_AFTER,
    MALFORMED_RETRY_AFTER_MS,
    MALFORMED_RFC3339,
    RFC3339_RESETS,
    RFC9110_DATE,
    UTC,
)

# Whole minutes, as RFC 3339 offsets are.
OFFSETS = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: timedelta(minutes=minutes)
)


@pytest.mark.parametrize(
    ("text", "number"),
    [("0", 0.0), ("59", 59.0), ("149984", 149984.0), ("0.5", 0.5), ("20.5", 20.5)],
)
def test_decimals(text: str, number: float) -> None:
    assert decimal(text) == number


@pytest.mark.parametrize(
    "text", sorted({*MALFORMED_DECIMALS, *MALFORMED_LIMITS, *MALFORMED_RETRY_AFTER_MS})
)
def test_malformed_decimals(text: str) -> None:
    assert decimal(text) is None


@pytest.mark.parametrize(("text", "seconds"), DURATIONS)
def test_go_durations(text: str, seconds: float) -> None:
    assert go_duration(text) == pytest.approx(seconds, abs=1e-12)


def test_go_durations_are_summed_without_rounding_error() -> None:
    assert go_duration("9ms") == 0.009
    assert go_duration("12ms") == 0.012


@pytest.mark.parametrize("text", MALFORMED_DURATIONS)
def test_malformed_go_durations(text: str) -> None:
    assert go_duration(text) is None


@pytest.mark.parametrize("text", ["\u0661\u0662", "\u00b2", "\uff11", "1\u0660"])
def test_digits_of_other_scripts_are_not_decimal_numbers(text: str) -> None:
    assert text.isdigit()  # what str.isdigit() and float() accept, HTTP does not
    assert decimal(text) is None


def test_each_go_duration_is_read_once_and_what_is_kept_stays_bounded() -> None:
    kept = _syntax._GO_DURATIONS_KEPT
    for i in range(kept + 10):
        assert go_duration(f"{i}ms") == i / 1000
    assert 0 < len(_syntax._GO_DURATIONS) <= kept
    assert _syntax.read_go_duration("59.25s") == (59.25, 0.01)
    assert go_duration_resolution("1m30s") == 1.0
    assert _syntax.read_go_duration("6m0sX") == (None, 0.0)


@pytest.mark.parametrize(("text", "seconds"), RFC3339_RESETS)
def test_rfc3339(text: str, seconds: float) -> None:
    assert seconds_until_rfc3339(text, ANTHROPIC_SDK_357_DATE) == pytest.approx(seconds)


@pytest.mark.parametrize("text", MALFORMED_RFC3339)
def test_malformed_rfc3339(text: str) -> None:
    assert seconds_until_rfc3339(text, ANTHROPIC_SDK_357_DATE) is None


def test_rfc3339_now_in_another_time_zone_is_the_same_instant() -> None:
    berlin = ANTHROPIC_SDK_357_DATE.astimezone(timezone(timedelta(hours=1)))
    assert seconds_until_rfc3339("2024-03-26T20:00:00Z", berlin) == 1.0


@given(
    moment=st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(9998, 1, 1), timezones=st.just(UTC)
    ),
    offset=OFFSETS,
)
def test_rfc3339_round_trip(moment: datetime, offset: timedelta) -> None:
    now = datetime(2000, 1, 1, tzinfo=UTC)
    text = moment.astimezone(timezone(offset)).isoformat()
    expected = max(0.0, (moment - now).total_seconds())
    assert seconds_until_rfc3339(text, now) == pytest.approx(expected, rel=1e-12, abs=1e-6)


@pytest.mark.parametrize(
    ("text", "now", "seconds"),
    [
        # The three forms of one instant, RFC 9110 section 5.6.7.
        ("Sun, 06 Nov 1994 08:49:37 GMT", datetime(1994, 11, 6, 8, 48, 37, tzinfo=UTC), 60.0),
        ("Sunday, 06-Nov-94 08:49:37 GMT", datetime(1994, 11, 6, 8, 48, 37, tzinfo=UTC), 60.0),
        ("Sun Nov  6 08:49:37 1994", datetime(1994, 11, 6, 8, 48, 37, tzinfo=UTC), 60.0),
        (RFC9110_DATE, datetime(1999, 12, 31, 23, 57, 59, tzinfo=UTC), 120.0),
        (RFC9110_DATE, datetime(2024, 1, 1, tzinfo=UTC), 0.0),  # in the past
        # RFC 850's two-digit years: more than 50 years ahead means the last century.
        ("Sunday, 06-Nov-94 08:49:37 GMT", datetime(2043, 11, 6, tzinfo=UTC), 0.0),
        ("Tuesday, 06-Nov-40 08:49:37 GMT", datetime(2040, 11, 6, 8, 48, 37, tzinfo=UTC), 60.0),
    ],
)
def test_http_dates(text: str, now: datetime, seconds: float) -> None:
    assert seconds_until_http_date(text, now) == seconds


@pytest.mark.parametrize("text", MALFORMED_RETRY_AFTER)
def test_malformed_delays_and_http_dates(text: str) -> None:
    now = datetime(1999, 12, 31, tzinfo=UTC)
    assert decimal(text) is None
    assert seconds_until_http_date(text, now) is None
