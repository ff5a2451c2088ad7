"""4. Cancellation: single-shot waiters on one limiter; some time after the last spawn,
every waiter with an odd arrival number still waiting is cancelled (``task.cancel()``;
on trio its cancel scope). Throughput = survivors granted / (last survivor's grant -
cancellation instant) / rate: 100% means the cancelled waiters cost the others nothing.
Before: waiters granted before the cancellation; wall: from the cancellation to the last
survivor's grant (or to the cap, ``capped``); not_cancelled: cancelled waiters whose task
did not end cancelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import peers
from _harness import Acquire, Loop, Runtime, SingleShot, Task, progress, run_with, spawn_batched


@dataclass
class Row:
    loop: str
    name: str
    before_cancel: int
    cancelled: int
    survivors: int
    granted: int
    wall: float
    ideal: float
    throughput: float
    not_cancelled: int
    capped: bool


@dataclass(frozen=True, kw_only=True)
class Config(SingleShot):
    waiters: int
    delay: float


FULL = Config(waiters=1_000, rate=200.0, capacity=10.0, delay=0.05, cap_slack=1.0)
QUICK = Config(waiters=100, rate=2_000.0, capacity=10.0, delay=0.01, cap_slack=0.05)


async def _cancellation(rt: Runtime, acquire: Acquire, name: str, cfg: Config) -> Row:
    now = rt.now
    granted_at = [math.nan] * cfg.waiters
    survivors: set[int] = set()
    left = 0
    done = rt.event()

    async def waiter(index: int) -> None:
        nonlocal left
        await acquire()
        granted_at[index] = now()
        if index in survivors:
            left -= 1
            if left == 0:
                done.set()

    tasks: list[Task] = []
    try:
        await spawn_batched(rt, waiter, cfg.waiters, cfg.spawn_batch, tasks)
        await rt.sleep(cfg.delay)
        t_cancel = now()
        pending = [i for i in range(cfg.waiters) if math.isnan(granted_at[i])]
        cancelled = [i for i in pending if i % 2 == 1]
        survivors.update(i for i in pending if i % 2 == 0)
        left = len(survivors)
        for index in cancelled:
            tasks[index].cancel()
        if survivors:
            await done.wait(cfg.cap_factor * len(survivors) / cfg.rate + cfg.cap_slack)
        t_end = now()
        # The cancelled tasks have had all that time to take their cancellation.
        taken = [tasks[i].done() and tasks[i].cancelled() for i in cancelled]
    finally:
        await rt.cancel(tasks)
    times = [granted_at[i] for i in sorted(survivors) if not math.isnan(granted_at[i])]
    capped = len(times) < len(survivors)
    wall = (t_end if capped or not times else max(times)) - t_cancel
    return Row(
        loop=rt.name,
        name=name,
        before_cancel=cfg.waiters - len(survivors) - len(cancelled),
        cancelled=len(cancelled),
        survivors=len(survivors),
        granted=len(times),
        wall=wall,
        ideal=len(survivors) / cfg.rate,
        throughput=len(times) / wall / cfg.rate if wall > 0 else math.nan,
        not_cancelled=sum(not ok for ok in taken),
        capped=capped,
    )


def measure(loop: Loop, cfg: Config) -> list[Row]:
    rows = []
    for peer in peers.for_workload("cancellation", loop):
        build = peer.build("cancellation", cfg.rate, cfg.capacity)
        rows.append(row := run_with(loop, build, partial(_cancellation, name=peer.name, cfg=cfg)))
        done = f"{row.granted}/{row.survivors} {row.throughput:.1%}"
        progress(f"cancellation {loop.name} {peer.name}: {done}")
    return rows
