"""Exact sliding window: compacted logs of grants, and of usage held back by a server's
report, with when each leaves the window."""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right

from .bucket import NOISE

__all__ = ["WindowLog"]

_COMPACT_AT = 64
# What a clamp holds back from a window, when it comes back gradually, leaves it in equal
# parts of about 1/_PIECES of the limit (at most _PIECES of them; one if it is less).
_PIECES = 64


def _left(expiry: list[float], total: list[float], head: int, base: float, instant: float) -> float:
    """What ``_used`` counts of a log (its expiries, running totals, head and base) once
    it has dropped the entries that leave the window by ``instant``."""
    i = bisect_right(expiry, instant, head)
    if i == len(expiry):
        return 0.0
    return total[-1] - (total[i - 1] if i > head else base)


class WindowLog:
    """At most ``limit`` units granted in any window ``[s, s + window)``.

    The log keeps one entry per distinct grant instant: the instant it expires
    (``granted_at + window``) and the running total of all amounts up to and including it.
    Entries whose expiry is ``<= now`` have left the window. Memory is proportional to the
    number of distinct grant instants inside the window, not to history: expired entries
    are dropped in batches, and the running totals are re-based when they are.

    A grant's *ticket* is its entry's expiry instant; refunds find the entry by it.

    Usage that a server's report says is missing (:meth:`clamp`) is held in a second log
    of the same form beside the grants, with its own running totals, head and base, and
    the same compaction; it is dropped as a whole once all of it has left the window.
    Held pieces leave the window sooner than most grants, so keeping them apart lets a
    clamp merge its pieces among the held ones alone, never rewriting the grants. Every
    count of the window's usage adds up both logs. Memory is proportional to the distinct
    instants inside the window of both.
    """

    __slots__ = (
        "_base",
        "_expiry",
        "_fresh",
        "_head",
        "_held",
        "_held_base",
        "_held_head",
        "_held_next",
        "_held_total",
        "_last",
        "_mark",
        "_offset",
        "_total",
        "_was",
        "limit",
        "window",
    )

    def __init__(self, limit: float, window: float, now: float = 0.0) -> None:
        self.limit = limit
        self.window = window
        self._expiry: list[float] = []
        self._total: list[float] = []
        self._head = 0
        self._base = 0.0
        # The held log: empty exactly when nothing held is left in the window (as of the
        # latest instant seen), so that a take checks one list for it.
        self._held: list[float] = []
        self._held_total: list[float] = []
        self._held_head = 0
        self._held_base = 0.0
        self._held_next = math.inf  # the expiry of the first held entry not dropped
        self._last = now
        # Instants are kept on the clock the log started on: the caller's clock reads
        # ``_offset`` more (see rebase), so a move to another clock changes one number,
        # never the entries or the tickets already given out.
        self._offset = 0.0
        self._was: float | None = None  # the last total before the latest take, if merged
        self._mark = -math.inf  # the ticket of a grant made when a clamp last lowered it
        # Never held anything nor emptied its log of grants (see rebase).
        self._fresh = True

    def _expire(self, now: float) -> float:
        if now > self._last:
            self._last = now
        else:
            now = self._last
        head = self._head
        if head < len(self._expiry) and self._expiry[head] <= now:
            self._drop(now)
        if self._held_next <= now:
            self._drop_held(now)
        return now

    def _drop(self, now: float) -> None:
        """Drop the grants that left the window at ``now`` (some have)."""
        expiry = self._expiry
        head = bisect_right(expiry, now, self._head)
        self._base = self._total[head - 1]
        if head >= _COMPACT_AT and 2 * head >= len(expiry):
            self._fresh = False
            base = self._base
            del expiry[:head]
            self._total = [t - base for t in self._total[head:]]
            self._base = 0.0
            head = 0
        self._head = head

    def _drop_held(self, now: float) -> None:
        """Drop the held entries that left the window at ``now`` (some have): as
        :meth:`_drop` does, or the whole log once every entry has left."""
        held = self._held
        head = bisect_right(held, now, self._held_head)
        if head == len(held):
            held.clear()
            self._held_total.clear()
            self._held_head = 0
            self._held_base = 0.0
            self._held_next = math.inf
            return
        self._held_base = self._held_total[head - 1]
        if head >= _COMPACT_AT and 2 * head >= len(held):
            base = self._held_base
            del held[:head]
            self._held_total = [t - base for t in self._held_total[head:]]
            self._held_base = 0.0
            head = 0
        self._held_head = head
        self._held_next = held[head]

    def _used(self) -> float:
        # Exactly 0.0 when the window is empty, whatever rounding the totals carry.
        used = self._total[-1] - self._base if self._head < len(self._total) else 0.0
        if self._held:  # (what is left of it is in the window: see _drop_held)
            used += self._held_total[-1] - self._held_base
        return used

    def used(self, now: float) -> float:
        """Units granted, or held back by a clamp, in the window ending at ``now``."""
        self._expire(self._inside(now) if self._offset else now)
        return self._used()

    def level(self, now: float) -> float:
        """Units that could be granted at ``now``."""
        return self.limit - self.used(now)

    @property
    def maximum(self) -> float:
        """The largest single grant (the limit)."""
        return self.limit

    def at_rest(self, now: float) -> bool:
        """Whether the window is empty at ``now``: a new window would behave the same."""
        return self.used(now) == 0

    @property
    def ticket(self) -> float:
        """The ticket of the most recent grant (see :meth:`refund`)."""
        return self._expiry[-1] if self._expiry else 0.0

    @property
    def last_update(self) -> float:
        """The latest instant this state has seen."""
        return self._last + self._offset

    def __len__(self) -> int:
        """Entries kept: distinct grant instants, and distinct instants at which held
        usage leaves, not yet dropped."""
        return len(self._expiry) - self._head + len(self._held) - self._held_head

    def try_take(self, amount: float, now: float) -> bool:
        """Record a grant of ``amount`` at ``now`` if the window has room for it."""
        # The same check and record as take (one call: the single limiter's hot path).
        return self.take(amount, amount, now) is not None

    def _expiry_of(self, now: float) -> float:
        """When a grant made at ``now`` leaves the window: ``now + window`` rounded up, so
        that ``expiry - window`` never reads earlier than ``now`` (nor ``expiry`` as
        ``now`` itself, for a window below the clock's resolution there)."""
        expires = now + self.window
        if expires - self.window < now or expires <= now:
            expires = math.nextafter(expires, math.inf)
        return expires

    def fits(self, amount: float, now: float) -> bool:
        """Whether :meth:`try_take` would grant ``amount`` at ``now``."""
        self._expire(self._inside(now) if self._offset else now)
        return amount <= self.limit - self._used()

    def charge(self, amount: float, now: float) -> float:
        """Record a grant of ``amount`` at ``now`` unconditionally (the window may go over
        its limit: later callers then wait until enough has left it). Returns the grant's
        ticket."""
        expires = self._expiry_of(self._expire(self._inside(now) if self._offset else now))
        self._append(expires, amount)
        return expires

    def take(self, amount: float, need: float, now: float) -> float | None:
        """If ``need`` fits at ``now``, record a grant of ``amount`` (which may be more:
        the window then goes over its limit) and return its ticket; else return ``None``
        and change nothing that counts.

        :meth:`undo` takes the grant back exactly, for a request that another limit
        then refuses (all or nothing).
        """
        if self._offset:
            now = self._inside(now)
        if self._held:
            return self._take_held(amount, need, now)
        if now > self._last:
            self._last = now
        else:
            now = self._last
        expiry = self._expiry
        head = self._head
        if head < len(expiry) and expiry[head] <= now:
            self._drop(now)
            head = self._head
        total = self._total
        if head < len(expiry):
            last = total[-1]
            if need > self.limit - (last - self._base):
                return None
            window = self.window
            expires = now + window
            if expires - window < now or expires <= now:  # _expiry_of, inlined
                expires = math.nextafter(expires, math.inf)
            if expiry[-1] == expires:
                self._was = last
                total[-1] = last + amount
                return expires
            self._was = None
            expiry.append(expires)
            total.append(last + amount)
            return expires
        if need > self.limit:
            return None
        # An empty window: every entry has left it, and the base is the last total.
        expires = self._expiry_of(now)
        self._was = None
        expiry.append(expires)
        total.append(self._base + amount)
        return expires

    def _take_held(self, amount: float, need: float, now: float) -> float | None:
        """:meth:`take` while usage is held (``now`` on the log's clock): the same check,
        on the usage of both logs."""
        now = self._expire(now)
        if need > self.limit - self._used():
            return None
        expires = self._expiry_of(now)
        expiry, total = self._expiry, self._total
        if self._head < len(expiry):
            last = total[-1]
            if expiry[-1] == expires:
                self._was = last
                total[-1] = last + amount
                return expires
        else:
            last = self._base
        self._was = None
        expiry.append(expires)
        total.append(last + amount)
        return expires

    def undo(self) -> None:
        """Take back the latest :meth:`take` exactly, as if it had never happened."""
        if self._was is None:
            self._expiry.pop()
            self._total.pop()
        else:
            self._total[-1] = self._was

    def clamp(self, most: float, until: float, now: float, refill: float | None = None) -> bool:
        """Make at most ``most`` grantable from ``now`` until ``until`` (at most one window
        from now); with ``refill`` (units/s: the server's capacity comes back gradually),
        let it come back at that rate instead of all at ``until``.

        Records the missing usage as held: one piece that leaves the window at ``until``,
        or, with ``refill``, equal pieces of about 1/64 of the limit, each leaving as soon
        as that much has come back (never after ``until``). The pieces go in the held log,
        merged in order among the pieces held already; the grants are left as they are.
        Costs O(pieces + log n) plus the held entries that leave after the first new
        piece when it lowers anything, nothing otherwise. Returns whether it lowered the
        limit by more than rounding.
        """
        now = self._expire(self._inside(now) if self._offset else now)
        if self._offset:
            until = self._inside_up(until)
        excess = self.limit - self._used() - most
        if excess <= 0:
            return False
        lowered = excess > NOISE * self.limit  # not a rounding difference
        if lowered:
            self._mark = self._expiry_of(now)  # see refund
        earliest = math.nextafter(now, math.inf)
        until = max(min(until, now + self.window), earliest)
        if refill is None or refill <= 0:
            self._hold([(until, excess)])
            return lowered
        count = min(_PIECES, math.ceil(excess * _PIECES / self.limit))
        part = excess / count
        self._hold(
            [
                (max(min(now + k * part / refill, until), earliest), part)
                for k in range(1, count + 1)
            ]
        )
        return lowered

    def reset(self, now: float) -> None:
        """Forget every grant and held piece: the whole limit is grantable at ``now``. A
        grant made before gets nothing back from :meth:`refund` (it is forgotten)."""
        now = self._expire(self._inside(now) if self._offset else now)
        if self._head < len(self._expiry):
            self._drop(math.inf)
        if self._held_head < len(self._held):
            self._drop_held(math.inf)
        self._mark = max(self._mark, self._expiry_of(now))

    def retune(self, limit: float, now: float) -> None:
        """Admit at most ``limit`` per window from ``now`` on. The grants in the window
        count against it as they count against the old one: a lower limit grants
        nothing until enough of them have left the window. What a server's report holds
        back (see :meth:`clamp`) holds a raise back too, until the last of it leaves:
        the server said how much is left, whatever the limit here."""
        self._expire(self._inside(now) if self._offset else now)
        more = limit - self.limit
        if more > 0 and self._held_head < len(self._held):
            self._hold([(self._held[-1], more)])
        self.limit = limit

    def _hold(self, pieces: list[tuple[float, float]]) -> None:
        """Log ``pieces`` (``(expiry, amount)``, in order, all after the latest instant
        seen) among the held entries: one pass over those that expire after the first."""
        self._fresh = False
        held, total = self._held, self._held_total
        head = self._held_head
        if head == len(held) or held[-1] <= pieces[0][0]:
            for expires, amount in pieces:
                if head < len(held) and held[-1] == expires:
                    total[-1] += amount
                else:
                    held.append(expires)
                    total.append((total[-1] if total else self._held_base) + amount)
            self._held_next = held[head]
            return
        i = bisect_left(held, pieces[0][0], head)
        before = total[i - 1] if i > head else self._held_base  # the running total so far
        added = 0.0
        merged_expiry: list[float] = []
        merged_total: list[float] = []
        j, count = 0, len(pieces)
        for k in range(i, len(held)):
            expires = held[k]
            while j < count and pieces[j][0] < expires:
                added += pieces[j][1]
                if merged_expiry and merged_expiry[-1] == pieces[j][0]:
                    merged_total[-1] = before + added
                else:
                    merged_expiry.append(pieces[j][0])
                    merged_total.append(before + added)
                j += 1
            while j < count and pieces[j][0] == expires:
                added += pieces[j][1]
                j += 1
            before = total[k]
            merged_expiry.append(expires)
            merged_total.append(before + added)
        while j < count:
            added += pieces[j][1]
            if merged_expiry[-1] == pieces[j][0]:
                merged_total[-1] = before + added
            else:
                merged_expiry.append(pieces[j][0])
                merged_total.append(before + added)
            j += 1
        held[i:] = merged_expiry
        total[i:] = merged_total
        self._held_next = held[head]

    def _append(self, expires: float, amount: float) -> None:
        total = self._total
        if self._head < len(total) and self._expiry[-1] == expires:
            total[-1] += amount
        else:
            self._expiry.append(expires)
            total.append((total[-1] if total else self._base) + amount)

    def ready_at(self, amount: float, now: float) -> float:
        """The earliest instant ``t >= now`` at which ``amount`` fits in the window."""
        start = now
        now = self._expire(self._inside(now) if self._offset else now)
        if amount > self.limit:
            return math.inf
        if amount <= self.limit - self._used():
            return max(start, self._outside(now))
        # The first instant at which the check take makes passes is the expiry of a grant
        # or of a held entry. Binary search, over each log's expiries, on that very
        # predicate (monotone in time), with each log's usage computed as `_used` will
        # compute it once the log has dropped what left by then (the other log's by
        # bisection): the answer and the check agree to the last bit.
        limit = self.limit
        expiry, total, head = self._expiry, self._total, self._head
        held, held_total, held_head = self._held, self._held_total, self._held_head
        at = math.inf
        lo, hi = head, len(expiry)
        while lo < hi:
            mid = (lo + hi) // 2
            used = total[-1] - total[mid]
            if held:
                used += _left(held, held_total, held_head, self._held_base, expiry[mid])
            if amount <= limit - used:
                hi = mid
            else:
                lo = mid + 1
        if lo < len(expiry):
            at = expiry[lo]
        lo, hi = held_head, len(held)
        while lo < hi:
            mid = (lo + hi) // 2
            used = _left(expiry, total, head, self._base, held[mid])
            used += held_total[-1] - held_total[mid]
            if amount <= limit - used:
                hi = mid
            else:
                lo = mid + 1
        if lo < len(held):
            at = min(at, held[lo])
        return self._outside(at)

    # The caller's clock reads ``_offset`` more than the log's (after a rebase). Instants
    # are carried over rounded so that grants never leave the window early: the caller's
    # ``t`` reads as the latest instant here that is not after it.

    def _inside(self, t: float) -> float:
        offset = self._offset
        n = t - offset
        while n + offset > t:
            n = math.nextafter(n, -math.inf)
        return n

    def _inside_up(self, t: float) -> float:
        offset = self._offset
        n = t - offset
        while n + offset < t:
            n = math.nextafter(n, math.inf)
        return n

    def _outside(self, instant: float) -> float:
        """The earliest instant on the caller's clock that reads as ``instant`` or later
        here (so a check there agrees with ``ready_at``)."""
        if not self._offset:
            return instant
        t = instant + self._offset
        while self._inside(t) < instant:
            t = math.nextafter(t, math.inf)
        while True:
            earlier = math.nextafter(t, -math.inf)
            if self._inside(earlier) < instant:
                return t
            t = earlier

    def refund(self, amount: float, ticket: float, now: float) -> float:
        """Remove up to ``amount`` from the grant recorded under ``ticket``.

        Removing a grant from the log can only lower every window's sum, so this is always
        safe. A grant that has already left the window needs no refund. Returns the amount
        removed. A grant made before a clamp that lowered the window gets nothing back:
        the server's count already covers it (what it used, or all of it if the server
        gives nothing back), or it never reached the server, which the clamp, made from
        the server's count alone, did not charge for either.
        """
        if ticket <= self._mark:
            return 0.0
        self._expire(self._inside(now) if self._offset else now)
        expiry = self._expiry
        i = len(expiry) - 1  # the latest grant, the usual one settled (no search)
        if i < self._head or expiry[i] != ticket:
            i = bisect_left(expiry, ticket, self._head)
            if i == len(expiry) or expiry[i] != ticket:
                return 0.0
        total = self._total
        previous = total[i - 1] if i > 0 else self._base
        amount = min(amount, total[i] - previous)
        if amount <= 0.0:  # nothing left of it (rounding in the running totals: below 0)
            return 0.0
        for j in range(i, len(total)):
            total[j] -= amount
        return amount

    def stand_in(self, since: float) -> None:
        """Start as a stand-in for a limit shared elsewhere: nothing to change, since a
        window is charged with the grants made there themselves (:meth:`charge_elsewhere`)."""

    def charge_elsewhere(self, amount: float, at: float, since: float) -> None:
        """Charge a grant made elsewhere at ``at`` (whenever it was: a window counts it
        for as long as it is inside)."""
        self.charge(amount, at)

    def rebase(self, now: float) -> None:
        """Continue on a clock with another origin, as if no time had passed.

        Only the offset between the clocks changes: the log's order, and every ticket
        given out before, stay as they were. A log that never gave a ticket out nor
        held anything (the usual first move: from the clock of its making onto its
        event loop's) takes the new clock as its own instead, so that no instant needs
        carrying over from then on (a reset's mark included: it marks no ticket)."""
        if self._fresh and not self._expiry:
            self._last = now
            self._offset = 0.0
            self._mark = -math.inf
            return
        self._offset = now - self._last

    def __repr__(self) -> str:
        return (
            f"WindowLog(limit={self.limit!r}, window={self.window!r}, "
            f"entries={len(self)}, last={self._last!r})"
        )
