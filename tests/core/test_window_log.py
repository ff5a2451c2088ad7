"""Table-driven tests of the pure sliding-window log at fixed instants (no event loop)."""

from __future__ import annotations

import copy
import itertools
import math
import random
from typing import TYPE_CHECKING, NamedTuple

import pytest

from tokenbucket._core import WindowLog

if TYPE_CHECKING:
    from collections.abc import Iterator

INSTANTS = [0.0, 0.1, 1e5, 1e5 + 0.1, 1e9, 1e9 + 0.3]
WINDOWS = [1.0, 0.1, 0.3, 7.0, 60.0]


def before(t: float) -> float:
    """The float just before ``t``."""
    return math.nextafter(t, -math.inf)


def used_at(log: WindowLog, now: float) -> float:
    """``log.used(now)`` without moving the log's clock."""
    return copy.deepcopy(log).used(now)


def can_take(log: WindowLog, amount: float, now: float) -> bool:
    """Would ``log.try_take(amount, now)`` succeed? (The log itself is left unchanged.)"""
    return copy.deepcopy(log).try_take(amount, now)


# -- basics --------------------------------------------------------------------------------


@pytest.mark.parametrize("now", INSTANTS)
def test_starts_empty(now: float) -> None:
    log = WindowLog(10.0, 60.0, now)
    assert len(log) == 0
    assert log.last_update == now
    assert log.used(now) == 0.0
    assert log.level(now) == 10.0
    assert log.ready_at(10.0, now) == now
    assert log.try_take(10.0, now)
    assert not log.try_take(1e-9, now)


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("t", INSTANTS)
@pytest.mark.parametrize("amount", [1.0, 0.1, 1 / 3, 10.0])
def test_a_grant_leaves_the_window_at_exactly_t_plus_window(
    window: float, t: float, amount: float
) -> None:
    log = WindowLog(10.0, window, t)
    assert log.try_take(amount, t)
    leaves = t + window  # rounded up where the sum rounds below t + window:
    if leaves - window < t:  # a grant never reads as older than it is
        leaves = math.nextafter(leaves, math.inf)
    assert leaves - window >= t
    assert log.ticket == leaves
    # Half-open windows [s, s + window): the grant counts up to the instant before
    # t + window and not at t + window.
    assert used_at(log, before(leaves)) == amount
    assert not can_take(log, 10.0, before(leaves))
    assert used_at(log, leaves) == 0.0
    assert can_take(log, 10.0, leaves)
    assert log.ready_at(10.0, t) == leaves
    assert log.ready_at(10.0, before(leaves)) == leaves
    # A full grant at t + window shares no window [s, s + window) with the one at t.
    assert log.try_take(10.0, leaves)
    assert log.used(leaves) == 10.0


# -- ready_at ---------------------------------------------------------------------------------


class Ready(NamedTuple):
    grants: list[tuple[float, float]]  # (amount, instant)
    now: float
    amount: float
    ready: float


# limit 10, window 60
READY = [
    Ready([(3.0, 0.0), (4.0, 10.0), (3.0, 20.0)], 25.0, 1.0, 60.0),
    Ready([(3.0, 0.0), (4.0, 10.0), (3.0, 20.0)], 25.0, 3.0, 60.0),
    Ready([(3.0, 0.0), (4.0, 10.0), (3.0, 20.0)], 25.0, 4.0, 70.0),
    Ready([(3.0, 0.0), (4.0, 10.0), (3.0, 20.0)], 25.0, 7.0, 70.0),
    Ready([(3.0, 0.0), (4.0, 10.0), (3.0, 20.0)], 25.0, 8.0, 80.0),
    Ready([(3.0, 0.0), (4.0, 10.0), (3.0, 20.0)], 25.0, 10.0, 80.0),
    Ready([(3.0, 0.0), (4.0, 10.0), (3.0, 20.0)], 65.0, 3.0, 65.0),
    Ready([(3.0, 0.0), (4.0, 10.0), (3.0, 20.0)], 65.0, 4.0, 70.0),
    Ready([(3.0, 0.0), (4.0, 10.0), (3.0, 20.0)], 79.0, 10.0, 80.0),
    Ready([(3.0, 0.0), (4.0, 10.0), (3.0, 20.0)], 80.0, 10.0, 80.0),
    Ready([(3.0, 0.0), (4.0, 10.0)], 15.0, 3.0, 15.0),
    Ready([(3.0, 0.0), (4.0, 10.0)], 15.0, 3.5, 60.0),
    Ready([(1.0, 0.0), (1.0, 0.0), (8.0, 5.0)], 6.0, 2.0, 60.0),
    Ready([(1.0, 0.0), (1.0, 0.0), (8.0, 5.0)], 6.0, 3.0, 65.0),
    # fractional amounts whose running totals do not cancel exactly in floating point
    Ready([(0.1, 0.0), (0.2, 30.0)], 30.0, 10.0, 90.0),
    Ready([(0.1, 0.0), (0.7, 30.0)], 30.0, 10.0, 90.0),
    Ready([(1 / 3, 0.0), (1.1, 30.0)], 30.0, 10.0, 90.0),
]


@pytest.mark.parametrize("case", READY)
def test_ready_at_is_the_expiry_of_the_right_entry(case: Ready) -> None:
    log = WindowLog(10.0, 60.0)
    for amount, t in case.grants:
        assert log.try_take(amount, t)
    assert copy.deepcopy(log).ready_at(case.amount, case.now) == case.ready
    assert can_take(log, case.amount, case.ready)
    if case.ready > case.now:
        assert not can_take(log, case.amount, before(case.ready))
        assert copy.deepcopy(log).level(before(case.ready)) < case.amount


@pytest.mark.parametrize(
    "amounts", [(0.1, 0.2), (0.1, 0.3), (0.7, 1.1), (1 / 3, 2.5), (2.5, 1 / 3)]
)
def test_an_empty_window_grants_the_full_limit(amounts: tuple[float, float]) -> None:
    """Once every grant has left the window, the whole limit is available again."""
    log = WindowLog(10.0, 1.0)
    assert log.try_take(amounts[0], 0.0)
    assert log.try_take(amounts[1], 0.5)
    assert log.used(1000.0) == 0.0
    assert len(log) == 0
    assert log.level(1000.0) == 10.0
    assert log.try_take(10.0, 1000.0), log


class Stress(NamedTuple):
    limit: float
    window: float
    start: float
    seed: int

    def begin(self) -> tuple[random.Random, WindowLog, Iterator[tuple[int, float]]]:
        """The case's random source, a fresh log, and its 300 steps with their amounts
        (each drawn from the source as its step begins)."""
        rnd = random.Random(self.seed)
        steps = ((step, self.limit * rnd.choice(SHARES)) for step in range(300))
        return rnd, WindowLog(self.limit, self.window, self.start), steps


STRESS = [
    Stress(limit, window, start, seed)
    for (limit, window, start), seed in zip(
        itertools.product([1.0, 10.0, 0.3, 7.7, 1 / 3], [1.0, 0.1, 7.0], [0.0, 1e5 + 0.1, 1e9]),
        itertools.count(),
    )
]
SHARES = [0.1, 0.3, 1 / 3, 0.7, 0.01, 1.0]


@pytest.mark.parametrize("case", STRESS)
def test_ready_at_is_the_earliest_instant_try_take_succeeds(case: Stress) -> None:
    """A scheduler that waits for ready_at, then takes, always succeeds at once."""
    rnd, log, steps = case.begin()
    now = case.start
    for step, amount in steps:
        ready = copy.deepcopy(log).ready_at(amount, now)
        assert ready >= now
        context = (step, amount, now, ready, log)
        if ready > now:
            assert not can_take(log, amount, before(ready)), context
            assert copy.deepcopy(log).level(before(ready)) < amount, context
        assert log.try_take(amount, ready), context
        now = ready + case.window * rnd.choice([0.0, 0.0, 0.01, 0.37, 1.5])


@pytest.mark.parametrize("case", STRESS[:15])
def test_level_and_try_take_agree(case: Stress) -> None:
    """``level(now) >= amount`` exactly when ``try_take(amount, now)`` would succeed."""
    rnd, log, steps = case.begin()
    now = case.start
    for step, amount in steps:
        level = copy.deepcopy(log).level(now)
        assert (level >= amount) == can_take(log, amount, now), (step, amount, level, log)
        log.try_take(amount, now)
        now += case.window * rnd.choice([0.01, 0.1, 0.37])


# -- entries ---------------------------------------------------------------------------------


@pytest.mark.parametrize("t", INSTANTS)
def test_grants_at_the_same_instant_merge(t: float) -> None:
    log = WindowLog(10.0, 60.0, t)
    assert log.try_take(1.0, t)
    ticket = log.ticket
    assert log.try_take(2.0, t)
    assert log.try_take(3.0, t)
    assert len(log) == 1
    assert log.ticket == ticket
    assert log.used(t) == 6.0
    assert log.try_take(1.0, t + 1.0)
    assert len(log) == 2
    assert log.ticket == t + 1.0 + 60.0


def test_a_grant_at_an_earlier_instant_counts_at_the_latest_one() -> None:
    log = WindowLog(10.0, 60.0)
    assert log.try_take(4.0, 100.0)
    assert log.try_take(4.0, 50.0)  # time went back: treated as t=100
    assert len(log) == 1
    assert log.ticket == 160.0
    assert not log.try_take(3.0, 20.0)
    assert log.used(159.0) == 8.0
    assert log.used(160.0) == 0.0


def lists(log: WindowLog) -> list[list[float]]:
    """The log's internal lists: the grants' expiries and totals, and the held ones'."""
    return [log._expiry, log._total, log._held, log._held_total]


@pytest.mark.parametrize(("window", "spacing"), [(10.0, 1.0), (1.0, 0.001), (100.0, 0.37)])
def test_memory_stays_proportional_to_entries_in_the_window(window: float, spacing: float) -> None:
    log = WindowLog(1e12, window)
    in_window = math.ceil(window / spacing) + 1
    # Every 7th grant a server's report holds back 1/8 of the limit more, in 8 pieces
    # that leave over the next 21 grants (or by the end of the window): at most 4 such
    # reports' pieces are in the window at once, and the held log never runs empty.
    held = 4 * 8
    longest = 0
    for i in range(20_000):
        now = i * spacing
        assert log.try_take(1.0, now)
        if i % 7 == 0:
            refill = 1e12 / 8 / (21 * spacing)
            log.clamp(log.level(now) - 1e12 / 8, now + window, now, refill)
        assert len(log) <= in_window + held
        longest = max(longest, *map(len, lists(log)))
    # The internal lists hold the live entries plus a bounded backlog of expired ones.
    assert longest <= 2 * in_window + 64
    assert len(log._expiry) == len(log._total)
    assert len(log._held) == len(log._held_total)


def test_memory_is_released_after_a_burst() -> None:
    log = WindowLog(1e12, 1.0)
    for i in range(10_000):
        assert log.try_take(1.0, i * 1e-4)
    assert len(log) == 10_000
    # Much later: one grant per window; the burst's entries must not stay in memory.
    for k in range(200):
        assert log.try_take(1.0, 10.0 + 2.0 * k)
        assert len(log) == 1
    assert len(log._expiry) <= 64 + 1
    assert len(log._total) == len(log._expiry)
    assert log.used(10.0 + 2.0 * 199) == 1.0


def test_memory_is_released_after_a_burst_of_clamps() -> None:
    log = WindowLog(1e6, 1.0)
    longest = 0
    for i in range(10_000):
        now = i * 1e-4
        assert log.try_take(1.0, now)
        log.clamp(log.level(now) - 1.0, now + 0.5, now)  # one unit held for half a window
        longest = max(longest, *map(len, lists(log)))
    assert len(log) == 10_000 + 5_000
    assert longest <= 2 * 10_000 + 64
    # Much later: once everything held has left, none of it stays in memory.
    for k in range(200):
        assert log.try_take(1.0, 10.0 + 2.0 * k)
        assert len(log) == 1
        assert log._held == log._held_total == []
    assert log.used(10.0 + 2.0 * 199) == 1.0


# -- refund ----------------------------------------------------------------------------------


def test_refund_lowers_the_window_sum() -> None:
    log = WindowLog(10.0, 60.0)
    assert log.try_take(3.0, 0.0)
    first = log.ticket
    assert log.try_take(4.0, 10.0)
    second = log.ticket
    assert log.try_take(3.0, 20.0)
    assert log.refund(2.0, first, 25.0) == 2.0
    assert log.used(25.0) == 8.0
    assert log.ready_at(2.0, 25.0) == 25.0
    assert log.ready_at(3.0, 25.0) == 60.0
    # At most the entry's own amount comes out.
    assert log.refund(10.0, second, 25.0) == 4.0
    assert log.used(25.0) == 4.0
    assert log.refund(1.0, second, 25.0) == 0.0
    assert log.used(25.0) == 4.0
    assert log.used(60.0) == 3.0
    assert log.used(80.0) == 0.0


def test_refund_after_earlier_entries_expired() -> None:
    log = WindowLog(10.0, 60.0)
    assert log.try_take(1.0, 0.0)
    assert log.try_take(2.0, 10.0)
    second = log.ticket
    assert log.try_take(3.0, 20.0)
    assert log.refund(2.0, second, 65.0) == 2.0  # the first grant has already left
    assert log.used(65.0) == 3.0
    assert log.used(80.0) == 0.0
    assert log.try_take(10.0, 80.0)


def test_refund_of_an_expired_grant_does_nothing() -> None:
    log = WindowLog(10.0, 60.0)
    assert log.try_take(3.0, 0.0)
    first = log.ticket
    assert log.try_take(4.0, 30.0)
    assert log.refund(3.0, first, 60.0) == 0.0
    assert log.used(60.0) == 4.0
    assert log.refund(3.0, 12345.0, 60.0) == 0.0  # no such grant
    assert log.used(60.0) == 4.0
    assert log.ready_at(10.0, 60.0) == 90.0


# -- rebase ----------------------------------------------------------------------------------


@pytest.mark.parametrize("new_origin", [0.0, 5.0, 129.0, 131.0, 1e9])
def test_rebase_shifts_the_log(new_origin: float) -> None:
    log = WindowLog(10.0, 60.0)
    assert log.try_take(3.0, 100.0)
    assert log.try_take(4.0, 130.0)
    assert log.used(130.0) == 7.0
    log.rebase(new_origin)
    assert log.last_update == new_origin
    shift = new_origin - 130.0
    assert log.ticket == 190.0  # tickets do not move: a refund after the move still finds it
    assert used_at(log, new_origin) == 7.0
    assert used_at(log, before(160.0 + shift)) == 7.0
    assert used_at(log, 160.0 + shift) == 4.0
    assert used_at(log, 190.0 + shift) == 0.0
    assert log.ready_at(4.0, new_origin) == 160.0 + shift
    assert log.try_take(3.0, new_origin)
    assert not log.try_take(1.0, new_origin)


# -- the guarantee ---------------------------------------------------------------------------


@pytest.mark.parametrize(("now", "window"), [(1e9, 1e-8), (1e9 + 0.3, 1e-9), (1e6, 1e-11)])
def test_grants_at_one_instant_never_exceed_the_limit(now: float, window: float) -> None:
    """Even a window shorter than the clock's resolution at ``now`` holds the limit."""
    log = WindowLog(1.0, window, now)
    granted = sum(1 for _ in range(5) if log.try_take(1.0, now))
    assert granted == 1


# -- a server's report ------------------------------------------------------------------


def used_over_time(log: WindowLog, start: float, window: float) -> list[float]:
    """``used`` at 97 instants across the next window (on copies: the log is unchanged)."""
    return [used_at(log, start + window * k / 96) for k in range(97)]


@pytest.mark.parametrize("seed", range(40))
def test_a_gradual_clamp_holds_back_what_is_missing_in_parts_that_leave_at_the_rate(
    seed: int,
) -> None:
    rng = random.Random(seed)
    window, limit = rng.choice([1.0, 7.0, 60.0]), rng.choice([10.0, 100.0, 30_000.0])
    log = WindowLog(limit, window)
    now = 0.0
    for _ in range(rng.randint(0, 40)):  # grants spread over the last window
        now += rng.uniform(0, window / 20)
        log.charge(rng.uniform(0, limit / 40), now)
    most = rng.uniform(0, limit / 2)
    refill = rng.uniform(limit / window / 4, 4 * limit / window)
    until = now + rng.uniform(0, window)
    before_clamp = used_over_time(log, now, window)
    clamped = copy.deepcopy(log)
    clamped.clamp(most, until, now, refill)
    after = used_over_time(clamped, now, window)
    excess = max(0.0, limit - before_clamp[0] - most)
    assert limit - after[0] == pytest.approx(min(most, limit - before_clamp[0]), abs=1e-6 * limit)
    # The reference: parts of at most 1/64 of the limit, the k-th leaving once k parts
    # have come back at `refill`, none after `until`.
    count = min(64, math.ceil(excess * 64 / limit)) if excess > 0 else 0
    part = excess / count if count else 0.0
    leave = [min(now + k * part / refill, until) for k in range(1, count + 1)]
    for k, (old, new) in enumerate(zip(before_clamp, after, strict=True)):
        t = now + window * k / 96
        held = sum(part for at in leave if at > t)
        assert new - old == pytest.approx(held, abs=1e-6 * limit)
        assert held <= max(0.0, excess - refill * (t - now)) + limit / 64 + 1e-6 * limit


def test_a_clamp_leaves_the_grants_log_untouched() -> None:
    """A clamp's pieces, which leave before every grant in the window, go in the held log
    alone: the grants' lists are neither rewritten nor replaced (a clamp's work does not
    grow with the grants in the window)."""
    log = WindowLog(1e6, 60.0)
    for i in range(10_000):
        assert log.try_take(1.0, i * 1e-3)  # leaving from 60 s to 70 s
    expiry, total = log._expiry, log._total
    copies = (list(expiry), list(total))
    now = 10.0
    for _ in range(10):
        # Four pieces of 15,625 leaving 1/64 s apart; then one of 10 that leaves among
        # them (merged into the held log, not appended).
        log.clamp(log.level(now) - 62_500.0, now + 1.0, now, refill=1e6)
        log.clamp(log.level(now) - 10.0, now + 0.02, now)
        now += 0.001
    assert log._expiry is expiry
    assert log._total is total
    assert (log._expiry, log._total) == copies
    held = len(log._held) - log._held_head
    assert held == 10 * 5
    assert len(log) == 10_000 + held
    assert log.used(now) == 10_000.0 + 10 * (62_500.0 + 10.0)
    # What is held counts until it leaves, the earliest piece first.
    first = log._held[log._held_head]
    amount = log.level(now) + 1.0
    assert log.ready_at(amount, now) == first
    assert not copy.deepcopy(log).fits(amount, before(first))
    assert log.fits(amount, first)


def test_a_grant_before_a_clamp_gets_nothing_back() -> None:
    log = WindowLog(100, 10.0)
    early = log.charge(40, 0.0)
    log.clamp(10, 5.0, 1.0)  # the server says 10 left: 50 held back
    assert log.refund(30, early, 1.5) == 0.0  # its count covers the early grant
    late = log.charge(5, 2.0)
    assert log.refund(5, late, 2.5) == 5.0


@pytest.mark.parametrize(
    ("amounts", "order"),
    [((0.1, 0.1, 0.1, 0.3), (0, 3, 2, 1)), ((0.2, 0.1, 0.3, 0.1), (0, 2, 3, 1))],
)
def test_grants_given_back_in_full_in_any_order_leave_the_whole_limit(
    amounts: tuple[float, ...], order: tuple[int, ...]
) -> None:
    """No rounding left over: once every grant is given back, the whole limit fits at
    once (and ready_at says so), not a window later."""
    log = WindowLog(1.0, 10.0)
    tickets = [log.charge(amount, float(i)) for i, amount in enumerate(amounts)]
    for i in order:
        log.refund(1.0, tickets[i], 3.0)
    assert log.used(3.0) == pytest.approx(0.0, abs=1e-15)
    assert log.fits(1.0, 3.0)
    assert log.ready_at(1.0, 3.0) == 3.0
