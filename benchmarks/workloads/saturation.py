"""2. Saturation: N tasks loop forever on ``acquire()`` of one limiter.

All tasks are created and each makes its first call (every task has queued), a warm-up
drains the burst and lets the queue settle, then the measured interval is bounded by
two readings of the loop's clock, ``time.process_time()``, the admissions and the task
steps so far. Each task takes an arrival number just before calling ``acquire()`` and
records, on return, its resumption instant and the instant it was last made runnable
(the earliest its admission can have happened). On trio the grant order is the order in
which the limiter made the tasks runnable: trio resumes each batch of runnable tasks in
random order. The event-loop floor is the CPU per wake-up of one task sleeping 1 ms.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import peers
from _harness import Acquire, Loop, Runtime, certain_peak, jain, percentile, progress, run, run_with

# Admission counts taken from the tasks are exact only to a few admissions: the rate over
# D seconds depends on what had refilled when the interval began, on where the boundary
# readings fall among the grants and (uvloop) on a clock that reads whole milliseconds; a
# window's peak is counted from resumptions, which a stall can push into the next window.
# This many admissions either way are the measurement's resolution.
SLACK_ADMISSIONS = 3


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
    """``achieved`` = admitted / duration / rate; ``peak``: most admissions certainly in
    one ``window`` over the whole run, against ``allowed`` = rate * window + capacity;
    ``out_of_order``: share of adjacent grants whose arrival numbers are inverted; waits
    (ms) from the call to the resumption, over the measured interval; Jain's index over
    the tasks' admission counts in it, next to the best whole counts allow."""

    loop: str
    name: str
    tasks: int
    admitted: int
    achieved: float
    window: float
    peak: int
    peak_resumed: int
    allowed: float
    cpu_ms_per_1k: float
    cpu_load: float
    steps_per_admission: float
    adjacent_inversions: int
    out_of_order: float
    overtaken: int
    wait_p50_ms: float
    wait_p99_ms: float
    wait_max_ms: float
    fairness: float
    fairness_best: float
    starved: int

    @property
    def over(self) -> bool:
        return self.peak > self.allowed + SLACK_ADMISSIONS

    @property
    def fairness_norm(self) -> float:
        return self.fairness / self.fairness_best if self.fairness_best else math.nan


@dataclass
class Series:
    """Raw series for the plots (not in the JSON), by (loop, name, tasks): grant instants
    since the first call (whole run), and the waits of the measured interval (s)."""

    timelines: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)
    latencies: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)


async def _saturation(rt: Runtime, acquire: Acquire, tasks: int, cfg: Config) -> dict[str, Any]:
    now, woken, order, sequence = rt.now, rt.woken, rt.order, rt.sequence
    next_arrival = itertools.count().__next__
    times: list[float] = []
    earliest: list[float] = []
    arrivals: list[int] = []
    called_at: list[float] = []
    workers: list[int] = []
    granted_order: list[int] = []

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
            scheduled = woken[me]
            times.append(resumed)
            woke = scheduled <= resumed
            earliest.append(scheduled if woke else called)
            granted_order.append(order.get(me, 0) if woke else sequence())
            arrivals.append(arrival)
            called_at.append(called)
            workers.append(index)

    spawned = [rt.spawn(worker, i) for i in range(tasks)]
    try:
        await rt.checkpoint()  # every worker has arrived once
        await rt.sleep(cfg.warmup)  # the burst is drained, the queue is steady
        cpu0, t0, steps0, first = time.process_time(), now(), rt.counts.steps, len(times)
        await rt.sleep(cfg.duration)
        last, steps1, t1, cpu1 = len(times), rt.counts.steps, now(), time.process_time()
    finally:
        await rt.cancel(spawned)
    if rt.reorders:
        pairs = sorted(zip(granted_order[:last], arrivals[:last], strict=True))
        arrivals = [a for _, a in pairs]
    return {
        "t0": t0,
        "t1": t1,
        "cpu": cpu1 - cpu0,
        "steps": steps1 - steps0,
        "first": first,
        "last": last,
        "times": times[:last],
        "earliest": earliest[:last],
        "arrivals": arrivals[:last],
        "called": called_at[:last],
        "workers": workers[:last],
    }


def _row(loop: str, name: str, tasks: int, raw: dict[str, Any], cfg: Config, series: Series) -> Row:
    first, last = raw["first"], raw["last"]
    duration = raw["t1"] - raw["t0"]
    admitted = last - first
    arrivals: list[int] = raw["arrivals"]
    adjacent = overtaken = 0
    highest = max(arrivals[:first], default=-1)
    for index in range(first, last):
        adjacent += index > first and arrivals[index] < arrivals[index - 1]
        overtaken += arrivals[index] < highest
        highest = max(highest, arrivals[index])
    times: list[float] = raw["times"]
    called: list[float] = raw["called"]
    waits = [times[i] - called[i] for i in range(first, last)]
    per_task = Counter(raw["workers"][first:last])
    counts = [per_task.get(index, 0) for index in range(tasks)]
    quotient, extra = divmod(sum(counts), tasks)
    start = min(called, default=0.0)
    series.timelines[(loop, name, tasks)] = [t - start for t in times]
    series.latencies[(loop, name, tasks)] = waits
    window = min(cfg.window, cfg.duration)
    return Row(
        loop=loop,
        name=name,
        tasks=tasks,
        admitted=admitted,
        achieved=admitted / duration / cfg.rate,
        window=window,
        peak=certain_peak(raw["earliest"], times, window),
        peak_resumed=certain_peak(times, times, window),
        allowed=cfg.rate * window + cfg.capacity,
        cpu_ms_per_1k=raw["cpu"] / max(admitted, 1) * 1e6,
        cpu_load=raw["cpu"] / duration,
        steps_per_admission=raw["steps"] / admitted if admitted else math.nan,
        adjacent_inversions=adjacent,
        out_of_order=adjacent / max(admitted - 1, 1),
        overtaken=overtaken,
        wait_p50_ms=percentile(waits, 0.5) * 1e3,
        wait_p99_ms=percentile(waits, 0.99) * 1e3,
        wait_max_ms=max(waits, default=math.nan) * 1e3,
        fairness=jain(counts),
        fairness_best=jain([quotient + 1] * extra + [quotient] * (tasks - extra)),
        starved=counts.count(0),
    )


async def _loop_floor(rt: Runtime, period: float, duration: float) -> float:
    """CPU seconds per wake-up of one task looping on ``sleep(period)``."""
    wakes = 0
    end = rt.now() + duration
    cpu0 = time.process_time()
    while rt.now() < end:
        await rt.sleep(period)
        wakes += 1
    return (time.process_time() - cpu0) / max(wakes, 1)


def measure(loop: Loop, cfg: Config, series: Series) -> tuple[float, list[Row]]:
    """The loop's floor and one row per (peer, task count)."""
    floor = run(loop, lambda rt: _loop_floor(rt, 1e-3, cfg.floor_duration))
    rows = []
    for peer in peers.for_workload("saturation", loop):
        rated = peer.rated
        assert rated is not None
        for tasks in cfg.tasks:
            raw = run_with(
                loop,
                lambda: rated(cfg.rate, cfg.capacity),  # noqa: B023 - called at once
                lambda rt, acquire: _saturation(rt, acquire, tasks, cfg),  # noqa: B023
                count="spawned",
            )
            row = _row(loop.name, peer.name, tasks, raw, cfg, series)
            rows.append(row)
            progress(
                f"saturation {loop.name} {peer.name} {tasks:,} tasks: {row.achieved:.1%}, "
                f"{row.cpu_ms_per_1k:.1f} ms/1k, peak {row.peak}/{row.allowed:.0f}"
            )
    return floor, rows
