"""TokenBucket: a rate with a burst."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _validate
from ._core import BucketState
from ._rate import Rate, units_per_second
from ._single import SingleLimiter

if TYPE_CHECKING:
    from ._backend import Backend

__all__ = ["TokenBucket"]


class TokenBucket(SingleLimiter):
    """A token bucket: ``rate`` units per second on average, bursts up to ``capacity``.

    The bucket starts full. Over every interval of length ``T`` it grants at most
    ``capacity + rate * T`` units, and waiters are served strictly in arrival order.

    >>> import tokenbucket as tb
    >>> bucket = tb.TokenBucket(rate=10, capacity=20)
    >>> per_minute = tb.TokenBucket(rate=tb.per_minute(500), capacity=10)
    >>> per_minute.rate
    8.333333333333334

    Args:
        rate: refill rate in units per second, or a :class:`Rate`
            (``tb.per_minute(500)``) or a string (``"500/minute"``).
        capacity: the most the bucket holds, and so the largest single ``acquire``.

    Note that a bucket with ``capacity == N`` and ``rate == N per minute`` can grant up
    to ``2 * N`` in a rolling minute (a full bucket, then a minute of refill). For "at
    most N in any minute" use :class:`SlidingWindow`, or a capacity that is a small
    share of the rate.

    A limiter may be created anywhere (at import time too) and is bound to the event
    loop that first uses it; it is not thread-safe.
    """

    __slots__ = ("_bucket",)

    _LIMIT_NAME = "bucket's capacity"

    def __init__(
        self,
        rate: float | Rate | str,
        capacity: float,
        *,
        backend: Backend | None = None,
        key: str | None = None,
    ) -> None:
        per_second = units_per_second(rate)
        size = _validate.real(capacity, "capacity")
        self._bucket = BucketState(per_second, size)
        super().__init__(self._bucket, Rate(per_second, 1.0, burst=size), backend, key)

    @property
    def rate(self) -> float:
        """Refill rate in units per second."""
        return self._bucket.rate

    @property
    def capacity(self) -> float:
        """The most the bucket holds (the burst)."""
        return self._bucket.capacity

    def __repr__(self) -> str:
        return self._repr(f"rate={self.rate:.6g}/s capacity={self.capacity:.6g}")
