"""Hypothesis state machines: each pure state against a naive reference model.

The references are written to be obviously right rather than fast:

* :class:`NaiveBucket` keeps the whole history and recomputes the level from it each
  time, in the closed form of the token-bucket recursion: the least, over every event
  ``k``, of ``cap_k + rate * (t - t_k) - (amounts from k on)`` (``cap_k`` is the capacity,
  or what a clamp lowered it to; a refund is a negative amount).
* :class:`NaiveWindow` is two lists of (expiry, amount) entries, the grants and what
  clamps held back, summed by brute force.
* For :class:`MultiState`: one naive model per meter, a slot counter and a pause.

Besides agreeing with the model, every machine keeps a :class:`Ledger` of what it was
granted (and what each holder gave back) and checks G1 on it directly:

* bucket: over every interval ending with a checked grant, the net amount admitted is at
  most ``capacity + rate * T``;
* window: in every window ending with a checked grant, the net amount admitted is at
  most ``limit``.

A *checked* grant is one admitted by a check (``try_take``); a ``charge`` (a settle's
overrun, a request above a meter's maximum) is recorded unconditionally, is counted in
every interval, but no interval needs to end at one (debt is waited off afterwards).
A refund counts as the holder not having used that part of its grant, as the states
document ("as if the grant had never been made").

On a window, a grant made at ``u`` counts at ``t`` while ``t - window < u`` computes
true in floating point (its expiry is ``u + window`` rounded up to make it so).

Time moves by arbitrary non-negative steps (zero, one ulp, tiny, large) and the states
are re-based onto other clock origins, with grants held across (and refunded or settled
after) a re-base. A bucket's model and ledger shift their instants as the state does. A
window keeps its instants on the clock it started on plus one offset: the model does the
same, with the same conversions (a caller's instant rounded down onto the window's
clock, a clamp's end rounded up, an answer carried back as the earliest caller instant
that reads as it). The window's ledger keeps each grant at the caller's instant, and
checks G1 exactly as above between grants made on the same clock; across a re-base,
on the window's own clock, up to its rounding.

One known bug (``tests/core/test_window_rebase.py``, strict xfail) is kept out of the
window ledgers: after a re-base, a grant is put at the window's instant rounded down and
can leave the window up to an ulp of the window's clock early; between grants made on a
re-based clock G1 is checked up to that.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from fractions import Fraction

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tokenbucket import Rate
from tokenbucket._core import BucketState, Meter, MultiState, Request, WindowLog
from tokenbucket._core.bucket import NOISE

INF = math.inf
SETTINGS = settings(max_examples=120, stateful_step_count=40, deadline=None)

starts = st.sampled_from([0.0, 0.1, 1e5 + 0.1, 1e6])
origins = st.one_of(st.sampled_from([0.0, 0.3, 1e6 + 0.7]), st.floats(0.0, 1e6))
fractions = st.one_of(st.sampled_from([0.0, 1 / 3, 0.5, 1.0]), st.floats(0.0, 1.0))
shares = st.one_of(st.sampled_from([1.0, 0.5]), st.floats(0.01, 1.0))  # of what is left
hairs = st.sampled_from(["ulp", 1e-12, 1e-9, 1e-6])
horizons = st.one_of(st.just(0.0), st.floats(0.0, 1.5))  # in refill times / windows


def before(t: float) -> float:
    return math.nextafter(t, -INF)


def hair(now: float, kind: str | float) -> float:
    return math.nextafter(now, INF) if kind == "ulp" else now + float(kind)


# -- naive models ------------------------------------------------------------------------------


class NaiveBucket:
    """A token bucket as its full history; the level recomputed from all of it."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.last = now  # the latest instant of a call that records something
        self.events: list[tuple[float, float, float]] = []  # (instant, cap, amount)
        self.grants: list[float] = []  # gross amounts granted; a ticket is an index
        self.mark = -1  # the last grant a lowering clamp covers: it gets nothing back

    def _at(self, now: float) -> float:
        return now if now > self.last else self.last

    def level(self, now: float) -> float:
        t = self._at(now)
        level, suffix = self.capacity, 0.0
        for instant, cap, amount in reversed(self.events):
            suffix += amount
            level = min(level, cap + self.rate * (t - instant) - suffix)
        return level

    def see(self, now: float) -> None:
        """A check at ``now`` (a take that fails still moves the bucket's clock)."""
        self.last = self._at(now)

    def grant(self, amount: float, now: float) -> int:
        self.last = self._at(now)
        self.events.append((self.last, self.capacity, amount))
        self.grants.append(amount)
        return len(self.grants) - 1

    def refund(self, amount: float, ticket: int, now: float) -> float:
        self.last = t = self._at(now)
        if ticket <= self.mark:
            return 0.0
        level = self.level(t)
        after = sum(self.grants[ticket + 1 :])
        restored = max(0.0, min(level + amount, self.capacity - after) - level)
        self.events.append((t, self.capacity, -restored))
        return restored

    def clamp(self, most: float, now: float) -> None:
        self.last = self._at(now)
        if self.level(self.last) - most > NOISE * self.capacity:
            self.mark = len(self.grants) - 1
        self.events.append((self.last, min(self.capacity, most), 0.0))

    def ready_at(self, amount: float, now: float) -> float:
        t = self._at(now)
        if amount > self.capacity:
            return INF
        deficit = amount - self.level(t)
        return t if deficit <= 0 else t + deficit / self.rate

    def rebase(self, now: float) -> None:
        shift = now - self.last
        self.events = [(t + shift, cap, a) for t, cap, a in self.events]
        self.last = now


def inside(t: float, offset: float) -> float:
    """The caller's ``t`` on a window's clock: from ``t - offset`` down to an instant
    that reads as ``t`` or earlier."""
    n = t - offset
    while n + offset > t:
        n = math.nextafter(n, -INF)
    return n


def inside_up(t: float, offset: float) -> float:
    n = t - offset
    while n + offset < t:
        n = math.nextafter(n, INF)
    return n


def outside(instant: float, offset: float) -> float:
    """The earliest caller instant that reads as ``instant`` or later (by search)."""
    t = instant + offset
    while inside(t, offset) < instant:
        t = math.nextafter(t, INF)
    while inside(before(t), offset) >= instant:
        t = before(t)
    return t


class NaiveWindow:
    """A sliding window as plain lists of (expiry, amount) entries: the grants, and the
    usage that clamps held back.

    Instants are on the window's own clock; the caller's reads ``offset`` more."""

    def __init__(self, limit: float, window: float, now: float) -> None:
        self.limit = limit
        self.window = window
        self.last = now  # every call on a window moves its clock
        self.mark = -INF  # the ticket of a grant made at the last lowering clamp
        self.offset = 0.0
        self.fresh = True  # nothing granted nor held yet
        self.entries: list[list[float]] = []  # grants: [expiry, amount]
        self.holds: list[list[float]] = []  # held back by clamps: [expiry, amount]

    def inside(self, t: float) -> float:
        return inside(t, self.offset) if self.offset else t

    def outside(self, instant: float) -> float:
        return outside(instant, self.offset) if self.offset else instant

    @property
    def last_update(self) -> float:
        return self.last + self.offset

    def _at(self, now: float) -> float:
        """Move the clock to the caller's ``now``; the instant on the window's clock."""
        now = self.inside(now)
        self.last = now if now > self.last else self.last
        return self.last

    def used_at(self, t: float) -> float:
        """Units in the window at the window's ``t`` (pure)."""
        return sum(a for e, a in self.entries + self.holds if e > t)

    def used_by(self, t: float) -> float:
        """Units in the window at the caller's ``t`` (pure)."""
        return self.used_at(max(self.inside(t), self.last))

    def used(self, now: float) -> float:
        return self.used_at(self._at(now))

    def live(self) -> int:
        """Distinct instants at which grants, and held usage, leave the window."""
        grants = {e for e, _ in self.entries if e > self.last}
        return len(grants) + len({e for e, _ in self.holds if e > self.last})

    def _add(self, expiry: float, amount: float, held: bool = False) -> None:
        self.fresh = False
        entries = self.holds if held else self.entries
        for entry in entries:
            if entry[0] == expiry:
                entry[1] += amount
                return
        entries.append([expiry, amount])

    def expiry(self, now: float) -> float:
        """``t + window`` rounded up until ``expiry - window`` is not before ``t``."""
        t = self._at(now)
        expires = t + self.window
        while expires - self.window < t or expires <= t:
            expires = math.nextafter(expires, INF)
        return expires

    def grant(self, amount: float, now: float) -> float:
        expires = self.expiry(now)
        self._add(expires, amount)
        return expires

    def refund(self, amount: float, ticket: float, now: float) -> float:
        t = self._at(now)
        if ticket <= self.mark:
            return 0.0
        for entry in self.entries:
            if entry[0] == ticket and ticket > t:
                removed = min(amount, entry[1])
                entry[1] -= removed
                return removed
        return 0.0

    def clamp(self, most: float, until: float, now: float, refill: float | None = None) -> None:
        """Hold back the excess over ``most``: until ``until``, or in parts of at most
        1/64 of the limit, the k-th leaving once k parts have come back at ``refill``."""
        t = self._at(now)
        until = inside_up(until, self.offset) if self.offset else until
        excess = self.limit - self.used_at(t) - most
        if excess > 0:
            if excess > NOISE * self.limit:
                self.mark = self.expiry(now)  # the grants so far get nothing back
            until = min(until, t + self.window)
            earliest = math.nextafter(t, INF)
            if refill is None:
                self._add(max(until, earliest), excess, held=True)
                return
            count = min(64, math.ceil(excess * 64 / self.limit))
            part = excess / count
            for k in range(1, count + 1):
                self._add(max(min(t + k * part / refill, until), earliest), part, held=True)

    def ready_at(self, amount: float, now: float, slack: float = 0.0) -> float:
        """The first caller instant ``amount`` fits, counting ``slack`` more room than
        there is."""
        t = self._at(now)
        if amount > self.limit:
            return INF
        expiries = sorted(e for e, _ in self.entries + self.holds if e > t)
        for instant in [t, *expiries]:
            if amount <= self.limit - self.used_at(instant) + slack:
                return max(now, self.outside(instant)) if instant == t else self.outside(instant)
        return self.outside(expiries[-1])  # all gone (only a negative slack gets here)

    def rebase(self, now: float) -> None:
        """Onto a clock that reads ``now`` at this one's latest instant: one offset; a
        window that never granted nor held anything takes that clock as its own."""
        if self.fresh:
            self.last, self.offset = now, 0.0
            return
        self.offset = now - self.last


# -- the G1 ledger -----------------------------------------------------------------------------


@dataclass
class Grant:
    instant: float  # on the caller's clock at the time
    expiry: float  # buckets: unused; windows: the state's ticket
    amount: float
    checked: bool  # admitted by a check, not charged unconditionally
    returned: float = 0.0
    frame: int = 0  # windows: how many re-bases came before it

    @property
    def left(self) -> float:
        return self.amount - self.returned


@dataclass
class Ledger:
    """Every grant of one limit, and G1 checked on it by brute force."""

    kind: str  # "bucket" or "window"
    bound: float  # capacity or limit
    per: float  # rate (bucket) or window length
    tol: float
    grants: list[Grant] = field(default_factory=list)
    # windows: per frame (clock), the offset of the caller's clock to the window's own
    offsets: list[float] = field(default_factory=lambda: [0.0])

    def add(self, amount: float, now: float, expiry: float, *, checked: bool) -> Grant:
        grant = Grant(now, expiry, amount, checked, frame=len(self.offsets) - 1)
        self.grants.append(grant)
        if checked:
            self.check(len(self.grants) - 1)
        return grant

    def check(self, j: int) -> None:
        """G1 for every interval (bucket) or window ending with grant ``j``."""
        end = self.grants[j]
        if self.kind == "bucket":
            admitted = 0.0
            for i in range(j, -1, -1):
                start = self.grants[i]
                admitted += start.left
                allowed = self.bound + self.per * (end.instant - start.instant)
                assert admitted <= allowed + self.tol, ("G1", start, end, admitted)
        else:
            admitted = sum(g.left for g in self.grants[: j + 1] if self._counts(g, end))
            assert admitted <= self.bound + self.tol, ("G1", end, admitted)

    def _counts(self, grant: Grant, end: Grant) -> bool:
        """Whether ``grant`` is in the window that ends with ``end`` (made after it)."""
        t, u, window = end.instant, grant.instant, self.per
        offset = self.offsets[end.frame]
        # The window's own clock (its instants are t - offset) and one ulp of it.
        ulp = math.ulp(abs(t - offset) + window)
        if grant.frame == end.frame:
            # Exactly as the check computes it; on a re-based clock up to an ulp of the
            # window's own (the known bug, see the module docstring).
            slack = 4 * ulp if offset else 0.0
            return t - window < u - slack
        # Across clocks: on the window's own, exactly, up to the rounding of the offsets
        # and of the conversions onto it.
        other = self.offsets[grant.frame]
        ulp = math.ulp(max(abs(t), abs(u), abs(offset), abs(other), ulp))
        on_end = Fraction(t) - Fraction(offset)
        on_grant = Fraction(u) - Fraction(other)
        return on_end - Fraction(window) < on_grant - Fraction(4 * ulp)

    def rebase(self, offset: float) -> None:
        """Windows: the caller's clock now reads ``offset`` more than the window's."""
        self.offsets.append(offset)

    def check_all(self) -> None:
        for j, grant in enumerate(self.grants):
            if grant.checked:
                self.check(j)

    def shift(self, by: float) -> None:
        """Buckets: move onto a clock ``by`` seconds ahead."""
        for grant in self.grants:
            grant.instant += by


# -- BucketState -------------------------------------------------------------------------------


@dataclass
class BucketHeld:
    grant: Grant
    ticket: float  # the state's
    index: int  # the model's


class BucketMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = BucketState(1.0, 1.0)
        self.model = NaiveBucket(1.0, 1.0, 0.0)
        self.ledger = Ledger("bucket", 1.0, 1.0, 0.0)
        self.held: list[BucketHeld] = []
        self.now = 0.0
        self.tol = 0.0

    @initialize(
        rate=st.sampled_from([0.5, 3.0, 100.0, 1 / 3]),
        capacity=st.sampled_from([1.0, 7.5, 10.0, 1000.0]),
        start=starts,
    )
    def start(self, rate: float, capacity: float, start: float) -> None:
        self.state = BucketState(rate, capacity, start)
        self.model = NaiveBucket(rate, capacity, start)
        # Rounding: of the level's magnitude, and of rate * (an instant's magnitude).
        self.tol = 1e-9 * capacity + 256 * rate * math.ulp(4e6)
        self.ledger = Ledger("bucket", capacity, rate, 4 * self.tol)
        self.now = start

    @property
    def refill(self) -> float:
        return self.state.capacity / self.state.rate

    @rule(by=horizons)
    def advance(self, by: float) -> None:
        self.now += by * self.refill

    @rule(kind=hairs)
    def advance_a_hair(self, kind: str | float) -> None:
        self.now = hair(self.now, kind)

    def _record(self, amount: float, *, checked: bool) -> None:
        index = self.model.grant(amount, self.now)
        grant = self.ledger.add(amount, self.now, INF, checked=checked)
        self.held.append(BucketHeld(grant, self.state.ticket, index))

    @rule(share=fractions)
    def try_take(self, share: float) -> None:
        amount = share * self.state.capacity
        level = self.model.level(self.now)
        ok = self.state.try_take(amount, self.now)
        self.model.see(self.now)
        if level >= amount + self.tol:
            assert ok, (amount, level)
        elif level < amount - self.tol:
            assert not ok, (amount, level)
        if ok:
            self._record(amount, checked=True)

    @rule(share=st.floats(0.0, 1.5))
    def charge(self, share: float) -> None:
        amount = share * self.state.capacity
        ticket = self.state.charge(amount, self.now)
        assert ticket == self.state.ticket
        self._record(amount, checked=False)

    @precondition(lambda self: any(h.grant.left > 0 for h in self.held))
    @rule(pick=st.integers(0, 1000), share=shares)
    def refund(self, pick: int, share: float) -> None:
        open_ = [h for h in self.held if h.grant.left > 0]
        held = open_[pick % len(open_)]
        amount = share * held.grant.left
        restored = self.state.refund(amount, held.ticket, self.now)
        expected = self.model.refund(amount, held.index, self.now)
        assert 0.0 <= restored <= amount + self.tol
        assert abs(restored - expected) <= self.tol, (restored, expected)
        held.grant.returned += amount

    @rule(share=fractions, until=horizons)
    def clamp(self, share: float, until: float) -> None:
        most = share * self.state.capacity
        # Within rounding of the line between lowering the bucket and not (a level off
        # by a rebase's rounding), whether the grants so far get anything back is the
        # state's call; the model follows it.
        excess = self.model.level(self.now) - most
        ambiguous = abs(excess - NOISE * self.state.capacity) <= self.tol
        mark = self.model.mark
        self.state.clamp(most, self.now + until * self.refill, self.now)
        self.model.clamp(most, self.now)
        if ambiguous:
            lowered = self.state._mark == self.state._taken
            self.model.mark = len(self.model.grants) - 1 if lowered else mark
        assert self.state.level(self.now) <= most

    @rule(share=fractions, go=st.booleans())
    def ready_at(self, share: float, go: bool) -> None:
        amount = share * self.state.capacity
        t = self.state.ready_at(amount, self.now)
        expected = self.model.ready_at(amount, self.now)
        rate = self.state.rate
        slack = 2 * self.tol / rate + 16 * math.ulp(t)
        assert self.now <= t <= expected + slack, (t, expected)
        assert t >= expected - slack, (t, expected)
        # At ready_at the take succeeds; clearly before it, it fails.
        assert copy.copy(self.state).try_take(amount, t)
        earlier = t - 2 * slack
        if earlier > self.now:
            assert not copy.copy(self.state).try_take(amount, earlier), (t, earlier)
        if go:
            self.now = t
            assert self.state.try_take(amount, t)
            self._record(amount, checked=True)

    @rule(origin=origins)
    def rebase(self, origin: float) -> None:
        assert self.model.last == self.state.last_update
        self.ledger.shift(origin - self.state.last_update)
        self.state.rebase(origin)
        self.model.rebase(origin)
        self.now = origin  # the bucket's tickets survive a re-base: held grants stay

    @invariant()
    def agrees_with_the_model(self) -> None:
        level = self.state.level(self.now)
        expected = self.model.level(self.now)
        assert abs(level - expected) <= self.tol, (level, expected, self.state)
        assert level <= self.state.capacity
        assert abs(self.state.ticket - sum(self.model.grants)) <= self.tol
        if expected >= self.state.capacity + self.tol:
            raise AssertionError("the model is above capacity")
        if expected < self.state.capacity - self.tol:
            assert not self.state.at_rest(self.now)

    def teardown(self) -> None:
        self.ledger.check_all()


def test_G1_bucket_machine() -> None:
    run_state_machine_as_test(BucketMachine, settings=SETTINGS)


# -- WindowLog -------------------------------------------------------------------------------------


@dataclass
class WindowHeld:
    grant: Grant
    ticket: float


def window_bits(log: WindowLog) -> dict[str, object]:
    """Every slot of ``log`` but the undo scratch, floats bit for bit (by ``hex``)."""

    def bits(value: object) -> object:
        if isinstance(value, float):
            return value.hex()
        if isinstance(value, list):
            return [bits(v) for v in value]
        return value

    return {slot: bits(getattr(log, slot)) for slot in WindowLog.__slots__ if slot != "_was"}


class WindowMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = WindowLog(1.0, 1.0)
        self.model = NaiveWindow(1.0, 1.0, 0.0)
        self.ledger = Ledger("window", 1.0, 1.0, 0.0)
        self.held: list[WindowHeld] = []
        self.now = 0.0
        self.tol = 1e-9
        self.fuzzy = 0  # clamps whose excess was within rounding of zero
        # How far apart in time the state's held pieces and the model's may be: a clamp
        # with a refill rate puts its pieces at instants computed from the excess, which
        # the state and the model round differently (up to `tol`).
        self.slop = 0.0

    @initialize(
        limit=st.sampled_from([1.0, 3.0, 7.5, 10.0]),
        window=st.sampled_from([1.0, 0.3, 60.0]),
        start=starts,
    )
    def start(self, limit: float, window: float, start: float) -> None:
        self.state = WindowLog(limit, window, start)
        self.model = NaiveWindow(limit, window, start)
        self.tol = 1e-9 * limit
        self.ledger = Ledger("window", limit, window, 4 * self.tol)
        self.now = start

    @rule(by=horizons)
    def advance(self, by: float) -> None:
        self.now += by * self.state.window

    @rule(kind=hairs)
    def advance_a_hair(self, kind: str | float) -> None:
        self.now = hair(self.now, kind)

    def _record(self, amount: float, *, checked: bool) -> None:
        expiry = self.model.grant(amount, self.now)
        assert self.state.ticket == expiry
        grant = self.ledger.add(amount, self.now, expiry, checked=checked)
        self.held.append(WindowHeld(grant, expiry))

    @rule(share=fractions)
    def try_take(self, share: float) -> None:
        amount = share * self.state.limit
        room = self.state.limit - self.model.used(self.now)
        fits = self.state.fits(amount, self.now)
        ok = self.state.try_take(amount, self.now)
        assert ok == fits
        if room >= amount + self.tol:
            assert ok, (amount, room)
        elif room < amount - self.tol:
            assert not ok, (amount, room)
        if ok:
            self._record(amount, checked=True)

    @rule(share=st.floats(0.0, 1.5))
    def charge(self, share: float) -> None:
        amount = share * self.state.limit
        ticket = self.state.charge(amount, self.now)
        assert ticket == self.state.ticket
        self._record(amount, checked=False)

    @precondition(lambda self: any(h.grant.left > 0 for h in self.held))
    @rule(pick=st.integers(0, 1000), share=shares)
    def refund(self, pick: int, share: float) -> None:
        open_ = [h for h in self.held if h.grant.left > 0]
        held = open_[pick % len(open_)]
        amount = share * held.grant.left
        removed = self.state.refund(amount, held.ticket, self.now)
        expected = self.model.refund(amount, held.ticket, self.now)
        assert abs(removed - expected) <= self.tol, (removed, expected)
        # Removed in full while the grant is in the window, nothing once it has left, nor
        # once a server's report (a clamp that lowered the window) covers it. (The ticket
        # is on the window's clock, which a re-base does not move.)
        covered = held.ticket <= self.model.last or held.ticket <= self.model.mark
        assert abs(removed - (0.0 if covered else amount)) <= self.tol
        held.grant.returned += amount

    @precondition(lambda self: any(h.grant.left > 0 for h in self.held))
    @rule(pick=st.integers(0, 1000), factor=st.sampled_from([0.5, 1.0, 1.5]) | st.floats(0, 2))
    def refund_entry(self, pick: int, factor: float) -> None:
        """A refund of a ticket that several grants share (merged at one instant), of up
        to more than is left of them all: at most what is left comes out."""
        open_ = [h for h in self.held if h.grant.left > 0]
        ticket = open_[pick % len(open_)].ticket
        sharing = [h.grant for h in self.held if h.ticket == ticket]
        left = sum(g.left for g in sharing)
        amount = factor * left
        removed = self.state.refund(amount, ticket, self.now)
        expected = self.model.refund(amount, ticket, self.now)
        assert abs(removed - expected) <= self.tol, (removed, expected)
        assert 0.0 <= removed <= amount
        covered = ticket <= self.model.last or ticket <= self.model.mark
        assert abs(removed - (0.0 if covered else min(amount, left))) <= self.tol
        returned = min(amount, left)  # what the holders give back, in grant order
        for grant in sharing:
            part = min(returned, max(grant.left, 0.0))
            grant.returned += part
            returned -= part
        # A ticket that names no grant gives nothing back.
        bogus = math.nextafter(ticket, INF)
        if all(h.ticket != bogus for h in self.held):
            assert self.state.refund(amount, bogus, self.now) == 0.0

    @rule(share=fractions)
    def take_and_undo(self, share: float) -> None:
        """A take, taken back at once (another limit refused the request), leaves the log
        as it was, bit for bit (after what any call at that instant drops)."""
        amount = share * self.state.limit
        self.state.fits(0.0, self.now)
        self.model.used(self.now)
        was = window_bits(self.state)
        if self.state.take(amount, amount, self.now) is not None:
            self.state.undo()
        assert window_bits(self.state) == was

    @rule(
        share=fractions,
        until=horizons,
        refill=st.none() | st.sampled_from([0.5, 3.0, 64.0]) | st.floats(0.01, 1000.0),
    )
    def clamp(self, share: float, until: float, refill: float | None) -> None:
        most = share * self.state.limit
        until_ = self.now + until * self.state.window
        excess = self.state.limit - self.model.used(self.now) - most
        self.fuzzy += abs(excess) <= self.tol  # the state's rounding may log it or not
        parts = excess * 64 / self.state.limit
        if abs(parts - round(parts)) <= 64 * self.tol / self.state.limit:
            refill = None  # (the state's rounding may cut it in one part more or fewer)
        if refill is not None:
            refill *= self.state.limit / self.state.window  # in limits per window
            self.slop = max(self.slop, 2 * self.tol / refill)
        self.state.clamp(most, until_, self.now, refill)
        self.model.clamp(most, until_, self.now, refill)
        assert self.state.level(self.now) <= most + self.tol

    @rule(share=fractions, go=st.booleans())
    def ready_at(self, share: float, go: bool) -> None:
        amount = share * self.state.limit
        t = self.state.ready_at(amount, self.now)
        expected = self.model.ready_at(amount, self.now)
        assert t >= self.now
        # The model agrees up to rounding in the running totals (and in the instants of
        # held pieces) ...
        late, early = (t + self.slop, t - self.slop) if self.slop else (t, t)
        assert self.model.used_by(late) + amount <= self.state.limit + self.tol, (t, expected)
        if t > max(self.now, self.model.outside(self.model.last)):
            assert self.model.used_by(before(early)) + amount > self.state.limit - self.tol
        # ... and the state with itself to the last bit: at t it fits, just before not.
        assert copy.deepcopy(self.state).try_take(amount, t)
        assert copy.deepcopy(self.state).fits(amount, t)
        # (Never before the caller's instant that reads as the window's latest one.)
        if t > max(self.now, self.model.outside(self.model.last)):
            assert not copy.deepcopy(self.state).try_take(amount, before(t))
            assert not copy.deepcopy(self.state).fits(amount, before(t))
        if go:
            self.now = t
            assert self.state.try_take(amount, t)
            self._record(amount, checked=True)

    @rule(origin=origins)
    def rebase(self, origin: float) -> None:
        assert self.model.last_update == self.state.last_update
        self.state.rebase(origin)
        self.model.rebase(origin)
        self.ledger.rebase(self.model.offset)
        assert self.state.last_update == self.model.last_update
        # As if no time had passed, up to rounding on either clock.
        assert abs(self.state.last_update - origin) <= math.ulp(self.model.last) + math.ulp(origin)
        # Held grants stay: their tickets survive a re-base. A window may read a hair
        # later than origin (its instant plus the offset); the clock is not behind it.
        self.now = max(origin, self.state.last_update)

    @invariant()
    def agrees_with_the_model(self) -> None:
        used = self.state.used(self.now)
        expected = self.model.used(self.now)
        assert abs(used - expected) <= self.tol, (used, expected, self.state)
        assert used >= -self.tol
        assert self.state.level(self.now) == self.state.limit - used
        # Memory: the live entries only.
        assert abs(len(self.state) - self.model.live()) <= self.fuzzy
        if self.model.live() == 0:
            assert used == 0.0
            assert self.state.at_rest(self.now)
        elif expected > self.tol:
            assert not self.state.at_rest(self.now)

    def teardown(self) -> None:
        self.ledger.check_all()


def test_G1_window_machine() -> None:
    run_state_machine_as_test(WindowMachine, settings=SETTINGS)


# -- MultiState ------------------------------------------------------------------------------------

REQ, TOK = 0, 1
# requests: 3 a second (window); tokens: 20 a second holding 10 (bucket), and 30 per 4 s.
SPECS = [("requests", Rate(3, 1.0)), ("tokens", Rate(20, 1.0, burst=10)), ("tokens", Rate(30, 4.0))]
MULTI_TOL = 1e-7


@dataclass
class MultiHeld:
    request: Request
    ticket: list[float | None]
    grants: list[Grant | None]  # per meter
    indices: list[int | float | None]  # the models' tickets, per meter
    settled: bool = False


class MultiMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._build(None)
        self.now = 0.0

    def _build(self, cap: int | None) -> None:
        self.meters = [Meter(dim, rate) for dim, rate in SPECS]  # each made at instant 0
        self.multi = MultiState(("requests", "tokens"), self.meters, cap)
        self.models: list[NaiveBucket | NaiveWindow] = []
        self.ledgers: list[Ledger] = []
        for _, rate in SPECS:
            if rate.burst is None:
                self.models.append(NaiveWindow(rate.amount, rate.period, 0.0))
                self.ledgers.append(Ledger("window", rate.amount, rate.period, 4 * MULTI_TOL))
            else:
                per_second = rate.amount / rate.period
                self.models.append(NaiveBucket(per_second, rate.burst, 0.0))
                self.ledgers.append(Ledger("bucket", rate.burst, per_second, 4 * MULTI_TOL))
        self.in_flight = 0
        self.paused_until = -INF
        self.seen = -INF
        self.held: list[MultiHeld] = []

    @initialize(cap=st.sampled_from([None, 1, 2, 3]), start=st.sampled_from([0.0, 1e5 + 0.1]))
    def start(self, cap: int | None, start: float) -> None:
        self._build(cap)
        self.now = start

    # -- helpers

    def _request(self, requests: int, tokens: float) -> Request:
        return Request((float(requests), tokens), self.multi.max_concurrency is not None)

    def _level(self, i: int) -> float:
        core = self.meters[i].core
        return core.level(self.now)

    def _model_level(self, i: int) -> float:
        model = self.models[i]
        if isinstance(model, NaiveBucket):
            return model.level(self.now)
        return model.limit - model.used(self.now)

    def _fits(self, i: int, amount: float) -> float:
        """The model's margin for ``amount`` on meter ``i`` (>= 0: it fits)."""
        return self._model_level(i) - min(amount, self.meters[i].maximum)

    def _slot_free(self, request: Request) -> bool:
        cap = self.multi.max_concurrency
        return not request.slot or (cap is not None and self.in_flight < cap)

    def _levels(self) -> list[float]:
        return [self._level(i) for i in range(len(self.meters))]

    def _charge(self, i: int, amount: float) -> tuple[Grant, int | float]:
        """Record an unconditional charge of ``amount`` on meter ``i`` in its model."""
        model = self.models[i]
        ledger = self.ledgers[i]
        if isinstance(model, NaiveBucket):
            return ledger.add(amount, self.now, INF, checked=False), model.grant(amount, self.now)
        expiry = model.grant(amount, self.now)
        grant = ledger.add(amount, self.now, expiry, checked=False)
        return grant, expiry

    # -- rules

    @rule(by=horizons)
    def advance(self, by: float) -> None:
        self.now += by

    @rule(kind=hairs)
    def advance_a_hair(self, kind: str | float) -> None:
        self.now = hair(self.now, kind)

    def _grant(self, request: Request) -> None:
        grants: list[Grant | None] = []
        indices: list[int | float | None] = []
        for i, meter in enumerate(self.meters):
            amount = request.amounts[self.multi.dims.index(meter.dim)]
            if not amount:
                grants.append(None)
                indices.append(None)
                continue
            grant, index = self._charge(i, amount)
            if amount <= meter.maximum:  # admitted by the check on the full amount
                grant.checked = True
                self.ledgers[i].check(len(self.ledgers[i].grants) - 1)
            grants.append(grant)
            indices.append(index)
            entry = self.multi.ticket[i]
            model = self.models[i]
            if isinstance(model, NaiveWindow):
                assert entry == index
            else:
                assert entry is not None
                assert abs(entry - sum(model.grants)) <= MULTI_TOL
        if request.slot:
            self.in_flight += 1
        self.held.append(MultiHeld(request, self.multi.ticket, grants, indices))

    @rule(requests=st.integers(0, 2), tokens=st.one_of(st.just(0.0), st.floats(0.0, 12.0)))
    def try_take(self, requests: int, tokens: float) -> None:
        request = self._request(requests, tokens)
        margins = [
            self._fits(i, request.amounts[self.multi.dims.index(m.dim)])
            for i, m in enumerate(self.meters)
            if request.amounts[self.multi.dims.index(m.dim)]
        ]
        gate = self.now >= self.paused_until and self._slot_free(request)
        levels, in_flight = self._levels(), self.multi.in_flight
        ok = self.multi.try_take(request, self.now)
        self.seen = max(self.seen, self.now)
        if gate and all(m >= MULTI_TOL for m in margins):
            assert ok
        if not gate or any(m < -MULTI_TOL for m in margins):
            assert not ok
        after = self._levels()
        if not ok:  # all or nothing: nothing
            assert after == levels
            assert self.multi.in_flight == in_flight
            return
        # ... or all: every meter it asked of is charged its full amount, at once.
        for i, meter in enumerate(self.meters):
            amount = request.amounts[self.multi.dims.index(meter.dim)]
            assert abs(levels[i] - amount - after[i]) <= MULTI_TOL
        assert self.multi.in_flight == in_flight + request.slot
        self._grant(request)

    @rule(requests=st.integers(0, 2), tokens=st.floats(0.0, 12.0), go=st.booleans())
    def ready_at(self, requests: int, tokens: float, go: bool) -> None:
        request = self._request(requests, tokens)
        t = self.multi.ready_at(request, self.now)
        if not self._slot_free(request):
            assert t == INF
            return
        # The models' answer, with the meters' rounding either way.
        bounds = []
        for slack in (MULTI_TOL, -MULTI_TOL):
            bound = max(self.now, self.paused_until)
            for i, meter in enumerate(self.meters):
                amount = min(request.amounts[self.multi.dims.index(meter.dim)], meter.maximum)
                if not amount:
                    continue
                model = self.models[i]
                if isinstance(model, NaiveBucket):
                    amount = min(max(0.0, amount - slack), meter.maximum)
                    bound = max(bound, model.ready_at(amount, self.now))
                else:
                    bound = max(bound, model.ready_at(amount, self.now, slack))
            bounds.append(bound)
        slack = 2 * MULTI_TOL / 20.0 + 16 * math.ulp(t)
        assert bounds[0] - slack <= t <= bounds[1] + slack, (t, bounds)
        assert copy.deepcopy(self.multi).try_take(request, t)
        earlier = t - 2 * slack
        if earlier > self.now:
            assert not copy.deepcopy(self.multi).try_take(request, earlier)
        if go:
            self.now = t
            levels = self._levels()
            assert self.multi.try_take(request, t)
            self.seen = max(self.seen, t)
            for i, meter in enumerate(self.meters):
                amount = request.amounts[self.multi.dims.index(meter.dim)]
                assert abs(levels[i] - amount - self._level(i)) <= MULTI_TOL
            self._grant(request)

    @precondition(lambda self: bool(self.held))
    @rule(pick=st.integers(0, 1000))
    def release(self, pick: int) -> None:
        held = self.held.pop(pick % len(self.held))
        self.multi.release(held.request)
        if held.request.slot:
            self.in_flight -= 1

    @precondition(lambda self: any(not h.settled for h in self.held))
    @rule(pick=st.integers(0, 1000))
    def refund(self, pick: int) -> None:
        unsettled = [h for h in self.held if not h.settled]
        held = unsettled[pick % len(unsettled)]
        self.held.remove(held)
        self.multi.refund(held.request, held.ticket, self.now)
        for i, meter in enumerate(self.meters):
            amount = held.request.amounts[self.multi.dims.index(meter.dim)]
            grant, index = held.grants[i], held.indices[i]
            if grant is None or index is None:
                continue
            model = self.models[i]
            if isinstance(model, NaiveBucket):
                assert isinstance(index, int)
                model.refund(amount, index, self.now)
            else:
                model.refund(amount, index, self.now)
            grant.returned += amount
        if held.request.slot:
            self.in_flight -= 1

    @precondition(lambda self: any(not h.settled for h in self.held))
    @rule(
        pick=st.integers(0, 1000),
        requests=st.none() | st.integers(0, 3),
        tokens=st.none() | st.floats(0.0, 15.0),
    )
    def settle(self, pick: int, requests: int | None, tokens: float | None) -> None:
        unsettled = [h for h in self.held if not h.settled]
        held = unsettled[pick % len(unsettled)]
        actual: dict[int, float] = {}
        if requests is not None:
            actual[REQ] = float(requests)
        if tokens is not None:
            actual[TOK] = tokens
        refunded = self.multi.adjust(held.request, held.ticket, actual, self.now)
        expected: list[Meter] = []
        for i, meter in enumerate(self.meters):
            index = self.multi.dims.index(meter.dim)
            if index not in actual:
                continue
            difference = actual[index] - held.request.amounts[index]
            grant, ticket = held.grants[i], held.indices[i]
            if difference > 0:
                self._charge(i, difference)
            elif difference < 0 and grant is not None and ticket is not None:
                model = self.models[i]
                if isinstance(model, NaiveBucket):
                    assert isinstance(ticket, int)
                    model.refund(-difference, ticket, self.now)
                else:
                    model.refund(-difference, ticket, self.now)
                grant.returned -= difference
                expected.append(meter)
        assert refunded == expected
        held.settled = True

    @rule(i=st.integers(0, len(SPECS) - 1), share=fractions, until=horizons)
    def clamp(self, i: int, share: float, until: float) -> None:
        meter = self.meters[i]
        most = share * meter.maximum
        self.multi.clamp(meter, most, self.now + until, self.now)
        model = self.models[i]
        if isinstance(model, NaiveBucket):
            model.clamp(most, self.now)
        else:
            model.clamp(most, self.now + until, self.now)

    @rule(by=st.floats(-1.0, 3.0))
    def pause(self, by: float) -> None:
        self.multi.pause(self.now + by, self.now)
        self.paused_until = max(self.paused_until, self.now + by)
        self.seen = max(self.seen, self.now)
        assert self.multi.paused_until == self.paused_until

    @rule(origin=origins)
    def rebase(self, origin: float) -> None:
        assert self.multi.seen == self.seen
        for meter, model, ledger in zip(self.meters, self.models, self.ledgers, strict=True):
            last = meter.core.last_update
            if isinstance(model, NaiveWindow):
                assert model.last_update == last
                model.rebase(origin)
                ledger.rebase(model.offset)
                continue
            assert model.last <= last <= self.now
            model.last = last  # a failed take moves a bucket's clock too
            ledger.shift(origin - last)
            model.rebase(origin)
        if self.paused_until > self.seen:
            self.paused_until = origin + (self.paused_until - self.seen)
        else:
            self.paused_until = -INF
        self.seen = origin
        self.multi.rebase(origin)
        # Held grants stay: their tickets survive a re-base. A window may read a hair
        # later than origin (its instant plus the offset); the clock is not behind it.
        self.now = max(origin, self.multi.last_update)

    # -- invariants

    @invariant()
    def slots_stay_within_the_cap(self) -> None:
        assert self.multi.in_flight == self.in_flight
        assert self.in_flight >= 0
        cap = self.multi.max_concurrency
        assert self.in_flight <= (0 if cap is None else cap)

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.multi.paused_until == self.paused_until
        levels = self._levels()
        for i, meter in enumerate(self.meters):
            expected = self._model_level(i)
            assert abs(levels[i] - expected) <= MULTI_TOL, (meter, levels[i], expected)
            assert levels[i] <= meter.maximum
        available = self.multi.available(self.now)
        for dim in self.multi.dims:
            assert available[dim] == min(
                lv for lv, m in zip(levels, self.meters, strict=True) if m.dim == dim
            )

    def teardown(self) -> None:
        for ledger in self.ledgers:
            ledger.check_all()


def test_G1_multi_machine() -> None:
    run_state_machine_as_test(MultiMachine, settings=SETTINGS)
