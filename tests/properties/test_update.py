"""Hypothesis: Limiter.update while the limiter runs, under trio's virtual clock.

Each example: calls of random sizes arriving on a coarse grid at an exact sliding window
of ``OLD`` tokens per second, and one ``update`` to ``NEW`` at a random instant. The
checks use only what the script recorded:

* every rolling second that ends with a grant holds at most the limit in force when it
  was granted (the old one before the update, the new one after: the grants already in
  the window count against the new limit);
* grants follow arrival order;
* a raise grants at once, at the update, the waiters that now fit, in order;
* a bucket's update never leaves more on hand than its new burst, and refills at its new
  rate: the grants after the update never exceed what that allows.
"""

from __future__ import annotations

from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

import tokenbucket as tb

GRID = 0.125
EPS = 1e-9

calls = st.lists(
    st.tuples(st.integers(0, 24), st.sampled_from([1.0, 2.0, 3.0])), min_size=1, max_size=25
)


def run(script: object) -> None:
    anyio.run(
        script,  # type: ignore[arg-type]
        backend="trio",
        backend_options={"clock": MockClock(autojump_threshold=0)},
    )


class _Recording:
    """The limiter's state, logging each grant and the update as the state sees them
    (tasks woken at one instant run in any order: their own logs cannot tell)."""

    def __init__(self, multi: Any, log: list[tuple[str, int, float, float]]) -> None:
        self._multi = multi
        self._log = log

    def try_take(self, request: Any, now: float) -> bool:
        granted = bool(self._multi.try_take(request, now))
        if granted:
            self._log.append(("grant", request.number, now, request.amounts[0]))
        return granted

    def update(self, meter: Any, rate: Any, now: float) -> None:
        self._log.append(("update", -1, now, rate.amount))
        self._multi.update(meter, rate, now)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._multi, name)


class _Numbered(tb.LeaseContext):
    __slots__ = ("number",)
    number: int


async def play(
    limiter: tb.Limiter, arrivals: list[tuple[int, float]], at: int, change: dict[str, object]
) -> tuple[list[tuple[str, int, float, float]], int]:
    """Run the calls and the update; the log in the order the state saw it: ("call" |
    "grant", call number, instant, tokens), and the position of the update in it."""
    log: list[tuple[str, int, float, float]] = []
    store: Any = limiter._store
    store._multi = store._waiters.state = _Recording(store._multi, log)

    async def call(number: int, when: int, tokens: float) -> None:
        await anyio.sleep_until(when * GRID)
        context = limiter.acquire(tokens=tokens)
        numbered = _Numbered(limiter, context.amounts, context.slot, None)
        numbered.number = number
        log.append(("call", number, anyio.current_time(), tokens))
        async with numbered:
            pass

    async def update() -> None:
        await anyio.sleep_until(at * GRID)
        limiter.update(**change)  # type: ignore[arg-type]

    async with anyio.create_task_group() as tg:
        for number, (when, tokens) in enumerate(sorted(arrivals, key=lambda a: a[0])):
            tg.start_soon(call, number, when, tokens)
        tg.start_soon(update)
    [updated] = [k for k, entry in enumerate(log) if entry[0] == "update"]
    return log, updated


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls, st.integers(0, 24), st.sampled_from([5.0, 8.0]), st.sampled_from([5.0, 8.0, 12.0]))
def test_a_window_holds_the_old_limit_before_the_update_and_the_new_one_after(
    arrivals: list[tuple[int, float]], at: int, old: float, new: float
) -> None:
    result: list[tuple[list[tuple[str, int, float, float]], int]] = []

    async def script() -> None:
        limiter = tb.Limiter(tokens_per_second=old)
        result.append(await play(limiter, arrivals, at, {"tokens_per_second": new}))

    run(script)
    [(log, updated)] = result
    grants = [(k, entry) for k, entry in enumerate(log) if entry[0] == "grant"]
    assert len(grants) == len(arrivals)
    for k, (_, _, instant, _) in grants:
        bound = new if k >= updated else old
        inside = sum(  # the rolling second that ends with it, as granted so far
            t for j, (_, _, i, t) in grants if j <= k and instant - 1.0 < i <= instant + EPS
        )
        assert inside <= bound + EPS, (log, updated)
    calls_order = [n for kind, n, _, _ in log if kind == "call"]
    assert [n for _, (_, n, _, _) in grants] == calls_order  # FIFO
    if new > old:
        # The waiters at the update that fit under the new limit are granted then.
        update_time = at * GRID
        used = sum(
            t for k, (_, _, i, t) in grants if k < updated and update_time - 1.0 < i <= update_time
        )
        granted_before = {n for k, (_, n, _, _) in grants if k < updated}
        waiting = [
            (n, t) for kind, n, i, t in log[:updated] if kind == "call" and n not in granted_before
        ]
        when = {n: i for _, (_, n, i, _) in grants}
        for n, tokens in waiting:
            if used + tokens > new + EPS:
                break
            used += tokens
            assert when[n] == update_time, (log, updated, n)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls, st.integers(0, 24), st.sampled_from([(4.0, 4.0), (2.0, 6.0), (8.0, 3.0)]))
def test_a_bucket_keeps_at_most_its_new_burst_and_refills_at_its_new_rate(
    arrivals: list[tuple[int, float]], at: int, change: tuple[float, float]
) -> None:
    rate, burst = change
    result: list[tuple[list[tuple[str, int, float, float]], int]] = []

    async def script() -> None:
        limiter = tb.Limiter(tokens_per_second=tb.per_second(6, burst=6))
        result.append(
            await play(
                limiter, arrivals, at, {"tokens_per_second": tb.per_second(rate, burst=burst)}
            )
        )

    run(script)
    [(log, updated)] = result
    after = [(i, t) for k, (kind, _, i, t) in enumerate(log) if kind == "grant" and k >= updated]
    # From the update on: at most the burst at once, plus the new rate since.
    start = at * GRID
    for end_index in range(len(after)):
        end = after[end_index][0]
        taken = sum(t for i, t in after[: end_index + 1])
        assert taken <= burst + rate * (end - start) + 1e-6, (log, updated)
