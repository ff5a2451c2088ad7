"""5. LLM composite: requests and tokens limited together.

N tasks send requests forever to a provider that allows R requests and T tokens per
rolling second. Every request costs tokens taken from a fixed, seeded lognormal sequence
(mean near T / R), so sometimes the request limit binds and sometimes the token limit.
Measured after a warm-up: requests and tokens against the limits (mean load of the
rolling seconds inside the interval), the most certainly admitted in any rolling second
(whole run, and steady: from the interval on), CPU per 1,000 requests, tasks created and
task steps per request (every task of the loop is counted), over ``samples`` rounds.
The summary row of a (loop, limiter) holds the medians over its rounds, the worst peaks,
and the median over rounds of CPU per request over tokenbucket.Limiter's in that round.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
import time
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import peers
from _harness import Loop, Runtime, certain_peak, measured, progress, rotated, run_with, window_load

BASELINE = peers.LIMITER


@dataclass(frozen=True)
class Config:
    tasks: int
    warmup: float
    duration: float
    samples: int
    requests_per_second: int = 200
    tokens_per_second: int = 100_000
    # costs[i % len] for arrival i: lognormal(ln(median), sigma), rounded, in [1, cap].
    cost_median: float = 420.0
    cost_sigma: float = 0.6
    cost_cap: int = 16_000
    cost_count: int = 1 << 15
    seed: int = 20_240_611
    window: float = 1.0


FULL = Config(tasks=200, warmup=0.5, duration=4.0, samples=3)
QUICK = Config(tasks=10, warmup=0.03, duration=0.06, samples=1)


def token_costs(cfg: Config) -> list[int]:
    rng = random.Random(cfg.seed)
    mu = math.log(cfg.cost_median)
    return [
        min(max(round(rng.lognormvariate(mu, cfg.cost_sigma)), 1), cfg.cost_cap)
        for _ in range(cfg.cost_count)
    ]


def cost_summary(costs: list[int]) -> dict[str, float]:
    return {"mean": statistics.fmean(costs), "p99": sorted(costs)[int(0.99 * (len(costs) - 1))]}


PEAKS = ("peak_requests", "peak_tokens", "steady_peak_requests", "steady_peak_tokens")
MEDIANS = (
    "request_share",
    "token_share",
    "cpu_ms_per_1k",
    "tasks_per_request",
    "steps_per_request",
)


@dataclass
class Row:
    loop: str
    name: str
    request_share: float
    token_share: float
    peak_requests: int
    peak_tokens: int
    steady_peak_requests: int
    steady_peak_tokens: int
    cpu_ms_per_1k: float
    tasks_per_request: float
    steps_per_request: float
    round_index: int = 0
    cpu_vs_baseline: float = math.nan
    samples: int = 1
    rounds_over: int = 0
    rounds_over_steady: int = 0

    def over(self, cfg: Config, *, steady: bool) -> bool:
        requests = self.steady_peak_requests if steady else self.peak_requests
        tokens = self.steady_peak_tokens if steady else self.peak_tokens
        return (
            requests > cfg.requests_per_second * cfg.window
            or tokens > cfg.tokens_per_second * cfg.window
        )


async def _workload(
    rt: Runtime, acquire: Any, name: str, round_index: int, costs: list[int], cfg: Config
) -> Row:
    clock, woken = rt.clock, rt.woken
    next_arrival = itertools.count().__next__
    grants: list[tuple[float, float, int]] = []  # (earliest admission, resumed, cost)

    async def worker() -> None:
        me = rt.current()
        while True:
            cost = costs[next_arrival() % len(costs)]
            woken[me] = math.inf
            called = clock()
            await acquire(cost)
            resumed = clock()
            scheduled = woken[me]
            grants.append((scheduled if scheduled <= resumed else called, resumed, cost))

    workers = [rt.spawn(worker) for _ in range(cfg.tasks)]
    span = await measured(rt, workers, cfg.warmup, cfg.duration, grants)
    first, last, t0, t1 = span.first, span.last, span.t0, span.t1
    earliest, latest, granted = map(list, zip(*grants[:last], strict=True))
    requests = last - first

    def share(weights: list[int] | None, per_second: int) -> float:
        load = window_load(latest, t0, t1, cfg.window, weights)
        if load is None:  # shorter than a window: the plain count
            load = sum(weights[first:last] if weights else [1] * requests) / (t1 - t0) * cfg.window
        return load / (per_second * cfg.window)

    def peak(weights: list[int] | None, since: int = 0) -> int:
        chosen = weights[since:] if weights else None
        return certain_peak(earliest[since:], latest[since:], cfg.window, chosen)

    return Row(
        loop=rt.name,
        name=name,
        round_index=round_index,
        request_share=share(None, cfg.requests_per_second),
        token_share=share(granted, cfg.tokens_per_second),
        peak_requests=peak(None),
        peak_tokens=peak(granted),
        steady_peak_requests=peak(None, first),
        steady_peak_tokens=peak(granted, first),
        cpu_ms_per_1k=span.cpu / requests * 1e6 if requests else math.nan,
        tasks_per_request=span.tasks / max(requests, 1),
        steps_per_request=span.steps / max(requests, 1),
    )


def _median(values: list[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return statistics.median(known) if known else math.nan


def summarise(samples: list[Row], cfg: Config) -> list[Row]:
    rows = []
    for loop, name in dict.fromkeys((s.loop, s.name) for s in samples):
        mine = [s for s in samples if s.loop == loop and s.name == name]
        base = {
            s.round_index: s.cpu_ms_per_1k for s in samples if (s.loop, s.name) == (loop, BASELINE)
        }
        ratios = [
            s.cpu_ms_per_1k / base[s.round_index]
            for s in mine
            if base.get(s.round_index, math.nan) > 0
        ]
        summary: dict[str, Any] = {f: _median([getattr(s, f) for s in mine]) for f in MEDIANS}
        summary |= {f: max(getattr(s, f) for s in mine) for f in PEAKS}
        rows.append(
            replace(
                mine[0],
                **summary,
                cpu_vs_baseline=_median(ratios),
                samples=len(mine),
                rounds_over=sum(s.over(cfg, steady=False) for s in mine),
                rounds_over_steady=sum(s.over(cfg, steady=True) for s in mine),
            )
        )
    return rows


def measure(chosen: list[Loop], cfg: Config) -> list[Row]:
    """One row per (loop, peer, round), the peers in rotating order."""
    costs = token_costs(cfg)
    samples = []
    for loop in chosen:
        found = peers.for_workload("llm", loop)
        for round_index in range(cfg.samples):
            for peer in rotated(found, round_index):
                build = peer.build("llm", cfg.requests_per_second, cfg.tokens_per_second)
                body = partial(
                    _workload, name=peer.name, round_index=round_index, costs=costs, cfg=cfg
                )
                sample = run_with(loop, build, body, count="all", clock=time.monotonic)
                samples.append(sample)
                progress(
                    f"llm {loop.name} {peer.name} round {round_index}: "
                    f"{sample.request_share:.1%} req, {sample.token_share:.1%} tok"
                )
    return samples
