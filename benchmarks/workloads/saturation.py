"""2. Saturation: N tasks loop forever on ``acquire()`` of one limiter.

All tasks are created and each makes its first call (every task has queued), a warm-up
drains the burst and lets the queue settle, then the measured interval is bounded by
two readings of the loop's clock, ``time.process_time()``, the admissions and the task
steps so far. Each task takes an arrival number just before calling ``acquire()`` and
records, on return, its resumption instant and the instant it was last made runnable
(the earliest its admission can have happened). On trio the grant order is the order in
which the limiter made the tasks runnable: trio resumes each batch of runnable tasks in
random order. The event-loop floor is the CPU per wake-up of one task sleeping 1 ms.

Row: ``achieved`` = admitted / duration / rate; ``peak``: most admissions certainly in
one window (``min(window, duration)``) over the whole run, against ``allowed`` = rate *
window + capacity; ``out_of_order``: share of adjacent grants whose arrival numbers are
inverted; waits (ms) from the call to the resumption, over the measured interval;
Jain's index over the tasks' admission counts in it, next to the best whole counts
allow, and their quotient ``fairness_norm``.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from functools import partial

import peers
from _harness import (
    SLACK_ADMISSIONS,
    Acquire,
    Loop,
    Runtime,
    certain_peak,
    jain,
    loop_floor,
    measured,
    percentile,
    progress,
    run_with,
)


@dataclass(frozen=True)
class Config:
    tasks: tuple[int, ...]
    warmup: float
    duration: float
    window: float
    floor_duration: float
    rate: float = 2000.0
    capacity: float = 10.0


FULL = Config(
    tasks=(10, 100, 1_000, 10_000), warmup=0.3, duration=2.5, window=1.0, floor_duration=0.5
)
QUICK = Config(tasks=(10, 100), warmup=0.02, duration=0.04, window=0.04, floor_duration=0.03)


@dataclass
class Row:
    loop: str
    name: str
    tasks: int
    achieved: float
    peak: int
    peak_resumed: int  # the same from the resumption instants alone (an upper reading)
    allowed: float
    cpu_ms_per_1k: float
    cpu_load: float
    steps_per_admission: float
    adjacent_inversions: int
    overtaken: int  # grants with a smaller arrival number than any earlier grant's
    out_of_order: float
    wait_p50_ms: float
    wait_p99_ms: float
    fairness: float
    fairness_best: float
    fairness_norm: float
    starved: int

    @property
    def over(self) -> bool:
        return self.peak > self.allowed + SLACK_ADMISSIONS


@dataclass
class Series:
    """Raw series for the plots (not in the JSON), by (loop, name, tasks): grant instants
    since the first call (whole run), and the waits of the measured interval (s)."""

    timelines: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)
    latencies: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)


async def _saturation(
    rt: Runtime, acquire: Acquire, name: str, tasks: int, cfg: Config, series: Series
) -> Row:
    now, woken, order, sequence = rt.now, rt.woken, rt.order, rt.sequence
    next_arrival = itertools.count().__next__
    # (resumed, earliest admission, grant rank, arrival, called, worker) per admission
    grants: list[tuple[float, float, int, int, float, int]] = []

    async def worker(index: int) -> None:
        me = rt.current()
        while True:
            arrival = next_arrival()
            woken[me] = math.inf
            called = now()
            await acquire()
            resumed = now()
            # Admitted after its last wake-up was scheduled or, with none (acquire
            # returned without waiting), after the call.
            woke = (scheduled := woken[me]) <= resumed
            rank = order.get(me, 0) if woke else sequence()
            grants.append((resumed, scheduled if woke else called, rank, arrival, called, index))

    spawned = [rt.spawn(worker, i) for i in range(tasks)]
    span = await measured(rt, spawned, cfg.warmup, cfg.duration, grants)
    first, last = span.first, span.last
    times, earliest, ranks, arrivals, called, workers = map(list, zip(*grants[:last], strict=True))
    if rt.reorders:  # the order in which the limiter made the tasks runnable
        arrivals = [arrival for _, arrival in sorted(zip(ranks, arrivals, strict=True))]
    admitted, duration = last - first, span.t1 - span.t0
    adjacent = sum(arrivals[i] < arrivals[i - 1] for i in range(first + 1, last))
    highest = list(itertools.accumulate(arrivals, max, initial=-1))  # before each grant
    overtaken = sum(arrivals[i] < highest[i] for i in range(first, last))
    waits = [times[i] - called[i] for i in range(first, last)]
    per_task = Counter(workers[first:last])
    counts = [per_task.get(index, 0) for index in range(tasks)]
    quotient, extra = divmod(sum(counts), tasks)
    best = jain([quotient + 1] * extra + [quotient] * (tasks - extra))
    start = min(called, default=0.0)
    series.timelines[(rt.name, name, tasks)] = [t - start for t in times]
    series.latencies[(rt.name, name, tasks)] = waits
    window = min(cfg.window, cfg.duration)
    return Row(
        loop=rt.name,
        name=name,
        tasks=tasks,
        achieved=admitted / duration / cfg.rate,
        peak=certain_peak(earliest, times, window),
        peak_resumed=certain_peak(times, times, window),
        allowed=cfg.rate * window + cfg.capacity,
        cpu_ms_per_1k=span.cpu / max(admitted, 1) * 1e6,
        cpu_load=span.cpu / duration,
        steps_per_admission=span.steps / admitted if admitted else math.nan,
        adjacent_inversions=adjacent,
        overtaken=overtaken,
        out_of_order=adjacent / max(admitted - 1, 1),
        wait_p50_ms=percentile(waits, 0.5) * 1e3,
        wait_p99_ms=percentile(waits, 0.99) * 1e3,
        fairness=jain(counts),
        fairness_best=best,
        fairness_norm=jain(counts) / best if best else math.nan,
        starved=counts.count(0),
    )


def measure(loop: Loop, cfg: Config, series: Series) -> tuple[float, list[Row]]:
    """The loop's floor and one row per (peer, task count)."""
    floor = loop_floor(loop, 1e-3, cfg.floor_duration)
    rows = []
    for peer in peers.for_workload("saturation", loop):
        for tasks in cfg.tasks:
            build = peer.build("saturation", cfg.rate, cfg.capacity)
            body = partial(_saturation, name=peer.name, tasks=tasks, cfg=cfg, series=series)
            rows.append(row := run_with(loop, build, body, count="spawned"))
            progress(
                f"saturation {loop.name} {peer.name} {tasks:,} tasks: {row.achieved:.1%}, "
                f"{row.cpu_ms_per_1k:.1f} ms/1k, peak {row.peak}/{row.allowed:.0f}"
            )
    return floor, rows
