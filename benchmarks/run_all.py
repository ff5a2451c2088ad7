"""Every benchmark, against every peer, in one run: a Markdown report and PNG plots.

Usage::

    pip install -e '.[bench]'
    python benchmarks/run_all.py --out docs/benchmarks   # full run, about a quarter hour
    python benchmarks/run_all.py --quick                  # smoke run (CI), seconds

Peers (see ``peers.py`` for how each is configured and awaited): aiolimiter, limits
(moving window and sliding window counter, polled), pyrate-limiter, throttled-py,
asyncio-throttle, and the floor (an empty awaited coroutine). Workloads, on asyncio and
uvloop, tokenbucket also on trio:

1. uncontended acquire: ns per ``await acquire()``, against the floor;
2. saturation: 10 to 10,000 tasks looping on one limiter at 2,000 units/s, burst 10;
3. waiter scaling: 10 to 50,000 single-shot waiters at 5,000 units/s, burst 50, each
   count in a fresh process (wall time, CPU and peak memory);
4. cancellation: half of 1,000 waiters cancelled while waiting; throughput of the rest;
5. the LLM composite workload of ``llm.py``.

The report states the machine, the versions and the date; every ratio in it compares
figures of this one run. See benchmarks/README.md for the method.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import gc
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

import bench
import llm
import peers
import tokenbucket as tb
from peers import TOKENBUCKET, Made, Peer

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]
Acquire = Callable[[], Awaitable[None]]

WORKLOADS = ("uncontended", "saturation", "waiters", "cancellation", "llm")
HERE = os.path.dirname(os.path.abspath(__file__))


# -- configuration -----------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Sizes of one run of the suite (``--quick`` or full)."""

    mode: str
    # 1. uncontended: the floor is timed over `floor_ops` awaits, a candidate over as
    # many as fit in `budget` seconds (at most `max_ops`, at least `min_ops`).
    floor_ops: int
    max_ops: int
    min_ops: int
    budget: float
    reps: int
    # 2. saturation
    tasks: tuple[int, ...]
    warmup: float
    duration: float
    window: float
    floor_duration: float
    # 3. waiter scaling; `isolate`: one fresh process per run (else one for all runs)
    waiter_counts: tuple[int, ...]
    waiters_cap_slack: float
    isolate: bool
    # 4. cancellation
    cancel_waiters: int
    cancel_rate: float
    cancel_delay: float
    cancel_cap_slack: float
    # 5. LLM composite
    llm: llm.Config
    # shared
    saturation_rate: float = 2000.0
    saturation_capacity: float = 10.0
    waiters_rate: float = 5000.0
    waiters_capacity: float = 50.0
    cancel_capacity: float = 10.0
    spawn_batch: int = 25
    cap_factor: float = 1.5


FULL = Config(
    mode="full",
    floor_ops=100_000,
    max_ops=100_000,
    min_ops=2_000,
    budget=0.1,
    reps=7,
    tasks=(10, 100, 1_000, 10_000),
    warmup=0.3,
    duration=2.5,
    window=1.0,
    floor_duration=0.5,
    waiter_counts=(10, 100, 1_000, 10_000, 50_000),
    waiters_cap_slack=1.0,
    isolate=True,
    cancel_waiters=1_000,
    cancel_rate=200.0,
    cancel_delay=0.05,
    cancel_cap_slack=1.0,
    llm=llm.FULL,
)

QUICK = Config(
    mode="quick",
    floor_ops=3_000,
    max_ops=3_000,
    min_ops=200,
    budget=0.004,
    reps=2,
    tasks=(10, 100),
    warmup=0.02,
    duration=0.04,
    window=0.04,
    floor_duration=0.03,
    waiter_counts=(10, 100),
    waiters_cap_slack=0.05,
    isolate=False,
    cancel_waiters=100,
    cancel_rate=2_000.0,
    cancel_delay=0.01,
    cancel_cap_slack=0.05,
    llm=dataclasses.replace(llm.QUICK, tasks=10, warmup=0.03, duration=0.06),
)


def bench_config(cfg: Config) -> bench.Config:
    """The ``bench.py`` configuration its saturation code reads."""
    return dataclasses.replace(
        bench.FULL,
        mode=cfg.mode,
        tasks=cfg.tasks,
        warmup=cfg.warmup,
        duration=cfg.duration,
        window=cfg.window,
        floor_duration=cfg.floor_duration,
        saturation_rate=cfg.saturation_rate,
        saturation_capacity=cfg.saturation_capacity,
    )


# -- event loops -------------------------------------------------------------------------


@dataclass(frozen=True)
class Loop:
    """An event loop to run on: an asyncio loop factory, or trio (``factory`` None)."""

    name: str
    factory: LoopFactory | None

    @property
    def is_trio(self) -> bool:
        return self.factory is None


def loops() -> list[Loop]:
    found = [Loop("asyncio", asyncio.new_event_loop)]
    uvloop = _optional("uvloop")
    if uvloop is not None:
        found.append(Loop("uvloop", uvloop.new_event_loop))
    if _optional("trio") is not None:
        found.append(Loop("trio", None))
    return found


def _optional(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _trio() -> Any:
    return importlib.import_module("trio_runs")


def runs_on(peer: Peer, loop: Loop) -> bool:
    """The peers are asyncio libraries: on trio only tokenbucket runs."""
    return not loop.is_trio or peer.distribution == "tokenbucket"


TRIO_NA = "asyncio-only library (trio runs tokenbucket only)"


def progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _with_peer(build: Callable[[], Made], body: Callable[[Made], Awaitable[T]]) -> T:
    """Build a limiter inside the running loop, run ``body`` on it, then cancel what the
    library left running (``limits``' expiry task) and close it."""
    made = build()
    try:
        return await body(made)
    finally:
        current = asyncio.current_task()
        await _cancel_all([t for t in asyncio.all_tasks() if t is not current])
        made.close()


def run_asyncio(
    factory: LoopFactory, build: Callable[[], Made], body: Callable[[Made], Awaitable[T]]
) -> T:
    """``body(limiter)`` in a fresh event loop (``llm.run_fresh``: no task may leak)."""

    def main() -> Coroutine[Any, Any, T]:
        return _with_peer(build, body)

    return llm.run_fresh(factory, main)


# -- 1. uncontended acquire --------------------------------------------------------------


async def _sample(make: Callable[[], Acquire], cfg: Config) -> list[float]:
    """[floor, candidate, floor] in ns/op back to back, and the candidate's op count.

    The floor is timed over ``floor_ops`` awaits; the candidate over as many as fit in
    ``budget`` seconds by a short calibration (between ``min_ops`` and ``max_ops``), so
    that a slow peer does not take minutes.
    """
    acquire = make()
    warm = max(cfg.min_ops // 10, 100)
    await bench._time_ops(bench._noop, warm)
    estimate = await bench._time_ops(acquire, warm)
    ops = int(min(cfg.max_ops, max(cfg.min_ops, cfg.budget * 1e9 / max(estimate, 1.0))))
    before = await bench._time_ops(bench._noop, cfg.floor_ops)
    candidate = await bench._time_ops(acquire, ops)
    after = await bench._time_ops(bench._noop, cfg.floor_ops)
    return [before, candidate, after, float(ops)]


@dataclass
class UncontendedRow:
    """ns/op: minimum over samples. ratio: median over samples of candidate / mean(floor
    before, floor after). vs_tokenbucket: ratio / tokenbucket's ratio on the same loop."""

    loop: str
    name: str
    ns_per_op: float
    ratio: float
    ratio_of_minima: float
    vs_tokenbucket: float
    ops: int
    samples: list[float]
    paired_ratios: list[float]


def _uncontended_once(loop: Loop, peer: Peer, cfg: Config) -> list[float]:
    assert peer.uncontended is not None
    build = peer.uncontended
    if loop.factory is None:
        return _trio().run(functools.partial(_sample, lambda: build().acquire, cfg))  # type: ignore[no-any-return]

    async def body(made: Made) -> list[float]:
        return await _sample(lambda: made.acquire, cfg)

    return run_asyncio(loop.factory, build, body)


def bench_uncontended(loop: Loop, cfg: Config) -> list[UncontendedRow]:
    subjects = [
        p
        for p in peers.all_peers()
        if p.uncontended is not None and runs_on(p, loop) and p.why_not("uncontended") is None
    ]
    floor: list[float] = []
    samples: dict[str, list[float]] = {p.name: [] for p in subjects}
    paired: dict[str, list[float]] = {p.name: [] for p in subjects}
    ops: dict[str, int] = {}
    for rep in range(cfg.reps):
        shift = rep % len(subjects)
        for peer in subjects[shift:] + subjects[:shift]:
            before, candidate, after, count = _uncontended_once(loop, peer, cfg)
            floor += (before, after)
            samples[peer.name].append(candidate)
            paired[peer.name].append(candidate / statistics.fmean((before, after)))
            ops[peer.name] = int(count)
    best = min(floor)
    rows = [
        UncontendedRow(
            loop.name, "floor: empty async def", best, 1.0, 1.0, math.nan, cfg.floor_ops, floor, []
        )
    ]
    rows += [
        UncontendedRow(
            loop.name,
            name,
            min(values),
            statistics.median(paired[name]),
            min(values) / best,
            math.nan,
            ops[name],
            values,
            paired[name],
        )
        for name, values in samples.items()
    ]
    ours = next((r.ratio for r in rows if r.name == TOKENBUCKET), math.nan)
    for row in rows[1:]:
        row.vs_tokenbucket = row.ratio / ours
    progress(f"uncontended on {loop.name} done")
    return rows


# -- 2. saturation -----------------------------------------------------------------------


@dataclass
class SaturationRow:
    """``bench.py``'s saturation figures (``result``) and what this suite adds: wait
    latency (grant resumption minus call, ms) over the admissions of the measured
    interval, Jain's fairness index over the tasks' admission counts in that interval
    (``fairness``) with the best value integer counts allow (``fairness_best``), tasks
    admitted nothing in the interval (``starved``), and ``over``: the peak exceeded
    what the limit allows by more than the measurement's resolution."""

    result: bench.SaturationResult
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    fairness: float
    fairness_best: float
    starved: int
    over: bool

    @property
    def fairness_norm(self) -> float:
        return self.fairness / self.fairness_best if self.fairness_best else math.nan


def jain(counts: list[int]) -> float:
    """Jain's fairness index (sum x)^2 / (n * sum x^2); 1 when every x is equal."""
    total = sum(counts)
    squares = sum(x * x for x in counts)
    return total * total / (len(counts) * squares) if squares else math.nan


def jain_best(admitted: int, tasks: int) -> float:
    """The highest index ``admitted`` whole admissions over ``tasks`` tasks can reach."""
    quotient, extra = divmod(admitted, tasks)
    counts = [quotient + 1] * extra + [quotient] * (tasks - extra)
    return jain(counts)


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(int(share * len(ordered)), len(ordered) - 1)]


@dataclass
class Series:
    """Raw series kept for the plots (not in the JSON)."""

    # (loop, name, tasks) -> grant instants relative to the first call, whole run
    timelines: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)
    # (loop, name, tasks) -> wait latencies in the measured interval, seconds
    latencies: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)


def _saturation_raw(loop: Loop, peer: Peer, tasks: int, cfg: Config) -> dict[str, Any]:
    rated = peer.rated
    assert rated is not None
    rate, capacity = cfg.saturation_rate, cfg.saturation_capacity
    if loop.factory is None:
        return _trio().saturation(  # type: ignore[no-any-return]
            lambda r, c: rated(r, c).acquire, tasks, rate, capacity, cfg.warmup, cfg.duration
        )
    bcfg = bench_config(cfg)

    async def body(made: Made) -> dict[str, Any]:
        return await bench._saturation(lambda r, c: made.acquire, tasks, bcfg)

    return run_asyncio(loop.factory, lambda: rated(rate, capacity), body)


def bench_saturation(
    loop: Loop, peer: Peer, tasks: int, cfg: Config, series: Series
) -> SaturationRow:
    raw = _saturation_raw(loop, peer, tasks, cfg)
    result = bench.summarise_saturation(loop.name, peer.name, tasks, raw, bench_config(cfg))
    first, last = raw["first"], raw["last"]
    times: list[float] = raw["times"]
    called: list[float] = raw["called"]
    waits = [times[i] - called[i] for i in range(first, last)]
    per_task = Counter(raw["workers"][first:last])
    counts = [per_task.get(index, 0) for index in range(tasks)]
    start = min(called, default=0.0)
    series.timelines[(loop.name, peer.name, tasks)] = [t - start for t in times]
    series.latencies[(loop.name, peer.name, tasks)] = waits
    row = SaturationRow(
        result=result,
        latency_p50_ms=_percentile(waits, 0.5) * 1e3,
        latency_p99_ms=_percentile(waits, 0.99) * 1e3,
        latency_max_ms=max(waits, default=math.nan) * 1e3,
        fairness=jain(counts),
        fairness_best=jain_best(sum(counts), tasks),
        starved=counts.count(0),
        over=result.peak > result.allowed + bench.SLACK_ADMISSIONS,
    )
    progress(
        f"saturation {loop.name} {peer.name} {tasks:,} tasks: {result.achieved:.1%}, "
        f"{result.cpu_ms_per_1k:.1f} ms/1k, peak {result.peak}/{result.allowed:.0f}"
    )
    return row


def bench_loop_floor(loop: Loop, cfg: Config) -> float:
    if loop.factory is None:
        return _trio().loop_floor(cfg.floor_duration)  # type: ignore[no-any-return]
    return bench.bench_loop_floor(loop.factory, bench_config(cfg))


# -- 3. waiter scaling (in worker processes) ---------------------------------------------


def _read_status(field_name: str) -> int | None:
    """A ``kB`` field of /proc/self/status, in bytes (None where there is no /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


MEMORY_METHOD = (
    "peak RSS growth: VmHWM after the last grant (the high-water mark, reset through "
    "/proc/self/clear_refs just before the first spawn) minus VmRSS at that moment"
)


def memory_probe() -> Callable[[], int | None]:
    """Reset the process's RSS high-water mark; the returned function gives how far it
    rose above the RSS of this moment (None where Linux's /proc is not available)."""
    base = _read_status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
    except OSError:
        return lambda: None
    if base is None:
        return lambda: None

    def grew() -> int | None:
        peak = _read_status("VmHWM")
        return None if peak is None else max(peak - base, 0)

    return grew


async def _waiters(made: Made, total: int, rate: float, cap: float, cfg: Config) -> dict[str, Any]:
    """``bench.py``'s single-shot waiters, for any count, with the memory probe."""
    loop = asyncio.get_running_loop()
    now = loop.time
    acquire = made.acquire
    done = loop.create_future()
    granted = 0
    last_grant = math.nan

    async def waiter() -> None:
        nonlocal granted, last_grant
        await acquire()
        granted += 1
        if granted == total:
            last_grant = now()
            done.set_result(None)

    gc.collect()
    peak = memory_probe()
    gc.disable()  # see bench.py: full collections with many live tasks stall the loop
    cpu0 = time.process_time()
    t0 = now()
    tasks: list[asyncio.Task[None]] = []
    spawned = math.nan
    try:
        for start in range(0, total, cfg.spawn_batch):
            stop = min(start + cfg.spawn_batch, total)
            tasks.extend(loop.create_task(waiter()) for _ in range(start, stop))
            await asyncio.sleep(0)
        spawned = now() - t0
        await asyncio.wait([done], timeout=max(cap - spawned, 0.0))
        t1 = last_grant if done.done() else now()
        cpu1 = time.process_time()
        grew = peak()
    finally:
        gc.enable()
        await _cancel_all(tasks)
    return {
        "wall": t1 - t0,
        "spawn": spawned,
        "granted": granted,
        "cpu": cpu1 - cpu0,
        "capped": not done.done(),
        "memory": grew,
    }


def run_waiters_job(job: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """One waiters run, in this process."""
    peer = next(p for p in peers.all_peers() if p.name == job["peer"])
    rated = peer.rated
    assert rated is not None
    total: int = job["n"]
    rate, capacity = cfg.waiters_rate, cfg.waiters_capacity
    ideal = max(total - capacity, 0) / rate
    cap = cfg.cap_factor * ideal + cfg.waiters_cap_slack
    factory = {loop.name: loop.factory for loop in loops()}[job["loop"]]
    if factory is None:
        raw: dict[str, Any] = _trio().waiters(
            lambda r, c: rated(r, c).acquire,
            total,
            rate,
            capacity,
            cfg.spawn_batch,
            cap,
            memory_probe,
        )
    else:

        async def body(made: Made) -> dict[str, Any]:
            return await _waiters(made, total, rate, cap, cfg)

        raw = run_asyncio(factory, lambda: rated(rate, capacity), body)
    return {**job, **raw, "ideal": ideal}


def worker_main(cfg: Config) -> int:
    """``--worker``: run the waiters jobs read from stdin (JSON), print the results."""
    jobs = json.load(sys.stdin)
    results = [run_waiters_job(job, cfg) for job in jobs]
    json.dump(results, sys.stdout)
    return 0


def run_workers(jobs: list[dict[str, Any]], cfg: Config) -> list[dict[str, Any]]:
    """Run the jobs in a fresh process each (``cfg.isolate``) or all in one."""
    batches = [[job] for job in jobs] if cfg.isolate else [jobs]
    results: list[dict[str, Any]] = []
    for batch in batches:
        command = [sys.executable, os.path.abspath(__file__), "--worker"]
        if cfg.mode == "quick":
            command.append("--quick")
        done = subprocess.run(
            command, input=json.dumps(batch), capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"waiters worker failed on {batch}:\n{done.stderr}")
        for result in json.loads(done.stdout):
            results.append(result)
            progress(
                f"waiters {result['loop']} {result['peer']} {result['n']:,}: "
                f"{result['wall']:.2f} s (ideal {result['ideal']:.2f}), "
                f"{result['granted']:,} granted"
            )
    return results


@dataclass
class WaitersRow:
    loop: str
    name: str
    waiters: int
    granted: int
    wall: float
    ideal: float
    spawn: float
    capped: bool
    cpu_seconds: float
    cpu_us_per_waiter: float
    cpu_load: float
    memory_bytes: int | None

    @property
    def ratio(self) -> float:
        return self.wall / self.ideal if self.ideal > 0 else math.nan


def bench_waiters(cfg: Config, chosen_loops: list[Loop]) -> list[WaitersRow]:
    jobs = [
        {"loop": loop.name, "peer": peer.name, "n": n}
        for loop in chosen_loops
        for peer in peers.rated_peers()
        if runs_on(peer, loop) and peer.why_not("waiters") is None
        for n in cfg.waiter_counts
    ]
    return [
        WaitersRow(
            loop=r["loop"],
            name=r["peer"],
            waiters=r["n"],
            granted=r["granted"],
            wall=r["wall"],
            ideal=r["ideal"],
            spawn=r["spawn"],
            capped=r["capped"],
            cpu_seconds=r["cpu"],
            cpu_us_per_waiter=r["cpu"] / max(r["granted"], 1) * 1e6,
            cpu_load=r["cpu"] / r["wall"] if r["wall"] > 0 else math.nan,
            memory_bytes=r["memory"],
        )
        for r in run_workers(jobs, cfg)
    ]


# -- 4. cancellation ---------------------------------------------------------------------


async def _cancellation(made: Made, cfg: Config) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    now = loop.time
    acquire = made.acquire
    total = cfg.cancel_waiters
    granted_at = [math.nan] * total

    async def waiter(index: int) -> None:
        await acquire()
        granted_at[index] = now()

    cpu0 = time.process_time()
    tasks: list[asyncio.Task[None]] = []
    try:
        for start in range(0, total, cfg.spawn_batch):
            stop = min(start + cfg.spawn_batch, total)
            tasks.extend(loop.create_task(waiter(i)) for i in range(start, stop))
            await asyncio.sleep(0)
        await asyncio.sleep(cfg.cancel_delay)
        t_cancel = now()
        pending = [i for i in range(total) if math.isnan(granted_at[i])]
        cancelled = [i for i in pending if i % 2 == 1]
        survivors = [i for i in pending if i % 2 == 0]
        for index in cancelled:
            tasks[index].cancel()
        ideal = len(survivors) / cfg.cancel_rate
        if survivors:
            await asyncio.wait(
                [tasks[i] for i in survivors],
                timeout=cfg.cap_factor * ideal + cfg.cancel_cap_slack,
            )
        t_end = now()
        cpu1 = time.process_time()
        # The cancelled tasks have had all that time to take their cancellation.
        ended_cancelled = [tasks[i].done() and tasks[i].cancelled() for i in cancelled]
    finally:
        await _cancel_all(tasks)
    return {
        "t_cancel": t_cancel,
        "t_end": t_end,
        "cpu": cpu1 - cpu0,
        "granted_at": granted_at,
        "cancelled": cancelled,
        "survivors": survivors,
        "ended_cancelled": ended_cancelled,
    }


@dataclass
class CancellationRow:
    """Half of the waiters still waiting at ``t_cancel`` (odd arrival numbers) are
    cancelled; ``survivors`` (the even ones still waiting) should then be granted at the
    full rate: ``throughput`` = survivors granted / (last grant - t_cancel) / rate."""

    loop: str
    name: str
    waiters: int
    before_cancel: int
    cancelled: int
    survivors: int
    granted: int
    wall: float
    ideal: float
    throughput: float
    not_cancelled: int
    capped: bool
    cpu_seconds: float


def bench_cancellation(loop: Loop, peer: Peer, cfg: Config) -> CancellationRow:
    rated = peer.rated
    assert rated is not None
    rate, capacity = cfg.cancel_rate, cfg.cancel_capacity
    if loop.factory is None:
        raw: dict[str, Any] = _trio().cancellation(
            lambda r, c: rated(r, c).acquire,
            cfg.cancel_waiters,
            rate,
            capacity,
            cfg.spawn_batch,
            cfg.cancel_delay,
            cfg.cap_factor,
            cfg.cancel_cap_slack,
        )
    else:

        async def body(made: Made) -> dict[str, Any]:
            return await _cancellation(made, cfg)

        raw = run_asyncio(loop.factory, lambda: rated(rate, capacity), body)
    survivors: list[int] = raw["survivors"]
    granted_at: list[float] = raw["granted_at"]
    times = [granted_at[i] for i in survivors if not math.isnan(granted_at[i])]
    capped = len(times) < len(survivors)
    end = raw["t_end"] if capped or not times else max(times)
    wall = end - raw["t_cancel"]
    ideal = len(survivors) / rate
    row = CancellationRow(
        loop=loop.name,
        name=peer.name,
        waiters=cfg.cancel_waiters,
        before_cancel=cfg.cancel_waiters - len(survivors) - len(raw["cancelled"]),
        cancelled=len(raw["cancelled"]),
        survivors=len(survivors),
        granted=len(times),
        wall=wall,
        ideal=ideal,
        throughput=len(times) / wall / rate if wall > 0 else math.nan,
        not_cancelled=sum(not ok for ok in raw["ended_cancelled"]),
        capped=capped,
        cpu_seconds=raw["cpu"],
    )
    progress(
        f"cancellation {loop.name} {peer.name}: {row.granted}/{row.survivors} survivors, "
        f"{row.throughput:.1%} of the rate"
    )
    return row


# -- 5. LLM composite --------------------------------------------------------------------


@dataclass
class LlmPart:
    rows: list[llm.Row]
    samples: list[llm.Sample]
    notes: list[str]
    patterns: dict[str, str]
    costs: dict[str, float]


def bench_llm(cfg: Config, chosen_loops: list[Loop]) -> LlmPart:
    lcfg = cfg.llm
    costs = llm.token_costs(lcfg)
    found, notes = llm.candidates()
    samples: list[llm.Sample] = []
    for loop in chosen_loops:
        for round_index in range(lcfg.samples):
            if loop.factory is None:
                raw = _trio().llm(
                    lambda: llm._tb_limiter(lcfg).acquire,
                    costs,
                    lcfg.tasks,
                    lcfg.warmup,
                    lcfg.duration,
                )
                samples.append(
                    llm.summarise_sample(loop.name, llm.BASELINE, raw, lcfg, round_index)
                )
                continue
            shift = round_index % len(found)
            for candidate in found[shift:] + found[:shift]:
                sample = llm.run_sample(
                    loop.name, loop.factory, candidate, costs, lcfg, round_index
                )
                samples.append(sample)
                progress(
                    f"llm {loop.name} {candidate.name} round {round_index}: "
                    f"{sample.request_share:.1%} req, {sample.token_share:.1%} tok"
                )
    return LlmPart(
        rows=llm.summarise(samples, found, lcfg),
        samples=samples,
        notes=notes,
        patterns={c.name: c.pattern for c in found},
        costs=llm.cost_summary(costs),
    )


# -- results -----------------------------------------------------------------------------


@dataclass
class Results:
    environment: dict[str, Any]
    config: dict[str, Any]
    uncontended: list[UncontendedRow] = field(default_factory=list)
    loop_floor: dict[str, float] = field(default_factory=dict)
    saturation: list[SaturationRow] = field(default_factory=list)
    waiters: list[WaitersRow] = field(default_factory=list)
    cancellation: list[CancellationRow] = field(default_factory=list)
    llm: LlmPart | None = None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(cfg: Config, argv: list[str]) -> dict[str, Any]:
    distributions = sorted({p.distribution for p in peers.all_peers()} - {"tokenbucket"})
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "tokenbucket": tb.__version__,
        "versions": {d: peers.version(d) for d in [*distributions, "uvloop", "trio"]},
        "mode": cfg.mode,
        "command": " ".join(["python benchmarks/run_all.py", *argv]),
    }


# -- the report --------------------------------------------------------------------------

RED = "\N{LARGE RED CIRCLE}"


def _x(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


def _ms(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _bytes(value: int | None) -> str:
    if value is None:
        return "n/a"
    return f"{value / 2**20:,.1f}"


def _na_rows(
    workload: str, loop_names: list[str], width: int, rated: bool
) -> dict[str, list[list[str]]]:
    """loop -> rows saying why a peer has no figures for ``workload`` on that loop."""
    rows: dict[str, list[list[str]]] = {name: [] for name in loop_names}
    for loop_name in loop_names:
        if loop_name == "trio":
            rows[loop_name].append(
                [loop_name, "every peer", f"n/a: {TRIO_NA}", *([""] * (width - 3))]
            )
            continue
        for peer in peers.all_peers():
            if rated and peer.rated is None and peer.why_not(workload) is None:
                continue  # tokenbucket.SlidingWindow: only the uncontended workload
            reason = peer.why_not(workload)
            if reason is not None:
                rows[loop_name].append(
                    [loop_name, peer.name, f"n/a: {reason}", *([""] * (width - 3))]
                )
    return rows


def _by_loop(rows: list[list[str]], na: dict[str, list[list[str]]]) -> list[list[str]]:
    """The rows of each loop, followed by its n/a rows."""
    out: list[list[str]] = []
    for loop_name, extra in na.items():
        out += [r for r in rows if r[0] == loop_name] + extra
    return out


def uncontended_table(results: Results) -> str:
    rows = [
        [
            r.loop,
            r.name,
            f"{r.ns_per_op:,.0f}",
            f"{r.ratio:.2f}x",
            _x(r.vs_tokenbucket),
            f"{r.ratio_of_minima:.2f}x",
            f"{r.ops:,}",
            str(len(r.samples)),
        ]
        for r in results.uncontended
    ]
    names = list(dict.fromkeys(r.loop for r in results.uncontended))
    headers = [
        "loop",
        "acquire",
        "ns/op (min)",
        "vs floor",
        "vs tokenbucket",
        "min / min floor",
        "awaits / sample",
        "samples",
    ]
    body = _by_loop(rows, _na_rows("uncontended", names, len(headers), rated=False))
    return bench.markdown_table(headers, body, set(range(2, 8)))


def _peak_cell(r: SaturationRow) -> str:
    text = f"{r.result.peak:,} / {r.result.allowed:,.0f}"
    if r.over:
        text = f"{RED} {text} (+{r.result.peak - r.result.allowed:,.0f})"
    return text


def saturation_table(results: Results, cfg: Config) -> str:
    rows = [
        [
            r.result.loop,
            r.result.name,
            f"{r.result.tasks:,}",
            f"{r.result.achieved:.1%}",
            _peak_cell(r),
            f"{r.result.cpu_ms_per_1k:,.1f}",
            f"{r.result.cpu_load:.0%}",
            _ms(r.latency_p50_ms),
            _ms(r.latency_p99_ms),
            "n/a: none admitted"
            if math.isnan(r.fairness)
            else f"{r.fairness:.3f} / {r.fairness_best:.3f}",
            f"{r.starved:,}",
            f"{r.result.out_of_order:.1%}",
            "n/a"
            if r.result.wakeups_per_admission is None
            else f"{r.result.wakeups_per_admission:.2f}",
        ]
        for r in results.saturation
    ]
    names = list(dict.fromkeys(r.result.loop for r in results.saturation))
    headers = [
        "loop",
        "limiter",
        "tasks",
        "rate",
        f"peak in {min(cfg.window, cfg.duration):g} s / allowed",
        "CPU ms / 1k adm",
        "CPU load",
        "wait p50 ms",
        "wait p99 ms",
        "Jain / best",
        "starved",
        "out of order",
        "steps / adm",
    ]
    body = _by_loop(rows, _na_rows("saturation", names, len(headers), rated=True))
    return bench.markdown_table(headers, body, set(range(2, 13)))


def waiters_table(results: Results) -> str:
    rows = [
        [
            r.loop,
            r.name,
            f"{r.waiters:,}",
            f"{r.granted:,}" + (" (capped)" if r.capped else ""),
            f"{r.wall:.3f}",
            f"{r.ideal:.3f}",
            _x(r.ratio) if r.ideal >= 0.1 else "n/a: in the burst",
            f"{r.cpu_us_per_waiter:,.1f}",
            "n/a" if math.isnan(r.cpu_load) else f"{r.cpu_load:.0%}",
            _bytes(r.memory_bytes),
            "n/a" if r.memory_bytes is None else f"{r.memory_bytes / r.waiters:,.0f}",
        ]
        for r in results.waiters
    ]
    names = list(dict.fromkeys(r.loop for r in results.waiters))
    headers = [
        "loop",
        "limiter",
        "waiters",
        "granted",
        "wall s",
        "ideal s",
        "wall / ideal",
        "CPU us / waiter",
        "CPU load",
        "peak MiB",
        "bytes / waiter",
    ]
    body = _by_loop(rows, _na_rows("waiters", names, len(headers), rated=True))
    return bench.markdown_table(headers, body, set(range(2, 11)))


def _throughput(row: CancellationRow) -> str:
    if row.survivors == 0:
        return "n/a: none left waiting"
    return f"{row.throughput:.1%}"


def cancellation_table(results: Results) -> str:
    rows = [
        [
            r.loop,
            r.name,
            f"{r.before_cancel:,}",
            f"{r.cancelled:,}",
            f"{r.granted:,} / {r.survivors:,}" + (" (capped)" if r.capped else ""),
            f"{r.wall:.3f}",
            f"{r.ideal:.3f}",
            _throughput(r),
            f"{r.not_cancelled:,}",
        ]
        for r in results.cancellation
    ]
    names = list(dict.fromkeys(r.loop for r in results.cancellation))
    headers = [
        "loop",
        "limiter",
        "granted before",
        "cancelled",
        "survivors granted",
        "wall s",
        "ideal s",
        "throughput / rate",
        "cancel not taken",
    ]
    body = _by_loop(rows, _na_rows("cancellation", names, len(headers), rated=True))
    return bench.markdown_table(headers, body, set(range(2, 9)))


def _span(values: list[float], spec: str, unit: str = "") -> str:
    known = [v for v in values if not math.isnan(v)]
    if not known:
        return "n/a"
    low, high = min(known), max(known)
    if f"{low:{spec}}" == f"{high:{spec}}":
        return f"{low:{spec}}{unit}"
    return f"{low:{spec}}-{high:{spec}}{unit}"


def headline_table(results: Results, cfg: Config) -> str:
    """tokenbucket against each peer, per asyncio loop: the ratios of this run."""
    headers = [
        "loop",
        "limiter",
        "uncontended vs tokenbucket",
        "rate achieved",
        "over-admits",
        "CPU / 1k adm vs tokenbucket",
        "Jain / best (worst)",
        "out of order (worst)",
        f"{max(cfg.waiter_counts):,} waiters: wall / ideal",
        "cancellation: throughput",
        "LLM: CPU vs Limiter",
        "LLM: over a limit",
    ]
    body: list[list[str]] = []
    names = list(
        dict.fromkeys(
            [r.loop for r in results.uncontended]
            + [r.result.loop for r in results.saturation]
            + [r.loop for r in results.waiters]
        )
    )
    for loop_name in names:
        for peer in peers.rated_peers():
            if loop_name == "trio" and peer.distribution != "tokenbucket":
                continue
            reason = peer.why_not("saturation")
            if reason is not None:
                body.append([loop_name, peer.name, f"n/a: {reason}", *([""] * 9)])
                continue
            unc = [r for r in results.uncontended if r.loop == loop_name and r.name == peer.name]
            sat = [
                r
                for r in results.saturation
                if r.result.loop == loop_name and r.result.name == peer.name
            ]
            ours = {
                r.result.tasks: r.result.cpu_ms_per_1k
                for r in results.saturation
                if r.result.loop == loop_name and r.result.name == TOKENBUCKET
            }
            wai = [
                r
                for r in results.waiters
                if r.loop == loop_name
                and r.name == peer.name
                and r.waiters == max(cfg.waiter_counts)
            ]
            can = [r for r in results.cancellation if r.loop == loop_name and r.name == peer.name]
            is_us = peer.name == TOKENBUCKET
            cells = [
                loop_name,
                peer.name,
                (
                    f"{unc[0].ns_per_op:,.0f} ns ({unc[0].ratio:.2f}x floor)"
                    if is_us
                    else _x(unc[0].vs_tokenbucket)
                )
                if unc
                else "not run",
                _span([r.result.achieved * 100 for r in sat], ".1f", "%") if sat else "not run",
                ((f"{RED} yes" if any(r.over for r in sat) else "no") if sat else "not run"),
                (
                    (
                        _span([r.result.cpu_ms_per_1k for r in sat], ".0f", " ms")
                        if is_us
                        else _span(
                            [
                                r.result.cpu_ms_per_1k / ours[r.result.tasks]
                                for r in sat
                                if r.result.tasks in ours
                            ],
                            ".1f",
                            "x",
                        )
                    )
                    if sat
                    else "not run"
                ),
                _worst_fairness(sat),
                f"{max(r.result.out_of_order for r in sat):.1%}" if sat else "not run",
                (_x(wai[0].ratio) + (" (capped)" if wai[0].capped else "")) if wai else "not run",
                _throughput(can[0]) if can else "not run",
            ]
            cells += _llm_cells(results, loop_name, peer)
            body.append(cells)
    return bench.markdown_table(headers, body, set())


def _worst_fairness(rows: list[SaturationRow]) -> str:
    if not rows:
        return "not run"
    known = [r.fairness_norm for r in rows if not math.isnan(r.fairness_norm)]
    text = f"{min(known):.2f}" if known else "n/a"
    silent = sum(math.isnan(r.fairness_norm) for r in rows)
    if silent:
        text += f" ({silent} run(s) admitted none)"
    return text


# The LLM workload's row for each peer of the other workloads.
_LLM_ROW = {
    TOKENBUCKET: llm.BASELINE,
    "aiolimiter.AsyncLimiter": "aiolimiter.AsyncLimiter x2",
    "limits MovingWindow (polled)": "limits MovingWindow (polled)",
    "limits SlidingWindowCounter (polled)": "limits SlidingWindowCounter (polled)",
    "pyrate_limiter.Limiter": "pyrate_limiter.Limiter x2",
    "throttled.asyncio.Throttled": "throttled.asyncio.Throttled x2",
}


def _llm_cells(results: Results, loop_name: str, peer: Peer) -> list[str]:
    if results.llm is None:
        return ["not run", "not run"]
    if peer.why_not("llm") is not None:
        return [f"n/a: {peer.why_not('llm')}", ""]
    name = _LLM_ROW.get(peer.name)
    rows = [r for r in results.llm.rows if r.loop == loop_name and r.name == name]
    if not rows:
        return ["not run", "not run"]
    row = rows[0]
    lcfg = _llm_cfg(results)
    steady = llm._over(row, lcfg, steady=True)
    opening = llm._over(row, lcfg, steady=False)
    over = f"{RED} yes (steady)" if steady else ("opening second only" if opening else "no")
    cpu = "1.00x" if name == llm.BASELINE else _x(row.cpu_vs_baseline)
    return [cpu, over]


def _llm_cfg(results: Results) -> llm.Config:
    return llm.Config(**results.config["llm"])


# How each peer waits, read from its source (the versions above); it explains most of
# the tables below.
WAITING_NOTES = [
    "How they wait: tokenbucket keeps one FIFO queue and one timer per limiter and wakes "
    "each waiter once, when it is granted. aiolimiter keeps its waiters in a heap and "
    "wakes the next when capacity frees, but a caller that finds capacity free takes it "
    "even when others wait. pyrate-limiter holds an `asyncio.Lock` while it sleeps the "
    "computed delay plus `buffer_ms` (50 ms by default), so waiters are served one at a "
    "time, 50 ms apart at best. throttled-py's wait-and-retry mode sleeps "
    "`max(min(retry_after, 0.5), 0.2)` s between attempts until `retry_after` has passed: "
    "at least 200 ms, whatever the rate, and its default token bucket (used here) reports "
    "`retry_after` in whole seconds, so 1 s. asyncio-throttle re-checks its log every "
    "`retry_interval` (10 ms by default). "
    "`limits` does not wait at all; the polling loop its users write sleeps until the "
    "reset time it reports, and its periods are whole seconds.",
]


def peers_list() -> str:
    lines = []
    for peer in peers.all_peers():
        text = f"- **{peer.name}** ({peer.distribution} {peers.version(peer.distribution)}"
        text += f"): {peer.how}"
        if peer.caveat:
            text += f". Note: {peer.caveat}"
        lines.append(text + ".")
    return "\n".join(lines)


def report(results: Results, cfg: Config, plots: dict[str, str]) -> str:
    env = results.environment
    versions = ", ".join(f"{name} {v}" for name, v in env["versions"].items())
    parts = [
        "# Benchmarks: tokenbucket against the async Python limiters",
        "",
        f"Run of {env['date']} ({env['mode']} mode) on {env['cpu']}, {env['cpus']} CPUs, "
        f"{env['platform']}, {env['python']}. Versions: tokenbucket {env['tokenbucket']}, "
        f"{versions}. Command: `{env['command']}`. Every figure below comes from this one "
        "run on this one machine; ratios compare figures of the same run. The method is "
        "described in `benchmarks/README.md` in the repository.",
        "",
    ]
    if cfg.mode == "quick":
        parts += [
            "**--quick run: sizes far too small to judge anything; it only proves the "
            "suite runs.**",
            "",
        ]
    parts += ["## The limiters", "", peers_list(), "", *WAITING_NOTES, ""]
    if results.saturation or results.uncontended:
        parts += [
            "## Headline: tokenbucket against each peer",
            "",
            "Uncontended: the peer's cost per `acquire` over tokenbucket's (both paired "
            "with the floor measured around them). Rate, CPU, fairness and order: over "
            f"the saturation runs ({', '.join(f'{n:,}' for n in cfg.tasks)} tasks); CPU "
            "per 1,000 admissions over tokenbucket's at the same task count. Over-admits: "
            "the most admissions in any window exceeded what the limit allows. Jain / "
            "best: Jain's fairness index over the tasks' admission counts, over the best "
            "whole counts allow (1 = as even as possible), the worst run.",
            "",
            headline_table(results, cfg),
            "",
        ]
    if results.uncontended:
        parts += [
            "## 1. Uncontended acquire",
            "",
            f"ns per `await acquire()` when capacity never runs out; {cfg.reps} "
            "interleaved rounds; ns/op: the minimum; vs floor: the median over samples of "
            "the candidate over the floor timed just before and after it, in the same loop; "
            "vs tokenbucket: that ratio over tokenbucket's.",
            "",
            uncontended_table(results),
            "",
        ]
    if results.saturation:
        floors = ", ".join(
            f"{name} {seconds * 1e6:.1f} us" for name, seconds in results.loop_floor.items()
        )
        parts += [
            "## 2. Saturation",
            "",
            f"N tasks loop on `acquire()` of one limiter at {cfg.saturation_rate:,.0f} "
            f"units/s, burst {cfg.saturation_capacity:g}; {cfg.duration:g} s measured after "
            f"{cfg.warmup:g} s of warm-up. Rate: admitted / measured time / configured rate. "
            "Peak: the most admissions certainly inside one window, over the whole run, "
            f"against rate x window + burst; {RED} marks more than "
            f"{bench.SLACK_ADMISSIONS} over (the measurement's resolution). Wait: from the "
            "call to the resumption after the grant, over the grants of the measured "
            "interval (waits still open at the end are not counted). Jain: fairness over "
            "the tasks' admission counts in the measured interval, next to the best whole "
            "counts allow; starved: tasks admitted nothing in it. Out of order: adjacent "
            "grants whose arrival order is inverted. Steps / adm: task resumptions per "
            "admission.",
            "",
            saturation_table(results, cfg),
            "",
            f"Event-loop floor, CPU per wake-up of one task sleeping 1 ms in a loop: {floors}.",
            "",
        ]
        for key in ("timeline", "latency"):
            parts += [f"![{key}]({name})" for label, name in plots.items() if label.startswith(key)]
            parts.append("")
    if "cpu" in plots:
        parts += [f"![CPU per admission against the number of waiters]({plots['cpu']})", ""]
    if results.waiters:
        parts += [
            "## 3. Waiter scaling",
            "",
            f"n tasks each call `acquire()` once on one limiter at {cfg.waiters_rate:,.0f} "
            f"units/s, burst {cfg.waiters_capacity:g}; spawned {cfg.spawn_batch} at a time. "
            "Ideal: (n - burst) / rate. Wall: from the first spawn to the last grant; runs "
            f"are stopped at {cfg.cap_factor:g} x ideal + {cfg.waiters_cap_slack:g} s "
            f"(capped). Memory: {MEMORY_METHOD}; "
            + (
                "each run in a fresh process."
                if cfg.isolate
                else "all runs in one process (--quick): indicative only."
            )
            + " CPU covers spawning too.",
            "",
            waiters_table(results),
            "",
        ]
        if "waiters" in plots:
            parts += [f"![waiter scaling]({plots['waiters']})", ""]
    if results.cancellation:
        parts += [
            "## 4. Cancellation",
            "",
            f"{cfg.cancel_waiters:,} single-shot waiters on one limiter at "
            f"{cfg.cancel_rate:,.0f} units/s, burst {cfg.cancel_capacity:g}. "
            f"{cfg.cancel_delay * 1e3:g} ms after the last spawn, the waiters with an odd "
            "arrival number that are still waiting are cancelled. Throughput: survivors "
            "granted / (last grant - cancellation) / rate; 100% means the cancelled "
            "waiters cost the others nothing. Cancel not taken: cancelled tasks that "
            "finished normally instead of being cancelled.",
            "",
            cancellation_table(results),
            "",
        ]
    if results.llm is not None:
        part = results.llm
        lcfg = _llm_cfg(results)
        parts += [
            "## 5. LLM composite workload",
            "",
            f"`llm.py`: {lcfg.tasks} tasks send requests forever against R = "
            f"{lcfg.requests_per_second:,} requests/s and T = {lcfg.tokens_per_second:,} "
            f"tokens/s (rolling second); token costs from a fixed lognormal sequence (mean "
            f"{part.costs['mean']:.0f}); {lcfg.duration:g} s measured after {lcfg.warmup:g} "
            f"s, {lcfg.samples} round(s). See `llm.py`'s section of the README for the "
            "columns. On trio only tokenbucket.Limiter runs (the peers are asyncio "
            "libraries).",
            "",
            llm.results_table(
                part.rows,
                lcfg,
                {
                    name: [("every peer", TRIO_NA)] if name == "trio" else llm.NOT_APPLICABLE
                    for name in dict.fromkeys(r.loop for r in part.rows)
                },
            ),
            "",
        ]
        parts += [f"- {name}: {pattern}" for name, pattern in part.patterns.items()]
        parts += [""] + [f"Note: {note}" for note in part.notes]
        parts += ["", "Reading: " + llm.reading(part.rows, lcfg), ""]
    return "\n".join(parts)


# -- main --------------------------------------------------------------------------------


def write_plots(results: Results, series: Series, cfg: Config, out: str) -> dict[str, str]:
    """Draw the PNGs into ``out``; returns label -> file name."""
    import plots  # matplotlib is imported only here

    return plots.draw_all(results, series, cfg, out)


def to_json(results: Results) -> dict[str, Any]:
    data = asdict(results)
    for row, raw in zip(data["saturation"], results.saturation, strict=True):
        row["fairness_norm"] = raw.fairness_norm
    return data


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run with small sizes")
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=os.path.join(HERE, "results", "run_all"),
        help="write report.md and the PNG plots here (default: benchmarks/results/run_all)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    parser.add_argument(
        "--only",
        action="append",
        choices=WORKLOADS,
        help="run only this workload (repeatable); default: all",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.worker:
        return worker_main(cfg)
    chosen = set(args.only or WORKLOADS)
    results = Results(environment=environment(cfg, argv), config=asdict(cfg))
    series = Series()
    kinds = loops()
    started = time.monotonic()

    if "uncontended" in chosen:
        for loop in kinds:
            results.uncontended += bench_uncontended(loop, cfg)
        progress(f"[{time.monotonic() - started:.0f} s] uncontended done")
    if "saturation" in chosen:
        for loop in kinds:
            results.loop_floor[loop.name] = bench_loop_floor(loop, cfg)
            for peer in peers.rated_peers():
                if not runs_on(peer, loop) or peer.why_not("saturation") is not None:
                    continue
                for tasks in cfg.tasks:
                    results.saturation.append(bench_saturation(loop, peer, tasks, cfg, series))
        progress(f"[{time.monotonic() - started:.0f} s] saturation done")
    if "waiters" in chosen:
        results.waiters = bench_waiters(cfg, kinds)
        progress(f"[{time.monotonic() - started:.0f} s] waiters done")
    if "cancellation" in chosen:
        for loop in kinds:
            for peer in peers.rated_peers():
                if runs_on(peer, loop) and peer.why_not("cancellation") is None:
                    results.cancellation.append(bench_cancellation(loop, peer, cfg))
        progress(f"[{time.monotonic() - started:.0f} s] cancellation done")
    if "llm" in chosen:
        results.llm = bench_llm(cfg, kinds)
        progress(f"[{time.monotonic() - started:.0f} s] llm done")

    os.makedirs(args.out, exist_ok=True)
    plots = {} if args.no_plots else write_plots(results, series, cfg, args.out)
    text = report(results, cfg, plots)
    with open(os.path.join(args.out, "report.md"), "w", encoding="utf-8") as file:
        file.write(text)
    print(text)
    if args.json:
        directory = os.path.dirname(args.json)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(to_json(results), file, indent=2)
            file.write("\n")
    progress(f"done in {time.monotonic() - started:.0f} s; report in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
