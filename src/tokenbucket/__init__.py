"""tokenbucket: exact, fair, cancellation-safe rate limiting for asyncio and trio.

>>> import tokenbucket as tb
>>> bucket = tb.TokenBucket(rate=10, capacity=20)
>>> window = tb.SlidingWindow(limit=15, window=60)
"""

from __future__ import annotations

from ._adaptive import Adaptive, LimitChange, adaptive
from ._bucket import TokenBucket
from ._decorate import chat_cost, estimate_tokens, rate_limited, usage_of
from ._errors import (
    AcquireTimeoutError,
    AmountExceedsLimitError,
    ArgumentTypeError,
    BackendConfigurationError,
    BackendError,
    BackendUnavailableError,
    InvalidArgumentError,
    LeaseError,
    TokenBucketError,
    UnknownNameError,
)
from ._events import LimiterEvent
from ._group import BucketGroup
from ._headers import (
    RateLimitHeaderWarning,
    ServerFeedback,
    ServerLimit,
    parse_rate_limit_headers,
)
from ._lease import BlockingLeaseContext, Lease, LeaseContext
from ._limiter import Limiter
from ._otel import Instrumentation, instrument
from ._rate import Rate, per_day, per_hour, per_minute, per_second
from ._redis import RedisBackend
from ._statistics import LimiterCounters, LimiterStatistics, LimitStatistics
from ._transport import AsyncLimitedTransport, LimitedTransport
from ._window import SlidingWindow

__version__ = "0.1.0"

__all__ = [
    "AcquireTimeoutError",
    "Adaptive",
    "AmountExceedsLimitError",
    "ArgumentTypeError",
    "AsyncLimitedTransport",
    "BackendConfigurationError",
    "BackendError",
    "BackendUnavailableError",
    "BlockingLeaseContext",
    "BucketGroup",
    "Instrumentation",
    "InvalidArgumentError",
    "Lease",
    "LeaseContext",
    "LeaseError",
    "LimitChange",
    "LimitStatistics",
    "LimitedTransport",
    "Limiter",
    "LimiterCounters",
    "LimiterEvent",
    "LimiterStatistics",
    "Rate",
    "RateLimitHeaderWarning",
    "RedisBackend",
    "ServerFeedback",
    "ServerLimit",
    "SlidingWindow",
    "TokenBucket",
    "TokenBucketError",
    "UnknownNameError",
    "__version__",
    "adaptive",
    "chat_cost",
    "estimate_tokens",
    "instrument",
    "parse_rate_limit_headers",
    "per_day",
    "per_hour",
    "per_minute",
    "per_second",
    "rate_limited",
    "usage_of",
]


def __getattr__(name: str) -> object:
    if name == "LimiterSnapshot":
        import warnings

        warnings.warn(
            "LimiterSnapshot is now called LimiterStatistics",
            DeprecationWarning,
            stacklevel=2,
        )
        return LimiterStatistics
    raise AttributeError(f"module 'tokenbucket' has no attribute {name!r}")
