"""3. Waiter scaling: n tasks each call ``acquire()`` once on one limiter.

Waiters are spawned ``spawn_batch`` at a time with a yield in between, with CPython's
collector paused (its full collections stall the loop for tens of ms with many live
tasks, and no strict limiter can get back refill lost in a stall longer than its burst).
Each run is a **fresh process** (``run_all.py --worker``) so memory left by an earlier
run cannot hide or inflate this one's. Peak memory: the growth of the resident set (the
kernel's high-water mark ``VmHWM``, reset through ``/proc/self/clear_refs`` just before
the first spawn, read after the last grant, minus ``VmRSS`` at the reset).
"""

from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import peers
from _harness import Acquire, Loop, Runtime, SingleShot, loops, progress, run_with, spawn_batched

if TYPE_CHECKING:
    from collections.abc import Callable

MEMORY_METHOD = (
    "peak RSS growth: VmHWM after the last grant (the high-water mark, reset through "
    "/proc/self/clear_refs just before the first spawn) minus VmRSS at that moment"
)


@dataclass(frozen=True, kw_only=True)
class Config(SingleShot):
    counts: tuple[int, ...]
    isolate: bool  # one fresh process per run (else one for all runs)


FULL = Config(
    counts=(10, 100, 1_000, 10_000, 50_000), rate=5000.0, capacity=50.0, cap_slack=1.0, isolate=True
)
QUICK = Config(counts=(10, 100), rate=5000.0, capacity=50.0, cap_slack=0.05, isolate=False)


@dataclass
class Row:
    loop: str
    name: str
    waiters: int
    granted: int
    wall: float
    ideal: float
    spawn: float  # seconds spent spawning, included in wall
    capped: bool
    cpu_us_per_waiter: float
    cpu_load: float
    memory_bytes: int | None

    @property
    def ratio(self) -> float:
        return self.wall / self.ideal if self.ideal > 0 else math.nan


def _status(name: str) -> int | None:
    """A ``kB`` field of /proc/self/status, in bytes (None where there is no /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def memory_probe() -> Callable[[], int | None]:
    """Reset the RSS high-water mark; the function returned gives how far it rose above
    the RSS of this moment (None without Linux's /proc)."""
    base = _status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
    except OSError:
        base = None
    return lambda: None if base is None or (hwm := _status("VmHWM")) is None else max(hwm - base, 0)


async def _waiters(rt: Runtime, acquire: Acquire, name: str, total: int, cfg: Config) -> Row:
    now = rt.now
    done = rt.event()
    granted = 0
    last_grant = math.nan
    ideal = max(total - cfg.capacity, 0) / cfg.rate

    async def waiter(_: int) -> None:
        nonlocal granted, last_grant
        await acquire()
        granted += 1
        if granted == total:
            last_grant = now()
            done.set()

    gc.collect()
    peak = memory_probe()
    gc.disable()
    cpu0, t0 = time.process_time(), now()
    tasks: list[Any] = []
    try:
        await spawn_batched(rt, waiter, total, cfg.spawn_batch, tasks)
        spawned = now() - t0
        await done.wait(cfg.cap_factor * ideal + cfg.cap_slack - spawned)
        wall = (last_grant if done.is_set() else now()) - t0
        cpu, grew = time.process_time() - cpu0, peak()
    finally:
        gc.enable()
        await rt.cancel(tasks)
    return Row(
        loop=rt.name,
        name=name,
        waiters=total,
        granted=granted,
        wall=wall,
        ideal=ideal,
        spawn=spawned,
        capped=not done.is_set(),
        cpu_us_per_waiter=cpu / max(granted, 1) * 1e6,
        cpu_load=cpu / wall if wall > 0 else math.nan,
        memory_bytes=grew,
    )


def measure(chosen: list[Loop], cfg: Config, worker: list[str]) -> list[Row]:
    """Every (loop, peer, count), in a fresh process each (``cfg.isolate``) or all in one
    process; ``worker`` is the command that runs ``worker_main`` on the jobs it reads."""
    jobs = [
        (loop.name, peer.name, n)
        for loop in chosen
        for peer in peers.for_workload("waiters", loop)
        for n in cfg.counts
    ]
    rows = []
    for batch in [[job] for job in jobs] if cfg.isolate else [jobs]:
        done = subprocess.run(
            worker, input=json.dumps(batch), capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"waiters worker failed on {batch}:\n{done.stderr}")
        for row in (Row(**fields) for fields in json.loads(done.stdout)):
            progress(f"waiters {row.loop} {row.name} {row.waiters:,}: {row.wall:.2f} s")
            rows.append(row)
    return rows


def worker_main(cfg: Config) -> int:
    """Run the jobs read from stdin (JSON: loop, peer, count) here; print the rows."""
    rows = []
    for loop_name, name, n in json.load(sys.stdin):
        loop = next(loop for loop in loops() if loop.name == loop_name)
        build = peers.by_name(name).build("waiters", cfg.rate, cfg.capacity)
        rows.append(asdict(run_with(loop, build, partial(_waiters, name=name, total=n, cfg=cfg))))
    json.dump(rows, sys.stdout)
    return 0
