"""The multi-process workload: P processes x T asyncio tasks each loop on "acquire 1 unit"
against ONE limit kept in Redis (``--workload processes``).

The processes are started once (``spawn``) and serve every run of the workload, each run
in a fresh event loop with its own pool and limiter. A run: every process builds its
limiter and says it is ready; the parent then hands all of them the same instants of
``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process of a host): when
their tasks start, when the measured interval starts (after the warm-up) and when it
stops. Each process stamps every admission with ``time.monotonic()`` when ``acquire``
returns and reports the stamps from one window before the interval to its end, its CPU
(``time.process_time()``) and admissions between its own readings at the two instants,
and (binding regime) the instants its backend reserved (Redis server clock, the same for
every process) and how late each admission came after its reserved instant. The parent
reads ``INFO commandstats`` at the two instants.

The runs: TokenBucket and SlidingWindow, generous (never binds) and binding, and the
SlidingWindow binding again with its window widened by a margin (the guard
docs/guarantees.md gives users whose server counts arrivals strictly).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import logging
import math
import multiprocessing
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.client import Redis

from _harness import (
    Columns,
    Loop,
    Runtime,
    certain_peak,
    jain,
    markdown_table,
    number,
    percentile,
    progress,
    run,
    window_load,
)
from redis_suite.limiters import KEY_MARK, TALLY, TB_BUCKET, TB_WINDOW, _tokenbucket
from redis_suite.runs import Config, _Warnings

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

READY_TIMEOUT = 60.0  # for every process to build its limiter (and to start, at first)
CLOSE_TIMEOUT = 30.0  # for every process to end its tasks and close its limiter
START_AHEAD = 0.05  # the tasks start this long after the parent hands out the instants


@dataclass(frozen=True)
class Spec:
    """One run, as every process builds it: ``window`` is the limiter's (margin included)."""

    url: str
    cfg: Config
    kind: str  # "bucket" or "window"
    regime: str
    rate: int
    burst: int
    window: float
    tasks: int


@dataclass
class Share:
    """What one process reports of a run (its clock is CLOCK_MONOTONIC, like everyone's)."""

    admitted: int  # between its own readings at the two instants
    cpu_seconds: float  # time.process_time() between the same readings
    stamps: list[float]  # admissions from one window before the interval to its end
    round_trips: int | None
    connections: int
    reconnects: int
    warnings: int
    grants: list[float] = field(default_factory=list)  # Redis clock (binding, logged)
    lateness: list[float] = field(default_factory=list)  # s after reserved, in the interval
    late_max: float = math.nan  # the same, whole run


@dataclass
class ProcResult:
    regime: str
    name: str
    window: float
    margin: float
    processes: int
    tasks: int
    duration: float
    admitted: int  # merged stamps inside the common interval
    per_second: float
    cpu_seconds: float  # the processes' CPU over the interval, summed
    cpu_admitted: int  # the admissions between the processes' own readings, summed
    per_process: list[int]
    fairness: float
    round_trips: int | None
    server_commands: int
    server_usec: int
    connections: int
    reconnects: int
    warnings: int
    allowed: float | None = None
    achieved: float | None = None
    peak: int | None = None
    steady_peak: int | None = None
    grant_peak: int | None = None
    lateness: dict[str, float] | None = None

    @property
    def cpu_per_admission(self) -> float:
        return self.cpu_seconds / self.cpu_admitted if self.cpu_admitted else math.nan


# -- in each process ---------------------------------------------------------------------


async def _share(rt: Runtime, spec: Spec, conn: Connection) -> Share:
    warnings = _Warnings()
    logger = logging.getLogger("tokenbucket.redis")
    logger.addHandler(warnings)
    TALLY.reset()
    cfg = dataclasses.replace(spec.cfg, window=spec.window)
    binding = spec.regime == "binding"
    subject = await _tokenbucket(
        spec.url, cfg, spec.rate, spec.burst, window=spec.kind == "window", logged=binding
    )
    clock, stamps, running = time.monotonic, [], True

    async def worker() -> None:
        while running:
            await subject.acquire()
            stamps.append(clock())

    def read() -> tuple[float, int, int | None]:
        trips = subject.round_trips() if subject.round_trips else None
        return time.process_time(), len(stamps), trips

    workers: list[Any] = []
    try:
        conn.send("ready")
        start, t0, t1, keep_from = conn.recv()  # blocks the loop: nothing runs in it yet
        await asyncio.sleep(max(start - clock(), 0.0))
        workers = [rt.spawn(worker) for _ in range(spec.tasks)]
        await asyncio.sleep(max(t0 - clock(), 0.0))
        cpu0, first, trips0 = read()
        warned = warnings.count
        await asyncio.sleep(max(t1 - clock(), 0.0))
        cpu1, last, trips1 = read()
        warned = warnings.count - warned
        running = False
        kept = stamps[bisect.bisect_left(stamps, keep_from) :]  # appended in clock order
        share = Share(
            admitted=last - first,
            cpu_seconds=cpu1 - cpu0,
            stamps=kept,
            round_trips=None if trips0 is None or trips1 is None else trips1 - trips0,
            connections=TALLY.connections,
            reconnects=TALLY.reconnects,
            warnings=warned,
        )
        if (schedule := subject.schedule) is not None:
            share.grants = [at for at in schedule.grants if at + schedule.offset >= keep_from]
            late = schedule.lateness()
            share.late_max = max((lag for _, lag in late), default=math.nan)
            share.lateness = [lag for at, lag in late if t0 <= at <= t1]
        conn.send(share)  # before the clean-up: what follows is not measured
        await asyncio.wait(workers, timeout=spec.cfg.grace)
    finally:
        await rt.cancel(workers)
        logger.removeHandler(warnings)
    await subject.close()
    await rt.cancel_others()
    return share


def child(conn: Connection) -> None:
    """A process's life: a fresh event loop per run until the parent sends None."""
    try:
        while (spec := conn.recv()) is not None:
            run(Loop("asyncio", asyncio.new_event_loop), lambda rt: _share(rt, spec, conn))
            conn.send("closed")
    except Exception:
        conn.send(("error", traceback.format_exc()))
        raise


# -- in the parent -----------------------------------------------------------------------


def _clear(client: Any) -> None:
    """Delete this benchmark's keys (every key it writes contains the mark)."""
    keys = list(client.scan_iter(match=f"*{KEY_MARK}*", count=1000))
    if keys:
        client.unlink(*keys)


def _commandstats(client: Any) -> tuple[int, int]:
    """Calls and usec of the script commands tokenbucket sends (server-wide)."""
    info = client.info("commandstats")
    entries = [info.get(f"cmdstat_{name}", {}) for name in ("evalsha", "eval", "script|load")]
    return sum(int(e.get("calls", 0)) for e in entries), sum(int(e.get("usec", 0)) for e in entries)


def _receive(conns: list[Connection], timeout: float, what: str) -> list[Any]:
    replies = []
    for index, conn in enumerate(conns):
        if not conn.poll(timeout):
            raise RuntimeError(f"process {index} did not report {what} within {timeout:g} s")
        reply = conn.recv()
        if isinstance(reply, tuple) and reply[0] == "error":
            raise RuntimeError(f"process {index} failed:\n{reply[1]}")
        replies.append(reply)
    return replies


def _one_run(
    conns: list[Connection], client: Any, spec: Spec, name: str, margin: float
) -> ProcResult:
    cfg = spec.cfg
    _clear(client)
    for conn in conns:
        conn.send(spec)
    _receive(conns, READY_TIMEOUT, "ready")
    warmup, duration = cfg.proc_warmup, cfg.proc_duration
    measure = cfg.window  # the rolling windows the peaks are counted in (no margin)
    start = time.monotonic() + START_AHEAD
    t0 = start + warmup
    t1 = t0 + duration
    for conn in conns:
        conn.send((start, t0, t1, t0 - measure))
    time.sleep(max(t0 - time.monotonic(), 0.0))
    calls0, usec0 = _commandstats(client)
    time.sleep(max(t1 - time.monotonic(), 0.0))
    calls1, usec1 = _commandstats(client)
    shares: list[Share] = _receive(conns, duration + READY_TIMEOUT, "its admissions")
    _receive(conns, CLOSE_TIMEOUT, "closing")
    _clear(client)
    stamps = sorted(t for share in shares for t in share.stamps)
    inside = [t for t in stamps if t0 <= t <= t1]
    trips = [s.round_trips for s in shares]
    result = ProcResult(
        regime=spec.regime,
        name=name,
        window=spec.window,
        margin=margin,
        processes=len(shares),
        tasks=spec.tasks,
        duration=duration,
        admitted=len(inside),
        per_second=len(inside) / duration,
        cpu_seconds=sum(s.cpu_seconds for s in shares),
        cpu_admitted=sum(s.admitted for s in shares),
        per_process=[s.admitted for s in shares],
        fairness=jain([s.admitted for s in shares]),
        round_trips=None if None in trips else sum(t or 0 for t in trips),
        server_commands=calls1 - calls0,
        server_usec=usec1 - usec0,
        connections=sum(s.connections for s in shares),
        reconnects=sum(s.reconnects for s in shares),
        warnings=sum(s.warnings for s in shares),
    )
    if spec.regime == "binding":
        bucket = spec.kind == "bucket"
        nominal = spec.rate if bucket else spec.rate / (spec.window - margin)
        result.allowed = nominal * measure + (spec.burst if bucket else 0)
        mean = window_load(stamps, t0, t1, measure)
        achieved = len(inside) / duration if mean is None else mean / measure
        result.achieved = achieved / nominal
        result.peak = certain_peak(stamps, stamps, measure)
        result.steady_peak = certain_peak(inside, inside, measure)
        if grants := sorted(g for s in shares for g in s.grants):
            result.grant_peak = certain_peak(grants, grants, measure)
        if late := [lag for s in shares for lag in s.lateness]:
            result.lateness = {
                "max": max(s.late_max for s in shares),
                "interval_max": max(late),
                "interval_p99": percentile(late, 0.99),
            }
    progress(
        f"processes {spec.regime} {name}{f' +{margin:g} s' if margin else ''} "
        f"{len(shares)}x{spec.tasks}: {result.per_second:,.0f}/s, "
        f"{result.cpu_per_admission * 1e6:.1f} us CPU/adm"
    )
    return result


def auto_margin(bare: ProcResult) -> float:
    """The latest admission of a run after its reserved instant, up to the next 10 ms."""
    late = (bare.lateness or {}).get("max", math.nan)
    return 0.0 if math.isnan(late) else math.ceil(late * 100) / 100


def plan(cfg: Config, regimes: tuple[str, ...], only: list[str] | None) -> list[tuple[str, str]]:
    """(limiter, regime) of each run, a margin run after the window's binding one."""
    runs = [(regime, name) for regime in regimes for name in (TB_BUCKET, TB_WINDOW)]
    return [(n, r) for r, n in runs if not only or any(t in n for t in only)]


def bench_processes(
    url: str, cfg: Config, regimes: tuple[str, ...], only: list[str] | None
) -> list[ProcResult]:
    """Every run of the workload on the same ``cfg.processes`` processes."""
    runs = plan(cfg, regimes, only)
    if not runs:
        return []
    context = multiprocessing.get_context("spawn")
    pipes = [context.Pipe() for _ in range(cfg.processes)]
    procs = [context.Process(target=child, args=(theirs,), daemon=True) for _, theirs in pipes]
    conns = [ours for ours, _ in pipes]
    client: Any = Redis.from_url(url)
    results = []
    try:
        for proc in procs:
            proc.start()
        for name, regime in runs:
            kind = "bucket" if name == TB_BUCKET else "window"
            rate, burst = cfg.limit(regime)
            margins = [0.0, cfg.margin] if kind == "window" and regime == "binding" else [0.0]
            for margin in margins:
                window = cfg.window + margin
                spec = Spec(url, cfg, kind, regime, rate, burst, window, cfg.tasks)
                result = _one_run(conns, client, spec, name, margin)
                results.append(result)
                if len(margins) > 1 and not margin and (late := auto_margin(result)) > cfg.margin:
                    margins.append(late)  # the guard the docs advise: the worst delay seen
    finally:
        for conn in conns:
            with contextlib.suppress(OSError):  # a process that failed has gone
                conn.send(None)
        for proc in procs:
            proc.join(CLOSE_TIMEOUT)
            if proc.is_alive():  # pragma: no cover - a process stuck in its clean-up
                proc.terminate()
                proc.join()
        _clear(client)
        client.close()
    return results


# -- the report --------------------------------------------------------------------------


def _name(r: ProcResult) -> str:
    return f"{r.name} (window {r.window:g} s)" if r.margin else r.name


def _late(r: ProcResult) -> str:
    if r.lateness is None:
        return "n/a"
    ms = {key: value * 1e3 for key, value in r.lateness.items()}
    return f"{ms['interval_max']:.0f} / {ms['interval_p99']:.0f} (run {ms['max']:.0f})"


def _peaks(r: ProcResult) -> str:
    if r.peak is None or r.allowed is None:
        return "n/a"
    return f"{r.peak:,} / {r.allowed:,.0f} (steady {r.steady_peak:,})"


def _spread(r: ProcResult) -> str:
    return f"{min(r.per_process):,}-{max(r.per_process):,} ({number(r.fairness, '.3f')})"


def _per(value: float | None, r: ProcResult, spec: str) -> str:
    return "n/a" if value is None or not r.admitted else f"{value / r.admitted:{spec}}"


def columns(cfg: Config) -> Columns:
    return [
        ("limiter", _name),
        ("regime", lambda r: r.regime),
        ("adm/s", lambda r: f"{r.per_second:,.0f}"),
        ("% of limit", lambda r: number(r.achieved, ".1%")),
        (f"peak of arrivals in {cfg.window:g} s / allowed", _peaks),
        ("peak of grants", lambda r: "n/a" if r.grant_peak is None else f"{r.grant_peak:,}"),
        ("late ms max / p99", _late),
        ("client CPU us / adm", lambda r: number(r.cpu_per_admission * 1e6, ".1f")),
        ("CPU busy (cores)", lambda r: f"{r.cpu_seconds / r.duration:.2f}"),
        ("round trips / adm (tb)", lambda r: _per(r.round_trips, r, ".4f")),
        ("commands / adm (server)", lambda r: _per(r.server_commands, r, ".4f")),
        ("Redis us / adm", lambda r: _per(r.server_usec, r, ".1f")),
        ("adm per process (Jain)", _spread),
    ]


EXPLAINED = (
    "adm/s: admissions (merged stamps of every process) in the common interval / its "
    "length. % of limit: the mean over every rolling second inside the interval (plain "
    "count / time when shorter) over the nominal 2,000/s. peak of arrivals: the most "
    "admissions (task resumptions, all processes) in any rolling second from one second "
    "before the interval to its end; allowed: the limit (windows) or rate + burst (buckets); "
    "steady: from the interval on. peak of grants: the same over the instants the "
    "processes' backends reserved (Redis clock), including reservations still ahead at the "
    "end. late: seconds from reserved instant to admission, in the interval (run: whole "
    "run). client CPU: the processes' `time.process_time()` over the interval, summed, per "
    "admission they counted; CPU busy: that sum / the interval, in cores. commands "
    "(server): `INFO commandstats` calls of evalsha, eval and script|load, server-wide. "
    "Binding rows log the reservations by wrapping `backend.reserve` (two coroutine layers "
    "per script call, one per admission); generous rows call `limiter.acquire` bare."
)


def _find(results: list[ProcResult], name: str, regime: str, margin: bool) -> ProcResult | None:
    return next(
        (r for r in results if (r.name, r.regime, bool(r.margin)) == (name, regime, margin)), None
    )


def guard(results: list[ProcResult], cfg: Config) -> list[str]:
    """The margin guard's reading: arrivals in any window W with and without a margin."""
    bare = _find(results, TB_WINDOW, "binding", False)
    wide = [r for r in results if r.name == TB_WINDOW and r.regime == "binding" and r.margin]
    if bare is None or bare.peak is None or not wide:
        return []
    if not bare.admitted or not bare.achieved:  # --quick: the opening burst may fill it all
        return [f"- Margin guard: no admission inside the interval ({cfg.mode} run)."]
    runs = [
        f"`window={r.window:g}` (margin {r.margin * 1e3:.0f} ms): {r.peak:,} (steady "
        f"{r.steady_peak:,}), {number(r.achieved, '.1%')} of the limit, a cost of "
        f"{1 - (r.achieved or math.nan) / bare.achieved:.1%} (margin / window "
        f"{r.margin / r.window:.1%}); latest admission "
        f"{(r.lateness or {}).get('max', math.nan) * 1e3:.0f} ms after its reserved instant"
        for r in wide
    ]
    late = (bare.lateness or {}).get("max", math.nan) * 1e3
    return [
        f"- Margin guard ({TB_WINDOW}, {bare.processes} processes x {bare.tasks:,} tasks, "
        f"limit {bare.allowed:,.0f} per {cfg.window:g} s): the most arrivals in any "
        f"{cfg.window:g} s with `window={bare.window:g}`: {bare.peak:,} (steady "
        f"{bare.steady_peak:,}), {number(bare.achieved, '.1%')} of the limit, latest "
        f"admission {late:.0f} ms after its reserved instant; with {'; with '.join(runs)}. "
        "A margin covers the delay only if it is at least the latest admission's delay in "
        "its own run; the last margin is the worst delay of the run without one, rounded up "
        "to 10 ms. The costs compare the mean rolling-second loads (% of limit); grants "
        "come in bursts once per window, so the plain counts (adm/s) are quantised."
    ]


def section(results: list[ProcResult], cfg: Config) -> list[str]:
    first = results[0]
    table = columns(cfg)
    rows = [[cell(r) for _, cell in table] for r in results]
    parts = [
        f"## (c) {first.processes} processes x {first.tasks:,} tasks, one limit: generous "
        f"({cfg.generous:.0e}/s) and binding ({cfg.bound_rate:,} per {cfg.window:g} s, or "
        f"{cfg.bound_rate:,}/s with a burst of {cfg.bound_burst}), {cfg.proc_duration:g} s "
        f"measured after {cfg.proc_warmup:g} s warm-up",
        "",
        markdown_table([h for h, _ in table], rows, range(2, len(table))),
        "",
        EXPLAINED,
        "",
    ]
    if lines := guard(results, cfg):
        parts += [*lines, ""]
    if dropped := [r for r in results if r.reconnects or r.warnings]:
        which = ", ".join(
            f"{_name(r)} {r.regime}: {r.reconnects} re-connections, {r.warnings} warnings"
            for r in dropped
        )
        parts += [f"Note: {which} (in the processes, over the interval).", ""]
    return parts


def _opening(r: ProcResult) -> bool:
    """A window's interval shorter than the window (--quick): its grants come in bursts
    once per window, so the interval may hold one, or none."""
    return r.name == TB_WINDOW and r.duration < r.window


def targets(results: list[ProcResult], cfg: Config) -> list[list[str]]:
    checks: list[list[str]] = []
    for r in results:
        who = f"{_name(r)}, {r.processes} processes x {r.tasks:,} tasks"
        if r.regime == "generous":
            cpu = r.cpu_per_admission * 1e6
            target = f"{who}, generous: < 30 us of client CPU per admission"
            checks.append([target, f"{'yes' if cpu < 30 else 'NO'} ({cpu:.1f} us)"])
        elif r.achieved is not None and not r.margin and not _opening(r):
            target = f"{who}, binding: >= 95% of the limit"
            checks.append([target, f"{'yes' if r.achieved >= 0.95 else 'NO'} ({r.achieved:.1%})"])
        if r.grant_peak is not None and r.allowed is not None:
            target = (
                f"{who}: reservations never above the limit (Redis clock, any {cfg.window:g} s)"
            )
            ok = r.grant_peak <= r.allowed
            checks.append(
                [target, f"{'yes' if ok else 'NO'} ({r.grant_peak:,} / {r.allowed:,.0f})"]
            )
    return checks
