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
    """

    __slots__ = ("_amount", "_period")

    def __init__(self, amount: float, period: float) -> None:
        self._amount = _validate.real(amount, "amount")
        self._period = _validate.real(period, "period")

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
        return self._amount == other._amount and self._period == other._period

    def __hash__(self) -> int:
        return hash((self._amount, self._period))

    def __repr__(self) -> str:
        return f"Rate({_number(self._amount)}, {_number(self._period)})"

    def __str__(self) -> str:
        for name, seconds in (("day", DAY), ("hour", HOUR), ("minute", MINUTE)):
            if self._period == seconds:
                return f"{self._amount:g}/{name}"
        if self._period == SECOND:
            return f"{self._amount:g}/second"
        return f"{self._amount:g}/{self._period:g}s"


def _number(value: float) -> str:
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def per_second(amount: float) -> Rate:
    """``amount`` units per second."""
    return Rate(amount, SECOND)


def per_minute(amount: float) -> Rate:
    """``amount`` units per minute."""
    return Rate(amount, MINUTE)


def per_hour(amount: float) -> Rate:
    """``amount`` units per hour."""
    return Rate(amount, HOUR)


def per_day(amount: float) -> Rate:
    """``amount`` units per day."""
    return Rate(amount, DAY)


def units_per_second(rate: object) -> float:
    """Turn the ``rate`` argument of a limiter (number, :class:`Rate` or str) into units/s."""
    if isinstance(rate, str):
        rate = Rate.parse(rate)
    if isinstance(rate, Rate):
        value = rate.per_second
        if value == 0 or value != value or value == float("inf"):
            raise InvalidArgumentError("rate", f"rate {rate} is not a usable rate")
        return value
    return _validate.real(rate, "rate")
