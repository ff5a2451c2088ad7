"""tokenbucket: exact, fair, cancellation-safe rate limiting for asyncio and trio.

>>> import tokenbucket as tb
>>> bucket = tb.TokenBucket(rate=10, capacity=20)
>>> window = tb.SlidingWindow(limit=15, window=60)
"""

from __future__ import annotations

from ._bucket import TokenBucket
from ._errors import (
    AcquireTimeoutError,
    AmountExceedsLimitError,
    ArgumentTypeError,
    InvalidArgumentError,
    TokenBucketError,
)
from ._queue import LimiterStatistics
from ._rate import Rate, per_day, per_hour, per_minute, per_second
from ._window import SlidingWindow

__version__ = "0.1.0"

__all__ = [
    "AcquireTimeoutError",
    "AmountExceedsLimitError",
    "ArgumentTypeError",
    "InvalidArgumentError",
    "LimiterStatistics",
    "Rate",
    "SlidingWindow",
    "TokenBucket",
    "TokenBucketError",
    "__version__",
    "per_day",
    "per_hour",
    "per_minute",
    "per_second",
]
