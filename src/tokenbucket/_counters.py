"""The counters of ``Limiter.statistics()``: what the stores count, and the waits.

A store counts what it serializes anyway (grants, settlements, reports: see
``_core.counts``). Waits end in the caller's task or thread, so they are counted by the
limiter under a lock of their own, only on the path that waited (or gave up).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import TYPE_CHECKING

from ._errors import AcquireTimeoutError
from ._statistics import WAIT_BOUNDS, LimiterCounters

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ._core import Counts

__all__ = ["Waits", "counters"]


class Waits:
    """The waits of one limiter's grants, and the acquisitions that gave up waiting."""

    __slots__ = (
        "_lock",
        "buckets",
        "cancellations",
        "failures",
        "observers",
        "seconds",
        "timeouts",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds = 0.0
        self.buckets = [0] * len(WAIT_BOUNDS)  # the first (granted at once) stays 0 here
        self.timeouts = 0
        self.cancellations = 0
        self.failures = 0
        # Told each wait (seconds, binding) after it is counted: metrics (see _otel).
        self.observers: tuple[Callable[[float, str | None], object], ...] = ()

    def granted(self, seconds: float) -> None:
        """A grant that queued waited ``seconds``."""
        bucket = bisect_left(WAIT_BOUNDS, seconds)
        with self._lock:
            self.seconds += seconds
            self.buckets[bucket] += 1

    def left(self, error: BaseException) -> None:
        """An acquisition left while waiting, with ``error``."""
        with self._lock:
            if isinstance(error, AcquireTimeoutError):
                self.timeouts += 1
            elif isinstance(error, Exception):
                self.failures += 1
            else:  # asyncio's CancelledError, trio's Cancelled, KeyboardInterrupt
                self.cancellations += 1


def counters(dims: tuple[str, ...], counts: Iterable[Counts], waits: Waits) -> LimiterCounters:
    """The snapshot of ``counts`` (of the stores of one limiter) and ``waits``."""
    admitted = queued = settles = rejections = pauses = corrections = 0
    paused = 0.0
    units = [0.0] * len(dims)
    refunded = [0.0] * len(dims)
    debt = [0.0] * len(dims)
    for count in counts:
        admitted += count.grants
        queued += count.queued
        settles += count.settles
        rejections += count.rejections
        pauses += count.pauses
        paused += count.paused
        corrections += count.corrections
        pairs = ((units, count.units), (refunded, count.refunded), (debt, count.charged))
        for totals, more in pairs:
            for index, value in enumerate(more[: len(dims)]):
                totals[index] += value
    with waits._lock:
        buckets = waits.buckets.copy()
        seconds = waits.seconds
        timeouts, cancellations, failures = waits.timeouts, waits.cancellations, waits.failures
    # Grants at once, as the stores counted them; those that queued are in the buckets
    # once their tasks have run (a grant lost to a cancellation never gets there).
    buckets[0] += admitted - queued
    return LimiterCounters(
        admitted=admitted,
        admitted_units=dict(zip(dims, units, strict=True)),
        waited=queued,
        wait_seconds=seconds,
        wait_histogram=dict(zip(WAIT_BOUNDS, buckets, strict=True)),
        timeouts=timeouts,
        cancellations=cancellations,
        failures=failures,
        settles=settles,
        refunded=dict(zip(dims, refunded, strict=True)),
        debt=dict(zip(dims, debt, strict=True)),
        rejections=rejections,
        pauses=pauses,
        paused_seconds=paused,
        corrections=corrections,
    )
