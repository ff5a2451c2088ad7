"""Table tests of the pure multi-limit state at fixed instants (no event loop, no sleeping).

Most tests use one configuration: ``requests`` limited by an exact window (3 per 10 s)
and ``tokens`` by a bucket that refills at 10 a second and holds 50, with at most two
grants held at once. Every number below is exact in binary floating point.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import pytest

from tokenbucket import Rate
from tokenbucket._core import BucketState, Meter, MultiState, Request, WindowLog

if TYPE_CHECKING:
    from collections.abc import Callable

REQ, TOK = 0, 1
INF = math.inf


def make(cap: int | None = 2) -> tuple[MultiState, Meter, Meter]:
    """The state described in the module's docstring, with its two meters."""
    rpm = Meter("requests", Rate(3, 10.0))
    tpm = Meter("tokens", Rate(100, 10.0, burst=50))
    return MultiState(("requests", "tokens"), [rpm, tpm], cap), rpm, tpm


def req(requests: float, tokens: float, *, slot: bool = True, seq: float = INF) -> Request:
    return Request((requests, tokens), slot, seq)


def before(t: float) -> float:
    return math.nextafter(t, -INF)


def can_take(multi: MultiState, request: Request, now: float) -> bool:
    """Would ``multi.try_take(request, now)`` succeed? (``multi`` is left unchanged.)"""
    return copy.deepcopy(multi).try_take(request, now)


def snapshot(multi: MultiState, now: float) -> object:
    """Everything a grant would change, read without changing it."""
    probe = copy.deepcopy(multi)
    return (
        probe.available(now),
        probe.in_flight,
        probe.ticket,
        [m.core.ticket for m in probe.meters],
        [len(m.core) for m in probe.meters if isinstance(m.core, WindowLog)],
    )


# -- granting --------------------------------------------------------------------------------


def test_multi_meters_are_windows_without_burst_and_buckets_with_one() -> None:
    multi, rpm, tpm = make()
    assert isinstance(rpm.core, WindowLog)
    assert isinstance(tpm.core, BucketState)
    assert (rpm.maximum, tpm.maximum) == (3.0, 50.0)
    assert multi.dims == ("requests", "tokens")
    assert multi.limit("requests") == 3.0
    assert multi.limit("tokens") == 50.0
    assert multi.limit("images") == INF


def test_multi_grants_when_every_meter_fits_and_a_slot_is_free() -> None:
    multi, _, _ = make()
    assert multi.try_take(req(1, 30), 0.0)
    assert multi.in_flight == 1
    assert multi.available(0.0) == {"requests": 2.0, "tokens": 20.0}
    # The ticket holds each meter's own ticket: the window's expiry, the bucket's count.
    assert multi.ticket == [10.0, 30.0]
    assert multi.try_take(req(2, 20), 0.0)
    assert multi.in_flight == 2
    assert multi.available(0.0) == {"requests": 0.0, "tokens": 0.0}
    assert multi.ticket == [10.0, 50.0]


def test_multi_ticket_has_none_for_meters_the_request_does_not_touch() -> None:
    multi, _, _ = make()
    assert multi.try_take(req(0, 30), 1.0)
    assert list(multi.ticket) == [None, 30.0]
    assert multi.try_take(req(1, 0), 2.0)
    assert list(multi.ticket) == [12.0, None]
    assert multi.available(2.0) == {"requests": 2.0, "tokens": 30.0}


def _exhaust_tokens(multi: MultiState) -> None:
    assert multi.try_take(req(1, 40, slot=False), 0.0)  # 2 requests, 10 tokens left


def _exhaust_requests(multi: MultiState) -> None:
    assert multi.try_take(req(3, 1, slot=False), 0.0)  # 0 requests, 49 tokens left


def _fill_slots(multi: MultiState) -> None:
    assert multi.try_take(req(0, 0), 0.0)
    assert multi.try_take(req(0, 0), 0.0)


def _pause(multi: MultiState) -> None:
    multi.pause(5.0, 0.0)


@pytest.mark.parametrize(
    ("setup", "refused"),
    [
        (_exhaust_tokens, req(1, 11)),  # the bucket refuses, the window would fit
        (_exhaust_tokens, req(1, 11, slot=False)),
        (_exhaust_requests, req(1, 1)),  # the window refuses, the bucket would fit
        (_fill_slots, req(1, 1)),  # no slot
        (_pause, req(1, 1)),  # paused
        (_pause, req(0, 0, slot=False)),
    ],
    ids=["bucket", "bucket-no-slot", "window", "slot", "pause", "pause-empty"],
)
def test_multi_grant_is_all_or_nothing(
    setup: Callable[[MultiState], None], refused: Request
) -> None:
    """A request one meter (or the slot, or the pause) refuses takes nothing anywhere."""
    multi, _, _ = make()
    setup(multi)
    before_ = snapshot(multi, 1.0)
    for now in (0.0, 1e-9, 0.05):
        assert not multi.try_take(refused, now)
    assert snapshot(multi, 1.0) == before_


def test_multi_a_request_that_fits_is_granted_again_once_time_has_passed() -> None:
    multi, _, _ = make()
    _exhaust_tokens(multi)
    assert not multi.try_take(req(1, 11), 0.0)
    assert not multi.try_take(req(1, 11), 0.09)
    assert multi.try_take(req(1, 11), 0.1)
    assert multi.available(0.1) == {"requests": 1.0, "tokens": 0.0}


def test_multi_zero_amounts_need_no_capacity() -> None:
    multi, _, _ = make()
    _exhaust_requests(multi)
    assert multi.try_take(req(0, 49), 0.0)
    assert multi.try_take(req(0, 0), 0.0)
    assert multi.in_flight == 2


def test_multi_without_a_cap_requests_take_no_slot() -> None:
    multi, _, _ = make(cap=None)
    assert multi.max_concurrency is None
    for _ in range(3):
        assert multi.try_take(req(1, 1, slot=False), 0.0)
    assert multi.in_flight == 0


def test_multi_an_amount_above_a_meters_maximum_waits_for_a_full_meter_then_is_debt() -> None:
    """A request larger than a meter can hold (allowed with debt) is granted once the
    meter is full, and charged in full: later requests wait the overrun off."""
    multi, _, _ = make()
    assert multi.try_take(req(0, 10, slot=False), 0.0)
    big = req(0, 70, slot=False)
    assert not multi.try_take(big, 0.5)  # 45 of 50: not full
    assert multi.ready_at(big, 0.5) == 1.0
    assert multi.try_take(big, 1.0)
    assert multi.available(1.0)["tokens"] == -20.0
    assert multi.ready_at(req(0, 10, slot=False), 1.0) == 4.0


# -- ready_at ------------------------------------------------------------------------------


def _drained() -> MultiState:
    """Window full until 10 (grants at 0 and 4); bucket empty at 0, refilling at 10/s."""
    multi, _, _ = make()
    assert multi.try_take(req(2, 50, slot=False), 0.0)
    assert multi.try_take(req(1, 0, slot=False), 4.0)
    return multi


@pytest.mark.parametrize(
    ("request_", "now", "pause", "ready"),
    [
        (req(0, 0), 4.0, None, 4.0),  # nothing asked: at once
        (req(0, 20), 1.0, None, 2.0),  # the bucket alone
        (req(0, 50), 1.0, None, 5.0),
        (req(1, 0), 1.0, None, 10.0),  # the window alone: the grants at 0 leave at 10
        (req(2, 0), 4.0, None, 10.0),
        (req(3, 0), 4.0, None, 14.0),  # ... and the one at 4 leaves at 14
        (req(1, 20), 1.0, None, 10.0),  # both: the later of the two
        (req(3, 50), 1.0, None, 14.0),
        (req(0, 50), 6.0, None, 6.0),
        (req(0, 20), 1.0, 7.0, 7.0),  # the pause, when it ends last
        (req(1, 20), 1.0, 7.0, 10.0),
        (req(0, 0), 4.0, 8.0, 8.0),
    ],
)
def test_multi_ready_at_is_the_max_over_meters_and_the_pause(
    request_: Request, now: float, pause: float | None, ready: float
) -> None:
    multi = _drained()
    if pause is not None:
        multi.pause(pause, 4.0)
    assert multi.ready_at(request_, now) == ready
    assert can_take(multi, request_, ready)
    if ready > now:
        assert not can_take(multi, request_, before(ready))


def test_multi_ready_at_is_inf_while_the_slot_cap_is_reached() -> None:
    multi, _, _ = make(cap=1)
    held = req(1, 1)
    assert multi.try_take(held, 0.0)
    assert multi.ready_at(req(1, 1), 0.0) == INF
    assert multi.ready_at(req(0, 0), 100.0) == INF
    assert multi.ready_at(req(1, 1, slot=False), 0.0) == 0.0  # a request without a slot
    multi.release(held)
    assert multi.ready_at(req(1, 1), 0.0) == 0.0


def test_multi_ready_at_changes_nothing() -> None:
    multi = _drained()
    state = snapshot(multi, 4.0)
    seen = multi.seen
    assert multi.ready_at(req(3, 50), 4.0) == 14.0
    assert snapshot(multi, 4.0) == state
    assert multi.seen == seen


# -- release and refund ----------------------------------------------------------------------


@pytest.mark.parametrize("give_back", ["release", "refund"])
def test_multi_release_and_refund_free_the_slot(give_back: str) -> None:
    multi, _, _ = make(cap=2)
    first, second = req(1, 10), req(1, 10)
    assert multi.try_take(first, 0.0)
    ticket = multi.ticket
    assert multi.try_take(second, 0.0)
    assert not multi.try_take(req(0, 0), 0.0)
    if give_back == "release":
        multi.release(first)
    else:
        multi.refund(first, ticket, 0.0)
    assert multi.in_flight == 1
    assert multi.try_take(req(0, 0), 0.0)
    assert multi.in_flight == 2


def test_multi_release_keeps_what_was_taken() -> None:
    multi, _, _ = make()
    held = req(1, 30)
    assert multi.try_take(held, 0.0)
    multi.release(held)
    assert multi.in_flight == 0
    assert multi.available(0.0) == {"requests": 2.0, "tokens": 20.0}


def test_multi_releasing_a_request_without_a_slot_changes_nothing() -> None:
    multi, _, _ = make()
    assert multi.try_take(req(1, 1), 0.0)
    free = req(1, 1, slot=False)
    assert multi.try_take(free, 0.0)
    multi.release(free)
    assert multi.in_flight == 1
    multi.refund(free, multi.ticket, 0.0)
    assert multi.in_flight == 1


def test_multi_refund_restores_windows_and_buckets_at_once() -> None:
    multi, _, _ = make()
    held = req(2, 30)
    assert multi.try_take(held, 1.0)
    multi.refund(held, multi.ticket, 1.0)
    assert multi.available(1.0) == {"requests": 3.0, "tokens": 50.0}
    assert multi.at_rest(1.0)


def test_multi_refund_of_a_bucket_is_bounded_by_what_was_granted_after() -> None:
    """The window gives the grant back in full; the bucket only as far as G1 allows."""
    multi, _, _ = make()
    first = req(1, 30)
    assert multi.try_take(first, 0.0)
    ticket = multi.ticket
    assert multi.try_take(req(1, 50), 3.0)  # refilled to 50 at 2, drained again
    multi.refund(first, ticket, 3.0)
    # 50 tokens granted after the first grant: the bucket keeps them all.
    assert multi.available(3.0) == {"requests": 2.0, "tokens": 0.0}


def test_multi_refund_after_the_bucket_refilled_restores_only_up_to_capacity() -> None:
    multi, _, _ = make()
    first = req(0, 30)
    assert multi.try_take(first, 0.0)
    multi.refund(first, multi.ticket, 2.5)  # level 45 by then: 5 of the 30 go back
    assert multi.available(2.5)["tokens"] == 50.0


def test_multi_refund_of_a_grant_that_left_the_window_restores_nothing() -> None:
    multi, _, _ = make()
    first = req(2, 0, slot=False)
    assert multi.try_take(first, 0.0)
    ticket = multi.ticket
    assert multi.try_take(req(1, 0, slot=False), 5.0)
    multi.refund(first, ticket, 10.0)
    assert multi.available(10.0)["requests"] == 2.0


# -- adjust (settle) ---------------------------------------------------------------------------


def test_multi_adjust_charges_an_overrun_as_debt() -> None:
    multi, _, _ = make()
    held = req(1, 30)
    assert multi.try_take(held, 0.0)
    assert multi.adjust(held, multi.ticket, {TOK: 70.0}, 0.0) == []
    assert multi.available(0.0) == {"requests": 2.0, "tokens": -20.0}
    # Debt: the next token waits until the level is back above zero.
    assert multi.ready_at(req(0, 10), 0.0) == 3.0
    assert not multi.try_take(req(0, 10), before(3.0))
    assert multi.try_take(req(0, 10), 3.0)


def test_multi_adjust_charges_a_window_overrun_beyond_its_limit() -> None:
    multi, _, _ = make()
    held = req(1, 0)
    assert multi.try_take(held, 0.0)
    assert multi.adjust(held, multi.ticket, {REQ: 4.0}, 1.0) == []
    assert multi.available(1.0)["requests"] == -1.0
    # The overrun is recorded at the instant of the settle, so it leaves at 11.
    assert multi.ready_at(req(1, 0), 1.0) == 11.0


def test_multi_adjust_refunds_the_unused_part_and_returns_the_meters_refunded() -> None:
    multi, rpm, tpm = make()
    held = req(2, 40)
    assert multi.try_take(held, 0.0)
    assert multi.adjust(held, multi.ticket, {REQ: 1.0, TOK: 10.0}, 0.0) == [rpm, tpm]
    assert multi.available(0.0) == {"requests": 2.0, "tokens": 40.0}
    assert multi.in_flight == 1  # the slot stays held until release


@pytest.mark.parametrize(
    ("actual", "refunded", "available"),
    [
        ({}, [], {"requests": 1.0, "tokens": 10.0}),
        ({TOK: 40.0}, [], {"requests": 1.0, "tokens": 10.0}),  # no difference
        ({TOK: 25.0}, ["tokens"], {"requests": 1.0, "tokens": 25.0}),
        ({REQ: 0.0}, ["requests"], {"requests": 3.0, "tokens": 10.0}),
        ({REQ: 3.0, TOK: 0.0}, ["tokens"], {"requests": 0.0, "tokens": 50.0}),
        ({REQ: 1.0, TOK: 45.0}, ["requests"], {"requests": 2.0, "tokens": 5.0}),
    ],
)
def test_multi_adjust_only_moves_the_dimensions_given(
    actual: dict[int, float], refunded: list[str], available: dict[str, float]
) -> None:
    multi, _, _ = make()
    held = req(2, 40)
    assert multi.try_take(held, 0.0)
    got = multi.adjust(held, multi.ticket, actual, 0.0)
    assert [m.dim for m in got] == refunded
    assert multi.available(0.0) == available


def test_multi_adjust_of_an_untouched_dimension_charges_it() -> None:
    multi, _, _ = make()
    held = req(1, 0)
    assert multi.try_take(held, 0.0)
    assert multi.ticket == [10.0, None]
    assert multi.adjust(held, multi.ticket, {TOK: 20.0}, 0.0) == []
    assert multi.available(0.0) == {"requests": 2.0, "tokens": 30.0}


# -- clamp and pause ---------------------------------------------------------------------------


def test_multi_clamp_lowers_a_window_meter_until_an_instant() -> None:
    multi, rpm, _ = make()
    multi.clamp(rpm, 1.0, 4.0, 0.0)
    assert multi.available(0.0)["requests"] == 1.0
    assert not can_take(multi, req(2, 0), 0.0)
    assert multi.ready_at(req(2, 0), 0.0) == 4.0
    assert multi.available(before(4.0))["requests"] == 1.0
    assert multi.available(4.0)["requests"] == 3.0


def test_multi_clamp_of_a_window_lasts_at_most_one_window() -> None:
    multi, rpm, _ = make()
    multi.clamp(rpm, 0.0, 1000.0, 0.0)
    assert multi.ready_at(req(1, 0), 0.0) == 10.0


def test_multi_clamp_lowers_a_bucket_meter_which_then_refills_at_its_rate() -> None:
    multi, _, tpm = make()
    multi.clamp(tpm, 5.0, 60.0, 0.0)
    assert multi.available(0.0)["tokens"] == 5.0
    assert multi.available(1.0)["tokens"] == 15.0
    assert multi.ready_at(req(0, 50), 0.0) == 4.5


@pytest.mark.parametrize("meter", ["requests", "tokens"])
def test_multi_clamp_never_raises_a_meter(meter: str) -> None:
    multi, rpm, tpm = make()
    assert multi.try_take(req(2, 40), 0.0)
    state = snapshot(multi, 0.0)
    multi.clamp(rpm if meter == "requests" else tpm, 45.0, 5.0, 0.0)
    assert snapshot(multi, 0.0) == state


def test_multi_pause_never_shortens() -> None:
    multi, _, _ = make()
    multi.pause(10.0, 0.0)
    multi.pause(5.0, 1.0)  # shorter: ignored
    assert multi.paused_until == 10.0
    assert not multi.try_take(req(0, 0), before(10.0))
    assert multi.ready_at(req(1, 1), 1.0) == 10.0
    multi.pause(12.0, 2.0)  # longer: kept
    assert multi.paused_until == 12.0
    assert multi.ready_at(req(1, 1), 2.0) == 12.0
    assert not multi.try_take(req(0, 0), 11.0)
    assert multi.try_take(req(1, 1), 12.0)


def test_multi_a_pause_in_the_past_does_nothing() -> None:
    multi, _, _ = make()
    multi.pause(3.0, 5.0)
    assert multi.ready_at(req(1, 1), 5.0) == 5.0
    assert multi.try_take(req(1, 1), 5.0)


# -- reading -----------------------------------------------------------------------------------


def test_multi_available_is_the_tightest_meter_per_dimension() -> None:
    bucket = Meter("tokens", Rate(100, 10.0, burst=50))  # 10/s, holds 50
    window = Meter("tokens", Rate(80, 60.0))  # 80 per minute
    multi = MultiState(("tokens",), [bucket, window], None)
    assert multi.limit("tokens") == 50.0
    assert multi.available(0.0) == {"tokens": 50.0}
    assert multi.try_take(Request((40.0,), False), 0.0)
    assert multi.available(0.0) == {"tokens": 10.0}  # the bucket
    assert multi.available(5.0) == {"tokens": 40.0}  # the window (the bucket is full)
    assert multi.ready_at(Request((50.0,), False), 5.0) == 60.0
    assert multi.available(60.0) == {"tokens": 50.0}


def test_multi_available_is_negative_in_debt() -> None:
    multi, _, _ = make()
    held = req(1, 10)
    assert multi.try_take(held, 0.0)
    multi.adjust(held, multi.ticket, {REQ: 5.0, TOK: 60.0}, 0.0)
    assert multi.available(0.0) == {"requests": -2.0, "tokens": -10.0}


def test_multi_at_rest() -> None:
    multi, _, _ = make()
    assert multi.at_rest(0.0)
    held = req(1, 20)
    assert multi.try_take(held, 0.0)
    assert not multi.at_rest(0.0)
    multi.release(held)
    assert not multi.at_rest(0.0)  # the meters still remember the grant
    assert not multi.at_rest(2.0)  # the bucket is full again, the window is not
    assert multi.at_rest(10.0)
    multi.pause(20.0, 10.0)
    assert not multi.at_rest(10.0)
    assert not multi.at_rest(before(20.0))
    assert multi.at_rest(20.0)


def test_multi_at_rest_needs_every_slot_back() -> None:
    multi, _, _ = make()
    held = req(0, 0)
    assert multi.try_take(held, 0.0)
    assert not multi.at_rest(100.0)
    multi.release(held)
    assert multi.at_rest(100.0)


# -- rebase ------------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", [0.0, 3.0, 1e6])
def test_multi_rebase_keeps_what_was_left_of_the_pause(origin: float) -> None:
    multi, _, _ = make()
    assert multi.try_take(req(1, 50), 100.0)
    multi.pause(130.0, 110.0)  # 20 seconds left at 110
    multi.rebase(origin)
    assert multi.seen == origin
    assert multi.paused_until == origin + 20.0
    assert multi.ready_at(req(0, 0), origin) == origin + 20.0
    # The meters continue as if no time had passed since they last moved.
    assert multi.available(origin) == {"requests": 2.0, "tokens": 0.0}
    assert multi.available(origin + 5.0) == {"requests": 2.0, "tokens": 50.0}
    assert multi.ready_at(req(3, 0), origin) == origin + 20.0  # the pause ends last
    assert multi.ready_at(req(3, 0), origin + 20.0) == origin + 20.0
    multi.pause(origin + 10.0, origin)
    assert multi.paused_until == origin + 20.0


@pytest.mark.parametrize("origin", [0.0, 1e6])
def test_multi_rebase_drops_a_pause_that_was_over(origin: float) -> None:
    multi, _, _ = make()
    multi.pause(5.0, 0.0)
    assert multi.try_take(req(1, 1), 6.0)
    multi.rebase(origin)
    assert multi.paused_until == -INF
    assert multi.try_take(req(1, 1), origin)


def test_multi_rebase_moves_only_the_given_meters() -> None:
    multi, rpm, tpm = make()
    assert multi.try_take(req(1, 50), 100.0)
    multi.rebase(7.0, [rpm])
    assert rpm.core.last_update == 7.0
    assert tpm.core.last_update == 100.0
    assert multi.seen == 7.0
    assert multi.ready_at(req(3, 0), 7.0) == 17.0
    multi.rebase(500.0, [])
    assert rpm.core.last_update == 7.0
    assert tpm.core.last_update == 100.0
    assert multi.seen == 500.0


# -- shared meters and claims ------------------------------------------------------------------


def shared() -> tuple[MultiState, MultiState, Meter]:
    """Two states (two models) drawing on one pool of 10 tokens that refills at 1/s."""
    pool = Meter("tokens", Rate(1, 1.0, burst=10))
    a = MultiState(("tokens",), [pool], None)
    b = MultiState(("tokens",), [pool], None)
    return a, b, pool


def claimant(meter: Meter) -> Request | None:
    """The meter's claim (read through a call, so that mypy does not narrow it)."""
    return meter.claim


def tokens(amount: float, seq: float = INF) -> Request:
    return Request((amount,), False, seq)


def test_shared_meter_counts_its_sharers() -> None:
    a, b, pool = shared()
    assert pool.sharers == 2
    assert pool.shared
    assert b.try_take(tokens(6), 0.0)
    assert a.available(0.0) == {"tokens": 4.0}
    own = Meter("tokens", Rate(1, 1.0, burst=10))
    MultiState(("tokens",), [own], None)
    assert not own.shared


def test_shared_meter_claim_keeps_later_requests_from_taking() -> None:
    a, b, pool = shared()
    assert b.try_take(tokens(6), 0.0)
    big = tokens(8, seq=1)
    a.claim(big, 0.0)  # 4 left: it does not fit, so it claims the pool
    assert claimant(pool) is big
    # Later requests (on either state) may not take from the pool, though they fit.
    for later in (tokens(1, seq=2), tokens(1)):
        assert not b.try_take(later, 0.0)
        assert not a.try_take(later, 0.0)
        assert b.ready_at(later, 0.0) == INF
    # An earlier one may.
    assert b.try_take(tokens(1, seq=0), 0.0)
    assert b.ready_at(tokens(1, seq=0), 0.0) == 0.0
    # The claimant itself waits for the meter and is not blocked by its own claim.
    assert a.ready_at(big, 0.0) == 5.0
    assert not a.try_take(big, before(5.0))
    assert a.freed == []
    assert a.try_take(big, 5.0)
    # Granted: its claim is released and reported, so other states can be woken.
    assert claimant(pool) is None
    assert a.freed == [pool]
    assert b.ready_at(tokens(1), 5.0) == 6.0


def test_shared_meter_claimant_frees_nothing_when_it_held_no_claim() -> None:
    a, _, pool = shared()
    assert a.try_take(tokens(3, seq=4), 0.0)
    assert a.freed == []
    assert claimant(pool) is None


def test_shared_meter_claim_only_when_it_does_not_fit() -> None:
    a, _, pool = shared()
    a.claim(tokens(10, seq=1), 0.0)  # it fits: nothing to claim
    assert claimant(pool) is None
    assert a.try_take(tokens(5), 0.0)
    a.claim(tokens(5, seq=1), 0.0)
    assert claimant(pool) is None
    a.claim(tokens(6, seq=1), 0.0)
    assert claimant(pool) is not None


def test_shared_meter_claim_goes_to_the_earliest_request() -> None:
    a, b, pool = shared()
    assert a.try_take(tokens(10), 0.0)
    late, early, earliest = tokens(3, seq=5), tokens(3, seq=2), tokens(1, seq=1)
    a.claim(late, 0.0)
    assert claimant(pool) is late
    b.claim(early, 0.0)
    assert claimant(pool) is early  # an earlier request takes the claim over
    a.claim(late, 0.0)
    assert claimant(pool) is early  # a later one does not
    b.claim(earliest, 0.0)
    assert claimant(pool) is earliest


def test_shared_meter_claim_never_covers_a_meter_of_one_state() -> None:
    own = Meter("tokens", Rate(1, 1.0, burst=10))
    multi = MultiState(("tokens",), [own], None)
    assert multi.try_take(tokens(10), 0.0)
    multi.claim(tokens(5, seq=1), 0.0)
    assert claimant(own) is None


def test_shared_meter_unclaim_returns_the_meters_released() -> None:
    pool = Meter("tokens", Rate(1, 1.0, burst=10))
    other = Meter("requests", Rate(1, 1.0, burst=2))
    a = MultiState(("tokens", "requests"), [pool, other], None)
    b = MultiState(("tokens", "requests"), [pool, other], None)
    assert b.try_take(Request((10.0, 2.0), False), 0.0)
    waiting = Request((5.0, 1.0), False, 3)
    a.claim(waiting, 0.0)
    assert (claimant(pool), claimant(other)) == (waiting, waiting)
    assert a.unclaim(tokens(1, seq=3)) == []  # another request (even of the same seq)
    assert a.unclaim(waiting) == [pool, other]
    assert (claimant(pool), claimant(other)) == (None, None)
    assert a.unclaim(waiting) == []
    assert b.try_take(Request((0.0, 1.0), False), 1.0)


def test_request_seq_defaults_to_infinitely_late() -> None:
    request = Request((1.0,), True)
    assert request.seq == INF
    assert request.slot
    a, b, pool = shared()
    assert a.try_take(tokens(10), 0.0)
    a.claim(tokens(5, seq=10**9), 0.0)
    # A request without a seq (it never waited) counts as later than any claimant.
    assert not b.try_take(Request((1.0,), False), 3.0)
    assert b.ready_at(Request((1.0,), False), 3.0) == INF
    assert claimant(pool) is not None


# -- take and undo -----------------------------------------------------------------------


def _bits(multi: MultiState) -> object:
    """Every slot of the state and its meters' cores, bit for bit (floats by ``hex``)
    but for ``_was``, the undo scratch."""

    def bits(value: object) -> object:
        if isinstance(value, float):
            return value.hex()
        if isinstance(value, list | tuple):
            return [bits(v) for v in value]
        return value

    cores = [
        {slot: bits(getattr(m.core, slot)) for slot in type(m.core).__slots__ if slot != "_was"}
        for m in multi.meters
    ]
    return cores, multi.in_flight, bits(multi.ticket), multi.freed


@pytest.mark.parametrize(
    ("now", "tokens"),
    [
        (0.0, 40.0),  # the window merges into its entry of the same instant; the bucket
        (0.1, 40.0),  # the window appends an entry, then pops it; the bucket refuses
        (0.1, 0.4 / 3),  # a window and a bucket pass, then the last window refuses
    ],
    ids=["merge", "append", "bucket-then-window"],
)
def test_multi_a_later_meter_refusing_undoes_the_earlier_ones_bit_for_bit(
    now: float, tokens: float
) -> None:
    """requests: a window (0); tokens: a bucket (1) and a window of 30 per 10 s (2).
    Grants at 0.0 leave 20.1 in the bucket and 0.1 in the last window; a request a
    later meter refuses leaves every meter exactly as it was (once each has expired
    what any call at ``now`` expires)."""
    meters = [
        Meter("requests", Rate(3, 10.0)),
        Meter("tokens", Rate(100, 10.0, burst=50)),
        Meter("tokens", Rate(30, 10.0)),
    ]
    multi = MultiState(("requests", "tokens"), meters, 2)
    assert multi.try_take(req(1, 0.1), 0.0)
    assert multi.try_take(req(0, 29.8, slot=False), 0.0)  # the last window: 0.1 left
    for meter in meters:  # what any call at `now` does first
        meter.core.fits(0.0, now)
    was = _bits(multi)
    assert not multi.try_take(req(1, tokens), now)
    assert _bits(multi) == was
    # ... and the request the meters do admit is granted on the restored state.
    assert multi.try_take(req(1, 0.05), now)
    assert multi.ticket == [m.core.ticket for m in meters]
