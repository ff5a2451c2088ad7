"""One run of the Redis benchmark: N acquirers loop on one limit kept in Redis, in a
fresh event loop; the measured interval is bounded by two readings of the local clock,
the CPU, the admissions, tokenbucket's round trips, the commands the clients sent and
the server's ``INFO commandstats``.

A :class:`RunResult`'s ``server_commands`` are the INFO commandstats deltas of the
commands the clients sent (the round trips the server saw), ``server_usec`` their server
time; ``server_all`` also counts the commands run inside scripts. ``agree`` is False when
the server counted more or fewer than the clients sent beyond the boundary slack (another
client was busy on the server). Binding regime: ``achieved``, the mean load of the
rolling windows inside the interval (the plain count when shorter) over the limit, and
the peaks: whole run, from the interval on (``steady``), of tokenbucket's reserved
instants (``grant_peak``). ``lateness`` (tokenbucket): seconds from reserved instant to
admission; ``call_mean``/``call_busy``: mean script call time, share of the interval
with one in flight.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from _harness import Loop, Runtime, certain_peak, percentile, progress, run, window_load
from redis_suite.limiters import TALLY, Candidate, CountingConnection, Subject

PROBE_PERIOD = 0.005  # the lag probe: a task sleeping this long in a loop
# Commands in flight at a boundary (one per connection) can fall on either side of it:
# client and server counts may differ by twice that, plus this, before being flagged.
AGREE_SLACK = 3


@dataclass(frozen=True)
class Config:
    mode: str
    acquirers: tuple[int, ...]
    free_warmup: float
    free_duration: float
    bound_warmup: float
    bound_duration: float
    settle_max: float  # after the warm-up, wait up to this for connections being opened
    grace: float  # after the interval, workers get this to finish their acquire
    generous: int = 10**9
    bound_rate: int = 2_000
    bound_burst: int = 20  # 10 ms of refill
    window: float = 1.0
    pool_size: int = 100
    limits_min_poll: float = 0.001
    pyrate_buffer_ms: int = 50
    # The multi-process workload (processes.py): processes x tasks, its warm-up and
    # interval, and the margin of the window's guarded run.
    processes: int = 8
    tasks: int = 1_000
    proc_warmup: float = 1.5
    proc_duration: float = 4.0  # 8 x 1,000 acquirers at 2,000/s: one turn each
    margin: float = 0.05

    def limit(self, regime: str) -> tuple[int, int]:
        """The rate and the burst of ``regime``."""
        free = regime == "generous"
        return (self.generous, self.generous) if free else (self.bound_rate, self.bound_burst)

    def pool(self, url: str) -> aioredis.BlockingConnectionPool:
        """redis-py's default size, on a BlockingConnectionPool (waits when all are busy)."""
        return aioredis.BlockingConnectionPool.from_url(
            url, max_connections=self.pool_size, timeout=None, connection_class=CountingConnection
        )


FULL = Config("full", (1, 10, 100, 1_000), 0.3, 1.2, 1.0, 2.0, 1.0, 1.0)
QUICK = Config(
    "quick",
    (1, 10, 100),
    0.05,
    0.12,
    0.08,
    0.15,
    0.1,
    0.05,
    processes=2,
    tasks=50,
    proc_warmup=0.2,
    proc_duration=0.3,
)


class _Warnings(logging.Handler):
    """Counts the records tokenbucket's Redis backend logs (and keeps them off stderr)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.messages) < 3:
            self.messages.append(record.getMessage())


@dataclass
class _Reading:
    clock: float
    cpu: float
    admitted: int
    round_trips: int | None
    commands: dict[str, int]
    connections: int
    reconnects: int
    server: dict[str, tuple[int, int]]  # command -> (calls, usec)


async def _read(subject: Subject, stamps: list[float], stats: Any) -> _Reading:
    # Local counters first, then the server's: both intervals shift alike by the INFO call.
    local = (time.monotonic(), time.process_time(), len(stamps))
    trips = subject.round_trips() if subject.round_trips else None
    commands, connections, reconnects = dict(TALLY.commands), TALLY.connections, TALLY.reconnects
    info = await stats.info("commandstats")
    server = {
        key[len("cmdstat_") :]: (int(value["calls"]), int(value["usec"]))
        for key, value in info.items()
        if key.startswith("cmdstat_") and isinstance(value, dict)
    }
    return _Reading(*local, trips, commands, connections, reconnects, server)


@dataclass
class RunResult:
    regime: str
    name: str
    acquirers: int
    admitted: int
    per_second: float
    round_trips: int | None
    client_commands: int
    client_by_name: dict[str, int]
    server_commands: int
    server_by_name: dict[str, int]
    server_usec: int
    server_all: int
    agree: bool
    cpu_seconds: float
    connections: int
    reconnects: int
    lag_max: float
    lag_p99: float
    warnings: int
    warnings_total: int
    warning_messages: list[str]
    vs_floor: float | None = None
    allowed: float | None = None
    achieved: float | None = None
    peak: int | None = None
    steady_peak: int | None = None
    grant_peak: int | None = None
    lateness: dict[str, float] | None = None
    call_mean: float | None = None
    call_busy: float | None = None


def per(value: float, admitted: int) -> float:
    return value / admitted if admitted else math.nan


async def _one_run(
    rt: Runtime, candidate: Candidate, url: str, cfg: Config, regime: str, acquirers: int
) -> RunResult:
    rate, burst = cfg.limit(regime)
    stats: Any = aioredis.Redis.from_url(url)
    await stats.flushdb()
    TALLY.reset()
    warnings = _Warnings()
    logger = logging.getLogger("tokenbucket.redis")
    logger.addHandler(warnings)
    free = regime == "generous"
    subject = await candidate.make(url, cfg, rate, burst)
    stamps: list[float] = []
    lags: list[tuple[float, float]] = []
    clock = time.monotonic
    running = True

    async def worker() -> None:
        while running:
            await subject.acquire()
            stamps.append(clock())

    async def probe() -> None:  # how late the loop runs a timer: event-loop lag
        while True:
            before = clock()
            await asyncio.sleep(PROBE_PERIOD)
            lags.append((clock(), clock() - before - PROBE_PERIOD))

    try:
        workers = [rt.spawn(worker) for _ in range(acquirers)]
        prober = rt.spawn(probe)
        try:
            await asyncio.sleep(cfg.free_warmup if free else cfg.bound_warmup)
            # Connections open on demand: let the last ones finish their handshake.
            for _ in range(round(cfg.settle_max / 0.01)):
                if TALLY.connects - TALLY.reconnects >= TALLY.connections:
                    break
                await asyncio.sleep(0.01)
            first = await _read(subject, stamps, stats)
            warned = warnings.count
            await asyncio.sleep(cfg.free_duration if free else cfg.bound_duration)
            last = await _read(subject, stamps, stats)
            warned = warnings.count - warned
            running = False  # let them finish the acquire they are in, then cancel
            await asyncio.wait(workers, timeout=cfg.grace)  # type: ignore[type-var]
        finally:
            await rt.cancel([*workers, prober])
        await subject.close()
        await rt.cancel_others()  # pyrate-limiter's leak task outlives close()
    finally:
        logger.removeHandler(warnings)
        await stats.flushdb()
        await stats.aclose()
    duration = last.clock - first.clock
    admitted = last.admitted - first.admitted
    sent = {n: c - first.commands.get(n, 0) for n, c in last.commands.items()}
    server = {
        n: (c - first.server.get(n, (0, 0))[0], u - first.server.get(n, (0, 0))[1])
        for n, (c, u) in last.server.items()
        if n != "info"  # the harness's own command, on its own connection
    }
    top = {n for n, count in sent.items() if count} | {"evalsha", "eval", "script|load"}
    ours = {n: server[n] for n in sorted(top) if server.get(n, (0, 0))[0]}
    server_commands = sum(calls for calls, _ in ours.values())
    # Commands the server does not know (redis-py 8's CLIENT SETINFO on Redis < 7.2)
    # have no commandstats entry: compare the rest.
    known = sum(count for name, count in sent.items() if name in last.server)
    trips = None
    if first.round_trips is not None and last.round_trips is not None:
        trips = last.round_trips - first.round_trips
    lags_in = [lag for at, lag in lags if first.clock <= at <= last.clock]
    result = RunResult(
        regime=regime,
        name=candidate.name,
        acquirers=acquirers,
        admitted=admitted,
        per_second=admitted / duration,
        round_trips=trips,
        client_commands=sum(sent.values()),
        client_by_name={n: count for n, count in sent.items() if count},
        server_commands=server_commands,
        server_by_name={n: calls for n, (calls, _) in ours.items()},
        server_usec=sum(usec for _, usec in ours.values()),
        server_all=sum(calls for calls, _ in server.values()),
        agree=abs(server_commands - known) <= 2 * min(acquirers, last.connections) + AGREE_SLACK,
        cpu_seconds=last.cpu - first.cpu,
        connections=last.connections,
        reconnects=last.reconnects - first.reconnects,
        lag_max=max(lags_in, default=math.nan),
        lag_p99=percentile(lags_in, 0.99),
        warnings=warned,
        warnings_total=warnings.count,
        warning_messages=warnings.messages,
    )
    schedule = subject.schedule
    if regime == "binding" and candidate.kind != "none":
        bucket = candidate.kind == "bucket"
        per_second = rate if bucket else rate / cfg.window
        result.allowed = per_second * cfg.window + (burst if bucket else 0)
        mean = window_load(stamps, first.clock, last.clock, cfg.window)
        result.achieved = (admitted / duration if mean is None else mean / cfg.window) / per_second
        result.peak = certain_peak(stamps, stamps, cfg.window)
        steady = [t for t in stamps if t >= first.clock]
        result.steady_peak = certain_peak(steady, steady, cfg.window)
        if schedule is not None and schedule.grants:
            grants = sorted(schedule.grants)
            result.grant_peak = certain_peak(grants, grants, cfg.window)
    if schedule is not None:
        if spans := [span for end, span in schedule.calls if first.clock <= end <= last.clock]:
            result.call_mean, result.call_busy = sum(spans) / len(spans), sum(spans) / duration
        if schedule.admissions:
            late = schedule.lateness()
            late_all = [lag for _, lag in late]
            late_in = [lag for at, lag in late if first.clock <= at <= last.clock]
            result.lateness = {
                "max": max(late_all),
                "p99": percentile(late_all, 0.99),
                "interval_max": max(late_in, default=math.nan),
                "interval_p99": percentile(late_in, 0.99),
            }
    return result


def bench_run(
    candidate: Candidate, url: str, cfg: Config, regime: str, acquirers: int
) -> RunResult:
    loop = Loop("asyncio", asyncio.new_event_loop)
    result = run(loop, lambda rt: _one_run(rt, candidate, url, cfg, regime, acquirers))
    progress(
        f"{regime} {candidate.name} x{acquirers}: {result.per_second:,.0f}/s, "
        f"{per(result.server_commands, result.admitted):.3f} commands/adm"
    )
    return result
