"""Parsing a limiter's configuration: dimension names, ``<dim>_per_<unit>`` keys, rates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from . import _validate
from ._errors import ArgumentTypeError, InvalidArgumentError
from ._rate import DAY, HOUR, MINUTE, SECOND, Rate

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "UNITS",
    "RateLike",
    "check_dimension",
    "concurrency",
    "parse_limits",
    "rate_for_unit",
    "split_key",
    "to_rate",
]

RateLike = Rate | str
"""A rate as :class:`Limiter` accepts it: a :class:`Rate` or a string like ``"500/minute"``."""

UNITS: Final = {"second": SECOND, "minute": MINUTE, "hour": HOUR, "day": DAY}


def check_dimension(dim: object, argument: str) -> None:
    if not isinstance(dim, str) or not dim.isidentifier():
        raise InvalidArgumentError(
            argument, f"dimension names must be identifiers such as 'tokens', got {dim!r}"
        )


def split_key(key: str) -> tuple[str, str]:
    dim, sep, unit = key.rpartition("_per_")
    if not sep or unit not in UNITS or not dim.isidentifier():
        raise InvalidArgumentError(
            key,
            f"unknown limit {key!r}; expected <dimension>_per_<unit> with a unit of "
            f"{', '.join(UNITS)} (e.g. tokens_per_minute)",
        )
    return dim, unit


def rate_for_unit(value: object, unit: str, key: str) -> Rate:
    if isinstance(value, Rate):
        if value.period != UNITS[unit]:
            raise InvalidArgumentError(key, f"{key}={value!r}: the rate's period is not one {unit}")
        return value
    amount = _validate.real(value, key)
    return Rate(amount, UNITS[unit])


def to_rate(value: object, argument: str) -> Rate:
    if isinstance(value, Rate):
        return value
    if isinstance(value, str):
        try:
            return Rate.parse(value)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(argument, str(exc)) from None
    raise ArgumentTypeError(
        argument,
        f"{argument} must be a Rate or a str such as '500/minute', not {type(value).__name__}",
    )


def parse_limits(
    limits: Mapping[str, RateLike | Sequence[RateLike]] | None, rates: Mapping[str, object]
) -> list[tuple[str, Rate]]:
    """The rates of a :class:`Limiter`, as ``(dimension, rate)`` in the order given."""
    specs: list[tuple[str, Rate]] = []
    for dim, given in (limits or {}).items():
        check_dimension(dim, "limits")
        if isinstance(given, (str, Rate)):
            many: list[object] = [given]
        elif isinstance(given, (list, tuple)):
            many = list(given)
        else:
            raise ArgumentTypeError(
                f"limits[{dim!r}]",
                f"limits[{dim!r}] must be a Rate, a str such as '500/minute' or a list "
                f"of them, not {type(given).__name__}",
            )
        if not many:
            raise InvalidArgumentError("limits", f"no rate given for {dim!r}")
        specs.extend((dim, to_rate(item, f"limits[{dim!r}]")) for item in many)
    for keyword, value in rates.items():
        dim, unit = split_key(keyword)
        specs.append((dim, rate_for_unit(value, unit, keyword)))
    return specs


def concurrency(value: object) -> int | None:
    """Check a fixed ``max_concurrency`` argument: ``None`` or an int >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(
            "max_concurrency",
            f"max_concurrency must be an int, tb.adaptive(...) or None, not {type(value).__name__}",
        )
    if value < 1:
        raise InvalidArgumentError(
            "max_concurrency", f"max_concurrency must be >= 1, got {value!r}"
        )
    return value
