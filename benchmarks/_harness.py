"""What every benchmark shares: event loops, fresh runs, timing, measures, the environment.

A run is one (limiter, event loop, workload) in a **fresh** event loop: ``asyncio``,
``uvloop`` or ``trio`` (``trio.run``). The workload is written once against a
:data:`Runtime`, which gives it the loop's clock, sleeping, spawning and cancelling
tasks, an event, and (on request) instruments: tasks created and steps taken, and the
instant each watched task was last made runnable (``woken``). Everything a run started,
the libraries' own tasks included, is cancelled and awaited before its loop closes, and
the run fails if a task is left over.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import importlib.metadata
import itertools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, Protocol, TypeVar

import tokenbucket as tb

T = TypeVar("T")
Acquire = Callable[[], Awaitable[None]]
Count = Literal["spawned", "all"] | None
Clock = Callable[[], float]


def optional(name: str) -> Any:
    """The module, or None when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """A command line with the options every benchmark has: ``--quick`` and ``--json``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help="smoke run with small sizes")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    return parser


# Admission counts taken from the tasks are exact only to a few admissions: the rate over
# D seconds depends on what had refilled when the interval began, on where the boundary
# readings fall among the grants and (uvloop) on a clock that reads whole milliseconds; a
# window's peak is counted from resumptions, which a stall can push into the next window.
# This many admissions either way (over "allowed") are the measurement's resolution.
SLACK_ADMISSIONS = 3


# -- event loops -------------------------------------------------------------------------


@dataclass(frozen=True)
class Loop:
    """An event loop to run on: an asyncio loop factory, or trio (``factory`` None)."""

    name: str
    factory: Callable[[], asyncio.AbstractEventLoop] | None

    @property
    def is_trio(self) -> bool:
        return self.factory is None


def loops(*, trio: bool = True) -> list[Loop]:
    found = [Loop("asyncio", asyncio.new_event_loop)]
    if (uvloop := optional("uvloop")) is not None:
        found.append(Loop("uvloop", uvloop.new_event_loop))
    if trio and optional("trio") is not None:
        found.append(Loop("trio", None))
    return found


class Task(Protocol):
    def cancel(self) -> Any: ...
    def done(self) -> bool: ...
    def cancelled(self) -> bool: ...


class _Instruments:
    """Tasks created and steps taken (by the counted tasks), and per watched task the
    instant it was last made runnable and (trio) the sequence number of that moment."""

    def __init__(self, name: str, now: Clock, count: Count, clock: Clock) -> None:
        self.name, self.now, self.count, self.clock = name, now, count, clock
        self.tasks = self.steps = 0
        self.woken: dict[object, float] = {}
        self.order: dict[object, int] = {}
        self.sequence = itertools.count().__next__


class _Counted(Coroutine[Any, Any, Any]):
    """Wraps a task's coroutine and counts its steps: a task drives its coroutine only
    through ``send`` (its start and every wake-up) and ``throw`` (e.g. a cancellation)."""

    __slots__ = ("_coro", "_counts")

    def __init__(self, coro: Coroutine[Any, Any, Any], counts: _Instruments) -> None:
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
        return self._coro.__await__()  # required by the ABC; a Task never calls it


class _Future:
    """An event that creates no task to wait with a timeout."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._future = loop.create_future()

    def set(self) -> None:
        if not self._future.done():
            self._future.set_result(None)

    def is_set(self) -> bool:
        return self._future.done()

    async def wait(self, timeout: float) -> None:
        await asyncio.wait([self._future], timeout=max(timeout, 0.0))


class AsyncioRuntime(_Instruments):
    reorders = False  # trio resumes a batch of runnable tasks in random order

    def __init__(
        self, name: str, loop: asyncio.AbstractEventLoop, count: Count, clock: Clock
    ) -> None:
        super().__init__(name, loop.time, count, clock)
        self.loop = loop
        if count == "all":  # every task created from now on, asyncio.gather's included

            def factory(
                loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kw: Any
            ) -> asyncio.Task[Any]:
                self.tasks += 1
                return asyncio.Task(_Counted(coro, self), loop=loop, **kw)

            loop.set_task_factory(factory)  # type: ignore[arg-type]
        if count is None:
            return
        # A completed future schedules the wake-up of the task awaiting it through
        # `loop.call_soon(task_wakeup)`, looked up on the loop object: an instance
        # attribute notes it, on asyncio and uvloop alike.
        original, woken = loop.call_soon, self.woken

        def call_soon(callback: Any, *args: Any, context: Any = None) -> asyncio.Handle:
            owner = getattr(callback, "__self__", None)
            if owner is not None and owner in woken:
                woken[owner] = clock()
            return original(callback, *args, context=context)

        loop.call_soon = call_soon  # type: ignore[method-assign, assignment]

    def current(self) -> object:
        return asyncio.current_task()

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> Task:
        coro: Any = fn(*args)
        return self.loop.create_task(_Counted(coro, self) if self.count == "spawned" else coro)

    def event(self) -> _Future:
        return _Future(self.loop)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def checkpoint(self) -> None:
        await asyncio.sleep(0)

    async def cancel(self, tasks: Iterable[Task]) -> None:
        # Again and again: on Python < 3.12 `asyncio.wait_for` (which redis-py wraps around
        # socket writes) can swallow a cancellation that arrives as the write completes.
        pending: set[Any] = set(tasks)
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)

    async def cancel_others(self) -> None:
        me = asyncio.current_task()
        await self.cancel(t for t in asyncio.all_tasks() if t is not me)


@dataclass
class _TrioTask:
    scope: Any
    finished: bool = False

    def cancel(self) -> None:
        self.scope.cancel()

    def done(self) -> bool:
        return self.finished

    def cancelled(self) -> bool:
        return self.finished and bool(self.scope.cancelled_caught)


class _TrioEvent:
    def __init__(self) -> None:
        import trio

        self._trio = trio
        self._event = trio.Event()
        self.set, self.is_set = self._event.set, self._event.is_set

    async def wait(self, timeout: float) -> None:
        with self._trio.move_on_after(max(timeout, 0.0)):
            await self._event.wait()


class TrioRuntime(_Instruments):
    reorders = True

    def __init__(self, nursery: Any, count: Count, clock: Clock) -> None:
        import trio
        import trio.abc
        import trio.lowlevel

        super().__init__("trio", trio.current_time, count, clock)
        self._trio = trio
        self._nursery = nursery
        self._handles: list[_TrioTask] = []
        self._counted: set[object] = set()
        runtime = self

        class Watch(trio.abc.Instrument):
            def task_spawned(self, task: trio.lowlevel.Task) -> None:
                runtime.tasks += 1

            def task_scheduled(self, task: trio.lowlevel.Task) -> None:
                if task in runtime.woken:
                    runtime.woken[task] = clock()
                    runtime.order[task] = runtime.sequence()

            def before_task_step(self, task: trio.lowlevel.Task) -> None:
                if count == "all" or task in runtime._counted:
                    runtime.steps += 1

        self.instrument = Watch() if count is not None else None

    def current(self) -> object:
        return self._trio.lowlevel.current_task()

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> Task:
        handle = _TrioTask(self._trio.CancelScope())
        self._handles.append(handle)

        async def run() -> None:
            if self.count == "spawned":
                self._counted.add(self._trio.lowlevel.current_task())
            try:
                with handle.scope:
                    await fn(*args)
            finally:
                handle.finished = True

        self._nursery.start_soon(run)
        return handle

    def event(self) -> _TrioEvent:
        return _TrioEvent()

    async def sleep(self, seconds: float) -> None:
        await self._trio.sleep(seconds)

    async def checkpoint(self) -> None:
        await self._trio.lowlevel.checkpoint()

    async def cancel(self, tasks: Iterable[Task]) -> None:
        waiting = list(tasks)
        for task in waiting:
            task.cancel()
        while not all(task.done() for task in waiting):
            await self._trio.sleep(0.001)

    async def cancel_others(self) -> None:
        await self.cancel(self._handles)


Runtime = AsyncioRuntime | TrioRuntime  # the running loop, as a workload sees it
Workload = Callable[[Runtime, Any], Awaitable[T]]  # (runtime, acquire) -> its result


def run(
    loop: Loop,
    body: Callable[[Runtime], Awaitable[T]],
    *,
    count: Count = None,
    clock: Clock | None = None,
) -> T:
    """``body(runtime)`` in a fresh event loop, after a garbage collection. ``count``
    installs the instruments: task steps (of the tasks ``spawn`` makes, or of every
    task) and wake-up instants, read with ``clock`` (default: the loop's)."""
    gc.collect()
    if loop.factory is None:
        import trio

        async def main() -> T:
            async with trio.open_nursery() as nursery:
                runtime = TrioRuntime(nursery, count, clock or trio.current_time)
                if runtime.instrument is not None:
                    trio.lowlevel.add_instrument(runtime.instrument)
                try:
                    return await body(runtime)
                finally:
                    if runtime.instrument is not None:
                        trio.lowlevel.remove_instrument(runtime.instrument)
                    nursery.cancel_scope.cancel()

        return trio.run(main)
    event_loop = loop.factory()
    try:
        runtime = AsyncioRuntime(loop.name, event_loop, count, clock or event_loop.time)
        result = event_loop.run_until_complete(body(runtime))
        leftovers = asyncio.all_tasks(event_loop)
        if leftovers:  # pragma: no cover - a bug in a workload
            event_loop.run_until_complete(runtime.cancel(leftovers))
            raise RuntimeError(f"{len(leftovers)} tasks leaked out of a timed run")
        event_loop.run_until_complete(event_loop.shutdown_asyncgens())
        # `limits`' MemoryStorage expires entries with asyncio.to_thread.
        event_loop.run_until_complete(event_loop.shutdown_default_executor())
        return result
    finally:
        event_loop.close()


@dataclass(frozen=True, kw_only=True)
class SingleShot:
    """Waiters that each call ``acquire()`` once on a limiter of ``rate`` and ``capacity``,
    spawned ``spawn_batch`` at a time; a run stops at ``cap_factor`` x its ideal wall time
    + ``cap_slack`` seconds."""

    rate: float
    capacity: float
    cap_slack: float
    spawn_batch: int = 25
    cap_factor: float = 1.5


@dataclass(frozen=True)
class Made:
    """A limiter built inside the running loop: ``acquire`` returns once admitted;
    ``close()`` runs after every task of the run has ended."""

    acquire: Callable[..., Awaitable[None]]
    close: Callable[[], Any] = lambda: None


def run_with(loop: Loop, build: Callable[[], Made], workload: Workload[T], **options: Any) -> T:
    """``workload(runtime, acquire)`` on a limiter built inside a fresh loop; then what
    the library left running (``limits``' expiry task) is cancelled and it is closed."""

    async def body(runtime: Runtime) -> T:
        made = build()
        try:
            return await workload(runtime, made.acquire)
        finally:
            await runtime.cancel_others()
            made.close()

    return run(loop, body, **options)


def loop_floor(loop: Loop, period: float, duration: float) -> float:
    """CPU seconds per wake-up of one task looping on ``sleep(period)``, in a fresh loop."""

    async def body(rt: Runtime) -> float:
        wakes, end, cpu0 = 0, rt.now() + duration, time.process_time()
        while rt.now() < end:
            await rt.sleep(period)
            wakes += 1
        return (time.process_time() - cpu0) / max(wakes, 1)

    return run(loop, body)


# -- timing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A run's measured interval: its clock readings, the CPU seconds, tasks created and
    task steps taken in it, and the indices ``[first, last)`` of its admissions."""

    t0: float
    t1: float
    cpu: float
    tasks: int
    steps: int
    first: int
    last: int


async def measured(
    rt: Runtime, workers: list[Task], warmup: float, duration: float, admitted: list[Any]
) -> Interval:
    """Let every worker arrive once and the warm-up pass (the burst is drained, the queue
    is steady), read the counters (``rt.clock``), wait ``duration``, read them again (in
    the reverse order: the CPU reading outermost), then cancel the workers."""
    try:
        await rt.checkpoint()
        await rt.sleep(warmup)
        cpu0, t0, tasks0, steps0 = time.process_time(), rt.clock(), rt.tasks, rt.steps
        first = len(admitted)
        await rt.sleep(duration)
        last, steps, tasks = len(admitted), rt.steps - steps0, rt.tasks - tasks0
        t1, cpu1 = rt.clock(), time.process_time()
    finally:
        await rt.cancel(workers)
    return Interval(t0, t1, cpu1 - cpu0, tasks, steps, first, last)


async def time_ops(op: Acquire, ops: int) -> float:
    """Nanoseconds per ``await op()`` over ``ops`` calls, one after the other."""
    start = time.perf_counter_ns()
    for _ in range(ops):
        await op()
    return (time.perf_counter_ns() - start) / ops


def rotated(items: list[T], shift: int) -> list[T]:
    """``items`` starting at ``shift`` (modulo their number): a rotating order of runs."""
    shift %= len(items)
    return items[shift:] + items[:shift]


async def spawn_batched(
    rt: Runtime, fn: Callable[[int], Awaitable[None]], count: int, batch: int, tasks: list[Task]
) -> None:
    """Append ``count`` tasks ``fn(i)`` to ``tasks``, ``batch`` at a time with a yield in
    between: each batch arrives before the next is spawned."""
    for start in range(0, count, batch):
        tasks += [rt.spawn(fn, i) for i in range(start, min(start + batch, count))]
        await rt.checkpoint()


# -- measures ----------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(int(share * len(ordered)), len(ordered) - 1)]


def certain_peak(
    earliest: list[float], latest: list[float], window: float, weights: list[int] | None = None
) -> int:
    """The largest weight of admissions certainly inside one window ``[t, t + window)``.

    Admission ``i`` happened at an unknown instant in ``[earliest[i], latest[i]]``. For
    each start ``t = earliest[a]`` this adds the weights (default 1) of the admissions
    with ``earliest >= t`` and ``latest < t + window``: a lower bound on what was
    admitted in that window, tight when the bounds are close. With ``earliest ==
    latest`` it is the plain peak of a list of timestamps.
    """
    rows = sorted(zip(earliest, latest, weights or [1] * len(earliest), strict=True))
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
        index = end_index - 1  # only admissions that start within `spread` can end past
        while index >= first and starts[index] >= limit - spread:
            if rows[index][1] >= limit:
                total -= rows[index][2]
            index -= 1
        best = max(best, total)
    return best


def window_load(
    times: list[float], t0: float, t1: float, window: float, weights: list[int] | None = None
) -> float | None:
    """The mean, over every window ``[u, u + window)`` inside ``[t0, t1)``, of the weight
    admitted in it; None when the interval is shorter than one window.

    An exact sliding window under saturation grants in bursts that repeat once per
    window; a plain count over ``[t0, t1)`` depends on whether a burst falls just inside
    or outside an edge, while every rolling window holds the same amount.
    """
    span = t1 - t0 - window
    if span <= 0:
        return None
    total = 0.0
    for t, w in zip(times, weights or [1] * len(times), strict=True):
        overlap = min(t, t1 - window) - max(t0, t - window)
        if overlap > 0:
            total += w * overlap
    return total / span


def jain(counts: list[int]) -> float:
    """Jain's fairness index (sum x)^2 / (n * sum x^2); 1 when every x is equal."""
    squares = sum(x * x for x in counts)
    return sum(counts) ** 2 / (len(counts) * squares) if squares else math.nan


# -- the environment and the output -------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(mode: str, command: str, distributions: Iterable[str]) -> dict[str, Any]:
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "tokenbucket": tb.__version__,
        "versions": {d: version(d) for d in distributions},
        "mode": mode,
        "command": command,
    }


def describe(env: dict[str, Any]) -> str:
    versions = ", ".join(f"{name} {v}" for name, v in env["versions"].items())
    return (
        f"Run of {env['date']} ({env['mode']} mode) on {env['cpu']}, {env['cpus']} CPUs, "
        f"{env['platform']}, {env['python']}. Versions: tokenbucket {env['tokenbucket']}, "
        f"{versions}. Command: `{env['command']}`."
    )


Columns = list[tuple[str, Callable[[Any], str]]]  # a table's columns: (header, cell of a row)


def number(value: float | None, spec: str, unit: str = "") -> str:
    """``value`` formatted, or n/a when it is unknown (None or NaN)."""
    return "n/a" if value is None or math.isnan(value) else f"{value:{spec}}{unit}"


def markdown_table(headers: list[str], rows: list[list[str]], right: Iterable[int] = ()) -> str:
    right = set(right)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        padded = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [("-" * (w - 1) + ":") if i in right else "-" * w for i, w in enumerate(widths)]
    return "\n".join([line(headers), "| " + " | ".join(rule) + " |", *map(line, rows)])


def write_json(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2)
        file.write("\n")
