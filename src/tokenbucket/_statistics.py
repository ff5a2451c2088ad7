"""The read-only snapshots that ``statistics()`` returns, for logs and metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Final

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._adaptive import LimitChange

__all__ = ["LimitStatistics", "LimiterCounters", "LimiterStatistics"]

WAIT_BOUNDS: Final = (0.0, 0.001, 0.01, 0.1, 1.0, 10.0, 60.0, math.inf)
"""The upper bounds (seconds) of the buckets of :attr:`LimiterCounters.wait_histogram`."""


@dataclass(frozen=True, slots=True)
class LimiterCounters:
    """What a :class:`~tokenbucket.Limiter` did since it was made: totals that only grow.

    Counted where the limiter's state changes, so exact under any number of threads;
    cheap enough to be always on. With a backend (Redis), they count this process's
    calls (every process has its own).

    Attributes:
        admitted: requests granted (also the rare grant whose task was cancelled before
            it could run: given back at once, it counts in ``cancellations`` too).
        admitted_units: per dimension, the amounts they were granted (as reserved,
            before settling).
        waited: grants that queued first (the others were granted at once). On Redis:
            those Redis made wait (every grant takes a round trip, see
            ``Lease.waited``).
        wait_seconds: the seconds those grants waited, in total.
        wait_histogram: per upper bound in seconds (``WAIT_BOUNDS``: ``0.0``, then
            1 ms, 10 ms, 100 ms, 1 s, 10 s, 60 s and ``inf``), how many grants waited up
            to it (and more than the bound before); ``0.0`` holds the grants made at
            once. A grant that queued is in it once its task has run.
        timeouts: acquisitions that gave up at their timeout (``timeout=0`` and not
            granted at once included).
        cancellations: acquisitions cancelled while waiting.
        failures: acquisitions that failed while waiting for another reason (a backend
            out of reach, for one).
        settles: leases settled to their real usage.
        refunded: per dimension, what settling gave back (reserved more than used).
        debt: per dimension, what settling charged on top (used more than reserved).
        rejections: responses reported with status 429.
        pauses: pauses asked for (``Retry-After``, a 429, :meth:`Limiter.pause`).
        paused_seconds: the seconds those pauses asked for, in total (overlapping
            pauses each count in full).
        corrections: server reports (rate-limit headers) that lowered what a meter may
            grant by more than rounding. On Redis: reports applied, lowering or not.
    """

    WAIT_BOUNDS: ClassVar[tuple[float, ...]] = WAIT_BOUNDS

    admitted: int = 0
    admitted_units: Mapping[str, float] = field(default_factory=dict)
    waited: int = 0
    wait_seconds: float = 0.0
    wait_histogram: Mapping[float, int] = field(default_factory=dict)
    timeouts: int = 0
    cancellations: int = 0
    failures: int = 0
    settles: int = 0
    refunded: Mapping[str, float] = field(default_factory=dict)
    debt: Mapping[str, float] = field(default_factory=dict)
    rejections: int = 0
    pauses: int = 0
    paused_seconds: float = 0.0
    corrections: int = 0


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
        counters: what the limiter did since it was made (:class:`LimiterCounters`).
        limit_history: with an adaptive cap (``max_concurrency=tb.adaptive(...)``), its
            latest moves, oldest first (at most 64): each a :class:`LimitChange`
            ``(at, limit, reason)``, ``at`` on the limiter's clock and ``reason`` one of
            ``"initial"``, ``"grow"``, ``"latency"`` (the latency rose past its
            tolerance), ``"drop"`` (a call was dropped: 429, 5xx, timeout, broken
            connection), ``"probe"`` and ``"probed"`` (the latency without load
            measured at half the cap); ``()`` otherwise.
    """

    available: Mapping[str, float]
    in_flight: int
    max_concurrency: int | None
    waiters: int
    paused_until: float | None
    next_wakeup: float | None
    last_wait: float | None
    counters: LimiterCounters = field(default_factory=LimiterCounters)
    limit_history: tuple[LimitChange, ...] = ()
