"""4. Cancellation: single-shot waiters on one limiter; some time after the last spawn,
every waiter with an odd arrival number still waiting is cancelled (``task.cancel()``;
on trio its cancel scope). Throughput = survivors granted / (last survivor's grant -
cancellation instant) / rate: 100% means the cancelled waiters cost the others nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import peers
from _harness import Acquire, Loop, Runtime, progress, run_with


@dataclass(frozen=True)
class Config:
    waiters: int
    rate: float
    delay: float
    cap_slack: float
    capacity: float = 10.0
    spawn_batch: int = 25
    cap_factor: float = 1.5


FULL = Config(waiters=1_000, rate=200.0, delay=0.05, cap_slack=1.0)
QUICK = Config(waiters=100, rate=2_000.0, delay=0.01, cap_slack=0.05)


@dataclass
class Row:
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


async def _cancellation(rt: Runtime, acquire: Acquire, cfg: Config) -> dict[str, Any]:
    now = rt.now
    total = cfg.waiters
    granted_at = [math.nan] * total
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

    cpu0 = time.process_time()
    tasks = []
    try:
        for start in range(0, total, cfg.spawn_batch):
            tasks += [
                rt.spawn(waiter, i) for i in range(start, min(start + cfg.spawn_batch, total))
            ]
            await rt.checkpoint()
        await rt.sleep(cfg.delay)
        t_cancel = now()
        pending = [i for i in range(total) if math.isnan(granted_at[i])]
        cancelled = [i for i in pending if i % 2 == 1]
        survivors.update(i for i in pending if i % 2 == 0)
        left = len(survivors)
        for index in cancelled:
            tasks[index].cancel()
        if survivors:
            await done.wait(cfg.cap_factor * len(survivors) / cfg.rate + cfg.cap_slack)
        t_end, cpu1 = now(), time.process_time()
        # The cancelled tasks have had all that time to take their cancellation.
        taken = [tasks[i].done() and tasks[i].cancelled() for i in cancelled]
    finally:
        await rt.cancel(tasks)
    return {
        "t_cancel": t_cancel,
        "t_end": t_end,
        "cpu": cpu1 - cpu0,
        "granted_at": granted_at,
        "cancelled": cancelled,
        "survivors": sorted(survivors),
        "taken": taken,
    }


def measure(loop: Loop, cfg: Config) -> list[Row]:
    rows = []
    for peer in peers.for_workload("cancellation", loop):
        rated = peer.rated
        assert rated is not None
        raw = run_with(
            loop,
            lambda: rated(cfg.rate, cfg.capacity),  # noqa: B023 - called at once
            lambda rt, acquire: _cancellation(rt, acquire, cfg),
        )
        survivors: list[int] = raw["survivors"]
        times = [raw["granted_at"][i] for i in survivors if not math.isnan(raw["granted_at"][i])]
        capped = len(times) < len(survivors)
        wall = (raw["t_end"] if capped or not times else max(times)) - raw["t_cancel"]
        row = Row(
            loop=loop.name,
            name=peer.name,
            waiters=cfg.waiters,
            before_cancel=cfg.waiters - len(survivors) - len(raw["cancelled"]),
            cancelled=len(raw["cancelled"]),
            survivors=len(survivors),
            granted=len(times),
            wall=wall,
            ideal=len(survivors) / cfg.rate,
            throughput=len(times) / wall / cfg.rate if wall > 0 else math.nan,
            not_cancelled=sum(not ok for ok in raw["taken"]),
            capped=capped,
            cpu_seconds=raw["cpu"],
        )
        rows.append(row)
        progress(
            f"cancellation {loop.name} {peer.name}: {row.granted}/{row.survivors} "
            f"{row.throughput:.1%}"
        )
    return rows
