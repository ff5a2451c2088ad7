"""The uniform protocol of the single-limit states: one suite run against both.

Both factories make a limit of 10 that is whole again 10 seconds after it was emptied:
a bucket refilling at 1 a second, and a window of 10 per 10 seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tokenbucket._core import BucketState, LimitState, WindowLog

if TYPE_CHECKING:
    from collections.abc import Callable


def bucket(now: float = 0.0) -> BucketState:
    return BucketState(1.0, 10.0, now)


def window(now: float = 0.0) -> WindowLog:
    return WindowLog(10.0, 10.0, now)


# A typed assignment: mypy checks that both classes satisfy the protocol.
FACTORIES: dict[str, Callable[[float], LimitState]] = {"bucket": bucket, "window": window}
both = pytest.mark.parametrize("kind", sorted(FACTORIES))


def make(kind: str, now: float = 0.0) -> LimitState:
    return FACTORIES[kind](now)


def test_both_states_satisfy_the_limit_state_protocol() -> None:
    states: list[LimitState] = [BucketState(1.0, 2.0), WindowLog(2.0, 1.0)]
    assert [s.maximum for s in states] == [2.0, 2.0]


@both
@pytest.mark.parametrize("now", [0.0, 5.5, 1e6])
def test_limit_state_starts_whole_and_at_rest(kind: str, now: float) -> None:
    state = make(kind, now)
    assert state.maximum == 10.0
    assert state.last_update == now
    assert state.ticket == 0.0
    assert state.level(now) == 10.0
    assert state.at_rest(now)
    assert state.fits(10.0, now)
    assert not state.fits(10.5, now)
    assert state.ready_at(10.0, now) == now
    assert state.ready_at(10.5, now) == float("inf")


@both
def test_limit_state_charge_returns_the_ticket(kind: str) -> None:
    state = make(kind)
    first = state.charge(3.0, 0.0)
    assert first == state.ticket
    assert state.level(0.0) == 7.0
    second = state.charge(2.0, 1.0)
    assert second == state.ticket
    assert second != first
    # The ticket names the grant: a refund by it gives that grant back ...
    assert state.refund(2.0, second, 1.0) == 2.0
    # ... as far as the guarantee allows: the bucket (level 8 now) keeps what was
    # granted after the first grant (capacity 10 - 2 = 8); the window removes it.
    assert state.refund(3.0, first, 1.0) == {"bucket": 0.0, "window": 3.0}[kind]
    assert state.level(1.0) == {"bucket": 8.0, "window": 10.0}[kind]
    assert state.at_rest(1.0) == (kind == "window")


@both
def test_limit_state_try_take_records_the_ticket(kind: str) -> None:
    state = make(kind)
    assert state.try_take(4.0, 0.0)
    ticket = state.ticket
    assert not state.try_take(7.0, 0.0)
    assert state.ticket == ticket  # a refused take records nothing
    assert state.refund(4.0, ticket, 0.0) == 4.0
    assert state.try_take(10.0, 0.0)


@both
def test_limit_state_charge_may_go_into_debt(kind: str) -> None:
    state = make(kind)
    state.charge(15.0, 0.0)
    assert state.level(0.0) == -5.0
    assert not state.fits(0.5, 0.0)
    assert not state.at_rest(0.0)
    assert state.ready_at(1.0, 0.0) == {"bucket": 6.0, "window": 10.0}[kind]


@both
@pytest.mark.parametrize("most", [0.0, 4.0, 9.5])
def test_limit_state_clamp_lowers_the_level_to_most(kind: str, most: float) -> None:
    state = make(kind)
    state.clamp(most, 5.0, 0.0)
    assert state.level(0.0) == most
    assert state.last_update == 0.0
    assert state.fits(most, 0.0)
    assert not state.fits(most + 0.5, 0.0)
    assert not state.at_rest(0.0)
    # The bucket refills at its rate from now; the window gets the rest back at `until`.
    assert state.ready_at(10.0, 0.0) == {"bucket": 10.0 - most, "window": 5.0}[kind]


@both
def test_limit_state_clamp_never_raises_the_level(kind: str) -> None:
    state = make(kind)
    assert state.try_take(6.0, 0.0)
    state.clamp(5.0, 5.0, 0.0)
    assert state.level(0.0) == 4.0
    state.clamp(4.0, 5.0, 0.0)
    assert state.level(0.0) == 4.0


@both
def test_limit_state_at_rest_once_whole_again(kind: str) -> None:
    state = make(kind)
    assert state.try_take(10.0, 0.0)
    assert not state.at_rest(0.0)
    assert not state.at_rest(9.5)
    assert state.at_rest(10.0)
    assert state.at_rest(1e6)


@both
@pytest.mark.parametrize("origin", [0.0, 50.0, 1e6])
def test_limit_state_rebase_continues_as_if_no_time_had_passed(kind: str, origin: float) -> None:
    state = make(kind, 100.0)
    assert state.try_take(10.0, 100.0)
    state.rebase(origin)
    assert state.last_update == origin
    assert state.level(origin) == 0.0
    assert state.ready_at(10.0, origin) == origin + 10.0


def test_bucket_ticket_from_before_a_rebase_still_names_its_grant() -> None:
    """The bucket's tickets count units granted, which no clock change moves."""
    state = bucket(100.0)
    assert state.try_take(5.0, 100.0)
    assert state.try_take(5.0, 100.0)
    second = state.ticket
    state.rebase(3.0)
    assert state.refund(5.0, second, 3.0) == 5.0
    assert state.level(3.0) == 5.0
