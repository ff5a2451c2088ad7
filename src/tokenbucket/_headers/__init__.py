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

Layout: :mod:`._syntax` reads the lexical forms (decimal numbers, Go durations, RFC 3339
and HTTP dates), :mod:`._sf` the RFC 9651 structured fields, and :mod:`._families` knows
which headers each family sends and which form each value takes. This module checks the
arguments, keeps the best family per dimension and issues the warnings.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from .._errors import ArgumentTypeError, InvalidArgumentError
from . import _families, _syntax
from ._families import NAMES, Reader

__all__ = [
    "OPENAI_FIELDS",
    "Fields",
    "RateLimitHeaderWarning",
    "ServerFeedback",
    "ServerLimit",
    "parse_rate_limit_headers",
    "read_openai",
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
        refill_rate: For OpenAI's and Anthropic's headers, whose reset is the time until
            the limit is *full* again (capacity comes back gradually, not all at the
            reset): the rate in units per second at which it comes back, as the lowest
            value the headers allow given their rounding; ``None`` for the other
            families (their capacity all comes back at the reset), and when the values
            are too coarse to tell within 10 % (little used, or a reset of a few
            rounding units).
    """

    dimension: str
    remaining: float
    limit: float | None
    reset_after: float | None
    refill_rate: float | None = None


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
_SHOWN_CHARS: Final = 80  # longest value quoted in full in a warning or an error
_TEXT: Final = (str, bytes, bytearray)  # iterable, but never headers nor a pair


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
    ...     "x-ratelimit-remaining-tokens": "90000",
    ...     "x-ratelimit-reset-tokens": "24.000s",
    ... })
    >>> tokens, = feedback.limits
    >>> tokens.remaining, tokens.limit, tokens.reset_after
    (90000.0, 150000.0, 24.0)
    >>> round(tokens.refill_rate)  # 150,000 per minute, from the 24 s to refill 60,000
    2500
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
        ArgumentTypeError: ``headers``, ``now`` or ``ietf_dimension`` has the wrong type:
            ``headers`` is neither a mapping nor an iterable of pairs (a ``str`` or
            ``bytes`` is neither), one of its pairs is not a sequence (a list or tuple),
            or a name or value is not a ``str`` (``bytes`` included: decode them first).
        InvalidArgumentError: a pair of ``headers`` does not have exactly two items,
            ``now`` is naive or ``ietf_dimension`` is empty.
    """
    moment = None if now is None else _check_now(now)
    if type(ietf_dimension) is not str or not ietf_dimension:
        _check_dimension(ietf_dimension)
    fields = _fields(headers)
    if fields.keys() <= _OPENAI_SET:  # OpenAI's fields alone (or none): in one step,
        # (a field sent twice comes joined, "5, 5": in no usual form, so read generally)
        info = read_openai([fields.get(name) for name in OPENAI_FIELDS])
        if info is not None:  # (unless a value is not in its usual form)
            return info
    return _read(fields, moment, ietf_dimension)


def _read(
    fields: Mapping[str, str], moment: datetime | None, ietf_dimension: str
) -> ServerFeedback:
    """:func:`parse_rate_limit_headers` of ``fields`` (see :func:`_fields`), read by the
    general reader, which warns about what it drops."""
    reader = Reader(fields, moment)
    limits: list[ServerLimit] = []
    ordered = True  # the usual families report their dimensions in the order wanted
    last = -1
    for dimension, remaining, limit, reset_after, refill_rate in reader.limits(
        ietf_dimension
    ).values():
        order = _DIMENSION_ORDER.get(dimension, 4)
        if order <= last:
            ordered = False
        last = order
        limits.append(ServerLimit(dimension, remaining, limit, reset_after, refill_rate))
    if not ordered:
        limits.sort(key=_order)
    retry_after = reader.retry_after()
    for name, (value, reason) in reader.problems.items():
        warnings.warn(
            f"ignored malformed rate-limit header {name}: {_shorten(value)} ({reason})",
            RateLimitHeaderWarning,
            stacklevel=3,
        )
    return ServerFeedback(limits=tuple(limits), retry_after=retry_after)


# OpenAI's fields (also sent by Azure OpenAI and many servers that copy its API): what
# most responses carry, read by read_openai in one step.
OPENAI_FIELDS: Final = tuple(
    f"x-ratelimit-{part}-{dimension}"
    for dimension in ("requests", "tokens")
    for part in ("remaining", "limit", "reset")
)
_OPENAI_SET: Final = frozenset(OPENAI_FIELDS)


def read_openai(values: Sequence[str | None]) -> ServerFeedback | None:
    """What :func:`parse_rate_limit_headers` gives for headers whose only rate-limit
    fields are OpenAI's, each sent once, in one step: ``values`` are theirs in the order
    of ``OPENAI_FIELDS`` (``None``: not sent). ``None`` when a value is not in its usual
    form (a decimal count, a Go duration, without spaces) or a dimension lacks
    its ``remaining``: the general reader, which warns about what it drops, reads them."""
    limits = []
    for first, dimension in ((0, "requests"), (3, "tokens")):
        remaining, limit, reset = values[first], values[first + 1], values[first + 2]
        if remaining is None:
            if limit is None and reset is None:
                continue
            return None
        left = _syntax.decimal(remaining)
        if left is None:
            return None
        most = seconds = refill = None
        if limit is not None:
            most = _syntax.decimal(limit)
            if most is None:
                return None
        if reset is not None:
            seconds, resolution = _syntax.read_go_duration(reset)
            if seconds is None:
                return None
            if most is not None:
                refill = _families.refill_rate(most, left, seconds, resolution)
        limits.append(_server_limit(dimension, left, most, seconds, refill))
    return _server_feedback(tuple(limits), None)


_new: Final = object.__new__
_set: Final = object.__setattr__


def _server_limit(
    dimension: str,
    remaining: float,
    limit: float | None,
    reset_after: float | None,
    refill_rate: float | None,
) -> ServerLimit:
    """``ServerLimit(...)``, the same object, without the frozen ``__init__``'s one
    ``object.__setattr__`` per field (the fields are given their instance dict at once)."""
    made: ServerLimit = _new(ServerLimit)
    _set(
        made,
        "__dict__",
        {
            "dimension": dimension,
            "remaining": remaining,
            "limit": limit,
            "reset_after": reset_after,
            "refill_rate": refill_rate,
        },
    )
    return made


def _server_feedback(limits: tuple[ServerLimit, ...], retry_after: float | None) -> ServerFeedback:
    """``ServerFeedback(limits=limits, retry_after=retry_after)``, as :func:`_server_limit`."""
    made: ServerFeedback = _new(ServerFeedback)
    _set(made, "__dict__", {"limits": limits, "retry_after": retry_after})
    return made


def _order(limit: ServerLimit) -> tuple[int, str]:
    return _DIMENSION_ORDER.get(limit.dimension, 4), limit.dimension


def _check_now(now: object) -> datetime:
    """Return ``now`` if it is an aware datetime."""
    if not isinstance(now, datetime):
        raise ArgumentTypeError("now", f"now must be a datetime or None, not {type(now).__name__}")
    if now.utcoffset() is None:
        raise InvalidArgumentError(
            "now", "now must be timezone-aware, e.g. datetime.now(timezone.utc)"
        )
    return now


def _check_dimension(dimension: object) -> None:
    """Raise unless ``ietf_dimension`` is a non-empty string."""
    if not isinstance(dimension, str):
        raise ArgumentTypeError(
            "ietf_dimension",
            f"ietf_dimension must be a str, not {type(dimension).__name__}",
        )
    if not dimension:
        raise InvalidArgumentError("ietf_dimension", "ietf_dimension must not be empty")


class Fields(dict[str, str]):
    """Headers read already: the names a :class:`Reader` reads (in lower case), each
    with its value (repeated fields joined with ``", "``), and no other."""

    __slots__ = ()


def _fields(headers: object) -> dict[str, str]:
    """Map the lower-cased names of the headers a :class:`Reader` reads to their values,
    joining repeated fields with ``", "``; every pair is checked, read or not."""
    if type(headers) is Fields:
        return headers
    if type(headers) is list or type(headers) is tuple:  # e.g. httpx's multi_items()
        pairs: Iterable[object] = headers
    elif isinstance(headers, Mapping):
        pairs = headers.items()
    elif isinstance(headers, Iterable) and not isinstance(headers, _TEXT):
        pairs = headers
    else:
        raise ArgumentTypeError(
            "headers",
            "headers must be a mapping or an iterable of (name, value) pairs, "
            f"not {type(headers).__name__}",
        )
    fields: dict[str, str] = {}
    for pair in pairs:
        # The usual pair, a tuple (or list) of two str, is checked here, and its name
        # looked up as it is: a name in NAMES is ASCII and in lower case, and a name in
        # lower case is its own lower case.
        if (
            (type(pair) is tuple or type(pair) is list)
            and len(pair) == 2
            and type(pair[0]) is str
            and type(pair[1]) is str
        ):
            name, value = pair
            if name not in NAMES and name.islower():
                continue
        else:
            name, value = _pair(pair)
        # Header names are ASCII tokens; str.lower() would map some non-ASCII letters
        # (the Kelvin sign, for one) onto ASCII ones and forge a name.
        if name not in NAMES:
            if not name.isascii():
                continue
            name = name.lower()
            if name not in NAMES:
                continue
        joined = fields.get(name)
        fields[name] = value if joined is None else f"{joined}, {value}"
    return fields


def _pair(pair: object) -> tuple[str, str]:
    """One ``(name, value)`` pair of ``headers``, checked."""
    if not isinstance(pair, Sequence) or isinstance(pair, _TEXT):
        raise ArgumentTypeError(
            "headers",
            "headers must be a mapping or an iterable of (name, value) pairs, "
            f"got a {type(pair).__name__} among the pairs: {_shorten(pair)}",
        )
    if len(pair) != 2:
        raise InvalidArgumentError(
            "headers",
            f"each header must be a (name, value) pair, got {len(pair)} items: {_shorten(pair)}",
        )
    name, value = pair
    if not isinstance(name, str) or not isinstance(value, str):
        raise ArgumentTypeError(
            "headers",
            f"header names and values must be str, got {_shorten(name)}: {_shorten(value)}",
        )
    return name, value


def _shorten(value: object) -> str:
    """``repr(value)`` of at most 80 characters (of a ``str``) and ``...`` if cut."""
    if isinstance(value, str):
        return repr(value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "...")
    shown = repr(value)
    return shown if len(shown) <= _SHOWN_CHARS else shown[:_SHOWN_CHARS] + "..."
