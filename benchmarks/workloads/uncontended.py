"""1. Uncontended acquire: ns per ``await acquire()`` when capacity never runs out.

A sample times the floor (an awaited empty coroutine), the candidate and the floor again,
back to back in one fresh loop; the samples of all candidates are interleaved over
``reps`` rounds, in rotating order. The floor is timed over ``floor_ops`` awaits; a
candidate over as many as fit in ``budget`` seconds after a short calibration (between
``min_ops`` and ``max_ops``), so a peer at 40 us per call does not take minutes.
ns/op is the minimum over the samples; ratio the median of candidate / mean(floor
before, floor after); vs_tokenbucket that ratio over TokenBucket's on the same loop.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import peers
from _harness import Acquire, Loop, progress, rotated, run_with, time_ops

FLOOR = "floor: empty async def"


@dataclass(frozen=True)
class Config:
    floor_ops: int
    max_ops: int
    min_ops: int
    budget: float
    reps: int


FULL = Config(floor_ops=100_000, max_ops=100_000, min_ops=2_000, budget=0.1, reps=7)
QUICK = Config(floor_ops=3_000, max_ops=3_000, min_ops=200, budget=0.004, reps=2)


@dataclass
class Row:
    loop: str
    name: str
    ns_per_op: float
    ratio: float
    ratio_of_minima: float
    ops: int
    samples: list[float]  # ns/op of each sample
    paired_ratios: list[float]
    vs_tokenbucket: float = math.nan


async def noop() -> None:
    """The floor: an empty coroutine function."""


async def _sample(acquire: Acquire, cfg: Config) -> tuple[float, float, float, int]:
    """[floor, candidate, floor] in ns/op back to back, and the candidate's op count."""
    warm = max(cfg.min_ops // 10, 100)
    await time_ops(noop, warm)
    estimate = await time_ops(acquire, warm)
    ops = int(min(cfg.max_ops, max(cfg.min_ops, cfg.budget * 1e9 / max(estimate, 1.0))))
    before = await time_ops(noop, cfg.floor_ops)
    candidate = await time_ops(acquire, ops)
    return before, candidate, await time_ops(noop, cfg.floor_ops), ops


def measure(loop: Loop, cfg: Config) -> list[Row]:
    subjects = peers.for_workload("uncontended", loop)
    floor: list[float] = []
    samples: dict[str, list[float]] = {p.name: [] for p in subjects}
    paired: dict[str, list[float]] = {p.name: [] for p in subjects}
    ops: dict[str, int] = {}
    for rep in range(cfg.reps):
        for peer in rotated(subjects, rep):
            before, candidate, after, ops[peer.name] = run_with(
                loop, peer.build("uncontended"), lambda _, acquire: _sample(acquire, cfg)
            )
            floor += (before, after)
            samples[peer.name].append(candidate)
            paired[peer.name].append(candidate / statistics.fmean((before, after)))
    best = min(floor)
    rows = [Row(loop.name, FLOOR, best, 1.0, 1.0, cfg.floor_ops, floor, [])]
    for name, times in samples.items():
        low, ratio = min(times), statistics.median(paired[name])
        rows.append(Row(loop.name, name, low, ratio, low / best, ops[name], times, paired[name]))
    ours = next((r.ratio for r in rows if r.name == peers.TOKENBUCKET), math.nan)
    for row in rows[1:]:
        row.vs_tokenbucket = row.ratio / ours
    progress(f"uncontended on {loop.name} done")
    return rows
