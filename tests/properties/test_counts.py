"""Hypothesis: grants appended and folded in batches add up to what was granted, whatever
the batching and wherever a snapshot is taken."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenbucket._core import Meter, MultiState, Request
from tokenbucket._core.counts import FOLD
from tokenbucket._rate import Rate

amounts = st.tuples(
    st.integers(0, 5).map(float), st.floats(0, 1e6, allow_nan=False, allow_infinity=False)
)


@given(st.lists(st.tuples(amounts, st.booleans()), max_size=3 * FOLD))
def test_snapshots_add_up_whatever_the_batching(
    grants: list[tuple[tuple[float, float], bool]],
) -> None:
    state = MultiState(
        ("requests", "tokens"),
        [Meter("requests", Rate(1e12, 1.0)), Meter("tokens", Rate(1e15, 1.0))],
        None,
    )
    counted = 0
    units = [0.0, 0.0]
    for k, (vector, look) in enumerate(grants):
        assert state.try_take(Request(vector, False), float(k))
        counted += 1
        units = [units[0] + vector[0], units[1] + vector[1]]
        if look:
            seen = state.counts.snapshot()
            assert seen.grants == counted
            assert seen.units == pytest.approx(units, rel=1e-9, abs=1e-6)
            assert seen.pending == []
    assert len(state.counts.pending) == counted % FOLD
    final = state.counts.snapshot()
    assert final.grants == counted
