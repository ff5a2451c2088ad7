"""The workloads of ``run_all.py`` on trio's own event loop (tokenbucket only: the peers
are asyncio libraries).

Each function runs one workload in a fresh ``trio.run`` and returns the same raw record
as its asyncio counterpart, measured the same way: ``trio.current_time()`` stands for
``loop.time()``, an instrument stands for the asyncio harness's wrappers (it counts the
steps of the measured tasks and notes when each was last made runnable, the lower bound
of its admission instant), and ``time.process_time()`` covers the whole process.
"""

from __future__ import annotations

import functools
import gc
import itertools
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio
import trio.abc
import trio.lowlevel

T = TypeVar("T")
Acquire = Callable[[], Awaitable[None]]
MakeRated = Callable[[float, float], Acquire]


class _Watch(trio.abc.Instrument):
    """Counts the steps of the tasks in ``woken`` and notes when each was last made
    runnable (a wake-up, or a checkpoint's reschedule), and in what order: ``order``
    maps the task to a number drawn from ``sequence`` at that moment."""

    def __init__(self) -> None:
        self.woken: dict[trio.lowlevel.Task, float] = {}
        self.order: dict[trio.lowlevel.Task, int] = {}
        self.sequence = itertools.count().__next__
        self.steps = 0

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        if task in self.woken:
            self.woken[task] = trio.current_time()
            self.order[task] = self.sequence()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task in self.woken:
            self.steps += 1


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` in a fresh ``trio.run``, after a garbage collection."""
    gc.collect()
    return trio.run(main)


# -- saturation --------------------------------------------------------------------------


async def _saturation(
    make: MakeRated, tasks: int, rate: float, capacity: float, warmup: float, duration: float
) -> dict[str, Any]:
    now = trio.current_time
    watch = _Watch()
    trio.lowlevel.add_instrument(watch)
    acquire = make(rate, capacity)
    next_arrival = itertools.count().__next__
    grant_times: list[float] = []
    grant_earliest: list[float] = []
    grant_arrivals: list[int] = []
    grant_called: list[float] = []
    grant_workers: list[int] = []
    grant_order: list[int] = []
    woken = watch.woken
    order = watch.order
    sequence = watch.sequence

    async def worker(index: int) -> None:
        me = trio.lowlevel.current_task()
        while True:
            arrival = next_arrival()
            woken[me] = math.inf
            called = now()
            await acquire()
            resumed = now()
            scheduled = woken[me]
            grant_times.append(resumed)
            if scheduled <= resumed:
                grant_earliest.append(scheduled)
                grant_order.append(order[me])
            else:  # not made runnable since the call: granted on the spot
                grant_earliest.append(called)
                grant_order.append(sequence())
            grant_arrivals.append(arrival)
            grant_called.append(called)
            grant_workers.append(index)

    async def tracked(index: int) -> None:
        woken[trio.lowlevel.current_task()] = math.inf
        await worker(index)

    try:
        async with trio.open_nursery() as nursery:
            for index in range(tasks):
                nursery.start_soon(tracked, index)
            await trio.lowlevel.checkpoint()  # every worker has arrived once
            await trio.sleep(warmup)
            cpu0 = time.process_time()
            t0 = now()
            steps0 = watch.steps
            first = len(grant_times)
            await trio.sleep(duration)
            last = len(grant_times)
            steps1 = watch.steps
            t1 = now()
            cpu1 = time.process_time()
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(watch)
    # trio resumes the tasks it found runnable in one batch in random order (it reverses
    # half of its batches on purpose), so the order of resumption is not the order of
    # the grants: the arrival numbers are put in the order the limiter made the tasks
    # runnable.
    granted_order = [
        a for _, a in sorted(zip(grant_order[:last], grant_arrivals[:last], strict=True))
    ]
    return {
        "t0": t0,
        "t1": t1,
        "cpu": cpu1 - cpu0,
        "steps": steps1 - steps0,
        "first": first,
        "last": last,
        "times": grant_times[:last],
        "earliest": grant_earliest[:last],
        "arrivals": granted_order,
        "resumed_arrivals": grant_arrivals[:last],
        "called": grant_called[:last],
        "workers": grant_workers[:last],
    }


def saturation(
    make: MakeRated, tasks: int, rate: float, capacity: float, warmup: float, duration: float
) -> dict[str, Any]:
    gc.collect()
    return trio.run(_saturation, make, tasks, rate, capacity, warmup, duration)


async def _loop_floor(period: float, duration: float) -> float:
    wakes = 0
    end = trio.current_time() + duration
    cpu0 = time.process_time()
    while trio.current_time() < end:
        await trio.sleep(period)
        wakes += 1
    return (time.process_time() - cpu0) / max(wakes, 1)


def loop_floor(duration: float) -> float:
    """CPU seconds per wake-up of one task looping on ``await trio.sleep(0.001)``."""
    gc.collect()
    return trio.run(_loop_floor, 1e-3, duration)


# -- single-shot waiters -----------------------------------------------------------------


async def _waiters(
    make: MakeRated,
    total: int,
    rate: float,
    capacity: float,
    spawn_batch: int,
    cap: float,
    memory: Callable[[], Callable[[], int | None]],
) -> dict[str, Any]:
    now = trio.current_time
    acquire = make(rate, capacity)
    done = trio.Event()
    granted = 0
    last_grant = math.nan

    async def waiter() -> None:
        nonlocal granted, last_grant
        await acquire()
        granted += 1
        if granted == total:
            last_grant = now()
            done.set()

    gc.collect()
    peak = memory()
    gc.disable()
    cpu0 = time.process_time()
    t0 = now()
    spawned = math.nan
    try:
        async with trio.open_nursery() as nursery:
            for start in range(0, total, spawn_batch):
                for _ in range(start, min(start + spawn_batch, total)):
                    nursery.start_soon(waiter)
                await trio.lowlevel.checkpoint()  # let this batch arrive before spawning the next
            spawned = now() - t0
            with trio.move_on_after(max(cap - spawned, 0.0)):
                await done.wait()
            t1 = last_grant if done.is_set() else now()
            cpu1 = time.process_time()
            grew = peak()
            nursery.cancel_scope.cancel()
    finally:
        gc.enable()
    return {
        "wall": t1 - t0,
        "spawn": spawned,
        "granted": granted,
        "cpu": cpu1 - cpu0,
        "capped": not done.is_set(),
        "memory": grew,
    }


def waiters(
    make: MakeRated,
    total: int,
    rate: float,
    capacity: float,
    spawn_batch: int,
    cap: float,
    memory: Callable[[], Callable[[], int | None]],
) -> dict[str, Any]:
    gc.collect()
    main = functools.partial(_waiters, make, total, rate, capacity, spawn_batch, cap, memory)
    return trio.run(main)


# -- cancellation ------------------------------------------------------------------------


async def _cancellation(
    make: MakeRated,
    total: int,
    rate: float,
    capacity: float,
    spawn_batch: int,
    delay: float,
    cap_factor: float,
    cap_slack: float,
) -> dict[str, Any]:
    now = trio.current_time
    acquire = make(rate, capacity)
    granted_at = [math.nan] * total
    ended_cancelled = [False] * total
    scopes = [trio.CancelScope() for _ in range(total)]
    remaining = 0
    all_done = trio.Event()

    async def waiter(index: int) -> None:
        nonlocal remaining
        with scopes[index]:
            await acquire()
            granted_at[index] = now()
        if scopes[index].cancelled_caught:
            ended_cancelled[index] = True
        remaining -= 1
        if remaining == 0:
            all_done.set()

    cpu0 = time.process_time()
    async with trio.open_nursery() as nursery:
        remaining = total
        for start in range(0, total, spawn_batch):
            for index in range(start, min(start + spawn_batch, total)):
                nursery.start_soon(waiter, index)
            await trio.lowlevel.checkpoint()
        await trio.sleep(delay)
        t_cancel = now()
        pending = [i for i in range(total) if math.isnan(granted_at[i])]
        cancelled = [i for i in pending if i % 2 == 1]
        survivors = [i for i in pending if i % 2 == 0]
        for index in cancelled:
            scopes[index].cancel()
        ideal = len(survivors) / rate
        with trio.move_on_after(cap_factor * ideal + cap_slack):
            await all_done.wait()
        t_end = now()
        cpu1 = time.process_time()
        nursery.cancel_scope.cancel()
    return {
        "t_cancel": t_cancel,
        "t_end": t_end,
        "cpu": cpu1 - cpu0,
        "granted_at": granted_at,
        "cancelled": cancelled,
        "survivors": survivors,
        "ended_cancelled": [ended_cancelled[i] for i in cancelled],
    }


def cancellation(
    make: MakeRated,
    total: int,
    rate: float,
    capacity: float,
    spawn_batch: int,
    delay: float,
    cap_factor: float,
    cap_slack: float,
) -> dict[str, Any]:
    gc.collect()
    main = functools.partial(
        _cancellation, make, total, rate, capacity, spawn_batch, delay, cap_factor, cap_slack
    )
    return trio.run(main)


# -- the LLM composite workload ----------------------------------------------------------


class _CountAll(trio.abc.Instrument):
    """Counts every task spawned and every task step; notes (in ``time.monotonic()``)
    when each task in ``woken`` was last made runnable."""

    def __init__(self) -> None:
        self.woken: dict[trio.lowlevel.Task, float] = {}
        self.tasks = 0
        self.steps = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.tasks += 1

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        if task in self.woken:
            self.woken[task] = time.monotonic()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


async def _llm(
    acquire: Callable[[int], Awaitable[None]],
    costs: list[int],
    tasks: int,
    warmup: float,
    duration: float,
) -> dict[str, Any]:
    clock = time.monotonic
    counts = _CountAll()
    trio.lowlevel.add_instrument(counts)
    woken = counts.woken
    next_arrival = itertools.count().__next__
    size = len(costs)
    latest: list[float] = []
    earliest: list[float] = []
    granted: list[int] = []

    async def worker() -> None:
        me = trio.lowlevel.current_task()
        while True:
            cost = costs[next_arrival() % size]
            woken[me] = math.inf
            called = clock()
            await acquire(cost)
            resumed = clock()
            scheduled = woken[me]
            latest.append(resumed)
            earliest.append(scheduled if scheduled <= resumed else called)
            granted.append(cost)

    start = clock()
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(worker)
            await trio.lowlevel.checkpoint()
            await trio.sleep(warmup)
            cpu0 = time.process_time()
            t0 = clock()
            tasks0, steps0 = counts.tasks, counts.steps
            first = len(latest)
            await trio.sleep(duration)
            last = len(latest)
            tasks1, steps1 = counts.tasks, counts.steps
            t1 = clock()
            cpu1 = time.process_time()
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(counts)
    return {
        "start": start,
        "t0": t0,
        "t1": t1,
        "cpu": cpu1 - cpu0,
        "tasks": tasks1 - tasks0,
        "steps": steps1 - steps0,
        "first": first,
        "last": last,
        "latest": latest[:last],
        "earliest": earliest[:last],
        "costs": granted[:last],
    }


def llm(
    make: Callable[[], Callable[[int], Awaitable[None]]],
    costs: list[int],
    tasks: int,
    warmup: float,
    duration: float,
) -> dict[str, Any]:
    """One run of ``llm.py``'s workload; ``make()`` runs inside the trio run."""

    async def main() -> dict[str, Any]:
        return await _llm(make(), costs, tasks, warmup, duration)

    gc.collect()
    return trio.run(main)
