"""Argument checks shared by every public call."""

from __future__ import annotations

import math
import numbers
from typing import cast

from ._errors import ArgumentTypeError, InvalidArgumentError


def real(value: object, name: str, *, zero: bool = False, infinite: bool = False) -> float:
    """Return ``value`` as a float, or raise an error that names ``name``.

    Accepts ``int``, ``float`` and other :class:`numbers.Real` (but not ``bool``).
    Rejects NaN, negatives, zero unless ``zero`` and infinity unless ``infinite``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(name, f"{name} must be a real number, not {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        number = -math.inf if cast("float", value) < 0 else math.inf  # an enormous int
    if math.isnan(number):
        raise InvalidArgumentError(name, f"{name} must be a number, not NaN")
    if number < 0 or (number == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise InvalidArgumentError(name, f"{name} must be {bound}, got {number!r}")
    if math.isinf(number) and not infinite:
        raise InvalidArgumentError(name, f"{name} must be finite, got {number!r}")
    return number


def timeout(value: object) -> float | None:
    """Check a ``timeout`` argument: ``None`` or ``inf`` (wait forever), or seconds >= 0."""
    if value is None:
        return None
    seconds = real(value, "timeout", zero=True, infinite=True)
    return None if math.isinf(seconds) else seconds
