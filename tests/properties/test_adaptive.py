"""Hypothesis: whatever the calls tell them, the adaptive policies keep their promises."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tokenbucket._core.adaptive import AIMD, Gradient, Policy

samples = st.lists(
    st.tuples(
        st.floats(0.0, 2.0),  # seconds since the previous call ended
        st.floats(0.0, 5.0),  # its latency
        st.integers(0, 600),  # calls in flight as it ended
        st.booleans(),  # dropped
    ),
    max_size=300,
)
policies = st.sampled_from([AIMD, Gradient])


@given(policies, st.integers(1, 50), st.integers(0, 500), st.integers(0, 600), samples)
def test_the_limit_stays_within_its_bounds_and_moves_only_when_a_window_closes(
    make: type[Policy], low: int, span: int, initial: int, calls: list[tuple[float, ...]]
) -> None:
    policy = make(initial, low, low + span)
    now = 0.0
    for gap, rtt, in_flight, dropped in calls:
        now += gap
        before = policy.limit
        reason = policy.sample(now, rtt, int(in_flight), bool(dropped))
        assert low <= policy.current <= low + span
        assert low <= policy.limit <= low + span
        if reason is None:
            assert policy.limit == before
        if reason == "grow":
            assert policy.limit >= before
        if reason in ("drop", "latency"):
            assert policy.limit <= before


@given(policies, st.integers(2, 400), st.lists(st.floats(0.0, 0.5), min_size=1, max_size=200))
def test_drops_of_calls_sent_before_a_cut_lower_the_limit_once(
    make: type[Policy], initial: int, gaps: list[float]
) -> None:
    """Calls that all started before the first of them ended dropped (a burst of 429s)
    lower the limit once, however many windows they fill."""
    policy = make(initial, 1, 1000)
    now, cuts = 100.0, 0
    for gap in gaps:
        now += gap
        rtt = now - 99.0  # every call started at 99
        cuts += policy.sample(now, rtt, initial, True) == "drop"
    assert cuts <= 1
