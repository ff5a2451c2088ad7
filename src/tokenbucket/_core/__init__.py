"""The pure time math of each algorithm.

Theory of operation
-------------------
Each state object here answers questions about its limits at an explicit instant ``now``
(seconds on any monotonic clock) and does no I/O, reads no clock and never sleeps. The
single limits (:class:`BucketState`, :class:`WindowLog`) share one protocol,
:class:`LimitState`:

* ``try_take(amount, now)``: can ``amount`` be granted now? If so, record the grant.
* ``fits``/``charge``: the same check without recording, and a grant recorded
  unconditionally (which may put the limit in debt). ``take(amount, need, now)`` is
  both at once, and ``undo()`` takes the latest ``take`` back exactly: a request over
  several limits is granted all or nothing with one call per limit.
* ``ready_at(amount, now)``: the earliest instant at which ``try_take(amount, t)`` will
  succeed if nothing else happens first. The instant is rounded so that the check at
  exactly that instant succeeds, whatever the floating-point error: a timer set for it
  never fires "a hair too early" and spins.
* ``refund(amount, ticket, now)``: give back (part of) an earlier grant, never more than
  keeps the limit's guarantee intact.
* ``reset(now)``: forget every grant (refunds of earlier grants then give nothing).
* ``clamp(most, until, now, refill)``: a server says at most ``most`` is left until
  ``until`` (or, with ``refill``, coming back at that rate); whether that lowered it by
  more than rounding

:class:`MultiState` (``multi.py``) combines several of them with a concurrency count and
a pause, for requests that take several dimensions at once.

Time never runs backwards inside a state: an instant earlier than one already seen is
treated as that latest instant, so a clock that steps back cannot mint capacity.
``rebase(now)`` moves a state onto a new clock (a new event loop whose clock has another
origin) as if no time had passed in between, which never over-admits.

The async layer (the waiter queue) is the only caller that reads a clock.
"""

from __future__ import annotations

from typing import Protocol

from .bucket import BucketState
from .counts import Counts
from .multi import REFUSED_PAUSE, REFUSED_SLOT, Meter, MultiState, RateSpec, Request
from .window import WindowLog

__all__ = [
    "REFUSED_PAUSE",
    "REFUSED_SLOT",
    "BucketState",
    "Counts",
    "LimitState",
    "Meter",
    "MultiState",
    "RateSpec",
    "Request",
    "WindowLog",
]


class LimitState(Protocol):
    """What every single-limit state answers (see the module's docstring)."""

    @property
    def maximum(self) -> float: ...
    @property
    def ticket(self) -> float: ...
    @property
    def last_update(self) -> float: ...
    def level(self, now: float) -> float: ...
    def fits(self, amount: float, now: float) -> bool: ...
    def try_take(self, amount: float, now: float) -> bool: ...
    def charge(self, amount: float, now: float) -> float: ...
    def take(self, amount: float, need: float, now: float) -> float | None: ...
    def undo(self) -> None: ...
    def ready_at(self, amount: float, now: float) -> float: ...
    def refund(self, amount: float, ticket: float, now: float) -> float: ...
    def clamp(self, most: float, until: float, now: float, refill: float | None = None) -> bool: ...
    def at_rest(self, now: float) -> bool: ...
    def rebase(self, now: float) -> None: ...
    def stand_in(self, since: float) -> None: ...
    def reset(self, now: float) -> None: ...
    def charge_elsewhere(self, amount: float, at: float, since: float) -> None: ...
