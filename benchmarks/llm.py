"""LLM-style composite workload: requests and tokens limited together, against peers.

Usage::

    python benchmarks/llm.py            # full run, about two and a half minutes
    python benchmarks/llm.py --quick    # smoke run for CI, a few seconds
    python benchmarks/llm.py --json benchmarks/results/llm.json

N tasks (200; ``--quick``: 30) send requests forever to one provider that allows R
requests and T tokens per rolling second (200 and 100,000). Every request costs a number
of tokens taken from a fixed, seeded lognormal sequence (mean near T / R = 500), so
sometimes the request limit binds and sometimes the token limit does. Each limiter is
used the way its users write it:

1. ``tokenbucket.Limiter``: both limits in one ``async with limiter.acquire(tokens=c)``;
2. two ``aiolimiter.AsyncLimiter`` (and, to separate the pattern from the library, two
   ``tokenbucket.TokenBucket``) awaited with ``asyncio.gather``;
3. two ``pyrate_limiter.Limiter`` (v4 API), awaited one after the other;
4. ``limits``' moving window, polled with ``hit`` and slept until its reset time.

Measured, per (limiter, event loop), after a warm-up: achieved requests/s and tokens/s
against the limits, the most requests and tokens admitted in any rolling second (a
sliding-window limit must never exceed), CPU per 1,000 requests, tasks created and
task steps per request. Every run gets a fresh event loop; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import importlib
import importlib.metadata
import itertools
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

import tokenbucket as tb

if TYPE_CHECKING:
    from types import ModuleType

T = TypeVar("T")

AcquireFn = Callable[[int], Awaitable[None]]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def _optional_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


aiolimiter = _optional_module("aiolimiter")
pyrate_limiter = _optional_module("pyrate_limiter")
limits_aio_storage = _optional_module("limits.aio.storage")
limits_aio_strategies = _optional_module("limits.aio.strategies")
limits_items = _optional_module("limits")
throttled_aio = _optional_module("throttled.asyncio")
uvloop = _optional_module("uvloop")


# -- configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Sizes of one run (``--quick`` or full); the limits and the costs are shared."""

    mode: str
    tasks: int
    warmup: float
    duration: float
    samples: int
    requests_per_second: int = 200
    tokens_per_second: int = 100_000
    # The token cost of the request with arrival number i is costs[i % len(costs)],
    # drawn once from lognormal(ln(cost_median), cost_sigma), rounded, clipped to
    # [1, cost_cap], with random.Random(seed): mean ~500 = T / R.
    cost_median: float = 420.0
    cost_sigma: float = 0.6
    cost_cap: int = 16_000
    cost_count: int = 1 << 15
    seed: int = 20_240_611
    # Peaks are counted in rolling windows of this many seconds (the limits' period).
    window: float = 1.0
    # The shortest sleep of the `limits` polling loop (when its reset time has passed).
    limits_min_poll: float = 0.001


FULL = Config(mode="full", tasks=200, warmup=0.5, duration=4.0, samples=3)
QUICK = Config(mode="quick", tasks=30, warmup=0.15, duration=0.3, samples=1)


def token_costs(cfg: Config) -> list[int]:
    """The fixed cost sequence: the same for every limiter, loop and sample."""
    rng = random.Random(cfg.seed)
    mu = math.log(cfg.cost_median)
    return [
        min(max(round(rng.lognormvariate(mu, cfg.cost_sigma)), 1), cfg.cost_cap)
        for _ in range(cfg.cost_count)
    ]


# -- limiters under test ---------------------------------------------------------------


def _nothing() -> None:
    """No clean-up needed."""


@dataclass(frozen=True)
class Subject:
    """One limiter set up for the workload: ``acquire(cost)`` returns once one request
    of ``cost`` tokens may be sent; ``close()`` runs after every task has ended."""

    acquire: AcquireFn
    close: Callable[[], None] = _nothing


@dataclass(frozen=True)
class Candidate:
    """A limiter under test; ``make`` runs inside the fresh event loop of each run."""

    name: str
    pattern: str
    make: Callable[[Config], Subject]


def _tb_limiter(cfg: Config) -> Subject:
    limiter = tb.Limiter(
        requests_per_second=cfg.requests_per_second, tokens_per_second=cfg.tokens_per_second
    )

    async def acquire(cost: int) -> None:
        async with limiter.acquire(tokens=cost):
            pass  # the request would be sent here

    return Subject(acquire)


def _tb_gather(cfg: Config) -> Subject:
    # Configured like the aiolimiter pair below: a burst of one second's worth.
    requests = tb.TokenBucket(rate=cfg.requests_per_second, capacity=cfg.requests_per_second)
    tokens = tb.TokenBucket(rate=cfg.tokens_per_second, capacity=cfg.tokens_per_second)

    async def acquire(cost: int) -> None:
        await asyncio.gather(requests.acquire(1), tokens.acquire(cost))

    return Subject(acquire)


def _aiolimiter_gather(cfg: Config) -> Subject:
    assert aiolimiter is not None
    requests = aiolimiter.AsyncLimiter(cfg.requests_per_second, 1.0)
    tokens = aiolimiter.AsyncLimiter(cfg.tokens_per_second, 1.0)

    async def acquire(cost: int) -> None:
        await asyncio.gather(requests.acquire(1), tokens.acquire(cost))

    return Subject(acquire)


def _pyrate(cfg: Config) -> Subject:
    # One Limiter per dimension: a bucket's rates all count the same item weights, so
    # one bucket cannot hold "1 per request" and "cost per request" at once.
    assert pyrate_limiter is not None
    second = pyrate_limiter.Duration.SECOND
    requests = pyrate_limiter.Limiter(
        pyrate_limiter.InMemoryBucket([pyrate_limiter.Rate(cfg.requests_per_second, second)])
    )
    tokens = pyrate_limiter.Limiter(
        pyrate_limiter.InMemoryBucket([pyrate_limiter.Rate(cfg.tokens_per_second, second)])
    )

    async def acquire(cost: int) -> None:
        # Blocking by default (v4): waits, then returns True.
        if not await requests.try_acquire_async("requests"):
            raise RuntimeError("pyrate-limiter refused a request")
        if not await tokens.try_acquire_async("tokens", weight=cost):
            raise RuntimeError(f"pyrate-limiter refused {cost} tokens")

    def close() -> None:
        requests.close()
        tokens.close()

    return Subject(acquire, close)


def _limits_polled(cfg: Config, strategy: str = "MovingWindowRateLimiter") -> Subject:
    assert limits_items is not None
    assert limits_aio_storage is not None
    assert limits_aio_strategies is not None
    limiter = getattr(limits_aio_strategies, strategy)(limits_aio_storage.MemoryStorage())
    requests = limits_items.RateLimitItemPerSecond(cfg.requests_per_second)
    tokens = limits_items.RateLimitItemPerSecond(cfg.tokens_per_second)
    floor = cfg.limits_min_poll

    async def take(item: Any, cost: int) -> None:
        # `limits` never waits: poll, sleeping until the oldest entry in the window
        # expires (get_window_stats' reset_time, wall-clock seconds), at least `floor`.
        while not await limiter.hit(item, "llm", cost=cost):
            reset_time, _remaining = await limiter.get_window_stats(item, "llm")
            await asyncio.sleep(max(reset_time - time.time(), floor))

    async def acquire(cost: int) -> None:
        await take(requests, 1)
        await take(tokens, cost)

    return Subject(acquire)


def _limits_counter(cfg: Config) -> Subject:
    return _limits_polled(cfg, "SlidingWindowCounterRateLimiter")


def _throttled(cfg: Config) -> Subject:
    # Wait-and-retry mode (a timeout), GCRA as in throttled-py's own wait-and-retry
    # example; per_sec(n) holds one second's worth, like the aiolimiter pair.
    assert throttled_aio is not None
    aio = throttled_aio

    def make(limit: int) -> Any:
        return aio.Throttled(
            key="llm",
            using=aio.RateLimiterType.GCRA.value,
            quota=aio.rate_limiter.per_sec(limit),
            store=aio.store.MemoryStore(),
            timeout=600.0,
        )

    requests = make(cfg.requests_per_second)
    tokens = make(cfg.tokens_per_second)

    async def acquire(cost: int) -> None:
        if (await requests.limit(cost=1)).limited:
            raise RuntimeError("throttled-py gave up waiting for a request")
        if (await tokens.limit(cost=cost)).limited:
            raise RuntimeError(f"throttled-py gave up waiting for {cost} tokens")

    return Subject(acquire)


# Peers that cannot express this workload: (row name, reason), shown as n/a rows.
NOT_APPLICABLE = [
    (
        "asyncio_throttle.Throttler",
        "no cost/weight argument: cannot charge a request's tokens",
    ),
]


def _major(distribution: str) -> int:
    try:
        return int(importlib.metadata.version(distribution).split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return 0


def candidates() -> tuple[list[Candidate], list[str]]:
    """The limiters to run, and a note for each peer left out."""
    found = [
        Candidate(
            "tokenbucket.Limiter",
            "one `async with limiter.acquire(tokens=c)` (exact sliding windows)",
            _tb_limiter,
        ),
    ]
    notes: list[str] = []
    if aiolimiter is not None:
        found.append(
            Candidate(
                "aiolimiter.AsyncLimiter x2",
                "`gather(req.acquire(1), tok.acquire(c))`, AsyncLimiter(R, 1) and (T, 1)",
                _aiolimiter_gather,
            )
        )
    else:
        notes.append("aiolimiter is not installed: its row is left out.")
    found.append(
        Candidate(
            "tokenbucket.TokenBucket x2",
            "`gather(req.acquire(1), tok.acquire(c))`, TokenBucket(R, R) and (T, T)",
            _tb_gather,
        )
    )
    if pyrate_limiter is not None and _major("pyrate-limiter") >= 4:
        found.append(
            Candidate(
                "pyrate_limiter.Limiter x2",
                "`await req.try_acquire_async(...)` then `await tok.try_acquire_async(..., "
                "weight=c)`, InMemoryBucket([Rate(R, SECOND)]) and ([Rate(T, SECOND)]), "
                "default buffer_ms=50",
                _pyrate,
            )
        )
    elif pyrate_limiter is not None:
        notes.append("pyrate-limiter < 4 is installed (its v3 API raises instead of waiting).")
    else:
        notes.append("pyrate-limiter is not installed: its row is left out.")
    if limits_aio_strategies is not None and limits_aio_storage is not None:
        found.append(
            Candidate(
                "limits MovingWindow (polled)",
                "`while not await hit(item, cost=c): sleep(reset - now)`, requests then "
                "tokens, one MemoryStorage",
                _limits_polled,
            )
        )
        found.append(
            Candidate(
                "limits SlidingWindowCounter (polled)",
                "the same polling loop on SlidingWindowCounterRateLimiter",
                _limits_counter,
            )
        )
    else:
        notes.append("limits is not installed: its rows are left out.")
    if throttled_aio is not None:
        found.append(
            Candidate(
                "throttled.asyncio.Throttled x2",
                "`await req.limit(cost=1)` then `await tok.limit(cost=c)`, "
                "Throttled(using=GCRA, quota=per_sec(R), timeout=600) and (T)",
                _throttled,
            )
        )
    else:
        notes.append("throttled-py is not installed: its row is left out.")
    return found, notes


def loop_kinds() -> list[tuple[str, LoopFactory]]:
    kinds: list[tuple[str, LoopFactory]] = [("asyncio", asyncio.new_event_loop)]
    if uvloop is not None:
        kinds.append(("uvloop", uvloop.new_event_loop))
    return kinds


def run_fresh(factory: LoopFactory, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` in a new event loop; fail if it leaves a task behind."""
    gc.collect()
    loop = factory()
    try:
        result = loop.run_until_complete(main())
        leftovers = asyncio.all_tasks(loop)
        if leftovers:  # pragma: no cover - a bug in this file
            for task in leftovers:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            raise RuntimeError(f"{len(leftovers)} tasks leaked out of a timed run")
        loop.run_until_complete(loop.shutdown_asyncgens())
        # `limits`' MemoryStorage expires entries with asyncio.to_thread.
        loop.run_until_complete(loop.shutdown_default_executor())
        return result
    finally:
        loop.close()


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _progress(message: str) -> None:
    if sys.stderr.isatty():
        print(f"  {message}", file=sys.stderr, flush=True)


# -- instrumentation -------------------------------------------------------------------


class _Counts:
    """Tasks created and task steps taken, in the whole event loop."""

    __slots__ = ("steps", "tasks")

    def __init__(self) -> None:
        self.tasks = 0
        self.steps = 0


class _CountedCoroutine(Coroutine[Any, Any, Any]):
    """Wraps a task's coroutine and counts every step the task makes.

    A task drives its coroutine only through ``send`` (its first step and every wake-up)
    and ``throw`` (an exception such as a cancellation delivered into it).
    """

    __slots__ = ("_coro", "_counts")

    def __init__(self, coro: Coroutine[Any, Any, Any], counts: _Counts) -> None:
        self._coro = coro
        self._counts = counts

    def send(self, value: Any) -> Any:
        self._counts.steps += 1
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None, /) -> Any:
        self._counts.steps += 1
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)  # the old 3-argument form; Task never uses it

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        # Required by the Coroutine ABC; a Task drives send/throw and never calls this.
        return self._coro.__await__()


def _count_tasks(loop: asyncio.AbstractEventLoop, counts: _Counts) -> None:
    """Count every task created in ``loop`` from now on (``asyncio.gather`` and library
    tasks included) and every step those tasks make."""

    def factory(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
    ) -> asyncio.Task[Any]:
        counts.tasks += 1
        return asyncio.Task(_CountedCoroutine(coro, counts), loop=loop, **kwargs)

    loop.set_task_factory(factory)  # type: ignore[arg-type]


def _note_wakeups(loop: asyncio.AbstractEventLoop, woken: dict[object, float]) -> None:
    """Make ``loop.call_soon`` note (in ``time.monotonic()``) when a wake-up of a task in
    ``woken`` is scheduled.

    A completed future schedules the wake-up of the task awaiting it through
    ``loop.call_soon(task_wakeup, ...)``, looked up on the loop object, so an instance
    attribute intercepts it on asyncio and uvloop alike.
    """
    original = loop.call_soon
    clock = time.monotonic

    def call_soon(callback: Any, *args: Any, context: Any = None) -> asyncio.Handle:
        owner = getattr(callback, "__self__", None)
        if owner is not None and owner in woken:
            woken[owner] = clock()
        return original(callback, *args, context=context)

    loop.call_soon = call_soon  # type: ignore[method-assign, assignment]


def certain_peak(
    earliest: list[float], latest: list[float], weights: list[int], window: float
) -> int:
    """The largest total weight of admissions certainly inside one window [t, t + window).

    Admission ``i`` happened at an unknown instant in ``[earliest[i], latest[i]]``. For
    each start ``t = earliest[a]`` this adds the weights of the admissions with
    ``earliest >= t`` and ``latest < t + window``: a lower bound on what was admitted in
    that window, tight when the bounds are close. With ``earliest == latest`` it is the
    plain peak of a list of timestamps.
    """
    rows = sorted(zip(earliest, latest, weights, strict=True))
    starts = [row[0] for row in rows]
    spread = max((end - start for start, end, _ in rows), default=0.0)
    prefix = [0, *itertools.accumulate(row[2] for row in rows)]
    best = 0
    end_index = 0
    for first, start in enumerate(starts):
        limit = start + window
        while end_index < len(starts) and starts[end_index] < limit:
            end_index += 1
        total = prefix[end_index] - prefix[first]
        # Only admissions that started within `spread` of the limit can end past it.
        index = end_index - 1
        while index >= first and starts[index] >= limit - spread:
            if rows[index][1] >= limit:
                total -= rows[index][2]
            index -= 1
        best = max(best, total)
    return best


def mean_window_load(
    times: list[float], weights: list[int], t0: float, t1: float, window: float
) -> float:
    """The mean, over every window ``[u, u + window)`` inside ``[t0, t1)``, of the weight
    admitted in it (the plain weight per ``window`` when ``t1 - t0 <= window``).

    An exact sliding window under saturation grants in bursts that repeat once per
    window; a plain count over ``[t0, t1)`` then depends on whether a burst falls just
    inside or just outside an edge, while every rolling window holds the same amount.
    """
    span = t1 - t0 - window
    if span <= 0:
        inside = sum(w for t, w in zip(times, weights, strict=True) if t0 <= t < t1)
        return inside / (t1 - t0) * window
    total = 0.0
    for t, w in zip(times, weights, strict=True):
        # The starts u in [t0, t1 - window] with u <= t < u + window.
        overlap = min(t, t1 - window) - max(t0, t - window)
        if overlap > 0:
            total += w * overlap
    return total / span


# -- the workload ----------------------------------------------------------------------


async def _workload(make: Callable[[Config], Subject], costs: list[int], cfg: Config) -> Any:
    loop = asyncio.get_running_loop()
    clock = time.monotonic
    counts = _Counts()
    _count_tasks(loop, counts)
    woken: dict[object, float] = {}
    _note_wakeups(loop, woken)
    subject = make(cfg)
    acquire = subject.acquire
    next_arrival = itertools.count().__next__
    size = len(costs)
    latest: list[float] = []
    earliest: list[float] = []
    granted: list[int] = []

    async def worker() -> None:
        me = asyncio.current_task()
        while True:
            cost = costs[next_arrival() % size]
            woken[me] = math.inf
            called = clock()
            await acquire(cost)
            resumed = clock()
            # The admission happened after the last wake-up was scheduled or, with no
            # wake-up (acquire returned without waiting), after the call.
            scheduled = woken[me]
            latest.append(resumed)
            earliest.append(scheduled if scheduled <= resumed else called)
            granted.append(cost)

    workers = [loop.create_task(worker()) for _ in range(cfg.tasks)]
    start = clock()
    try:
        await asyncio.sleep(0)  # every worker has arrived once
        await asyncio.sleep(cfg.warmup)
        cpu0 = time.process_time()
        t0 = clock()
        tasks0, steps0 = counts.tasks, counts.steps
        first = len(latest)
        await asyncio.sleep(cfg.duration)
        last = len(latest)
        tasks1, steps1 = counts.tasks, counts.steps
        t1 = clock()
        cpu1 = time.process_time()
    finally:
        await _cancel_all(workers)
        # Library tasks (limits' expiry timer) are not ours to leave running.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        await _cancel_all(others)
        subject.close()
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


@dataclass
class Sample:
    """One run of one limiter on one loop.

    ``requests``/``tokens`` were admitted between the two clock readings ``duration``
    apart. ``request_share``/``token_share`` are the mean load of the rolling windows
    inside that interval over the limit (see ``mean_window_load``); ``*_share_plain`` are
    the plain admitted / duration / limit. ``peak_*`` are the most certainly admitted in
    any rolling ``window`` over the whole run (start included), ``steady_peak_*`` the
    same among the admissions of the measured interval, and ``resumed_peak_*`` the
    whole-run peaks counted from the instants the tasks resumed (an upper reading)."""

    loop: str
    name: str
    round_index: int
    duration: float
    requests: int
    tokens: int
    request_share: float
    token_share: float
    request_share_plain: float
    token_share_plain: float
    peak_requests: int
    peak_tokens: int
    steady_peak_requests: int
    steady_peak_tokens: int
    resumed_peak_requests: int
    resumed_peak_tokens: int
    cpu_seconds: float
    cpu_ms_per_1k: float
    cpu_load: float
    tasks_per_request: float
    steps_per_request: float
    total_requests: int


def run_sample(
    loop_name: str,
    factory: LoopFactory,
    candidate: Candidate,
    costs: list[int],
    cfg: Config,
    round_index: int,
) -> Sample:
    raw = run_fresh(factory, functools.partial(_workload, candidate.make, costs, cfg))
    sample = summarise_sample(loop_name, candidate.name, raw, cfg, round_index)
    _progress(
        f"{loop_name} {candidate.name} round {round_index}: {sample.request_share:.1%} req, "
        f"{sample.token_share:.1%} tok, {sample.cpu_ms_per_1k:.1f} ms/1k"
    )
    return sample


def summarise_sample(
    loop_name: str, name: str, raw: dict[str, Any], cfg: Config, round_index: int
) -> Sample:
    """The figures of one run, from what ``_workload`` recorded."""
    first, last = raw["first"], raw["last"]
    earliest, latest, granted = raw["earliest"], raw["latest"], raw["costs"]
    ones = [1] * len(granted)
    t0, t1 = raw["t0"], raw["t1"]
    duration = t1 - t0
    requests = last - first
    tokens = sum(granted[first:last])
    window = cfg.window
    r_window = cfg.requests_per_second * window
    t_window = cfg.tokens_per_second * window
    return Sample(
        loop=loop_name,
        name=name,
        round_index=round_index,
        duration=duration,
        requests=requests,
        tokens=tokens,
        request_share=mean_window_load(latest, ones, t0, t1, window) / r_window,
        token_share=mean_window_load(latest, granted, t0, t1, window) / t_window,
        request_share_plain=requests / duration / cfg.requests_per_second,
        token_share_plain=tokens / duration / cfg.tokens_per_second,
        peak_requests=certain_peak(earliest, latest, ones, window),
        peak_tokens=certain_peak(earliest, latest, granted, window),
        steady_peak_requests=certain_peak(earliest[first:], latest[first:], ones[first:], window),
        steady_peak_tokens=certain_peak(earliest[first:], latest[first:], granted[first:], window),
        resumed_peak_requests=certain_peak(latest, latest, ones, window),
        resumed_peak_tokens=certain_peak(latest, latest, granted, window),
        cpu_seconds=raw["cpu"],
        cpu_ms_per_1k=raw["cpu"] / requests * 1e6 if requests else math.nan,
        cpu_load=raw["cpu"] / duration,
        tasks_per_request=raw["tasks"] / max(requests, 1),
        steps_per_request=raw["steps"] / max(requests, 1),
        total_requests=last,
    )


@dataclass
class Row:
    """One (loop, limiter) over its samples: medians of the rates and costs, the worst
    (largest) peaks, and ``cpu_vs_baseline``: the median over rounds of this limiter's
    CPU per request over tokenbucket.Limiter's in the same round and loop."""

    loop: str
    name: str
    pattern: str
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


BASELINE = "tokenbucket.Limiter"


def _median(values: list[float]) -> float:
    """The median of the values that are numbers; NaN when there are none."""
    known = [value for value in values if not math.isnan(value)]
    return statistics.median(known) if known else math.nan


def summarise(samples: list[Sample], found: list[Candidate], cfg: Config) -> list[Row]:
    r_limit = cfg.requests_per_second * cfg.window
    t_limit = cfg.tokens_per_second * cfg.window
    rows: list[Row] = []
    loops = list(dict.fromkeys(s.loop for s in samples))
    for loop_name in loops:
        base = {
            s.round_index: s.cpu_ms_per_1k
            for s in samples
            if s.loop == loop_name and s.name == BASELINE
        }
        for candidate in found:
            mine = [s for s in samples if s.loop == loop_name and s.name == candidate.name]
            if not mine:
                continue
            ratios = [
                s.cpu_ms_per_1k / base[s.round_index]
                for s in mine
                if base.get(s.round_index, math.nan) > 0 and not math.isnan(s.cpu_ms_per_1k)
            ]
            rows.append(
                Row(
                    loop=loop_name,
                    name=candidate.name,
                    pattern=candidate.pattern,
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
                    rounds_over=sum(
                        s.peak_requests > r_limit or s.peak_tokens > t_limit for s in mine
                    ),
                    rounds_over_steady=sum(
                        s.steady_peak_requests > r_limit or s.steady_peak_tokens > t_limit
                        for s in mine
                    ),
                )
            )
    return rows


# -- the report ------------------------------------------------------------------------


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment(cfg: Config) -> dict[str, Any]:
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "tokenbucket": tb.__version__,
        "aiolimiter": _version("aiolimiter"),
        "pyrate-limiter": _version("pyrate-limiter"),
        "limits": _version("limits"),
        "throttled-py": _version("throttled-py"),
        "uvloop": _version("uvloop"),
        "mode": cfg.mode,
    }


def header_line(env: dict[str, Any]) -> str:
    return (
        f"tokenbucket LLM workload ({env['mode']}): {env['date']} | {env['python']} | "
        f"{env['platform']} | {env['cpus']} CPUs | tokenbucket {env['tokenbucket']} | "
        f"aiolimiter {env['aiolimiter']} | pyrate-limiter {env['pyrate-limiter']} | "
        f"limits {env['limits']} | throttled-py {env['throttled-py']} | uvloop {env['uvloop']}"
    )


def markdown_table(headers: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        padded = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [("-" * (w - 1) + ":") if i in right else "-" * w for i, w in enumerate(widths)]
    return "\n".join([line(headers), "| " + " | ".join(rule) + " |", *map(line, rows)])


def _peak(peak: int, limit: float) -> str:
    text = f"{peak:,}"
    if peak > limit:
        text += f" (+{(peak - limit) / limit:.0%})"
    return text


def _number(value: float, spec: str, unit: str = "") -> str:
    return "n/a" if math.isnan(value) else f"{value:{spec}}{unit}"


def results_table(
    rows: list[Row],
    cfg: Config,
    not_applicable: list[tuple[str, str]] | dict[str, list[tuple[str, str]]] | None = None,
) -> str:
    """The results, loop by loop; ``not_applicable`` adds a row ``(name, reason)`` for
    each peer that cannot run the workload, on every loop or (a dict) per loop."""
    r_limit = cfg.requests_per_second * cfg.window
    t_limit = cfg.tokens_per_second * cfg.window
    body: list[list[str]] = []
    for loop_name in dict.fromkeys(r.loop for r in rows):
        body += [
            [
                r.loop,
                r.name,
                f"{r.request_share:.1%}",
                f"{r.token_share:.1%}",
                _peak(r.peak_requests, r_limit),
                _peak(r.steady_peak_requests, r_limit),
                _peak(r.peak_tokens, t_limit),
                _peak(r.steady_peak_tokens, t_limit),
                _number(r.cpu_ms_per_1k, ".1f"),
                _number(r.cpu_vs_baseline, ".2f", "x"),
                f"{r.tasks_per_request:.2f}",
                f"{r.steps_per_request:.2f}",
            ]
            for r in rows
            if r.loop == loop_name
        ]
        missing = (
            not_applicable.get(loop_name, [])
            if isinstance(not_applicable, dict)
            else not_applicable or []
        )
        body += [[loop_name, name, f"n/a: {reason}", *([""] * 9)] for name, reason in missing]
    headers = [
        "loop",
        "limiter",
        "req % of R",
        "tok % of T",
        "peak req: run",
        "steady",
        "peak tok: run",
        "steady",
        "CPU ms / 1k req",
        "CPU vs Limiter",
        "tasks / req",
        "task steps / req",
    ]
    return markdown_table(headers, body, set(range(2, 12)))


def _over(row: Row, cfg: Config, steady: bool) -> bool:
    requests = row.steady_peak_requests if steady else row.peak_requests
    tokens = row.steady_peak_tokens if steady else row.peak_tokens
    return (
        requests > cfg.requests_per_second * cfg.window
        or tokens > cfg.tokens_per_second * cfg.window
    )


def _by_name(rows: Iterable[Row]) -> str:
    """'a (asyncio, uvloop); b (asyncio)' for the rows given."""
    loops: dict[str, list[str]] = {}
    for row in rows:
        loops.setdefault(row.name, []).append(row.loop)
    return "; ".join(f"{name} ({', '.join(names)})" for name, names in loops.items())


def reading(rows: list[Row], cfg: Config) -> str:
    """A short reading of this run's table, written from its numbers."""
    parts: list[str] = []
    for row in rows:
        if row.name != BASELINE:
            continue
        if _over(row, cfg, steady=True):
            verdict = (
                "EXCEEDED a limit in some rolling second of the measured interval in "
                f"{row.rounds_over_steady} of {row.samples} rounds"
            )
        elif _over(row, cfg, steady=False):
            verdict = (
                "exceeded a limit only in the opening second, in "
                f"{row.rounds_over} of {row.samples} rounds"
            )
        else:
            verdict = "never exceeded either limit in any rolling second"
        parts.append(
            f"On {row.loop}, tokenbucket.Limiter used {row.request_share:.1%} of R and "
            f"{row.token_share:.1%} of T, {verdict}, at {_number(row.cpu_ms_per_1k, '.1f')} "
            f"ms CPU per 1,000 requests with {row.tasks_per_request:.2f} tasks and "
            f"{row.steps_per_request:.2f} task steps per request."
        )
    steady = _by_name(r for r in rows if r.name != BASELINE and _over(r, cfg, steady=True))
    if steady:
        parts.append(
            "Over a limit in some rolling second after the warm-up (what a provider with a "
            f"sliding window would reject): {steady}. These patterns take the two limits one "
            "after the other (or in two tasks): a request holds its request unit while it "
            "waits for tokens and goes out later than it was counted, in a bunch with others."
        )
    opening = _by_name(
        r
        for r in rows
        if r.name != BASELINE and _over(r, cfg, steady=False) and not _over(r, cfg, steady=True)
    )
    if opening:
        parts.append(f"Over a limit only in the opening second: {opening}.")
    if any("gather" in r.pattern for r in rows):
        parts.append(
            "The gather rows are token buckets holding one second's worth (what "
            "`AsyncLimiter(R, 1)` means), so their opening second may reach twice a limit "
            "by design."
        )
    costly = [r for r in rows if r.name != BASELINE and not math.isnan(r.cpu_vs_baseline)]
    if costly:
        low = min(costly, key=lambda r: r.cpu_vs_baseline)
        high = max(costly, key=lambda r: r.cpu_vs_baseline)
        parts.append(
            f"The peers spent {low.cpu_vs_baseline:.1f}x ({low.name}, {low.loop}) to "
            f"{high.cpu_vs_baseline:.1f}x ({high.name}, {high.loop}) tokenbucket.Limiter's "
            "CPU per request."
        )
    spawning = [r for r in rows if r.tasks_per_request >= 0.5]
    if spawning:
        names = ", ".join(dict.fromkeys(f"{r.name} ({r.tasks_per_request:.1f})" for r in spawning))
        parts.append(f"Tasks created per request: {names}.")
    return " ".join(parts)


def cost_summary(costs: list[int]) -> dict[str, float]:
    ordered = sorted(costs)
    return {
        "mean": statistics.fmean(costs),
        "median": statistics.median(ordered),
        "p99": ordered[int(0.99 * (len(ordered) - 1))],
        "max": ordered[-1],
    }


@dataclass
class Results:
    environment: dict[str, Any]
    config: dict[str, Any]
    costs: dict[str, float]
    notes: list[str]
    patterns: dict[str, str]
    rows: list[Row] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)


def report(results: Results, cfg: Config) -> str:
    costs = results.costs
    parts = [
        header_line(results.environment),
        "",
        f"## LLM-style workload: {cfg.tasks} tasks, R = {cfg.requests_per_second:,} "
        f"requests/s and T = {cfg.tokens_per_second:,} tokens/s, {cfg.duration:g} s "
        f"measured after {cfg.warmup:g} s warm-up, {cfg.samples} round(s)",
        "",
        f"Token costs (fixed, seed {cfg.seed}): mean {costs['mean']:.0f}, median "
        f"{costs['median']:.0f}, p99 {costs['p99']:.0f}, max {costs['max']:.0f}. "
        "% of R / T: mean load of the rolling seconds inside the measured interval; "
        "peaks: most requests / tokens certainly admitted in one rolling second, over the "
        "whole run (run) or the measured interval (steady), worst round; every other "
        "column: median over rounds; CPU vs Limiter: paired with tokenbucket.Limiter's "
        "run of the same round.",
        "",
        results_table(results.rows, cfg, NOT_APPLICABLE),
        "",
    ]
    parts += [f"- {name}: {pattern}" for name, pattern in results.patterns.items()]
    parts.append("")
    if results.notes:
        parts += [f"Note: {note}" for note in results.notes] + [""]
    if cfg.mode == "quick":
        parts += [
            "--quick runs are shorter than one window: a sliding-window limiter grants its "
            "first second's worth during the warm-up and nothing more before the run ends, "
            "so these numbers mean nothing (smoke test only).",
            "",
        ]
    parts += ["Reading: " + reading(results.rows, cfg), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run with small sizes")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    costs = token_costs(cfg)
    found, notes = candidates()
    results = Results(
        environment=environment(cfg),
        config=asdict(cfg),
        costs=cost_summary(costs),
        notes=notes,
        patterns={c.name: c.pattern for c in found},
    )
    for loop_name, factory in loop_kinds():
        for round_index in range(cfg.samples):
            shift = round_index % len(found)
            for candidate in found[shift:] + found[:shift]:
                results.samples.append(
                    run_sample(loop_name, factory, candidate, costs, cfg, round_index)
                )
    results.rows = summarise(results.samples, found, cfg)
    print(report(results, cfg))
    if args.json:
        directory = os.path.dirname(args.json)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(asdict(results), file, indent=2)
            file.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
