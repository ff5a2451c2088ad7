"""What the server you call counts: arrivals, not grants.

A grant is exact at its instant, but its request reaches the server later: the task
resumes after the event loop gets to it, and the network adds its own delay. Two bursts
granted one window apart can therefore arrive within one window, and a server that
counts arrivals strictly sees more than the limit. A window with a margin at least as
long as the worst delay (``Rate(n, window + margin)``) keeps every window of arrivals
within the limit: the arrivals in any window come from grants made in that window
widened by the delay. Virtual time (trio's MockClock); instants on a binary grid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import tokenbucket as tb

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

LIMIT, WINDOW = 3, 1.0
STEP = 1 / 16  # exact in binary, so sums of steps are exact too


def make(kind: str, window: float) -> Callable[[], Awaitable[None]]:
    """A limit of LIMIT per ``window`` and how one request takes from it."""
    if kind == "SlidingWindow":
        limiter = tb.SlidingWindow(limit=LIMIT, window=window)
        return limiter.acquire

    limited = tb.Limiter({"requests": tb.Rate(LIMIT, window)})

    async def take() -> None:
        async with limited.acquire():
            pass

    return take


def arrivals(kind: str, window: float, starts: list[float], delays: list[float]) -> list[float]:
    """When each request reaches the server: the ``i``-th grant arrives ``delays[i]`` late."""
    seen: list[float] = []
    granted = 0
    take = make(kind, window)

    async def request(start: float) -> None:
        nonlocal granted
        await trio.sleep(start)
        await take()
        delay, granted = delays[granted], granted + 1
        await trio.sleep(delay)
        seen.append(trio.current_time())

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for start in starts:
                nursery.start_soon(request, start)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return sorted(seen)


def most_in_a_window(seen: list[float]) -> int:
    """The most arrivals a strict server counts in any window ``[s, s + WINDOW)``."""
    return max(sum(1 for t in seen if s <= t < s + WINDOW) for s in seen)


@pytest.mark.parametrize("kind", ["SlidingWindow", "Limiter"])
def test_without_a_margin_two_bursts_can_arrive_within_one_window(kind: str) -> None:
    # The first burst is granted at 0 and arrives a quarter second late; the second is
    # granted one window later and arrives at once.
    starts = [0.0] * (2 * LIMIT)
    delays = [0.25] * LIMIT + [0.0] * LIMIT
    seen = arrivals(kind, WINDOW, starts, delays)
    assert seen == [0.25] * LIMIT + [WINDOW] * LIMIT
    assert most_in_a_window(seen) == 2 * LIMIT


@pytest.mark.parametrize("kind", ["SlidingWindow", "Limiter"])
@settings(max_examples=40, deadline=None)
@given(
    margin=st.integers(1, 6),
    requests=st.lists(st.tuples(st.integers(0, 48), st.integers(0, 6)), min_size=1, max_size=20),
)
def test_a_margin_as_long_as_the_delay_keeps_every_window_of_arrivals_within_the_limit(
    kind: str, margin: int, requests: list[tuple[int, int]]
) -> None:
    starts = [start * STEP for start, _ in requests]
    delays = [min(delay, margin) * STEP for _, delay in requests]
    seen = arrivals(kind, WINDOW + margin * STEP, starts, delays)
    assert len(seen) == len(requests)
    assert most_in_a_window(seen) <= LIMIT
