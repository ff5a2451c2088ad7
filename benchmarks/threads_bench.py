"""Limiters used from threads: ``python benchmarks/threads_bench.py [--quick]``.

Three measures (issue 13), each against a ``threading.Semaphore`` floor measured in the
same run: (1) the uncontended cost of one blocking acquisition from a single thread
(tokenbucket's ``acquire_blocking`` and ``with limiter.acquire_blocking(tokens=1):``,
the sync paths of the peers, and, for reference, the single-loop ``await
bucket.acquire()``); (2) CPU per admission and wall time against the ideal with 8, 64
and 512 threads waiting on one saturated limiter; (3) wake-ups of a blocked thread that
did not end in a grant, counted through the interpreter's profiling hook. See
benchmarks/README.md for the method. ``--async-only`` runs only the single-loop
reference (it runs on versions without ``acquire_blocking``, for before/after figures).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import importlib.util
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import tokenbucket as tb
from _harness import (
    arguments,
    describe,
    environment,
    markdown_table,
    progress,
    rotated,
    time_ops,
    write_json,
)

if TYPE_CHECKING:
    from types import FrameType

UNLIMITED = 10**12  # never runs out (an int for the peers that take ints)
PEERS = ["pyrate-limiter", "limits", "throttled-py"]
FLOOR = "threading.Semaphore (floor)"
ASYNC_FLOOR = "async floor: empty `async def`"
ASYNC_TB = "await TokenBucket.acquire() (one loop)"
TB_BUCKET = "TokenBucket.acquire_blocking()"
PYRATE = "pyrate_limiter.Limiter.try_acquire"
_mod = importlib.import_module  # a peer's module, imported when its limiter is built


@dataclass(frozen=True)
class Config:
    mode: str
    rounds: int  # uncontended: samples of each candidate, in rotating order
    budget: float  # uncontended: seconds one timed batch of a candidate aims at
    threads: tuple[int, ...]  # contended: threads waiting on one limiter
    rate: int  # contended: admissions per second
    capacity: int  # contended: the burst, 10 ms of refill (see CAPACITY_NOTE)
    admissions: int  # contended: admissions of a run, shared out among its threads
    contended_rounds: int  # contended: runs of each (limiter, threads), rotating order
    cap_slack: float  # contended: no acquisition starts after 1.5 x ideal + this


FULL = Config("full", 7, 0.05, (8, 64, 512), 2000, 20, 3000, 3, 1.0)
QUICK = Config("quick", 3, 0.005, (8, 64, 512), 2000, 20, 400, 1, 0.1)
CAPACITY_NOTE = (
    "The burst is 10 ms of refill: a timer thread wakes 50-100 us late, and with a "
    "capacity of 1 (0.5 ms of refill at this rate) a bucket loses the refill of every late "
    "wake-up (a first version of this benchmark measured 80% of R so), which measures the "
    "operating system's timer, not the limiter."
)

Op = Callable[[], Any]


def _installed(distribution: str) -> bool:
    module = {"throttled-py": "throttled", "pyrate-limiter": "pyrate_limiter"}
    return importlib.util.find_spec(module.get(distribution, distribution)) is not None


# -- (1) uncontended ----------------------------------------------------------------------


def _semaphore_floor() -> Op:
    semaphore = threading.Semaphore(1)

    def op() -> None:
        semaphore.acquire()
        semaphore.release()

    return op


def _tb_limiter() -> Op:
    limiter = tb.Limiter(requests_per_minute=UNLIMITED, tokens_per_minute=UNLIMITED)

    def op() -> None:
        with limiter.acquire_blocking(tokens=1):
            pass  # the request would be sent here

    return op


def _pyrate_uncontended() -> Op:
    pyrate = _mod("pyrate_limiter")
    bucket = pyrate.StateBucket(
        [pyrate.Rate(UNLIMITED, pyrate.Duration.SECOND, burst=UNLIMITED)],
        algorithm=pyrate.TokenBucket(),
    )
    try_acquire = pyrate.Limiter(bucket).try_acquire

    def op() -> None:
        if not try_acquire("bench"):  # blocking by default (v4), no timeout
            raise RuntimeError("pyrate-limiter refused")

    return op


def _limits_hit(strategy: str) -> Op:
    limits = _mod("limits")
    limiter = getattr(_mod("limits.strategies"), strategy)(_mod("limits.storage").MemoryStorage())
    item, hit = limits.RateLimitItemPerSecond(UNLIMITED), limiter.hit

    def op() -> None:
        if not hit(item, "bench"):  # never blocks: a refusal would be the caller's to handle
            raise RuntimeError("limits refused")

    return op


def _throttled_uncontended() -> Op:
    throttled = _mod("throttled")
    limit = throttled.Throttled(
        key="bench",
        using=throttled.RateLimiterType.TOKEN_BUCKET.value,
        quota=throttled.rate_limiter.per_sec(UNLIMITED, burst=UNLIMITED),
        store=throttled.store.MemoryStore(),
        timeout=600,  # wait-and-retry mode, as in peers.py
    ).limit

    def op() -> None:
        if limit().limited:
            raise RuntimeError("throttled-py refused")

    return op


@dataclass(frozen=True)
class Candidate:
    name: str
    how: str
    build: Callable[[], Op]
    distribution: str = "tokenbucket"


def sync_candidates() -> list[Candidate]:
    found = [
        Candidate(
            TB_BUCKET,
            "`TokenBucket(rate=1e12, capacity=1e12).acquire_blocking()`",
            lambda: tb.TokenBucket(rate=1e12, capacity=1e12).acquire_blocking,
        ),
        Candidate(
            "SlidingWindow.acquire_blocking()",
            "`SlidingWindow(limit=1e12, window=1.0).acquire_blocking()`",
            lambda: tb.SlidingWindow(limit=1e12, window=1.0).acquire_blocking,
        ),
        Candidate(
            "with Limiter.acquire_blocking(tokens=1)",
            "`with Limiter(requests_per_minute=1e12, tokens_per_minute=1e12)"
            ".acquire_blocking(tokens=1): pass`",
            _tb_limiter,
        ),
        Candidate(
            PYRATE,
            "`Limiter(StateBucket([Rate(1e12, SECOND, burst=1e12)], algorithm=TokenBucket()))"
            '.try_acquire("bench")` (blocking=True, timeout=-1: its defaults)',
            _pyrate_uncontended,
            "pyrate-limiter",
        ),
        Candidate(
            "limits MovingWindowRateLimiter.hit",
            "`MovingWindowRateLimiter(MemoryStorage()).hit(RateLimitItemPerSecond(1e12), key)`"
            " (never blocks)",
            lambda: _limits_hit("MovingWindowRateLimiter"),
            "limits",
        ),
        Candidate(
            "limits FixedWindowRateLimiter.hit",
            "the same on `FixedWindowRateLimiter`",
            lambda: _limits_hit("FixedWindowRateLimiter"),
            "limits",
        ),
        Candidate(
            "throttled.Throttled.limit",
            "`Throttled(using=TOKEN_BUCKET, quota=per_sec(1e12, burst=1e12), "
            "store=MemoryStore(), timeout=600).limit()` (sync API)",
            _throttled_uncontended,
            "throttled-py",
        ),
    ]
    return [c for c in found if _installed(c.distribution)]


def time_sync(op: Op, n: int) -> float:
    """ns per call of ``n`` calls of ``op``."""
    start = time.perf_counter_ns()
    for _ in range(n):
        op()
    return (time.perf_counter_ns() - start) / n


def calls_for(op: Op, budget: float) -> int:
    """As many calls as take about ``budget`` seconds (between 1,000 and 200,000)."""
    per_call = time_sync(op, 200) * 1e-9
    return max(1000, min(200_000, round(budget / max(per_call, 1e-9))))


@dataclass
class Samples:
    """ns per call of each sample, and its ratio to the floor timed around it."""

    ns: dict[str, list[float]] = field(default_factory=dict)
    ratio: dict[str, list[float]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, ns: float, floors: tuple[float, float]) -> None:
        self.ns.setdefault(name, []).append(ns)
        self.ratio.setdefault(name, []).append(ns / statistics.fmean(floors))


def uncontended_sync(cfg: Config, samples: Samples) -> None:
    """Each sample: the floor, the candidate, the floor again, back to back; the
    candidates interleaved over the rounds in rotating order."""
    candidates = sync_candidates()
    floor = _semaphore_floor()
    ops = {c.name: c.build() for c in candidates}
    floor_n = calls_for(floor, cfg.budget)
    samples.calls[FLOOR] = floor_n
    for name, op in ops.items():  # warm-up: the first call makes tokenbucket's shared
        time_sync(op, 500)
        samples.calls[name] = calls_for(op, cfg.budget)
    for turn in range(cfg.rounds):
        progress(f"uncontended (threads): round {turn + 1} of {cfg.rounds}")
        for name in rotated(list(ops), turn):
            gc.collect()
            before = time_sync(floor, floor_n)
            ns = time_sync(ops[name], samples.calls[name])
            after = time_sync(floor, floor_n)
            samples.add(name, ns, (before, after))
            samples.ns.setdefault(FLOOR, []).extend([before, after])


async def _empty() -> None:
    pass


def uncontended_async(cfg: Config, samples: Samples) -> None:
    """``await bucket.acquire()`` on a bucket made in a fresh loop (never shared), against
    an empty coroutine awaited the same way, timed around it."""
    n = 100_000 if cfg.mode == "full" else 5_000
    samples.calls[ASYNC_FLOOR] = samples.calls[ASYNC_TB] = n
    for turn in range(cfg.rounds):
        progress(f"uncontended (one loop): round {turn + 1} of {cfg.rounds}")

        async def sample() -> None:
            bucket = tb.TokenBucket(rate=1e12, capacity=1e12)
            await time_ops(_empty, 1000)
            await time_ops(bucket.acquire, 1000)  # binds the bucket to this loop
            before = await time_ops(_empty, n)
            ns = await time_ops(bucket.acquire, n)
            after = await time_ops(_empty, n)
            samples.add(ASYNC_TB, ns, (before, after))
            samples.ns.setdefault(ASYNC_FLOOR, []).extend([before, after])

        gc.collect()
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(sample())
        finally:
            loop.close()


# -- (2) contended ------------------------------------------------------------------------


@dataclass(frozen=True)
class Contended:
    """One limiter of rate R and burst C for threads: ``acquire()`` blocks until
    admitted; ``start()`` runs as the threads are let go, ``close()`` after they end."""

    acquire: Op
    close: Op = lambda: None
    start: Op = lambda: None


def _tb_contended(rate: int, capacity: int) -> Contended:
    return Contended(tb.TokenBucket(rate=rate, capacity=capacity).acquire_blocking)


def _semaphore_contended(rate: int, capacity: int) -> Contended:
    """A semaphore holding C, released by a timer thread R times a second on a fixed
    schedule from the start signal (catching up after a late wake-up), until closed."""
    semaphore = threading.Semaphore(capacity)
    stop, go = threading.Event(), threading.Event()

    def timer() -> None:
        go.wait()
        start, released = time.monotonic(), 0
        while not stop.is_set():
            due = int((time.monotonic() - start) * rate)
            for _ in range(due - released):
                semaphore.release()
            released = max(due, released)
            time.sleep(max(0.0, start + (released + 1) / rate - time.monotonic()))

    thread = threading.Thread(target=timer, daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join()

    return Contended(semaphore.acquire, close, go.set)


def _pyrate_contended(rate: int, capacity: int) -> Contended:
    pyrate = _mod("pyrate_limiter")
    bucket = pyrate.StateBucket(
        [pyrate.Rate(rate, pyrate.Duration.SECOND, burst=capacity)],
        algorithm=pyrate.TokenBucket(),
    )
    limiter = pyrate.Limiter(bucket)  # buffer_ms=50: its default

    def acquire() -> None:
        if not limiter.try_acquire("bench"):  # blocks (polling) by default
            raise RuntimeError("pyrate-limiter refused while blocking")

    return Contended(acquire, limiter.close)


Build = Callable[[int, int], Contended]  # (rate, capacity) -> a limiter for threads


def contended_limiters() -> dict[str, Build]:
    found: dict[str, Build] = {
        FLOOR: _semaphore_contended,
        TB_BUCKET: _tb_contended,
    }
    if _installed("pyrate-limiter"):
        found[PYRATE] = _pyrate_contended
    return found


@dataclass
class Run:
    limiter: str
    threads: int
    admissions: int
    wall: float  # seconds from the start signal to the last thread's end
    cpu: float  # process CPU seconds over the same span
    ideal: float  # (admissions - capacity) / rate
    capped: bool


def contended_run(name: str, build: Build, threads: int, cfg: Config) -> Run:
    """``threads`` threads share out ``cfg.admissions`` acquisitions of one limiter; none
    starts another after 1.5 x ideal + ``cap_slack`` (``capped``: a polling peer that
    falls behind). The limiter starts full: the ideal is (admissions - C) / R."""
    gc.collect()
    limiter = build(cfg.rate, cfg.capacity)
    ideal = (cfg.admissions - cfg.capacity) / cfg.rate
    stop_at = [0.0]
    start = threading.Barrier(threads + 1)
    counts = [0] * threads

    def worker(index: int) -> None:
        quota = cfg.admissions // threads + (index < cfg.admissions % threads)
        acquire, monotonic = limiter.acquire, time.monotonic
        start.wait()
        done = 0
        while done < quota and monotonic() < stop_at[0]:
            acquire()
            done += 1
        counts[index] = done

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    cpu0, t0 = time.process_time(), time.monotonic()
    stop_at[0] = t0 + 1.5 * ideal + cfg.cap_slack
    limiter.start()
    start.wait()
    for thread in pool:
        thread.join()
    t1, cpu1 = time.monotonic(), time.process_time()
    limiter.close()
    admitted = sum(counts)
    return Run(name, threads, admitted, t1 - t0, cpu1 - cpu0, ideal, admitted < cfg.admissions)


def contended(cfg: Config) -> list[Run]:
    limiters = contended_limiters()
    runs: list[Run] = []
    for turn in range(cfg.contended_rounds):
        for threads in cfg.threads:
            progress(f"contended: {threads} threads, round {turn + 1} of {cfg.contended_rounds}")
            order = rotated(list(limiters), turn)
            runs += [contended_run(name, limiters[name], threads, cfg) for name in order]
    return runs


# -- (3) wake-ups without a grant ----------------------------------------------------------


@dataclass
class Wakes:
    """Counted over the admissions of an instrumented run: calls that blocked at least
    once, the blocking waits that returned, and those that did not end in a grant."""

    limiter: str
    threads: int
    admissions: int = 0
    blocked: int = 0
    waits: int = 0

    @property
    def without_grant(self) -> int:
        return self.waits - self.blocked


def _wait_counter(limiter: str) -> tuple[Any, Callable[[FrameType, str, Any], bool], int]:
    """The code of the call that makes one admission, which event of the profiling hook
    inside it is one blocking wait, and how many such events a call that blocks makes
    before its first wait (tokenbucket takes its own latch once, without waiting)."""
    if limiter == TB_BUCKET:
        block = _mod("tokenbucket._threads").SharedQueue.block.__code__

        def tb_wait(frame: FrameType, event: str, arg: Any) -> bool:
            return (
                event == "c_call"
                and frame.f_code is block
                and getattr(arg, "__name__", "") == "acquire"
            )

        return block, tb_wait, 1
    if limiter == FLOOR:
        wait = threading.Condition.wait.__code__
        acquire = threading.Semaphore.acquire.__code__

        def semaphore_wait(frame: FrameType, event: str, arg: Any) -> bool:
            caller = frame.f_back
            return (
                event == "call"
                and frame.f_code is wait
                and caller is not None
                and caller.f_code is acquire
            )

        return acquire, semaphore_wait, 0
    sleep = time.sleep  # pyrate-limiter polls: `from time import sleep`

    def pyrate_sleep(frame: FrameType, event: str, arg: Any) -> bool:
        return event == "c_call" and arg is sleep

    return _mod("pyrate_limiter").Limiter.try_acquire.__code__, pyrate_sleep, 0


def count_wakes(name: str, build: Build, threads: int, cfg: Config) -> Wakes:
    """One contended run with a profiling hook in every worker thread (not timed): for
    each admitting call, the blocking waits that returned inside it. A call that waited
    w times was granted once, after its last wait: w - 1 wake-ups without a grant."""
    target, is_wait, before_first = _wait_counter(name)
    found = Wakes(name, threads)
    local = threading.local()
    lock = threading.Lock()

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code is target:
            local.events = 0
        elif event == "return" and frame.f_code is target:
            waits = max(local.events - before_first, 0)
            with lock:
                found.admissions += 1
                found.blocked += waits > 0
                found.waits += waits
        elif is_wait(frame, event, arg):
            local.events += 1

    threading.setprofile(hook)  # the threads started from now on
    try:
        run = contended_run(name, build, threads, cfg)
    finally:
        threading.setprofile(None)
    assert run.admissions == found.admissions, (run, found)
    return found


def wakes(cfg: Config) -> list[Wakes]:
    limiters = contended_limiters()
    found = []
    for threads in cfg.threads:
        progress(f"wake-ups (instrumented): {threads} threads")
        found += [count_wakes(name, build, threads, cfg) for name, build in limiters.items()]
    return found


# -- the report ---------------------------------------------------------------------------


def uncontended_table(samples: Samples, names: list[str], floor: str) -> str:
    rows = []
    floor_ns = statistics.median(samples.ns[floor])
    rows.append([floor, f"{floor_ns:,.0f}", "1.00x", f"{samples.calls[floor]:,}"])
    for name in names:
        if name not in samples.ns:
            continue
        rows.append(
            [
                name,
                f"{statistics.median(samples.ns[name]):,.0f}",
                f"{statistics.median(samples.ratio[name]):.2f}x",
                f"{samples.calls[name]:,}",
            ]
        )
    return markdown_table(["call", "ns/call (median)", "vs floor", "calls/sample"], rows, (1, 2, 3))


def contended_table(runs: list[Run], cfg: Config) -> str:
    rows = []
    for threads in cfg.threads:
        mine = [r for r in runs if r.threads == threads]
        floor = [r.cpu / r.admissions for r in mine if r.limiter == FLOOR]
        floor_us = statistics.median(floor) * 1e6
        for name in contended_limiters():
            these = [r for r in mine if r.limiter == name]
            cpu_us = statistics.median(r.cpu / max(r.admissions, 1) for r in these) * 1e6
            wall = statistics.median(r.wall / r.ideal for r in these)
            rate = statistics.median(
                (r.admissions - cfg.capacity) / r.wall / cfg.rate for r in these
            )
            capped = sum(r.capped for r in these)
            rows.append(
                [
                    str(threads),
                    name,
                    f"{statistics.median(r.admissions for r in these):,.0f}",
                    f"{cpu_us:,.1f}",
                    f"{cpu_us / floor_us:.2f}x",
                    f"{statistics.median(r.cpu / r.wall for r in these):.0%}",
                    f"{wall:.3f}" + (f" ({capped} capped)" if capped else ""),
                    f"{rate:.1%}",
                ]
            )
    headers = ["threads", "limiter", "admissions", "CPU us/adm", "vs floor", "CPU load"]
    return markdown_table([*headers, "wall / ideal", "rate"], rows, range(2, 8))


def wakes_table(found: list[Wakes]) -> str:
    rows = [
        [
            str(w.threads),
            w.limiter,
            f"{w.admissions:,}",
            f"{w.blocked:,}",
            f"{w.waits / max(w.admissions, 1):.3f}",
            f"{w.without_grant:,}",
        ]
        for w in found
    ]
    headers = ["threads", "limiter", "admissions", "blocked", "waits / adm", "woken, no grant"]
    return markdown_table(headers, rows, range(2, 6))


def report(
    env: dict[str, Any],
    cfg: Config,
    samples: Samples,
    runs: list[Run],
    found: list[Wakes],
    async_only: bool,
) -> str:
    lines = ["# Limiters used from threads", "", describe(env), ""]
    if not async_only:
        names = [c.name for c in sync_candidates()]
        missing = [d for d in PEERS if not _installed(d)]
        lines += [
            "## Uncontended: one blocking acquisition from one thread",
            "",
            f"Limits that never bind. Medians of {cfg.rounds} samples; **vs floor** is the "
            "median of each sample over the mean of the `threading.Semaphore` acquire + "
            "release timed just before and after it. `limits` never blocks: its `hit`.",
            "",
            uncontended_table(samples, names, FLOOR),
            "",
        ]
        if missing:
            lines += [f"Not installed (no rows): {', '.join(missing)}.", ""]
    lines += [
        "## Uncontended, one event loop (reference)",
        "",
        "`await TokenBucket(rate=1e12, capacity=1e12).acquire()` in a fresh asyncio loop "
        "(never shared), against an empty coroutine awaited around it.",
        "",
        uncontended_table(samples, [ASYNC_TB], ASYNC_FLOOR),
        "",
    ]
    if async_only:
        return "\n".join(lines)
    lines += [
        "## Contended: threads waiting on one saturated limiter",
        "",
        f"{cfg.admissions:,} admissions at R = {cfg.rate:,}/s, burst C = {cfg.capacity}, "
        "shared out among the threads; ideal = (admissions - C) / R = "
        f"{(cfg.admissions - cfg.capacity) / cfg.rate:.2f} s. "
        f"Medians of {cfg.contended_rounds} run(s). **CPU us/adm**: `time.process_time()` "
        "of the whole process from the start signal to the last thread's end, per "
        "admission; **vs floor**: over the semaphore released by a timer thread at R, same "
        f"thread count. **capped**: no acquisition started after 1.5 x ideal + "
        f"{cfg.cap_slack:g} s. **rate**: (admissions - C) / wall / R. {CAPACITY_NOTE}",
        "",
        contended_table(runs, cfg),
        "",
        "## Wake-ups without a grant",
        "",
        "One more run of each (not timed) with a profiling hook (`threading.setprofile`) "
        "in every worker thread: in each admitting call, the blocking waits that returned "
        "(tokenbucket: its latch's `acquire` in `SharedQueue.block`, after the first, "
        "which never waits; the semaphore: `Condition.wait` in `Semaphore.acquire`; "
        "pyrate-limiter: its polls, `time.sleep` in `Limiter.try_acquire`, not its waits "
        "for its own lock). A call that waited w "
        "times is granted after its last wait: w - 1 wake-ups without a grant.",
        "",
        wakes_table(found),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = arguments(__doc__)
    parser.add_argument(
        "--async-only",
        action="store_true",
        help="only the single-loop reference (runs on versions without acquire_blocking)",
    )
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    command = " ".join(["python benchmarks/threads_bench.py", *argv])
    env = environment(cfg.mode, command, [] if args.async_only else filter(_installed, PEERS))
    started = time.monotonic()
    samples = Samples()
    runs: list[Run] = []
    found: list[Wakes] = []
    if not args.async_only:
        uncontended_sync(cfg, samples)
    uncontended_async(cfg, samples)
    if not args.async_only:
        runs = contended(cfg)
        found = wakes(cfg)
    print(report(env, cfg, samples, runs, found, args.async_only))
    if args.json:
        write_json(
            args.json,
            {
                "environment": env,
                "config": asdict(cfg),
                "uncontended": asdict(samples),
                "contended": [asdict(r) for r in runs],
                "wakes": [asdict(w) | {"without_grant": w.without_grant} for w in found],
            },
        )
    progress(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
