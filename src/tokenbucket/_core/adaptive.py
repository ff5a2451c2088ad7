"""Concurrency limits that find themselves: pure policies fed with the calls' outcomes.

A policy holds a limit on the calls in flight, between ``minimum`` and ``maximum``, and
moves it with what the calls it admitted tell: each :meth:`Policy.sample` is one call that
ended at ``now`` after ``rtt`` seconds, with ``in_flight`` calls held as it ended (itself
included), and whether it was *dropped*: the server refused or failed it (a 429, a 5xx,
a timeout, a broken connection). Pure: ``now`` is given, no clock is read.

Samples are taken in windows of ``window`` calls (a window with a drop closes after
``max_window`` seconds too), and the limit moves once per window, from the median
latency of the window's calls that were not dropped (and started after the limit last
moved: a window measures the limit in force; the median, as calls of very different
lengths move it less than a mean), the most calls it held at once, and whether any call
was dropped:

* a drop lowers the limit by ``backoff`` (x0.9), or by half the share of the window's
  calls that were dropped when that is more (more than a fifth of them; by half when
  all were), once: the drops
  of calls that started before the latest decrease were sent at a limit since lowered,
  and say nothing new (a burst of 429s lowers it once, not once each); a window with
  only such drops leaves the limit as it is;
* the limit grows only while it binds (the window held at least half of it), so that an
  application that sends little does not grow a limit it never tests;
* until the first sign of congestion (a drop; for :class:`Gradient`, a latency beyond
  its tolerance), it doubles per window: a slow start, so that a small ``initial`` is
  left in a few windows.

:class:`AIMD` (loss-based) then grows by one per window. :class:`Gradient`
(latency-based, after Netflix's Gradient2) compares the window's latency with the
latency without load, measured by probes (see the class): while the latency stays
within ``tolerance`` (x1.2) of it, the limit grows by ``queue`` (10 %) of itself,
smoothed by ``smoothing`` (0.2): 2 % per window; beyond, it shrinks in proportion (by
half at most, smoothed). It settles where the latency is about ``tolerance x (1 +
queue)`` the latency without load.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["AIMD", "Gradient", "Policy"]

_INF: Final = math.inf
# The drops of a window: none, only of calls started before the latest cut, a new one.
_NONE: Final = 0
_OLD: Final = 1
_NEW: Final = 2


class Policy:
    """What both policies share: the limit, its bounds, and the windows of samples."""

    __slots__ = (
        "_count",
        "_cut",
        "_dropped",
        "_drops",
        "_rtts",
        "_since",
        "_slow",
        "_start",
        "_widest",
        "backoff",
        "limit",
        "max_window",
        "maximum",
        "minimum",
        "window",
    )

    def __init__(
        self,
        initial: float,
        minimum: int,
        maximum: int,
        *,
        backoff: float = 0.9,
        window: int = 10,
        max_window: float = 1.0,
    ) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.limit = float(min(max(initial, minimum), maximum))
        self.backoff = backoff
        self.window = window
        self.max_window = max_window
        self._cut = -_INF  # when the limit was last lowered for a drop
        self._since = -_INF  # when it last moved: the latencies of calls started before
        self._start = -_INF  # when the window began (its first sample)
        self._count = 0  # calls in the window, and those dropped
        self._drops = 0
        self._rtts: list[float] = []  # the latencies of those not dropped
        self._widest = 0
        self._dropped = _NONE
        self._slow = True  # slow start: until the first sign of congestion

    @property
    def current(self) -> int:
        """The limit as a number of calls: the whole part, never below ``minimum``."""
        return max(self.minimum, int(self.limit))

    def rebase(self, now: float) -> None:
        """Samples come on another clock from now on (another event loop): what was
        timed on the old one is forgotten, the window starts again."""
        self._cut = self._since = -_INF
        self._count = self._drops = self._widest = 0
        self._rtts = []
        self._dropped = _NONE
        self._start = now

    def sample(self, now: float, rtt: float, in_flight: int, dropped: bool) -> str | None:
        """Take in one call's outcome; when it closes a window, move the limit and say
        why (``"drop"``, ``"grow"``, ``"latency"``, ``"probe"``, ``"probed"``), else
        ``None``. A latency measures the limit only if its call started after the limit
        last moved (others are not sampled); a drop counts whenever its call started."""
        started = now - rtt
        if not dropped and started < self._since:
            return None
        if not self._count:
            self._start = now
        self._count += 1
        if dropped:
            self._drops += 1
            # (A call that started before the latest cut tells nothing new.)
            self._dropped = max(self._dropped, _NEW if started >= self._cut else _OLD)
        else:
            self._rtts.append(rtt)
        if in_flight > self._widest:
            self._widest = in_flight
        # A window closes at ``window`` calls; at ``max_window`` seconds too when a call
        # in it was dropped (a drop is acted on within a second, however slow calls are).
        if self._count < self.window and (
            self._dropped != _NEW or now - self._start < self.max_window
        ):
            return None
        widest, drops, share = self._widest, self._dropped, self._drops / self._count
        rtts = sorted(self._rtts)
        # The median: calls of very different lengths (an LLM's) move it less than a mean.
        mean = rtts[len(rtts) // 2] if rtts else 0.0
        self._count = self._drops = self._widest = 0
        self._rtts = []
        self._dropped = _NONE
        if drops == _NEW:
            # By ``backoff``, or by more when most of the window was dropped (half of it
            # at most): a server that refuses most calls is far past its knee.
            self._cut = self._since = now
            self._slow = False
            self._set(self._cut_from() * min(self.backoff, 1.0 - share / 2))
            return "drop"
        if drops:
            return None
        before = self.limit
        reason = self._window(now, mean, widest)
        if self.limit != before:
            self._since = now
        return reason

    def _cut_from(self) -> float:
        """The limit a drop lowers."""
        return self.limit

    def _window(self, now: float, mean: float, widest: int) -> str | None:
        """Move the limit after a window without drops, of median latency ``mean``,
        that held at most ``widest`` calls at once; why, or ``None``."""
        raise NotImplementedError

    def _set(self, limit: float) -> None:
        self.limit = min(max(limit, float(self.minimum)), float(self.maximum))


class AIMD(Policy):
    """Loss-based: one more call per window while the limit binds (twice as many per
    window until the first drop), ``backoff`` times as many on a drop."""

    __slots__ = ()

    def _window(self, now: float, mean: float, widest: int) -> str | None:
        if widest * 2 < self.limit:
            return None  # the limit does not bind: nothing learned
        self._set(self.limit * 2 if self._slow else self.limit + 1)
        return "grow"


class Gradient(Policy):
    """Latency-based: the window's median latency against the latency without load.

    The latency without load is measured by a probe, and follows the windows' median
    latency down between probes (a fifth of the way per window: noise does not drag it
    to the lowest window seen). A probe halves the limit for one window of the calls
    that start then (a queue the limit allows, at most half of it, then drains), takes
    their median latency as the new one, and restores the limit; probes come
    ``probe_every`` seconds apart (``None``: never), and at least 20 latencies apart, so
    that they take little of the time whatever the calls' length. Without probes, a
    latency that rose for good (larger requests, a slower server) would be taken for
    queueing forever, and one that queueing raised never seen again."""

    __slots__ = ("_base", "_probed", "_resume", "probe_every", "queue", "smoothing", "tolerance")

    def __init__(
        self,
        initial: float,
        minimum: int,
        maximum: int,
        *,
        backoff: float = 0.9,
        window: int = 10,
        max_window: float = 1.0,
        smoothing: float = 0.2,
        tolerance: float = 1.2,
        queue: float = 0.1,
        probe_every: float | None = 30.0,
    ) -> None:
        super().__init__(
            initial, minimum, maximum, backoff=backoff, window=window, max_window=max_window
        )
        self.smoothing = smoothing
        self.tolerance = tolerance
        self.queue = queue
        self.probe_every = probe_every
        self._base = 0.0  # the latency without load (0: none yet)
        self._probed = -_INF  # when the latest probe ended (or the first window did)
        self._resume = 0.0  # while probing, the limit to restore (0: not probing)

    @property
    def base_latency(self) -> float:
        """The latency without load, as last measured (``0.0`` before any window)."""
        return self._base

    def rebase(self, now: float) -> None:
        super().rebase(now)
        if self._resume:  # (a probe on the old clock: ended)
            self._set(self._resume)
            self._resume = 0.0
        self._probed = now

    def _cut_from(self) -> float:
        resume, self._resume = self._resume, 0.0  # (a drop ends a probe)
        return resume or self.limit

    def _window(self, now: float, mean: float, widest: int) -> str | None:
        if self._resume:  # the probe's window: calls that started at half the limit
            self._base = mean
            self._set(self._resume)
            self._resume = 0.0
            self._probed = now
            return "probed"
        if not self._base:
            self._base = mean
        elif mean < self._base:  # a latency that falls is followed (a fifth per window)
            self._base += (mean - self._base) * 0.2
        every = self.probe_every
        if every is not None and now - self._probed >= max(every, 20 * self._base):
            if self._probed > -_INF:
                self._resume = self.limit
                self._set(self.limit / 2)
                return "probe"
            self._probed = now
        if widest * 2 < self.limit:
            return None  # the limit does not bind: nothing learned
        before = self.limit
        gradient = min(1.0, max(0.5, self.tolerance * self._base / mean)) if mean > 0 else 1.0
        if gradient < 1.0:
            self._slow = False
        elif self._slow:
            self._set(before * 2)
            return "grow"
        # Toward the limit the gradient allows, plus a queue of ``queue`` times it (so
        # that an idle server is found out): smoothed.
        target = before * gradient * (1.0 + self.queue)
        self._set(before + (target - before) * self.smoothing)
        return "grow" if self.limit >= before else "latency"
