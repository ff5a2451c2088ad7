"""Hypothesis: random scripts against a Limiter's guarantees, on trio and asyncio.

Each example is a script run on a real :class:`tokenbucket.Limiter` under a virtual
clock: calls arriving with random token costs (some with a timeout), leases settled
below or above what they reserved, leases released, waiters and holders cancelled, and
time passing. Instants sit on a coarse grid so grants, cancellations, timeouts and
window expiries often coincide, which is where races live. The checks use only what the
script recorded and the guarantees' definitions, never a copy of the implementation:

* G1, per rate: when a call is granted, every rolling period that ends with it holds no
  more than the rate allows, counting everything the limiter knew of at that moment:
  the amounts reserved, refunds (a settle below the reservation gives back), overruns (a
  settle above it counts at the settle's instant).
* G3: grants follow arrival order; no one is granted while someone who came earlier is
  still waiting.
* G4: cancelled and timed-out waiters consume nothing: at the end of the script the
  limiter holds exactly what the recorded grants, refunds and overruns imply.
* The concurrency cap: never more leases open than ``max_concurrency``; none left at the
  end, and every waiter is eventually served once every lease is released.
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

REQUESTS = (3.0, 1.0)  # 3 requests per second (window)
TOKENS = (10.0, 1.0)  # 10 tokens per second (window, or a bucket with burst 10)
TOKENS_LONG = (25.0, 4.0)  # 25 tokens per 4 s (window)
CAP = 2
GRID = 0.25
EPS = 1e-9

costs = st.sampled_from([0.0, 1.0, 3.0, 5.0, 10.0])
timeouts = st.none() | st.sampled_from([0.0, 0.5, 1.0, 2.5])
acquire = st.tuples(st.just("acquire"), costs, timeouts)
sleep = st.tuples(st.just("sleep"), st.integers(1, 8), st.none())
steps = st.one_of(
    acquire,
    acquire,
    acquire,
    st.tuples(st.just("settle"), st.integers(0, 30), st.sampled_from([0.0, 1.0, 4.0, 12.0])),
    st.tuples(st.just("release"), st.integers(0, 30), st.none()),
    st.tuples(st.just("cancel"), st.integers(0, 30), st.none()),
    st.tuples(st.just("handover"), st.integers(0, 30), st.none()),
    sleep,
    sleep,
)


@dataclass
class Call:
    tokens: float
    arrival: int = -1
    arrived_at: float = 0.0
    outcome: str = "pending"  # granted, timeout, cancelled, never
    resolved_at: float = 0.0
    grant_seq: int = -1
    lease: tb.Lease | None = None
    open: bool = False
    settled: bool = False
    release: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


@dataclass
class Settle:
    seq: int
    at: float
    call: Call
    difference: float


@dataclass
class Record:
    calls: list[Call] = field(default_factory=list)
    settles: list[Settle] = field(default_factory=list)
    peak_open: int = 0
    peak_in_flight: int = 0
    end: float = 0.0
    end_seq: int = 0
    open_at_end: int = 0
    pending_at_end: int = 0
    available_at_end: dict[str, float] = field(default_factory=dict)
    in_flight_at_end: int = 0
    waiters_at_end: int = 0
    in_flight_after_drain: int = -1
    waiters_after_drain: int = -1


def make_limiter(kind: str) -> tb.Limiter:
    fast = (
        tb.Rate(*TOKENS)
        if kind == "window"
        else tb.Rate(TOKENS[0], TOKENS[1], burst=TOKENS[0])  # same amount as burst
    )
    return tb.Limiter(
        {"requests": tb.Rate(*REQUESTS), "tokens": [fast, tb.Rate(*TOKENS_LONG)]},
        max_concurrency=CAP,
    )


async def run_script(limiter: tb.Limiter, script: list[Any]) -> Record:
    record = Record()
    counter = itertools.count()
    start = anyio.current_time()
    open_now = 0

    def now() -> float:
        return anyio.current_time() - start

    async def call_task(call: Call, timeout: float | None) -> None:
        nonlocal open_now
        with call.scope:
            call.arrival = next(counter)  # no checkpoint before acquire()
            call.arrived_at = now()
            try:
                async with limiter.acquire(tokens=call.tokens, timeout=timeout) as lease:
                    # No checkpoint between the grant and this record.
                    call.outcome, call.resolved_at = "granted", now()
                    call.grant_seq = next(counter)
                    call.lease, call.open = lease, True
                    open_now += 1
                    record.peak_open = max(record.peak_open, open_now)
                    try:
                        await call.release.wait()
                    finally:
                        open_now -= 1
                        call.open = False
            except tb.AcquireTimeoutError:
                call.outcome, call.resolved_at = "timeout", now()
                return
            except BaseException:
                if call.outcome == "pending":
                    call.outcome, call.resolved_at = "cancelled", now()
                raise
        if call.outcome == "pending":  # cancelled before it even arrived
            call.outcome, call.resolved_at = "never", now()

    def pick(index: int) -> Call | None:
        return record.calls[index % len(record.calls)] if record.calls else None

    def observe() -> None:
        record.peak_in_flight = max(record.peak_in_flight, limiter.statistics().in_flight)

    async with anyio.create_task_group() as tg:
        for kind, value, extra in script:
            if kind == "acquire":
                call = Call(tokens=value)
                record.calls.append(call)
                tg.start_soon(call_task, call, extra)
                await anyio.wait_all_tasks_blocked()
            elif kind == "settle":
                # Let every grant already made be recorded before the settle.
                await anyio.wait_all_tasks_blocked()
                candidates = [c for c in record.calls if c.open and not c.settled]
                if candidates:
                    call = candidates[value % len(candidates)]
                    assert call.lease is not None
                    call.lease.settle(tokens=extra)
                    call.settled = True
                    record.settles.append(Settle(next(counter), now(), call, extra - call.tokens))
            elif kind == "release":
                if (target := pick(value)) is not None:
                    target.release.set()
            elif kind == "cancel":
                if (target := pick(value)) is not None:
                    target.scope.cancel()
            elif kind == "handover":
                # In one step: cancel the first waiter and release a lease whose slot
                # it may be about to get, so its grant and its cancellation can cross.
                holders = [c for c in record.calls if c.open]
                waiting = [c for c in record.calls if c.outcome == "pending" and c.arrival >= 0]
                if waiting:
                    waiting[0].scope.cancel()
                if holders:
                    holders[value % len(holders)].release.set()
            elif kind == "sleep":
                await anyio.sleep(value * GRID)
            observe()
        await anyio.wait_all_tasks_blocked()
        observe()
        record.end, record.end_seq = now(), next(counter)
        snapshot = limiter.statistics()
        record.available_at_end = dict(snapshot.available)
        record.in_flight_at_end = snapshot.in_flight
        record.waiters_at_end = snapshot.waiters
        record.open_at_end = open_now
        record.pending_at_end = sum(c.outcome == "pending" and c.arrival >= 0 for c in record.calls)
        # Release everything; every waiter must then be served, however much debt.
        for call in record.calls:
            call.release.set()
        await anyio.sleep(1_000)
        snapshot = limiter.statistics()
        record.in_flight_after_drain = snapshot.in_flight
        record.waiters_after_drain = snapshot.waiters
        tg.cancel_scope.cancel()
    return record


# --- the model: what the recorded events imply --------------------------------------


def usage_log(record: Record, dim: str, before: int) -> list[tuple[float, float]]:
    """(instant, amount) of everything charged to ``dim`` by events with a sequence
    number below ``before``: grants at their instant, less the refunds made to them so
    far; overruns at the settle's instant."""

    def known(seq: int) -> bool:
        return seq < before

    log: list[tuple[float, float]] = []
    for call in record.calls:
        if call.outcome != "granted" or not known(call.grant_seq):
            continue
        if dim == "requests":
            log.append((call.resolved_at, 1.0))
            continue
        amount = call.tokens
        for settle in record.settles:
            if settle.call is call and settle.difference < 0 and known(settle.seq):
                amount += settle.difference
        log.append((call.resolved_at, amount))
    if dim == "tokens":
        log += [(s.at, s.difference) for s in record.settles if s.difference > 0 and known(s.seq)]
    return sorted(log)


def window_used(log: list[tuple[float, float]], t: float, window: float, tol: float) -> float:
    """What is still inside the window ``(t - window, t]`` (borderline entries out)."""
    return sum(a for u, a in log if t - window + tol < u <= t + tol)


def bucket_slack(log: list[tuple[float, float]], t: float, capacity: float, rate: float) -> float:
    """The least slack over intervals ``[s, t]``: capacity + rate * (t - s) - used."""
    slack = capacity
    for s, _ in log:
        if s <= t:
            used = sum(a for u, a in log if s <= u <= t)
            slack = min(slack, capacity + rate * (t - s) - used)
    return slack


def check(kind: str, record: Record, tol: float) -> None:
    granted = [c for c in record.calls if c.outcome == "granted"]

    # G1: at each grant, every rate's period ending with it conforms (for the
    # dimensions the grant takes: a call for 0 tokens may go while tokens are in debt).
    for call in granted:
        t = call.resolved_at
        requests = usage_log(record, "requests", call.grant_seq + 1)
        assert window_used(requests, t, REQUESTS[1], tol) <= REQUESTS[0] + EPS, (call, requests)
        if call.tokens == 0:
            continue
        tokens = usage_log(record, "tokens", call.grant_seq + 1)
        assert window_used(tokens, t, TOKENS_LONG[1], tol) <= TOKENS_LONG[0] + EPS, (call, tokens)
        if kind == "window":
            assert window_used(tokens, t, TOKENS[1], tol) <= TOKENS[0] + EPS, (call, tokens)
        else:
            rate = TOKENS[0] / TOKENS[1]
            assert bucket_slack(tokens, t, TOKENS[0], rate) >= -EPS - rate * tol, (call, tokens)

    # G3: grants follow arrival order, and nobody is granted while someone who came
    # earlier still waits.
    arrived = sorted((c for c in record.calls if c.arrival >= 0), key=lambda c: c.arrival)
    times = [c.resolved_at for c in arrived if c.outcome == "granted"]
    assert times == sorted(times)
    for i, later in enumerate(arrived):
        if later.outcome != "granted":
            continue
        for earlier in arrived[:i]:
            assert earlier.outcome != "pending", (earlier, later)
            assert earlier.resolved_at <= later.resolved_at + tol, (earlier, later)

    # The concurrency cap, seen from the leases and from the limiter.
    assert record.peak_open <= CAP
    assert record.peak_in_flight <= CAP
    assert record.in_flight_at_end == record.open_at_end
    assert record.waiters_at_end == record.pending_at_end

    # G4: what the limiter holds at the end is exactly what the record implies, so
    # cancelled and timed-out waiters (and grants given back) took nothing.
    end = record.end
    available = record.available_at_end
    requests = usage_log(record, "requests", record.end_seq)
    assert available["requests"] == pytest.approx(
        REQUESTS[0] - window_used(requests, end, REQUESTS[1], 0.0), abs=1e-6
    )
    tokens = usage_log(record, "tokens", record.end_seq)
    long = TOKENS_LONG[0] - window_used(tokens, end, TOKENS_LONG[1], 0.0)
    if kind == "window":
        fast = TOKENS[0] - window_used(tokens, end, TOKENS[1], 0.0)
        assert available["tokens"] == pytest.approx(min(long, fast), abs=1e-6)
    else:
        fast = bucket_slack(tokens, end, TOKENS[0], TOKENS[0] / TOKENS[1])
        refunded = any(s.difference < 0 for s in record.settles)
        if refunded:
            # A bucket may keep part of a refund (it bounds what a refund restores):
            # never more than the record implies.
            assert available["tokens"] <= min(long, fast) + 1e-6
        else:
            assert available["tokens"] == pytest.approx(min(long, fast), abs=1e-6)

    # Everyone is served once every lease is released; nothing is left over.
    assert all(c.outcome != "pending" for c in record.calls)
    assert (record.in_flight_after_drain, record.waiters_after_drain) == (0, 0)


@pytest.mark.parametrize("backend", ["trio-mockclock", "asyncio-looptime"])
@pytest.mark.parametrize("kind", ["window", "bucket"])
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(script=st.lists(steps, min_size=6, max_size=40))
def test_limiter_guarantees_hold_for_random_scripts(
    backend: str, kind: str, script: list[Any]
) -> None:
    name, options = backend_params(backend)

    async def main() -> Record:
        return await run_script(make_limiter(kind), script)

    record = anyio.run(main, backend=name, backend_options=options)
    check(kind, record, 2e-6 if backend == "asyncio-looptime" else 0.0)
