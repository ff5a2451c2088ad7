"""The lexical forms rate-limit header values take: pure functions of one string.

Each function returns a float, or ``None`` when the text is not exactly of its form;
none of them raises on any string. What a value *means* (which header, which
dimension) is for :mod:`._families`.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from typing import Final

__all__ = ["decimal", "go_duration", "seconds_until_http_date", "seconds_until_rfc3339"]

_DECIMAL: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?")

_NANOSECONDS: Final = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek small letter mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART: Final = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)"
_DURATION: Final = re.compile(f"(?:{_DURATION_PART})+")
_DURATION_PARTS: Final = re.compile(_DURATION_PART)

_RFC3339: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)

_DAY: Final = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY: Final = r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTHS: Final = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
_MONTH_NUMBERS: Final = {name: number for number, name in enumerate(_MONTHS.split("|"), 1)}
_MONTH: Final = f"({_MONTHS})"
_TIME: Final = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
# RFC 9110 section 5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms that
# recipients must still accept. Case-sensitive, as the RFC says. Each pattern names the
# order its groups come in.
_HTTP_DATES: Final = (
    (
        re.compile(f"{_DAY}, ([0-9]{{2}}) {_MONTH} ([0-9]{{4}}) {_TIME} GMT"),
        ("day", "month", "year", "hour", "minute", "second"),
    ),
    (
        re.compile(f"{_DAY} {_MONTH} ([0-9 ][0-9]) {_TIME} ([0-9]{{4}})"),
        ("month", "day", "hour", "minute", "second", "year"),
    ),
    (
        re.compile(f"{_LONG_DAY}, ([0-9]{{2}})-{_MONTH}-([0-9]{{2}}) {_TIME} GMT"),
        ("day", "month", "short_year", "hour", "minute", "second"),
    ),
)


def decimal(text: str) -> float | None:
    """``text`` as a finite non-negative float: ASCII digits with an optional fraction.

    >>> decimal("149984"), decimal("0.5"), decimal("-1"), decimal("1e3")
    (149984.0, 0.5, None, None)
    """
    if not (text.isascii() and text.isdigit()) and not _DECIMAL.fullmatch(text):
        return None  # (an integer, the usual form, needs no pattern)
    number = float(text)
    return number if math.isfinite(number) else None  # a few hundred digits give inf


def go_duration(text: str) -> float | None:
    """Seconds in a Go duration (``time.ParseDuration`` syntax without a sign).

    >>> go_duration("6m0s"), go_duration("20ms"), go_duration("0"), go_duration("6m")
    (360.0, 0.02, 0.0, 360.0)
    """
    return read_go_duration(text)[0]


def go_duration_resolution(text: str) -> float:
    """The unit of the last digit of a Go duration, in seconds: how far the written value
    may be from the one it was rounded from (0 for text that is not one).

    >>> go_duration_resolution("6m0s"), go_duration_resolution("59.25s")
    (1.0, 0.01)
    """
    return read_go_duration(text)[1]


# Servers send the same few durations over and over: each is read once. Bounded, since
# the text comes from the network.
_GO_DURATIONS: Final[dict[str, tuple[float | None, float]]] = {}
_GO_DURATIONS_KEPT: Final = 4096


def read_go_duration(text: str) -> tuple[float | None, float]:
    """``(go_duration(text), go_duration_resolution(text))``, read once per text."""
    known = _GO_DURATIONS.get(text)
    if known is None:
        if len(_GO_DURATIONS) >= _GO_DURATIONS_KEPT:
            _GO_DURATIONS.clear()
        known = _GO_DURATIONS[text] = _read_go_duration(text)
    return known


def _read_go_duration(text: str) -> tuple[float | None, float]:
    if text == "0":
        return 0.0, 0.0
    # Summed in nanoseconds, so "9ms" is 0.009 and not 9 * 0.001 = 0.009000000000000001.
    single = _DURATION_PARTS.fullmatch(text)  # the usual form: one number, one unit
    if single is not None:
        amount, unit = single.groups()
        nanoseconds = float(amount) * _NANOSECONDS[unit]
    elif _DURATION.fullmatch(text):
        parts = _DURATION_PARTS.findall(text)
        nanoseconds = sum(float(amount) * _NANOSECONDS[unit] for amount, unit in parts)
        amount, unit = parts[-1]
    else:
        return None, 0.0
    seconds = nanoseconds / 1e9
    _, _, decimals = amount.partition(".")
    resolution = _NANOSECONDS[unit] / 1e9 / 10.0 ** len(decimals)
    return (seconds if math.isfinite(seconds) else None), resolution


def rfc3339_resolution(text: str) -> float:
    """The unit of the last digit of an RFC 3339 date-time, in seconds.

    >>> rfc3339_resolution("2026-01-01T00:00:30Z"), rfc3339_resolution("2026-01-01T00:00:30.5Z")
    (1.0, 0.1)
    """
    match = _RFC3339.fullmatch(text)
    fraction = match.group(7) if match else None
    return 10.0 ** -(len(fraction) - 1) if fraction else 1.0


def seconds_until_rfc3339(text: str, now: datetime) -> float | None:
    """Seconds from ``now`` until an RFC 3339 date-time (0 if past), or None if invalid.

    Works the same on every Python: ``datetime.fromisoformat`` before 3.11 rejects ``Z``
    and fractions that are not 3 or 6 digits long, and from 3.11 accepts ISO 8601 forms
    RFC 3339 does not allow. A leap second (``:60``) counts as the next second.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(group) for group in match.groups()[:6])
    fraction, sign, offset_hours, offset_minutes = match.groups()[6:]
    offset = timedelta()
    if sign is not None:
        if int(offset_minutes) > 59:
            return None
        offset = timedelta(hours=int(offset_hours), minutes=int(offset_minutes))
        offset = -offset if sign == "-" else offset
    leap = second == 60
    try:
        moment = datetime(
            year, month, day, hour, minute, 59 if leap else second, tzinfo=timezone(offset)
        )
    except ValueError:  # day 31 of a short month, hour 24, an offset of 24 hours, ...
        return None
    seconds = (moment - now).total_seconds() + leap + float(f"0{fraction or ''}")
    return max(0.0, seconds)


def seconds_until_http_date(text: str, now: datetime) -> float | None:
    """Seconds from ``now`` until an RFC 9110 HTTP-date (0 if past), or None if invalid."""
    for pattern, names in _HTTP_DATES:
        if match := pattern.fullmatch(text):
            parts = dict(zip(names, match.groups(), strict=True))
            break
    else:
        return None
    if "short_year" in parts:
        # RFC 9110: a two-digit year more than 50 years in the future is in the past.
        year = 2000 + int(parts["short_year"])
        parts["year"] = str(year - 100 if year > now.year + 50 else year)
    try:
        moment = datetime(
            int(parts["year"]),
            _MONTH_NUMBERS[parts["month"]],
            int(parts["day"]),
            int(parts["hour"]),
            int(parts["minute"]),
            int(parts["second"]),
            tzinfo=timezone.utc,
        )
    except ValueError:  # 30 February, second 61, ...
        return None
    return max(0.0, (moment - now).total_seconds())
