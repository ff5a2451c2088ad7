"""Which headers each provider family sends, and what their values mean.

Each header value has a *kind*: the form it is written in and what the warning says
when it is not. Each family is a table of the headers that describe one dimension: its
``remaining`` (a decimal count), its ``limit`` and its ``reset``, each of some kind.
:class:`Reader` reads every header of every family, best family first, and records each
malformed value once in :attr:`Reader.problems`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Final, NamedTuple, TypeGuard, cast

from . import _sf, _syntax

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["NAMES", "Reader", "Reported"]

# A delta-seconds reset this large is really a Unix time (10**9 seconds is 31 years).
_EPOCH_THRESHOLD: Final = 1e9


# One dimension as a family reports it: the fields of a ``ServerLimit`` (dimension,
# remaining, limit, reset_after, refill_rate), as a plain tuple.
Reported = tuple[str, float, "float | None", "float | None", "float | None"]


class _Kind(NamedTuple):
    """How one kind of header value is read: a float (seconds for times) or None."""

    read: Callable[[str, Callable[[], datetime]], float | None]  # (text, now)
    expected: str  # what the warning says the value is not
    # For a reset that is the time until the limit is full again: the value as ``read``
    # gives it, with the unit of its last digit (how far the written value may be from
    # the true one), in one reading. None: a reset at which the whole limit comes back
    # at once.
    until_full: Callable[[str, Callable[[], datetime]], tuple[float | None, float]] | None = None


def _is_count(value: object) -> TypeGuard[int | float]:
    """True for a Structured Field Integer or Decimal >= 0 (booleans are not numbers)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _delta_or_epoch(text: str, now: Callable[[], datetime]) -> float | None:
    number = _syntax.decimal(text)
    if number is not None and number > _EPOCH_THRESHOLD:
        return max(0.0, number - now().timestamp())
    return number


def _leading_number(text: str, now: Callable[[], datetime]) -> float | None:
    items = _sf.parse_list(text)
    first = items[0][0] if items else None
    return float(first) if _is_count(first) else None


def _delay_or_http_date(text: str, now: Callable[[], datetime]) -> float | None:
    seconds = _syntax.decimal(text)
    return _syntax.seconds_until_http_date(text, now()) if seconds is None else seconds


def _milliseconds(text: str, now: Callable[[], datetime]) -> float | None:
    number = _syntax.decimal(text)
    return None if number is None else number / 1000


def _go_duration(text: str, now: Callable[[], datetime]) -> tuple[float | None, float]:
    return _syntax.read_go_duration(text)


def _rfc3339(text: str, now: Callable[[], datetime]) -> tuple[float | None, float]:
    seconds = _syntax.seconds_until_rfc3339(text, now())
    return seconds, (0.0 if seconds is None else _syntax.rfc3339_resolution(text))


_COUNT: Final = _Kind(lambda text, now: _syntax.decimal(text), "not a non-negative decimal number")
_GO_DURATION: Final = _Kind(
    lambda text, now: _syntax.read_go_duration(text)[0],
    "not a Go duration such as '1s', '6m0s' or '20ms'",
    _go_duration,
)
_RFC3339: Final = _Kind(
    lambda text, now: _syntax.seconds_until_rfc3339(text, now()),
    "not an RFC 3339 date-time with a UTC offset",
    _rfc3339,
)
_DELTA_OR_EPOCH: Final = _Kind(_delta_or_epoch, "not delta-seconds or a Unix time")
_LEADING_NUMBER: Final = _Kind(
    _leading_number, "not a non-negative number, optionally followed by policies"
)
_RETRY_AFTER: Final = _Kind(_delay_or_http_date, "not delay-seconds or an HTTP-date")
_RETRY_AFTER_MS: Final = _Kind(_milliseconds, "not a non-negative decimal number")


class _Triple(NamedTuple):
    """The three headers of one dimension: its remaining, limit and reset."""

    dimension: str | None  # None: the dimension the caller says IETF headers describe
    remaining_name: str
    limit_name: str
    reset_name: str
    limit: _Kind
    reset: _Kind
    names: frozenset[str]  # the three names


def _make_triple(dimension: str | None, names: str, limit: _Kind, reset: _Kind) -> _Triple:
    """The triple whose names are ``names`` with ``{}`` as limit/remaining/reset."""
    remaining_name, limit_name, reset_name = (
        names.format(part) for part in ("remaining", "limit", "reset")
    )
    return _Triple(
        dimension,
        remaining_name,
        limit_name,
        reset_name,
        limit,
        reset,
        frozenset((remaining_name, limit_name, reset_name)),
    )


_ANTHROPIC: Final = {
    "requests": "requests",
    "tokens": "tokens",
    "input-tokens": "input_tokens",
    "output-tokens": "output_tokens",
}
# Provider families, best first: they name their dimensions.
_PROVIDERS: Final = (
    *(
        _make_triple(dimension, f"anthropic-ratelimit-{part}-{{}}", _COUNT, _RFC3339)
        for part, dimension in _ANTHROPIC.items()
    ),
    *(
        _make_triple(dimension, f"x-ratelimit-{{}}-{dimension}", _COUNT, _GO_DURATION)
        for dimension in ("requests", "tokens")
    ),
)
# The IETF draft triple and the de-facto X- triple, after the structured fields.
_IETF_TRIPLES: Final = (
    _make_triple(None, "ratelimit-{}", _LEADING_NUMBER, _DELTA_OR_EPOCH),
    _make_triple(None, "x-ratelimit-{}", _LEADING_NUMBER, _DELTA_OR_EPOCH),
)
# The structured fields: each item is a named policy with a number parameter.
_POLICY_FIELDS: Final = {"ratelimit": ("r", "remaining"), "ratelimit-policy": ("q", "quota")}
# The families, best first: the providers', the structured fields (None), the triples.
_FAMILIES: Final[tuple[_Triple | None, ...]] = (*_PROVIDERS, None, *_IETF_TRIPLES)
# Every header name a family reads (lower-case), with the family's place in _FAMILIES.
_FAMILY_OF: Final = {
    **{name: place for place, triple in enumerate(_FAMILIES) if triple for name in triple.names},
    **dict.fromkeys(_POLICY_FIELDS, _FAMILIES.index(None)),
}
_RETRY_AFTER_NAMES: Final = ("retry-after-ms", "retry-after")
#: Every header name a Reader reads (lower-case): it never looks at any other.
NAMES: Final = frozenset((*_FAMILY_OF, *_RETRY_AFTER_NAMES))


# How far apart the lowest and the highest refill rate the headers allow may be.
_REFILL_PRECISION: Final = 1.1


def refill_rate(limit: float, remaining: float, reset: float, resolution: float) -> float | None:
    """The rate at which a server's capacity comes back, when ``reset`` is the time until
    ``limit`` is full again from ``remaining``: the lowest rate the values allow (the
    server may have rounded ``remaining`` down by up to one, and ``reset`` by up to
    ``resolution``), or None if they allow rates more than 10 % apart."""
    gone = limit - remaining
    if gone <= 1 or reset <= resolution:
        return None
    low = (gone - 1) / (reset + resolution)
    high = gone / (reset - resolution)
    return low if high <= _REFILL_PRECISION * low else None


class Reader:
    """Reads the families out of lower-cased header fields, noting each malformed value."""

    __slots__ = ("_fields", "_moment", "problems")

    def __init__(self, fields: Mapping[str, str], now: datetime | None) -> None:
        self._fields = fields
        self._moment = now  # None: the current time, read once if a value needs it
        #: Header name -> (its value, what it is not), in the order they were found.
        self.problems: dict[str, tuple[str, str]] = {}

    def limits(self, ietf_dimension: str) -> dict[str, Reported]:
        """What every family reports, by dimension: the best family's report of each.

        Every family present is read (and its malformed values noted), best first.
        """
        found: dict[str, Reported] = {}
        # A family none of whose headers is present reports nothing and notes nothing.
        places = set(map(_FAMILY_OF.get, self._fields))  # (None: a name of no family)
        places.discard(None)
        if not places:
            return found
        for place in sorted(cast("set[int]", places)):
            triple = _FAMILIES[place]
            if triple is None:
                reported = self._structured(ietf_dimension)
            else:
                reported = self._triple(triple, ietf_dimension)
            if reported is not None and reported[0] not in found:
                found[reported[0]] = reported
        return found

    def retry_after(self) -> float | None:
        """``retry-after-ms`` if valid, else ``Retry-After``, in seconds."""
        fields = self._fields
        if "retry-after-ms" not in fields and "retry-after" not in fields:
            return None
        milliseconds = self._value("retry-after-ms", _RETRY_AFTER_MS)
        seconds = self._value("retry-after", _RETRY_AFTER)
        return seconds if milliseconds is None else milliseconds

    def _now(self) -> datetime:
        moment = self._moment
        if moment is None:
            moment = self._moment = datetime.now(timezone.utc)
        return moment

    def _get(self, name: str) -> str | None:
        value = self._fields.get(name)
        return None if value is None else value.strip(" \t")

    def _bad(self, name: str, reason: str) -> None:
        self.problems.setdefault(name, (self._fields[name], reason))

    def _value(self, name: str, kind: _Kind) -> float | None:
        text = self._fields.get(name)
        if text is None:
            return None
        value = kind.read(text.strip(" \t"), self._now)
        if value is None:
            self._bad(name, kind.expected)
        return value

    def _triple(self, triple: _Triple, ietf_dimension: str) -> Reported | None:
        get = self._fields.get
        remaining = limit = reset = resolution = None
        # As _value does, inline: each header in turn, so problems keep their order.
        text = get(triple.remaining_name)
        if text is not None:
            remaining = _syntax.decimal(text.strip(" \t"))  # what _COUNT.read does
            if remaining is None:
                self._bad(triple.remaining_name, _COUNT.expected)
        text = get(triple.limit_name)
        if text is not None:
            kind = triple.limit
            limit = kind.read(text.strip(" \t"), self._now)
            if limit is None:
                self._bad(triple.limit_name, kind.expected)
        text = get(triple.reset_name)
        if text is not None:
            kind = triple.reset
            text = text.strip(" \t")
            if kind.until_full is None:
                reset = kind.read(text, self._now)
            else:
                reset, resolution = kind.until_full(text, self._now)
            if reset is None:
                self._bad(triple.reset_name, kind.expected)
        if remaining is None:
            return None
        refill = None
        if resolution is not None and limit is not None and reset is not None:
            refill = refill_rate(limit, remaining, reset, resolution)
        return triple.dimension or ietf_dimension, remaining, limit, reset, refill

    def _structured(self, dimension: str) -> Reported | None:
        """``RateLimit: "name";r=<remaining>;t=<reset>`` with ``RateLimit-Policy`` quotas."""
        quotas: dict[str, float] = {}
        for name, quota, _ in self._policies("ratelimit-policy"):
            quotas.setdefault(name, quota)
        policies = self._policies("ratelimit")
        if not policies:
            return None
        # Several policies: the one with the least left is the one that binds.
        name, remaining, params = min(policies, key=lambda policy: policy[1])
        reset = params.get("t")
        if reset is not None and not _is_count(reset):
            self._bad("ratelimit", "t must be a non-negative number of seconds")
            reset = None
        reset_after = None if reset is None else float(reset)
        return dimension, remaining, quotas.get(name), reset_after, None

    def _policies(self, field: str) -> list[tuple[str, float, dict[str, _sf.BareItem]]]:
        """A structured field's policies: (name, its number parameter, all parameters).

        Empty when the field is absent, or malformed (which is noted).
        """
        key, meaning = _POLICY_FIELDS[field]
        value = self._get(field)
        if value is None:
            return []
        policies = []
        for name, params in _sf.parse_list(value) or ():
            number = params.get(key)
            if not isinstance(name, str) or not _is_count(number):
                break
            policies.append((name, float(number), params))
        else:
            if policies:
                return policies
        self._bad(field, f"not a list of policies with a name and {key}=<{meaning}>")
        return []
