"""tokenbucket: exact, fair, cancellation-safe rate limiting for asyncio and trio.

>>> import tokenbucket as tb
>>> bucket = tb.TokenBucket(rate=10, capacity=20)
>>> window = tb.SlidingWindow(limit=15, window=60)
"""

from __future__ import annotations

from ._bucket import TokenBucket
from ._decorate import chat_cost, estimate_tokens, rate_limited, usage_of
from ._errors import (
    AcquireTimeoutError,
    AmountExceedsLimitError,
    ArgumentTypeError,
    InvalidArgumentError,
    LeaseError,
    TokenBucketError,
    UnknownNameError,
)
from ._group import BucketGroup
from ._headers import (
    RateLimitHeaderWarning,
    ServerFeedback,
    ServerLimit,
    parse_rate_limit_headers,
)
from ._limiter import Lease, LeaseContext, Limiter, LimiterSnapshot
from ._queue import LimiterStatistics
from ._rate import Rate, per_day, per_hour, per_minute, per_second
from ._window import SlidingWindow

__version__ = "0.1.0"

__all__ = [
    "AcquireTimeoutError",
    "AmountExceedsLimitError",
    "ArgumentTypeError",
    "BucketGroup",
    "InvalidArgumentError",
    "Lease",
    "LeaseContext",
    "LeaseError",
    "Limiter",
    "LimiterSnapshot",
    "LimiterStatistics",
    "Rate",
    "RateLimitHeaderWarning",
    "ServerFeedback",
    "ServerLimit",
    "SlidingWindow",
    "TokenBucket",
    "TokenBucketError",
    "UnknownNameError",
    "__version__",
    "chat_cost",
    "estimate_tokens",
    "parse_rate_limit_headers",
    "per_day",
    "per_hour",
    "per_minute",
    "per_second",
    "rate_limited",
    "usage_of",
]


def __getattr__(name: str) -> object:
    # The Redis backend is imported on first use, so redis-py stays optional.
    if name in ("RedisBackend", "BackendError", "BackendUnavailableError"):
        from . import _redis

        return getattr(_redis, name)
    raise AttributeError(f"module 'tokenbucket' has no attribute {name!r}")
