"""5. LLM composite: requests and tokens limited together.

N tasks send requests forever to a provider that allows R requests and T tokens per
rolling second. Every request costs tokens taken from a fixed, seeded lognormal sequence
(mean near T / R), so sometimes the request limit binds and sometimes the token limit.
Measured after a warm-up: requests and tokens against the limits (mean load of the
rolling seconds inside the interval), the most certainly admitted in any rolling second
(whole run, and steady: from the interval on), CPU per 1,000 requests, tasks created and
task steps per request (every task of the loop is counted), over ``samples`` rounds.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

import peers
from _harness import Loop, Runtime, certain_peak, progress, run_with, window_load

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
    ordered = sorted(costs)
    return {
        "mean": statistics.fmean(costs),
        "median": statistics.median(ordered),
        "p99": ordered[int(0.99 * (len(ordered) - 1))],
        "max": ordered[-1],
    }


@dataclass
class Sample:
    loop: str
    name: str
    round_index: int
    requests: int
    tokens: int
    request_share: float
    token_share: float
    peak_requests: int
    peak_tokens: int
    steady_peak_requests: int
    steady_peak_tokens: int
    cpu_ms_per_1k: float
    cpu_load: float
    tasks_per_request: float
    steps_per_request: float


@dataclass
class Row:
    """One (loop, limiter) over its rounds: medians, the worst peaks, and the median over
    rounds of CPU per request over tokenbucket.Limiter's in the same round."""

    loop: str
    name: str
    samples: int
    request_share: float
    token_share: float
    peak_requests: int
    peak_tokens: int
    steady_peak_requests: int
    steady_peak_tokens: int
    cpu_ms_per_1k: float
    cpu_load: float
    cpu_vs_baseline: float
    tasks_per_request: float
    steps_per_request: float
    rounds_over: int
    rounds_over_steady: int

    def over(self, cfg: Config, *, steady: bool) -> bool:
        requests = self.steady_peak_requests if steady else self.peak_requests
        tokens = self.steady_peak_tokens if steady else self.peak_tokens
        return (
            requests > cfg.requests_per_second * cfg.window
            or tokens > cfg.tokens_per_second * cfg.window
        )


async def _workload(rt: Runtime, acquire: Any, costs: list[int], cfg: Config) -> dict[str, Any]:
    clock, woken = time.monotonic, rt.woken
    next_arrival = itertools.count().__next__
    latest: list[float] = []
    earliest: list[float] = []
    granted: list[int] = []

    async def worker() -> None:
        me = rt.current()
        while True:
            cost = costs[next_arrival() % len(costs)]
            woken[me] = math.inf
            called = clock()
            await acquire(cost)
            resumed = clock()
            scheduled = woken[me]
            latest.append(resumed)
            earliest.append(scheduled if scheduled <= resumed else called)
            granted.append(cost)

    workers = [rt.spawn(worker) for _ in range(cfg.tasks)]
    try:
        await rt.checkpoint()
        await rt.sleep(cfg.warmup)
        cpu0, t0, tasks0, steps0, first = (
            time.process_time(),
            clock(),
            rt.counts.tasks,
            rt.counts.steps,
            len(latest),
        )
        await rt.sleep(cfg.duration)
        last, tasks1, steps1, t1, cpu1 = (
            len(latest),
            rt.counts.tasks,
            rt.counts.steps,
            clock(),
            time.process_time(),
        )
    finally:
        await rt.cancel(workers)
    return {
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


def _sample(loop: str, name: str, raw: dict[str, Any], cfg: Config, round_index: int) -> Sample:
    first, last, t0, t1 = raw["first"], raw["last"], raw["t0"], raw["t1"]
    earliest, latest, costs = raw["earliest"], raw["latest"], raw["costs"]
    requests = last - first

    def share(weights: list[int] | None, per_second: int) -> float:
        load = window_load(latest, t0, t1, cfg.window, weights)
        if load is None:  # shorter than a window: the plain count
            load = sum(weights[first:last] if weights else [1] * requests) / (t1 - t0) * cfg.window
        return load / (per_second * cfg.window)

    def peak(weights: list[int] | None, since: int = 0) -> int:
        w = weights[since:] if weights else None
        return certain_peak(earliest[since:], latest[since:], cfg.window, w)

    return Sample(
        loop=loop,
        name=name,
        round_index=round_index,
        requests=requests,
        tokens=sum(costs[first:last]),
        request_share=share(None, cfg.requests_per_second),
        token_share=share(costs, cfg.tokens_per_second),
        peak_requests=peak(None),
        peak_tokens=peak(costs),
        steady_peak_requests=peak(None, first),
        steady_peak_tokens=peak(costs, first),
        cpu_ms_per_1k=raw["cpu"] / requests * 1e6 if requests else math.nan,
        cpu_load=raw["cpu"] / (t1 - t0),
        tasks_per_request=raw["tasks"] / max(requests, 1),
        steps_per_request=raw["steps"] / max(requests, 1),
    )


def _median(values: list[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return statistics.median(known) if known else math.nan


def summarise(samples: list[Sample], cfg: Config) -> list[Row]:
    rows = []
    for loop, name in dict.fromkeys((s.loop, s.name) for s in samples):
        mine = [s for s in samples if s.loop == loop and s.name == name]
        base = {
            s.round_index: s.cpu_ms_per_1k for s in samples if s.loop == loop and s.name == BASELINE
        }
        ratios = [
            s.cpu_ms_per_1k / base[s.round_index]
            for s in mine
            if base.get(s.round_index, math.nan) > 0
        ]
        r_limit, t_limit = cfg.requests_per_second * cfg.window, cfg.tokens_per_second * cfg.window
        rows.append(
            Row(
                loop=loop,
                name=name,
                samples=len(mine),
                request_share=statistics.median(s.request_share for s in mine),
                token_share=statistics.median(s.token_share for s in mine),
                peak_requests=max(s.peak_requests for s in mine),
                peak_tokens=max(s.peak_tokens for s in mine),
                steady_peak_requests=max(s.steady_peak_requests for s in mine),
                steady_peak_tokens=max(s.steady_peak_tokens for s in mine),
                cpu_ms_per_1k=_median([s.cpu_ms_per_1k for s in mine]),
                cpu_load=statistics.median(s.cpu_load for s in mine),
                cpu_vs_baseline=_median(ratios),
                tasks_per_request=statistics.median(s.tasks_per_request for s in mine),
                steps_per_request=statistics.median(s.steps_per_request for s in mine),
                rounds_over=sum(s.peak_requests > r_limit or s.peak_tokens > t_limit for s in mine),
                rounds_over_steady=sum(
                    s.steady_peak_requests > r_limit or s.steady_peak_tokens > t_limit for s in mine
                ),
            )
        )
    return rows


def measure(chosen: list[Loop], cfg: Config) -> list[Sample]:
    costs = token_costs(cfg)
    samples = []
    for loop in chosen:
        found = peers.for_workload("llm", loop)
        for round_index in range(cfg.samples):
            shift = round_index % len(found)
            for peer in found[shift:] + found[:shift]:
                build = peer.llm
                assert build is not None
                raw = run_with(
                    loop,
                    lambda: build(cfg.requests_per_second, cfg.tokens_per_second),  # noqa: B023
                    lambda rt, acquire: _workload(rt, acquire, costs, cfg),
                    count="all",
                    clock=time.monotonic,
                )
                sample = _sample(loop.name, peer.name, raw, cfg, round_index)
                samples.append(sample)
                progress(
                    f"llm {loop.name} {peer.name} round {round_index}: "
                    f"{sample.request_share:.1%} req, {sample.token_share:.1%} tok"
                )
    return samples
