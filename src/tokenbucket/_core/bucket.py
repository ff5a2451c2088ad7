"""Token bucket state: a level that refills lazily at ``rate`` up to ``capacity``."""

from __future__ import annotations

import math

# A clamp lowers a level by more than this share of its capacity to count as a server's
# report below it (a smaller difference is rounding: it marks no grant as covered).
NOISE = 1e-9

__all__ = ["BucketState"]


class BucketState:
    """A token bucket at explicit instants.

    The level is not stored per instant but computed lazily: ``level(t)`` is the level at
    the last update plus ``rate * elapsed``, capped at ``capacity``. Over every interval
    of length ``T`` the amount granted is at most ``capacity + rate * T``.

    ``taken`` counts every unit ever granted (refunds do not lower it); a grant's *ticket*
    is the value of that counter just after it, which bounds how much a later refund may
    restore.
    """

    __slots__ = ("_level", "_mark", "_stamp", "_taken", "_was", "capacity", "rate")

    def __init__(self, rate: float, capacity: float, now: float = 0.0) -> None:
        self.rate = rate
        self.capacity = capacity
        self._level = capacity
        self._stamp = now
        self._taken = 0.0
        self._was = (capacity, now, 0.0)  # (level, stamp, taken) before the latest take
        self._mark = -math.inf  # the ticket of the last grant before a clamp lowered it

    def level(self, now: float) -> float:
        """The level at ``now`` (pure: changes nothing)."""
        if now <= self._stamp:
            return self._level
        level = self._level + (now - self._stamp) * self.rate
        return level if level < self.capacity else self.capacity

    @property
    def ticket(self) -> float:
        """The ticket of the most recent grant (see :meth:`refund`)."""
        return self._taken

    @property
    def last_update(self) -> float:
        """The latest instant this state has seen."""
        return self._stamp

    def try_take(self, amount: float, now: float) -> bool:
        """Take ``amount`` if the level at ``now`` covers it; report whether it did."""
        if now > self._stamp:
            level = self._level + (now - self._stamp) * self.rate
            if level > self.capacity:
                level = self.capacity
            self._level = level
            self._stamp = now
        else:
            level = self._level
        if level >= amount:
            self._level = level - amount
            self._taken += amount
            return True
        return False

    def fits(self, amount: float, now: float) -> bool:
        """Whether :meth:`try_take` would grant ``amount`` at ``now`` (changes nothing)."""
        return self.level(now) >= amount

    def charge(self, amount: float, now: float) -> float:
        """Take ``amount`` at ``now`` unconditionally; the level may go below zero (debt).

        A bucket in debt grants nothing until it has refilled past zero again, so later
        callers wait the overrun off. Returns the grant's ticket.
        """
        self._level = self.level(now) - amount
        if now > self._stamp:
            self._stamp = now
        self._taken += amount
        return self._taken

    @property
    def maximum(self) -> float:
        """The largest single grant (the capacity)."""
        return self.capacity

    def at_rest(self, now: float) -> bool:
        """Whether the bucket is full at ``now``: a new bucket would behave the same."""
        return self.level(now) >= self.capacity

    def take(self, amount: float, need: float, now: float) -> float | None:
        """If ``need`` fits at ``now``, charge ``amount`` (which may be more: debt) and
        return the grant's ticket; else return ``None`` and change nothing.

        :meth:`undo` takes the grant back exactly, for a request that another limit
        then refuses (all or nothing).
        """
        stamp = self._stamp
        if now > stamp:
            level = self._level + (now - stamp) * self.rate
            if level > self.capacity:
                level = self.capacity
        else:
            level = self._level
            now = stamp
        if level < need:
            return None
        self._was = (self._level, stamp, self._taken)
        self._stamp = now
        self._level = level - amount
        self._taken += amount
        return self._taken

    def undo(self) -> None:
        """Take back the latest :meth:`take` exactly, as if it had never happened."""
        self._level, self._stamp, self._taken = self._was

    def clamp(self, most: float, until: float, now: float, refill: float | None = None) -> bool:
        """Lower the level at ``now`` to at most ``most`` (never raises it).

        A grant made before a clamp that lowered the level gets nothing back from
        :meth:`refund`: the server's count already covers it (what it used, or all of it
        if the server gives nothing back), or it never reached the server, which the
        clamp, made from the server's count alone, did not charge for either.

        ``until`` (when the server's own count resets) and ``refill`` are not needed: the
        level refills at the bucket's rate from ``now``, which is never faster than the
        server allows once it is fitted to it (:meth:`retune`). Returns whether it lowered
        the level by more than rounding.
        """
        del until, refill
        level = self.level(now)
        if now > self._stamp:
            self._stamp = now
        if most < level:
            self._level = most
            if level - most > NOISE * self.capacity:  # not a rounding difference
                self._mark = self._taken  # the server's count covers every grant so far
                return True
        else:
            self._level = level
        return False

    def since(self, ticket: float) -> float:
        """How much was granted after the grant whose ticket is ``ticket``."""
        return max(0.0, self._taken - ticket)

    def reset(self, now: float) -> None:
        """Full at ``now``, as if nothing had been granted; a grant made before gets
        nothing back from :meth:`refund` (it is forgotten)."""
        if now > self._stamp:
            self._stamp = now
        self._level = self.capacity
        self._mark = self._taken

    def retune(self, rate: float, capacity: float, now: float) -> None:
        """Refill at ``rate`` up to ``capacity`` from ``now`` on (the level so far is
        kept, down to the new capacity)."""
        level = self.level(now)
        if now > self._stamp:
            self._stamp = now
        self.rate = rate
        self.capacity = capacity
        self._level = min(level, capacity)

    def ready_at(self, amount: float, now: float) -> float:
        """The earliest instant ``t >= now`` with ``level(t) >= amount``.

        The answer is nudged up until ``level(t) >= amount`` holds in floating point, so
        ``try_take(amount, t)`` succeeds if nothing else happens first.
        """
        start = now if now > self._stamp else self._stamp
        if amount > self.capacity:
            return math.inf
        deficit = amount - self.level(start)
        if deficit <= 0:
            return start
        t = start + deficit / self.rate
        step = math.ulp(t)
        while self.level(t) < amount:
            t += step
            step *= 2
        return t

    def refund(self, amount: float, ticket: float, now: float) -> float:
        """Give back up to ``amount`` of the grant whose ticket is ``ticket``.

        What a refund may restore is bounded so that the guarantee holds as if the grant
        had never been made: at most ``amount``, and never more than ``capacity`` minus what
        was granted after it; nothing for a grant made before a clamp (see :meth:`clamp`).
        Returns the amount actually restored.
        """
        level = self.level(now)
        if now > self._stamp:
            self._stamp = now
        self._level = level
        if ticket <= self._mark:
            return 0.0
        # Intervals that contain the refunded grant gain `amount` of slack; those that
        # start after it gain nothing, and hold at most what was granted since.
        target = min(level + amount, self.capacity - (self._taken - ticket))
        if target <= level:
            return 0.0
        self._level = target
        return target - level

    def rebase(self, now: float) -> None:
        """Continue on a clock with another origin, as if no time had passed."""
        self._stamp = now

    def stand_in(self, since: float) -> None:
        """Start as a stand-in for a limit shared elsewhere: empty at ``since``, as if
        everything up to then had been granted there (it must earn what it grants)."""
        self._level = 0.0
        self._stamp = since
        self._was = (0.0, since, self._taken)

    def charge_elsewhere(self, amount: float, at: float, since: float) -> None:
        """Charge a grant made elsewhere at ``at``; one not after ``since`` is already in
        the empty start (see :meth:`stand_in`)."""
        if at > since:
            self.charge(amount, at)

    def __repr__(self) -> str:
        return (
            f"BucketState(rate={self.rate!r}, capacity={self.capacity!r}, "
            f"level={self._level!r}, stamp={self._stamp!r})"
        )
