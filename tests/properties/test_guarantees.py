"""Hypothesis: random interleavings against guarantees G1-G4, on trio and asyncio.

Each example is a script of steps at virtual instants: waiters arriving (some with a
timeout), waiters cancelled, non-blocking try_acquire calls and pauses. The instants
sit on a coarse grid so that grants, cancellations and timeouts often coincide, which
is where races live. The script runs on a real limiter under a virtual clock; the checks
use only the recorded outcomes and the guarantees' definitions:

* G1: every interval (bucket: at most capacity + rate * T) or window (at most limit) of
  the admitted amounts conforms.
* G2: a granted waiter could not have been granted any earlier once it was at the head.
* G3: grants follow arrival order; a successful try_acquire never had a waiter ahead.
* G4: cancelled and timed-out waiters consume nothing: the limiter's final state is
  exactly what the admitted log implies.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tokenbucket as tb
from tests.conftest import backend_params

RATE, CAPACITY = 2.0, 5.0
LIMIT, WINDOW = 5.0, 3.0
EPS = 1e-9
GRID = 0.25
LOOPTIME_TOL = 2e-6  # looptime's clock ticks in whole microseconds

amounts = st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0, 5.0])
steps = st.one_of(
    st.tuples(st.just("acquire"), amounts, st.none() | st.sampled_from([0.0, 0.5, 1.0, 2.5])),
    st.tuples(st.just("try"), amounts, st.none()),
    st.tuples(st.just("cancel"), st.integers(0, 30), st.none()),
    st.tuples(st.just("sleep"), st.integers(1, 12), st.none()),
)


@dataclass
class Waiter:
    arrival: int
    amount: float
    arrived_at: float = 0.0
    outcome: str = "pending"
    resolved_at: float = 0.0
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


@dataclass
class Record:
    waiters: list[Waiter] = field(default_factory=list)
    tries: list[tuple[int, float, float, bool]] = field(default_factory=list)
    end: float = 0.0
    available_at_end: float = 0.0


async def run_script(limiter: tb.TokenBucket | tb.SlidingWindow, script: list[Any]) -> Record:
    record = Record()
    counter = itertools.count()
    start = anyio.current_time()

    def now() -> float:
        return anyio.current_time() - start

    async def waiter_task(waiter: Waiter, timeout: float | None) -> None:
        with waiter.scope:
            waiter.arrival = next(counter)  # no checkpoint before acquire()
            waiter.arrived_at = now()
            try:
                await limiter.acquire(waiter.amount, timeout=timeout)
            except tb.AcquireTimeoutError:
                waiter.outcome, waiter.resolved_at = "timeout", now()
                return
            except BaseException:
                waiter.outcome, waiter.resolved_at = "cancelled", now()
                raise
            waiter.outcome, waiter.resolved_at = "granted", now()
        if waiter.outcome == "pending":  # cancelled before it even arrived
            waiter.outcome, waiter.resolved_at = "never", now()

    async with anyio.create_task_group() as tg:
        for kind, value, timeout in script:
            if kind == "acquire":
                waiter = Waiter(arrival=-1, amount=value)
                record.waiters.append(waiter)
                tg.start_soon(waiter_task, waiter, timeout)
                await anyio.wait_all_tasks_blocked()
            elif kind == "try":
                seq = next(counter)
                record.tries.append((seq, now(), value, limiter.try_acquire(value)))
            elif kind == "cancel" and record.waiters:
                record.waiters[value % len(record.waiters)].scope.cancel()
            elif kind == "sleep":
                await anyio.sleep(value * GRID)
        # Let everything finish: the longest wait is bounded by the script's demand.
        await anyio.sleep(1000)
        tg.cancel_scope.cancel()
    record.end = now()
    available = limiter.statistics().available
    assert available is not None  # an in-memory limiter always knows
    record.available_at_end = available
    return record


def admitted(record: Record) -> list[tuple[float, float]]:
    log = [(w.resolved_at, w.amount) for w in record.waiters if w.outcome == "granted"]
    log += [(t, amount) for _, t, amount, ok in record.tries if ok]
    return sorted(log)


def bucket_level(log: list[tuple[float, float]], t: float) -> float:
    """Level at t implied by the admitted log: the least slack over intervals ending at t."""
    level = CAPACITY
    for s, _ in log:
        if s <= t:
            used = sum(a for u, a in log if s <= u <= t)
            level = min(level, CAPACITY + RATE * (t - s) - used)
    return level


def window_level(log: list[tuple[float, float]], t: float) -> float:
    return LIMIT - sum(a for u, a in log if t - WINDOW < u <= t)


def check(kind: str, record: Record, tol: float) -> None:
    log = admitted(record)
    level = bucket_level if kind == "bucket" else window_level
    # G1: conformance over every interval / window.
    for i, (s, _) in enumerate(log):
        for t, _ in log[i:]:
            used = sum(a for u, a in log if s <= u <= t)
            if kind == "bucket":
                assert used <= CAPACITY + RATE * (t - s) + EPS, (s, t, used)
            elif t - s < WINDOW - tol:
                assert used <= LIMIT + EPS, (s, t, used)
    arrived = sorted((w for w in record.waiters if w.arrival >= 0), key=lambda w: w.arrival)
    granted = [w for w in arrived if w.outcome == "granted"]
    # G3: grants follow arrival order.
    times = [w.resolved_at for w in granted]
    assert times == sorted(times)
    # G3: a successful try_acquire never overtook a waiter that arrived before it.
    for seq, t, _, ok in record.tries:
        if ok:
            for w in arrived:
                if w.arrival < seq:
                    assert w.resolved_at <= t, (w, t)
    # G2: once at the head, a waiter is granted as soon as the log allows it.
    for i, w in enumerate(arrived):
        if w.outcome != "granted":
            continue
        head_since = max([w.arrived_at] + [e.resolved_at for e in arrived[:i]])
        if w.resolved_at <= head_since + tol:
            continue
        earlier = max(head_since, w.resolved_at - 1e-6 - tol)
        others = [(u, a) for u, a in log if u <= earlier]
        assert level(others, earlier) < w.amount - EPS, (w, earlier)
    # G4: nothing consumed by cancelled or timed-out waiters (nor leaked).
    assert record.available_at_end == pytest.approx(
        max(0.0, min(CAPACITY if kind == "bucket" else LIMIT, level(log, record.end))), abs=1e-6
    )


@pytest.mark.parametrize("backend", ["trio-mockclock", "asyncio-looptime"])
@pytest.mark.parametrize("kind", ["bucket", "window"])
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(script=st.lists(steps, min_size=1, max_size=30))
def test_guarantees_hold_for_random_interleavings(
    backend: str, kind: str, script: list[Any]
) -> None:
    name, options = backend_params(backend)

    async def main() -> Record:
        limiter: tb.TokenBucket | tb.SlidingWindow
        if kind == "bucket":
            limiter = tb.TokenBucket(rate=RATE, capacity=CAPACITY)
        else:
            limiter = tb.SlidingWindow(limit=LIMIT, window=WINDOW)
        return await run_script(limiter, script)

    record = anyio.run(main, backend=name, backend_options=options)
    check(kind, record, LOOPTIME_TOL if backend == "asyncio-looptime" else 0.0)
