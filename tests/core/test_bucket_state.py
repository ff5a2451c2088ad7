"""Table-driven tests of the pure token-bucket state at fixed instants (no event loop)."""

from __future__ import annotations

import copy
import itertools
import math
from collections import defaultdict
from typing import NamedTuple

import pytest

from tokenbucket._core import BucketState

RATES = [3.0, 7.0, 0.1, 1e-3, 1e6, 1 / 3]
INSTANTS = [0.0, 0.1, 1e5, 1e5 + 0.1, 1e9, 1e9 + 0.3]


def earlier(t: float) -> float:
    """An instant "a little earlier" than ``t``: a few floating-point steps before it."""
    return t - 16 * math.ulp(t)


# -- starts full ---------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "capacity"), [(1.0, 1.0), (3.0, 10.0), (0.1, 7.7), (1e6, 1e6)])
@pytest.mark.parametrize("now", INSTANTS)
def test_starts_full(rate: float, capacity: float, now: float) -> None:
    state = BucketState(rate, capacity, now)
    assert state.level(now) == capacity
    assert state.level(now + 1e6) == capacity
    assert state.last_update == now
    assert state.ticket == 0.0
    assert state.ready_at(capacity, now) == now
    assert state.try_take(capacity, now)
    assert state.level(now) == 0.0


# -- lazy, capped refill ---------------------------------------------------------------------


class Refill(NamedTuple):
    rate: float
    capacity: float
    take: float
    elapsed: float
    level: float


REFILLS = [
    Refill(2.0, 10.0, 10.0, 0.0, 0.0),
    Refill(2.0, 10.0, 10.0, 0.5, 1.0),
    Refill(2.0, 10.0, 10.0, 1.0, 2.0),
    Refill(2.0, 10.0, 10.0, 4.5, 9.0),
    Refill(2.0, 10.0, 10.0, 5.0, 10.0),
    Refill(2.0, 10.0, 10.0, 5.25, 10.0),
    Refill(2.0, 10.0, 10.0, 1e9, 10.0),
    Refill(2.0, 10.0, 4.0, 1.0, 8.0),
    Refill(2.0, 10.0, 4.0, 2.0, 10.0),
    Refill(2.0, 10.0, 4.0, 3.0, 10.0),
    Refill(0.5, 4.0, 4.0, 6.0, 3.0),
    Refill(1024.0, 1.0, 1.0, 1 / 2048, 0.5),
]


@pytest.mark.parametrize("case", REFILLS)
@pytest.mark.parametrize("start", [0.0, 100.0, 65536.0])
def test_refill_is_lazy_and_capped(case: Refill, start: float) -> None:
    state = BucketState(case.rate, case.capacity, start)
    assert state.try_take(case.take, start)
    before = repr(state)
    assert state.level(start + case.elapsed) == case.level
    # level() is pure: asking changes nothing, and does not move the state's clock.
    assert repr(state) == before
    assert state.last_update == start
    assert state.level(start + case.elapsed) == case.level


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("now", INSTANTS)
def test_level_never_exceeds_capacity(rate: float, now: float) -> None:
    state = BucketState(rate, 5.0, now)
    assert state.try_take(2.5, now)
    for dt in (0.0, 1e-9, 1.0, 2.5 / rate, 1e3, 1e12):
        assert 2.5 <= state.level(now + dt) <= 5.0


# -- try_take at the boundary ----------------------------------------------------------------


class Boundary(NamedTuple):
    rate: float
    capacity: float
    take: float
    elapsed: float
    amount: float  # exactly the level after ``take`` and ``elapsed``


BOUNDARIES = [
    Boundary(2.0, 10.0, 0.0, 0.0, 10.0),
    Boundary(2.0, 10.0, 4.0, 0.0, 6.0),
    Boundary(2.0, 10.0, 10.0, 1.5, 3.0),
    Boundary(2.0, 10.0, 10.0, 100.0, 10.0),
    Boundary(0.25, 1.0, 1.0, 2.0, 0.5),
    Boundary(1e6, 1e6, 1e6, 0.5, 5e5),
    Boundary(3.0, 7.5, 7.5, 0.5, 1.5),
]


@pytest.mark.parametrize("case", BOUNDARIES)
@pytest.mark.parametrize("start", [0.0, 4096.0])
def test_try_take_exactly_at_the_boundary(case: Boundary, start: float) -> None:
    state = BucketState(case.rate, case.capacity, start)
    assert state.try_take(case.take, start)
    now = start + case.elapsed
    assert state.level(now) == case.amount

    over = copy.copy(state)
    assert not over.try_take(math.nextafter(case.amount, math.inf), now)
    assert over.level(now) == case.amount  # a failed take consumes nothing
    assert over.ticket == state.ticket

    assert state.try_take(case.amount, now)
    assert state.level(now) == 0.0
    assert not state.try_take(1e-9, now)
    assert state.ticket == case.take + case.amount


def test_ticket_counts_grants() -> None:
    state = BucketState(1.0, 10.0)
    assert state.try_take(2.0, 0.0)
    assert state.ticket == 2.0
    assert state.try_take(3.0, 0.0)
    assert state.ticket == 5.0
    assert not state.try_take(6.0, 0.0)
    assert state.ticket == 5.0


# -- ready_at ------------------------------------------------------------------------------


class Exact(NamedTuple):
    take: float
    now: float
    amount: float
    ready: float


EXACT = [
    Exact(10.0, 100.0, 1.0, 100.5),
    Exact(10.0, 100.0, 10.0, 105.0),
    Exact(10.0, 101.0, 4.0, 102.0),
    Exact(10.0, 103.0, 4.0, 103.0),
    Exact(10.0, 200.0, 10.0, 200.0),
    Exact(4.0, 100.0, 6.0, 100.0),
    Exact(4.0, 100.0, 7.0, 100.5),
    Exact(4.0, 90.0, 7.0, 100.5),  # asked for an instant before the last one seen
]


@pytest.mark.parametrize("case", EXACT)
def test_ready_at_exact_values(case: Exact) -> None:
    state = BucketState(2.0, 10.0, 100.0)
    assert state.try_take(case.take, 100.0)
    assert state.ready_at(case.amount, case.now) == case.ready


class Awkward(NamedTuple):
    rate: float
    capacity: float
    start: float
    take: float
    delay: float
    amount: float


def _awkward_cases() -> list[Awkward]:
    cases = []
    shapes = [
        # (capacity, share taken, delay in units of "time to refill the capacity", share asked)
        (1.0, 1.0, 0.0, 1.0),
        (1.0, 1.0, 0.0, 0.1),
        (7.7, 0.3, 0.1, 1.0),
        (10.0, 1.0, 0.37, 0.999),
        (0.3, 0.7, 0.0, 0.7),
        (1e6, 1.0, 0.5, 0.6),
    ]
    for rate, start, (capacity, taken, delay, asked) in itertools.product(RATES, INSTANTS, shapes):
        refill_time = capacity / rate
        cases.append(
            Awkward(rate, capacity, start, capacity * taken, refill_time * delay, capacity * asked)
        )
    return cases


@pytest.mark.parametrize("case", _awkward_cases())
def test_ready_at_is_the_earliest_instant_try_take_succeeds(case: Awkward) -> None:
    state = BucketState(case.rate, case.capacity, case.start)
    assert state.try_take(case.take, case.start)
    now = case.start + case.delay
    t = state.ready_at(case.amount, now)
    assert t >= now

    # At ready_at the take succeeds (whatever the rounding) ...
    probe = copy.copy(state)
    assert probe.level(t) >= case.amount
    assert probe.try_take(case.amount, t), (t, probe)
    # ... and ready_at did not change the state it was asked about.
    assert state.last_update == case.start
    # A little earlier the level does not cover the amount (unless ready_at was ``now``).
    if t > now:
        assert state.level(earlier(t)) < case.amount
        probe = copy.copy(state)
        assert not probe.try_take(case.amount, earlier(t))
    else:
        assert state.level(now) >= case.amount


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("now", INSTANTS)
def test_ready_at_agrees_with_a_timer_loop(rate: float, now: float) -> None:
    """Repeated "sleep until ready_at, then take" always succeeds on the first try."""
    state = BucketState(rate, 3.0, now)
    t = now
    for amount in [3.0, 0.1, 1.0, 2.9, 3.0, 1 / 3, 0.7] * 3:
        t = state.ready_at(amount, t)
        assert state.try_take(amount, t), (amount, t, state)


# -- time going backwards --------------------------------------------------------------------


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("now", [1e3, 1e5 + 0.1, 1e9])
def test_time_going_backwards_never_adds_capacity(rate: float, now: float) -> None:
    capacity = 10.0
    state = BucketState(rate, capacity, now)
    assert state.try_take(capacity, now)
    back = now - 500.0
    assert state.level(back) == 0.0
    assert not state.try_take(1e-12, back)
    assert state.last_update == now
    # Returning to "now" finds no refill for the time between ``back`` and ``now``.
    assert state.level(now) == 0.0
    assert state.ready_at(1.0, back) == state.ready_at(1.0, now)
    assert state.ready_at(1.0, back) >= now + 1.0 / rate * (1 - 1e-9)
    # Refill resumes from the latest instant seen.
    later = now + 1.0
    assert state.level(later) == min(capacity, (later - now) * rate)


def test_a_take_at_an_earlier_instant_uses_the_latest_level() -> None:
    state = BucketState(1.0, 10.0, 100.0)
    assert state.try_take(6.0, 100.0)
    assert state.try_take(4.0, 50.0)  # 4 left at 100; the earlier instant sees the same
    assert not state.try_take(1.0, 60.0)
    assert state.level(100.0) == 0.0
    assert state.level(101.0) == 1.0


# -- rebase ----------------------------------------------------------------------------------


@pytest.mark.parametrize("new_origin", [0.0, 5.0, 999.0, 1001.0, 1e9])
def test_rebase_continues_without_refilling_across_the_jump(new_origin: float) -> None:
    state = BucketState(2.0, 10.0, 1000.0)
    assert state.try_take(7.0, 1000.0)
    state.rebase(new_origin)
    assert state.last_update == new_origin
    assert state.level(new_origin) == 3.0
    assert state.level(new_origin + 1.0) == 5.0
    assert state.level(new_origin + 100.0) == 10.0
    assert state.ready_at(5.0, new_origin) == new_origin + 1.0
    assert not copy.copy(state).try_take(3.5, new_origin)
    assert state.try_take(3.0, new_origin)
    assert state.level(new_origin) == 0.0


# -- refund ------------------------------------------------------------------------------------


def test_refund_restores_at_most_the_amount() -> None:
    state = BucketState(1.0, 10.0)
    assert state.try_take(6.0, 0.0)
    ticket = state.ticket
    assert state.refund(2.0, ticket, 0.0) == 2.0
    assert state.level(0.0) == 6.0


@pytest.mark.parametrize(("when", "restored"), [(0.0, 3.0), (2.0, 1.0), (3.0, 0.0), (100.0, 0.0)])
def test_refund_never_fills_above_capacity(when: float, restored: float) -> None:
    state = BucketState(1.0, 10.0)
    assert state.try_take(3.0, 0.0)
    # The level refills by 1 a second: after 2 seconds only 1 of the 3 can go back.
    assert state.refund(3.0, state.ticket, when) == restored
    assert state.level(when) == 10.0


def test_refunding_more_than_was_granted_never_fills_above_capacity() -> None:
    """A caller's mistake (giving a grant back twice) must not mint capacity."""
    state = BucketState(1.0, 10.0)
    assert state.try_take(4.0, 0.0)
    ticket = state.ticket
    assert state.refund(4.0, ticket, 0.0) == 4.0
    assert state.refund(4.0, ticket, 0.0) == 0.0
    assert state.level(0.0) == 10.0
    assert not state.try_take(10.5, 0.0)


def test_refund_is_bounded_by_what_was_granted_after() -> None:
    state = BucketState(1.0, 10.0)
    assert state.try_take(10.0, 0.0)
    first = state.ticket
    assert state.try_take(4.0, 10.0)  # the bucket refilled; 4 granted after ``first``
    later = copy.copy(state)
    assert state.refund(10.0, first, 10.0) == 0.0  # capacity - 4 = 6 = current level
    assert state.level(10.0) == 6.0
    assert later.refund(10.0, first, 12.0) == 0.0  # the level (8) is never lowered
    assert later.level(12.0) == 8.0


# A scenario: ops applied in order to a fresh BucketState(rate=1, capacity=10) at t=0.
#   ("take", label, amount, t): try_take must succeed;
#   ("refund", label, amount, t): refund part of the grant ``label``;
#   ("greedy", label, 0, t): take whatever the level allows at t.
Op = tuple[str, str, float, float]
RATE, CAPACITY = 1.0, 10.0


class NaiveRefund(BucketState):
    """What a naive refund does: put the amount back, capped at capacity."""

    __slots__ = ()

    def refund(self, amount: float, ticket: float, now: float) -> float:
        assert self.try_take(0.0, now)  # bring the level up to ``now``
        before = self.level(now)
        self._level = min(before + amount, self.capacity)
        return self._level - before


def violations(state: BucketState, ops: list[Op]) -> list[str]:
    """Apply ``ops`` and list every breach of G1 (and of the level's bounds).

    The admitted amount of a grant is what was granted minus what its holder gave back
    (the units it said it did not use), counted at the instant of the grant.
    """
    found = []
    tickets: dict[str, float] = {}
    grants: dict[str, tuple[float, float]] = {}
    returned: defaultdict[str, float] = defaultdict(float)
    for kind, label, amount, now in ops:
        if kind == "take":
            assert state.try_take(amount, now), (label, state)
            tickets[label] = state.ticket
            grants[label] = (now, amount)
        elif kind == "refund":
            restored = state.refund(amount, tickets[label], now)
            assert 0.0 <= restored <= amount
            returned[label] += amount
        else:
            level = state.level(now)
            if level > 0:
                assert state.try_take(level, now)
                grants[label] = (now, level)
        if not 0.0 <= state.level(now) <= CAPACITY:
            found.append(f"level {state.level(now)} at t={now} outside [0, {CAPACITY}]")
    events = [(t, amount - returned[label]) for label, (t, amount) in grants.items()]
    instants = sorted({t for t, _ in events})
    for a in instants:
        for b in instants:
            if b < a:
                continue
            admitted = sum(x for t, x in events if a <= t <= b)
            if admitted > CAPACITY + RATE * (b - a) + 1e-9:
                found.append(f"{admitted} admitted in [{a}, {b}]")
    return found


SCENARIOS: dict[str, list[Op]] = {
    "refund-at-once": [
        ("take", "a", 4.0, 0.0),
        ("take", "b", 4.0, 0.0),
        ("refund", "a", 4.0, 0.0),
        ("greedy", "g", 0.0, 0.0),
    ],
    "refund-of-a-partly-refilled-grant": [
        ("take", "a", 10.0, 0.0),
        ("refund", "a", 3.0, 2.0),
        ("greedy", "g", 0.0, 2.0),
        ("greedy", "h", 0.0, 5.0),
    ],
    # The grant is refunded after the bucket refilled and a later grant drained it: a
    # naive refund puts 10 back and lets 20 through at t=10.
    "refund-after-a-later-grant": [
        ("take", "a", 10.0, 0.0),
        ("take", "b", 10.0, 10.0),
        ("refund", "a", 10.0, 10.0),
        ("greedy", "g", 0.0, 10.0),
        ("greedy", "h", 0.0, 13.0),
    ],
    # Refunding an older grant after a newer one was made must not make the newer one's
    # refund forget what was granted after it ("d" below).
    "refunds-out-of-order": [
        ("take", "a", 10.0, 0.0),
        ("take", "b", 10.0, 10.0),
        ("refund", "a", 10.0, 10.0),
        ("take", "d", 5.0, 15.0),
        ("refund", "b", 10.0, 15.0),
        ("greedy", "g", 0.0, 15.0),
    ],
    # One grant given back in two halves, with a refill in between.
    "two-partial-refunds": [
        ("take", "a", 10.0, 0.0),
        ("refund", "a", 5.0, 0.0),
        ("refund", "a", 5.0, 5.0),
        ("greedy", "g", 0.0, 5.0),
    ],
    "many-small-grants-refunded-late": [
        *[("take", f"s{i}", 1.0, float(i)) for i in range(10)],
        *[("take", f"t{i}", 1.0, 10.0 + i) for i in range(10)],
        *[("refund", f"s{i}", 1.0, 20.0) for i in range(10)],
        ("greedy", "g", 0.0, 20.0),
        ("greedy", "h", 0.0, 21.0),
    ],
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_refunds_never_break_conformance(name: str) -> None:
    assert violations(BucketState(RATE, CAPACITY), SCENARIOS[name]) == []


def test_the_scenario_catches_a_naive_refund() -> None:
    """The "refund after a later grant" scenario is a real test: a naive refund fails it."""
    assert violations(NaiveRefund(RATE, CAPACITY), SCENARIOS["refund-after-a-later-grant"])
    state = BucketState(RATE, CAPACITY)
    assert violations(state, SCENARIOS["refund-after-a-later-grant"]) == []
    assert state.level(10.0) == 0.0


def test_partial_refunds_of_one_grant_stay_within_capacity() -> None:
    state = BucketState(1.0, 10.0)
    assert state.try_take(10.0, 0.0)
    ticket = state.ticket
    assert state.refund(5.0, ticket, 0.0) == 5.0
    assert state.level(0.0) == 5.0
    restored = state.refund(5.0, ticket, 5.0)
    assert state.level(5.0) <= 10.0
    assert restored == 0.0


def test_since_is_what_was_granted_after_a_grant() -> None:
    bucket = BucketState(rate=1.0, capacity=100.0)
    assert bucket.try_take(10, 0.0)
    first = bucket.ticket
    assert bucket.try_take(20, 0.0)  # at the same instant: still after it
    bucket.charge(5, 1.0)
    assert bucket.since(first) == 25
    assert bucket.since(bucket.ticket) == 0
    bucket.refund(20, first + 20, 2.0)  # a refund does not undo the order of grants
    assert bucket.since(first) == 25


def test_a_grant_before_a_clamp_gets_nothing_back() -> None:
    bucket = BucketState(rate=1.0, capacity=100.0)
    assert bucket.try_take(40, 0.0)
    early = bucket.ticket
    bucket.clamp(10, 30.0, 0.0)  # the server says 10 left
    assert bucket.refund(30, early, 0.0) == 0.0  # its count covers the early grant
    assert bucket.try_take(5, 0.0)
    assert bucket.refund(5, bucket.ticket, 0.0) == 5.0
