"""Readable rates: ``per_minute(500)`` instead of ``500 / 60``."""

from __future__ import annotations

import re
from typing import Final

from . import _validate
from ._errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["Rate", "per_day", "per_hour", "per_minute", "per_second"]

SECOND: Final = 1.0
MINUTE: Final = 60.0
HOUR: Final = 3600.0
DAY: Final = 86400.0

_UNITS: Final = {
    "s": SECOND,
    "sec": SECOND,
    "second": SECOND,
    "seconds": SECOND,
    "m": MINUTE,
    "min": MINUTE,
    "minute": MINUTE,
    "minutes": MINUTE,
    "h": HOUR,
    "hour": HOUR,
    "hours": HOUR,
    "d": DAY,
    "day": DAY,
    "days": DAY,
}
_PATTERN: Final = re.compile(
    r"^\s*(?P<amount>[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*"
    r"(?:/|\bper\b)\s*(?P<count>[0-9]+(?:\.[0-9]*)?)?\s*(?P<unit>[a-z]+)\s*$",
    re.IGNORECASE,
)


class Rate:
    """An amount per period, e.g. ``Rate(500, 60)`` for 500 units a minute.

    Build one with :func:`per_second`, :func:`per_minute`, :func:`per_hour`,
    :func:`per_day`, or :meth:`Rate.parse` (``"500/minute"``, ``"10 per 2s"``).
    Immutable and hashable.

    In a :class:`~tokenbucket.Limiter`, a rate with no ``burst`` never admits more than
    ``amount`` in any rolling ``period`` (an exact sliding window). ``burst=b`` opts in to
    a token bucket instead: it refills at ``amount / period`` and holds up to ``b``, so it
    can admit up to ``b + amount`` in a rolling period. ``burst`` means nothing to
    :class:`~tokenbucket.TokenBucket`, whose ``capacity`` says it.
    """

    __slots__ = ("_amount", "_burst", "_period")

    def __init__(self, amount: float, period: float, *, burst: float | None = None) -> None:
        self._amount = _validate.real(amount, "amount")
        self._period = _validate.real(period, "period")
        self._burst = None if burst is None else _validate.real(burst, "burst")

    @property
    def burst(self) -> float | None:
        """The opt-in burst (see above), or ``None``."""
        return self._burst

    @property
    def amount(self) -> float:
        """Units allowed per period."""
        return self._amount

    @property
    def period(self) -> float:
        """Length of the period in seconds."""
        return self._period

    @property
    def per_second(self) -> float:
        """The same rate in units per second."""
        return self._amount / self._period

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse ``"500/minute"``, ``"500/min"``, ``"10 per second"`` or ``"100/5s"``.

        Units: s, sec, second(s), m, min, minute(s), h, hour(s), d, day(s).
        """
        if not isinstance(text, str):
            raise ArgumentTypeError("rate", f"rate must be a str, not {type(text).__name__}")
        match = _PATTERN.match(text)
        unit = _UNITS.get(match["unit"].lower()) if match else None
        if match is None or unit is None:
            raise InvalidArgumentError(
                "rate",
                f"cannot read rate {text!r}; expected e.g. '500/minute', '10/s' or '100/5s'",
            )
        count = float(match["count"]) if match["count"] else 1.0
        try:
            return cls(float(match["amount"]), count * unit)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError("rate", f"cannot use rate {text!r}: {exc}") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Rate):
            return NotImplemented
        return (self._amount, self._period, self._burst) == (
            other._amount,
            other._period,
            other._burst,
        )

    def __hash__(self) -> int:
        return hash((self._amount, self._period, self._burst))

    def __repr__(self) -> str:
        burst = "" if self._burst is None else f", burst={_number(self._burst)}"
        return f"Rate({_number(self._amount)}, {_number(self._period)}{burst})"

    def __str__(self) -> str:
        amount = _plain(self._amount)
        for name, seconds in (("day", DAY), ("hour", HOUR), ("minute", MINUTE)):
            if self._period == seconds:
                return f"{amount}/{name}"
        if self._period == SECOND:
            return f"{amount}/second"
        return f"{amount}/{_plain(self._period)}s"


def _plain(value: float) -> str:
    """Digits a rate string can be parsed back from: 1000000, not 1e+06."""
    if value.is_integer() and value < 1e16:
        return str(int(value))
    return _number(value)


def _number(value: float) -> str:
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def per_second(amount: float, *, burst: float | None = None) -> Rate:
    """``amount`` units per second."""
    return Rate(amount, SECOND, burst=burst)


def per_minute(amount: float, *, burst: float | None = None) -> Rate:
    """``amount`` units per minute."""
    return Rate(amount, MINUTE, burst=burst)


def per_hour(amount: float, *, burst: float | None = None) -> Rate:
    """``amount`` units per hour."""
    return Rate(amount, HOUR, burst=burst)


def per_day(amount: float, *, burst: float | None = None) -> Rate:
    """``amount`` units per day."""
    return Rate(amount, DAY, burst=burst)


def units_per_second(rate: object) -> float:
    """Turn the ``rate`` argument of a limiter (number, :class:`Rate` or str) into units/s."""
    if isinstance(rate, str):
        rate = Rate.parse(rate)
    if isinstance(rate, Rate):
        if rate.burst is not None:
            raise InvalidArgumentError(
                "rate", f"{rate!r} has a burst; a TokenBucket takes its burst as capacity"
            )
        value = rate.per_second
        if value == 0 or value != value or value == float("inf"):
            raise InvalidArgumentError("rate", f"rate {rate} is not a usable rate")
        return value
    return _validate.real(rate, "rate")
