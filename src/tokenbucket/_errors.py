"""The exceptions tokenbucket raises.

Every exception the library raises on purpose derives from :class:`TokenBucketError`,
and each also derives from the built-in exception a user would expect, so ``except
ValueError`` or ``except TimeoutError`` keep working::

    TokenBucketError
     ├── InvalidArgumentError        (also ValueError)
     │    └── AmountExceedsLimitError
     ├── ArgumentTypeError           (also TypeError)
     ├── AcquireTimeoutError         (also TimeoutError)
     ├── LeaseError                  (also RuntimeError)
     ├── UnknownNameError            (also KeyError)
     └── BackendError
          ├── BackendConfigurationError
          └── BackendUnavailableError  (also ConnectionError)
"""

from __future__ import annotations

__all__ = [
    "AcquireTimeoutError",
    "AmountExceedsLimitError",
    "ArgumentTypeError",
    "BackendConfigurationError",
    "BackendError",
    "BackendUnavailableError",
    "InvalidArgumentError",
    "LeaseError",
    "TokenBucketError",
    "UnknownNameError",
]


class TokenBucketError(Exception):
    """Base class of every exception raised by tokenbucket."""


class InvalidArgumentError(TokenBucketError, ValueError):
    """An argument has the right type but an invalid value (negative, NaN, ...).

    ``argument`` names the offending parameter.
    """

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument

    def __reduce__(self) -> tuple[type[InvalidArgumentError], tuple[str, str]]:
        return (type(self), (self.argument, str(self)))


class AmountExceedsLimitError(InvalidArgumentError):
    """The amount asked for is more than the limiter could ever grant.

    Raised at once instead of waiting forever. Nothing is consumed.
    """

    def __init__(self, amount: float, maximum: float, what: str) -> None:
        super().__init__(
            "amount",
            f"amount={amount!r} exceeds the {what} of {maximum!r}; it could never be granted",
        )
        self.amount = amount
        self.maximum = maximum
        self.what = what

    def __reduce__(  # type: ignore[override]
        self,
    ) -> tuple[type[AmountExceedsLimitError], tuple[float, float, str]]:
        return (type(self), (self.amount, self.maximum, self.what))


class ArgumentTypeError(TokenBucketError, TypeError):
    """An argument has the wrong type. ``argument`` names the offending parameter."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument

    def __reduce__(self) -> tuple[type[ArgumentTypeError], tuple[str, str]]:
        return (type(self), (self.argument, str(self)))


class AcquireTimeoutError(TokenBucketError, TimeoutError):
    """``acquire(..., timeout=...)`` gave up waiting. Nothing was consumed."""


class LeaseError(TokenBucketError, RuntimeError):
    """A lease was used wrongly: settled twice, settled after its block ended, or its
    ``acquire()`` context entered twice."""


class UnknownNameError(TokenBucketError, KeyError):
    """A :class:`~tokenbucket.BucketGroup` has no limits for a name (and no default)."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0]) if self.args else ""


class BackendError(TokenBucketError):
    """A backend (Redis) answered with an error the limiter cannot work around, such as
    a key of the wrong type under the limiter's prefix. The backend's own exception is
    the ``__cause__``."""


class BackendUnavailableError(BackendError, ConnectionError):
    """The backend cannot be reached (and its failure policy says to raise)."""


class BackendConfigurationError(BackendError):
    """The backend is reachable but set up so that the limiter cannot use it: a wrong
    password or user name, a user without a permission the limiter needs, a database
    index the server does not have, or a backend used on an event loop it does not
    support. Raised at once whatever the failure policy (retrying cannot help); the
    message says what to fix and the backend's own exception is the ``__cause__``."""
