"""The pure time math of each algorithm.

Theory of operation
-------------------
Each state object here answers three questions about one limit at an explicit instant
``now`` (seconds on any monotonic clock) and does no I/O, reads no clock and never sleeps:

* ``try_take(amount, now)``: can ``amount`` be granted now? If so, record the grant.
* ``ready_at(amount, now)``: the earliest instant at which ``try_take(amount, t)`` will
  succeed if nothing else happens first. The instant is rounded so that the check at
  exactly that instant succeeds, whatever the floating-point error: a timer set for it
  never fires "a hair too early" and spins.
* ``refund(amount, ticket, now)``: give back (part of) an earlier grant, never more than
  keeps the limit's guarantee intact.

Time never runs backwards inside a state: an instant earlier than one already seen is
treated as that latest instant, so a clock that steps back cannot mint capacity.
``rebase(now)`` moves the whole state onto a new clock (a new event loop whose clock has
another origin) as if no time had passed in between, which never over-admits.

The async layer (the waiter queue) is the only caller that reads a clock.
"""

from .bucket import BucketState
from .window import WindowLog

__all__ = ["BucketState", "WindowLog"]
