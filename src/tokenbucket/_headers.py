"""Strict parsers for the rate-limit headers LLM providers send back.

Theory of operation
-------------------
:func:`parse_rate_limit_headers` turns one response's headers into a
:class:`ServerFeedback`: what the server says is left per dimension ("requests",
"tokens", "input_tokens", "output_tokens"), when each of those limits is replenished, and
how long to wait before retrying. It is a pure function of the headers and ``now``: it
reads no clock when ``now`` is given, does no I/O and never raises on header content.

Header families understood, highest precedence first:

==========================  ===================================================  ===========
Family                      Headers (names are case-insensitive)                 Reset as
==========================  ===================================================  ===========
Anthropic                   ``anthropic-ratelimit-{requests,tokens,              RFC 3339
                            input-tokens,output-tokens}-{limit,remaining,reset}``
OpenAI                      ``x-ratelimit-{limit,remaining,reset}-               Go duration
                            {requests,tokens}``                                  (``6m0s``)
IETF structured fields      ``RateLimit: "p";r=50;t=30`` and                     seconds
                            ``RateLimit-Policy: "p";q=100;w=60``
IETF draft triple           ``RateLimit-Limit``, ``-Remaining``, ``-Reset``      seconds [*]
De-facto ``X-`` triple      ``X-RateLimit-Limit``, ``-Remaining``, ``-Reset``    seconds [*]
==========================  ===================================================  ===========

[*] A reset above 10**9 cannot be a delay (that is 31 years), so it is read as a Unix
epoch time, as GitHub and many others send it.

The IETF families describe one dimension, ``ietf_dimension`` ("requests" unless told).
When two families describe the same dimension, the one higher in the table wins. When a
``RateLimit`` field lists several policies, the one with the least remaining is reported,
with the quota (``q``) of the ``RateLimit-Policy`` item of the same name as its limit.

``retry-after-ms`` (milliseconds, which OpenAI and Azure OpenAI send on 429s) wins over
``Retry-After`` (RFC 9110: delay-seconds or an HTTP-date).

Strictness: every header is parsed on its own. A value that does not parse (garbage,
a negative number, NaN, an infinity, an RFC 3339 time without an offset, ...) is dropped
and named in one :class:`RateLimitHeaderWarning`; whatever needs it goes too. A
dimension whose ``remaining`` is missing or malformed gives no :class:`ServerLimit`; one
whose limit or reset is malformed still gives one, with ``None`` there. Times in the
past give 0, never a negative delay.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Final, TypeGuard

from ._errors import ArgumentTypeError, InvalidArgumentError

__all__ = [
    "RateLimitHeaderWarning",
    "ServerFeedback",
    "ServerLimit",
    "parse_rate_limit_headers",
]


class RateLimitHeaderWarning(UserWarning):
    """A rate-limit header had a value that does not parse; it was ignored.

    The message names the header and quotes its value. Turn these into errors with
    ``warnings.simplefilter("error", RateLimitHeaderWarning)``, or silence them with
    ``"ignore"``.
    """


@dataclass(frozen=True)
class ServerLimit:
    """What the server said about one of its limits.

    Attributes:
        dimension: What is counted: ``"requests"``, ``"tokens"``, ``"input_tokens"``,
            ``"output_tokens"``, or the ``ietf_dimension`` given for IETF headers.
        remaining: How much the server says is left now (>= 0).
        limit: The server's limit for this dimension, if it sent one.
        reset_after: Seconds from ``now`` until this limit is fully replenished or
            resets (>= 0), if the server sent it.
    """

    dimension: str
    remaining: float
    limit: float | None
    reset_after: float | None


@dataclass(frozen=True)
class ServerFeedback:
    """Everything usable in one response's rate-limit headers.

    Attributes:
        limits: One :class:`ServerLimit` per dimension found, ordered requests, tokens,
            input_tokens, output_tokens, then any other dimension.
        retry_after: Seconds to wait before retrying (>= 0), if the server said so.
    """

    limits: tuple[ServerLimit, ...]
    retry_after: float | None


_DIMENSION_ORDER: Final = {"requests": 0, "tokens": 1, "input_tokens": 2, "output_tokens": 3}
_ANTHROPIC: Final = {
    "requests": "requests",
    "tokens": "tokens",
    "input-tokens": "input_tokens",
    "output-tokens": "output_tokens",
}
_OPENAI: Final = ("requests", "tokens")
# A delta-seconds reset this large is really a Unix time (10**9 seconds is 31 years).
_EPOCH_THRESHOLD: Final = 1e9
_SHOWN_CHARS: Final = 80  # longest value quoted in full in a warning

_NUMBER: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?")
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
_MONTHS: Final = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)
_MONTH: Final = f"({'|'.join(_MONTHS)})"
_TIME: Final = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
# RFC 9110 section 5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms that
# recipients must still accept. Case-sensitive, as the RFC says.
_IMF_FIXDATE: Final = re.compile(f"{_DAY}, ([0-9]{{2}}) {_MONTH} ([0-9]{{4}}) {_TIME} GMT")
_RFC850_DATE: Final = re.compile(f"{_LONG_DAY}, ([0-9]{{2}})-{_MONTH}-([0-9]{{2}}) {_TIME} GMT")
_ASCTIME_DATE: Final = re.compile(f"{_DAY} {_MONTH} ([0-9 ][0-9]) {_TIME} ([0-9]{{4}})")

# RFC 9651 (Structured Field Values) lexemes, enough for Lists of Items.
_SF_NUMBER: Final = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,3})?")
_SF_STRING: Final = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_SF_TOKEN: Final = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_SF_BYTES: Final = re.compile(r":([A-Za-z0-9+/=]*):")
_SF_BOOLEAN: Final = re.compile(r"\?([01])")
_SF_KEY: Final = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_SF_STRING_ESCAPE: Final = re.compile(r"\\(.)")

_BareItem = int | float | str | bytes | bool
_Item = tuple[_BareItem, dict[str, _BareItem]]


def parse_rate_limit_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    *,
    now: datetime | None = None,
    ietf_dimension: str = "requests",
) -> ServerFeedback:
    """Read the rate-limit state a server reported in one response's headers.

    Understands OpenAI's ``x-ratelimit-*-{requests,tokens}``, Anthropic's
    ``anthropic-ratelimit-*``, the IETF ``RateLimit``/``RateLimit-Policy`` fields and
    the older ``RateLimit-*``/``X-RateLimit-*`` triples, ``Retry-After`` and
    ``retry-after-ms`` (see the module docstring for the details). A malformed value is
    ignored with one :class:`RateLimitHeaderWarning` naming the header and the value;
    header content never makes this raise.

    >>> feedback = parse_rate_limit_headers({
    ...     "x-ratelimit-limit-tokens": "150000",
    ...     "x-ratelimit-remaining-tokens": "149984",
    ...     "x-ratelimit-reset-tokens": "6m0s",
    ... })
    >>> feedback.limits
    (ServerLimit(dimension='tokens', remaining=149984.0, limit=150000.0, reset_after=360.0),)
    >>> feedback.retry_after is None
    True

    Args:
        headers: The response headers: a mapping (a ``dict`` with any casing, an
            ``httpx.Headers``, ...) or an iterable of ``(name, value)`` pairs. Names are
            case-insensitive; repeated fields are joined with ``", "`` as HTTP allows.
        now: The time the response arrived, used for absolute times (RFC 3339
            resets, HTTP-dates, Unix-time resets). Must be timezone-aware. Defaults to
            ``datetime.now(timezone.utc)``.
        ietf_dimension: The dimension the generic IETF headers describe.

    Returns:
        A :class:`ServerFeedback`; ``ServerFeedback(limits=(), retry_after=None)`` when
        there are no rate-limit headers.

    Raises:
        ArgumentTypeError: ``headers``, ``now`` or ``ietf_dimension`` has the wrong type.
        InvalidArgumentError: ``now`` is naive or ``ietf_dimension`` is empty.
    """
    moment = _check_now(now)
    dimension = _check_dimension(ietf_dimension)
    reader = _Reader(_fields(headers), moment)
    found: dict[str, ServerLimit] = {}
    for limit in (*reader.anthropic(), *reader.openai(), *reader.ietf(dimension)):
        found.setdefault(limit.dimension, limit)
    retry_after = reader.retry_after()
    for name, (value, reason) in reader.problems.items():
        shown = value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "..."
        warnings.warn(
            f"ignored malformed rate-limit header {name}: {shown!r} ({reason})",
            RateLimitHeaderWarning,
            stacklevel=2,
        )
    limits = sorted(
        found.values(), key=lambda x: (_DIMENSION_ORDER.get(x.dimension, 4), x.dimension)
    )
    return ServerFeedback(limits=tuple(limits), retry_after=retry_after)


def _check_now(now: object) -> datetime:
    """Return ``now`` as an aware datetime (the current UTC time for ``None``)."""
    if now is None:
        return datetime.now(timezone.utc)
    if not isinstance(now, datetime):
        raise ArgumentTypeError("now", f"now must be a datetime or None, not {type(now).__name__}")
    if now.utcoffset() is None:
        raise InvalidArgumentError(
            "now", "now must be timezone-aware, e.g. datetime.now(timezone.utc)"
        )
    return now


def _check_dimension(dimension: object) -> str:
    """Return ``ietf_dimension`` if it is a non-empty string."""
    if not isinstance(dimension, str):
        raise ArgumentTypeError(
            "ietf_dimension",
            f"ietf_dimension must be a str, not {type(dimension).__name__}",
        )
    if not dimension:
        raise InvalidArgumentError("ietf_dimension", "ietf_dimension must not be empty")
    return dimension


def _fields(headers: object) -> dict[str, str]:
    """Map lower-cased header names to values, joining repeated fields with ``", "``."""
    if isinstance(headers, Mapping):
        pairs: Iterable[tuple[object, object]] = headers.items()
    elif isinstance(headers, Iterable) and not isinstance(headers, str | bytes):
        pairs = headers
    else:
        raise ArgumentTypeError(
            "headers",
            "headers must be a mapping or an iterable of (name, value) pairs, "
            f"not {type(headers).__name__}",
        )
    fields: dict[str, list[str]] = {}
    for name, value in pairs:
        if not isinstance(name, str) or not isinstance(value, str):
            raise ArgumentTypeError(
                "headers",
                f"header names and values must be str, got {name!r}: {value!r}",
            )
        # Header names are ASCII tokens; str.lower() would map some non-ASCII letters
        # (the Kelvin sign, for one) onto ASCII ones and forge a name.
        if name.isascii():
            fields.setdefault(name.lower(), []).append(value)
    return {name: ", ".join(values) for name, values in fields.items()}


class _Reader:
    """Parses single header values, recording each malformed one once in ``problems``."""

    __slots__ = ("_fields", "_now", "problems")

    def __init__(self, fields: dict[str, str], now: datetime) -> None:
        self._fields = fields
        self._now = now
        self.problems: dict[str, tuple[str, str]] = {}

    def _get(self, name: str) -> str | None:
        value = self._fields.get(name)
        return None if value is None else value.strip(" \t")

    def _bad(self, name: str, reason: str) -> None:
        self.problems.setdefault(name, (self._fields[name], reason))

    # Single values.

    def number(self, name: str) -> float | None:
        """A non-negative decimal number such as ``59`` or ``0.5``."""
        value = self._get(name)
        if value is None:
            return None
        number = _to_number(value)
        if number is None:
            self._bad(name, "not a non-negative decimal number")
        return number

    def duration(self, name: str) -> float | None:
        """A Go duration (``6m0s``, ``12ms``, ``1h2m3.5s``, ``0``), in seconds."""
        value = self._get(name)
        if value is None:
            return None
        seconds = _to_duration(value)
        if seconds is None:
            self._bad(name, "not a Go duration such as '1s', '6m0s' or '20ms'")
        return seconds

    def rfc3339(self, name: str) -> float | None:
        """An RFC 3339 time, as seconds from ``now`` (0 if it has passed)."""
        value = self._get(name)
        if value is None:
            return None
        seconds = _seconds_until_rfc3339(value, self._now)
        if seconds is None:
            self._bad(name, "not an RFC 3339 date-time with a UTC offset")
        return seconds

    def reset(self, name: str) -> float | None:
        """Delta seconds, or a Unix time if above 10**9, as seconds from ``now``."""
        value = self._get(name)
        if value is None:
            return None
        number = _to_number(value)
        if number is None:
            self._bad(name, "not delta-seconds or a Unix time")
            return None
        if number > _EPOCH_THRESHOLD:
            return max(0.0, number - self._now.timestamp())
        return number

    def leading_number(self, name: str) -> float | None:
        """The first member of a Structured Field List, a number (``10, 100;w=60``)."""
        value = self._get(name)
        if value is None:
            return None
        items = _parse_sf_list(value)
        first = items[0][0] if items else None
        if isinstance(first, bool) or not isinstance(first, int | float) or first < 0:
            self._bad(name, "not a non-negative number, optionally followed by policies")
            return None
        return float(first)

    # Families.

    def _limit(
        self, dimension: str, remaining: float | None, limit: float | None, reset: float | None
    ) -> list[ServerLimit]:
        if remaining is None:
            return []
        return [ServerLimit(dimension, remaining, limit, reset)]

    def anthropic(self) -> list[ServerLimit]:
        """Anthropic's ``anthropic-ratelimit-<dimension>-{limit,remaining,reset}``."""
        found = []
        for part, dimension in _ANTHROPIC.items():
            prefix = f"anthropic-ratelimit-{part}-"
            found += self._limit(
                dimension,
                self.number(prefix + "remaining"),
                self.number(prefix + "limit"),
                self.rfc3339(prefix + "reset"),
            )
        return found

    def openai(self) -> list[ServerLimit]:
        """OpenAI's ``x-ratelimit-{limit,remaining,reset}-<dimension>``."""
        found = []
        for dimension in _OPENAI:
            found += self._limit(
                dimension,
                self.number(f"x-ratelimit-remaining-{dimension}"),
                self.number(f"x-ratelimit-limit-{dimension}"),
                self.duration(f"x-ratelimit-reset-{dimension}"),
            )
        return found

    def ietf(self, dimension: str) -> list[ServerLimit]:
        """The IETF families, best first: structured fields, then the two triples."""
        found = self.structured(dimension)
        for prefix in ("ratelimit-", "x-ratelimit-"):
            found += self._limit(
                dimension,
                self.number(prefix + "remaining"),
                self.leading_number(prefix + "limit"),
                self.reset(prefix + "reset"),
            )
        return found

    def structured(self, dimension: str) -> list[ServerLimit]:
        """``RateLimit: "name";r=<remaining>;t=<reset>`` with ``RateLimit-Policy`` quotas."""
        quotas = self._policy_quotas()
        value = self._get("ratelimit")
        if value is None:
            return []
        items = _parse_sf_list(value)
        policies: list[tuple[float, str, _BareItem | None]] = []
        for name, params in items or ():
            remaining = params.get("r")
            if not isinstance(name, str) or not _is_count(remaining):
                policies = []
                break
            policies.append((float(remaining), name, params.get("t")))
        if not policies:
            self._bad("ratelimit", "not a list of policies with a name and r=<remaining>")
            return []
        # Several policies: the one with the least left is the one that binds.
        remaining, name, reset = min(policies, key=lambda policy: policy[0])
        if reset is not None and not _is_count(reset):
            self._bad("ratelimit", "t must be a non-negative number of seconds")
            reset = None
        limit = quotas.get(name)
        return [ServerLimit(dimension, remaining, limit, None if reset is None else float(reset))]

    def _policy_quotas(self) -> dict[str, float]:
        """Map ``RateLimit-Policy`` names to their quota ``q``."""
        value = self._get("ratelimit-policy")
        if value is None:
            return {}
        items = _parse_sf_list(value)
        quotas: dict[str, float] = {}
        for name, params in items or ():
            quota = params.get("q")
            if not isinstance(name, str) or not _is_count(quota):
                items = None
                break
            quotas.setdefault(name, float(quota))
        if not items:
            self._bad("ratelimit-policy", "not a list of policies with a name and q=<quota>")
            return {}
        return quotas

    def retry_after(self) -> float | None:
        """``retry-after-ms`` if valid, else ``Retry-After``, in seconds."""
        milliseconds = self.number("retry-after-ms")
        seconds = self._retry_after_header()
        return seconds if milliseconds is None else milliseconds / 1000

    def _retry_after_header(self) -> float | None:
        value = self._get("retry-after")
        if value is None:
            return None
        seconds = _to_number(value)
        if seconds is None:
            seconds = _seconds_until_http_date(value, self._now)
        if seconds is None:
            self._bad("retry-after", "not delay-seconds or an HTTP-date")
        return seconds


def _is_count(value: object) -> TypeGuard[int | float]:
    """True for a Structured Field Integer or Decimal >= 0 (booleans are not numbers)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _to_number(text: str) -> float | None:
    """``text`` as a finite non-negative float, or None: digits with an optional fraction."""
    if not _NUMBER.fullmatch(text):
        return None
    number = float(text)
    return number if math.isfinite(number) else None  # a few hundred digits give inf


def _to_duration(text: str) -> float | None:
    """Seconds in a Go duration string (``time.ParseDuration`` syntax, no sign)."""
    if text == "0":
        return 0.0
    if not _DURATION.fullmatch(text):
        return None
    # Summed in nanoseconds, so "9ms" is 0.009 and not 9 * 0.001 = 0.009000000000000001.
    nanoseconds = sum(
        float(amount) * _NANOSECONDS[unit] for amount, unit in _DURATION_PARTS.findall(text)
    )
    seconds = nanoseconds / 1e9
    return seconds if math.isfinite(seconds) else None


def _seconds_until_rfc3339(text: str, now: datetime) -> float | None:
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


def _seconds_until_http_date(text: str, now: datetime) -> float | None:
    """Seconds from ``now`` until an RFC 9110 HTTP-date (0 if past), or None if invalid."""
    if match := _IMF_FIXDATE.fullmatch(text):
        day, month, year, hour, minute, second = match.groups()
    elif match := _ASCTIME_DATE.fullmatch(text):
        month, day, hour, minute, second, year = match.groups()
    elif match := _RFC850_DATE.fullmatch(text):
        day, month, short_year, hour, minute, second = match.groups()
        # RFC 9110: a two-digit year more than 50 years in the future is in the past.
        year = str(2000 + int(short_year))
        if int(year) > now.year + 50:
            year = str(int(year) - 100)
    else:
        return None
    try:
        moment = datetime(
            int(year),
            _MONTHS.index(month) + 1,
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=timezone.utc,
        )
    except ValueError:  # 30 February, second 61, ...
        return None
    return max(0.0, (moment - now).total_seconds())


def _parse_sf_list(text: str) -> list[_Item] | None:
    """Parse a Structured Field List of Items (RFC 9651 section 4.2.1), or None.

    Supports Integers, Decimals, Strings, Tokens, Byte Sequences and Booleans, which is
    all the RateLimit fields use; Inner Lists, Dates and Display Strings fail. Strings
    and Tokens both come back as ``str``.
    """
    items: list[_Item] = []
    position = 0
    end = len(text)
    while position < end:
        parsed = _parse_sf_item(text, position)
        if parsed is None:
            return None
        item, position = parsed
        items.append(item)
        while position < end and text[position] in " \t":
            position += 1
        if position == end:
            return items
        if text[position] != ",":
            return None
        position += 1
        while position < end and text[position] in " \t":
            position += 1
        if position == end:
            return None  # a trailing comma
    return items


def _parse_sf_item(text: str, position: int) -> tuple[_Item, int] | None:
    """Parse an Item and its Parameters at ``position``; return it and the next position."""
    parsed = _parse_sf_bare_item(text, position)
    if parsed is None:
        return None
    value, position = parsed
    params: dict[str, _BareItem] = {}
    while position < len(text) and text[position] == ";":
        position += 1
        while position < len(text) and text[position] == " ":
            position += 1
        key = _SF_KEY.match(text, position)
        if key is None:
            return None
        position = key.end()
        param: _BareItem = True
        if position < len(text) and text[position] == "=":
            parsed = _parse_sf_bare_item(text, position + 1)
            if parsed is None:
                return None
            param, position = parsed
        params[key.group()] = param
    return (value, params), position


def _parse_sf_bare_item(text: str, position: int) -> tuple[_BareItem, int] | None:
    """Parse a Bare Item at ``position``; return it and the next position."""
    if match := _SF_NUMBER.match(text, position):
        number = match.group()
        if "." in number:
            if len(number.lstrip("-").split(".")[0]) > 12:
                return None
            return float(number), match.end()
        return int(number), match.end()
    if match := _SF_STRING.match(text, position):
        return _SF_STRING_ESCAPE.sub(r"\1", match.group(1)), match.end()
    if match := _SF_TOKEN.match(text, position):
        return match.group(), match.end()
    if match := _SF_BYTES.match(text, position):
        try:
            return base64.b64decode(match.group(1), validate=True), match.end()
        except binascii.Error:
            return None
    if match := _SF_BOOLEAN.match(text, position):
        return match.group(1) == "1", match.end()
    return None
