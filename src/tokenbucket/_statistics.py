"""The read-only snapshots that ``statistics()`` returns, for logs and metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["LimitStatistics", "LimiterStatistics"]


@dataclass(frozen=True, slots=True)
class LimitStatistics:
    """A snapshot of one limit (:class:`~tokenbucket.TokenBucket` or
    :class:`~tokenbucket.SlidingWindow`).

    Attributes:
        available: the amount a caller could take right now if nobody were queued, or
            ``None`` when the state lives in a backend (Redis) and reading it would
            take a round trip.
        limit: the most the limiter can ever grant at once (capacity or window limit).
        waiters: tasks of this process waiting in ``acquire``.
        queued: the total amount those tasks are waiting for.
        next_wakeup: the clock time at which the next waiter is due, or ``None``
            when nobody waits (or the backend has not said yet).
    """

    available: float | None
    limit: float
    waiters: int
    queued: float
    next_wakeup: float | None


@dataclass(frozen=True, slots=True)
class LimiterStatistics:
    """A snapshot of a :class:`~tokenbucket.Limiter`.

    Attributes:
        available: per dimension, the most one request could take right now if nobody
            were queued (the tightest of that dimension's rates; negative when in debt).
            Empty when the state lives in a backend (Redis), where reading it would take
            a round trip.
        in_flight: leases of this process holding a concurrency slot.
        max_concurrency: the cap on calls in flight, or ``None``.
        waiters: requests of this process waiting.
        paused_until: the clock time until which a server asked us to wait, or ``None``.
        next_wakeup: when the next waiter is due, or ``None`` (nobody waits, or the
            head waits for a slot).
        last_wait: seconds the most recent grant waited from its call (0 when it was
            granted at once), or ``None`` before the first grant.
    """

    available: Mapping[str, float]
    in_flight: int
    max_concurrency: int | None
    waiters: int
    paused_until: float | None
    next_wakeup: float | None
    last_wait: float | None
