"""Which event loop is running, and which clock a limiter reads in it.

asyncio (and uvloop) loops are found with ``asyncio.events._get_running_loop``; trio's by
its root task. A limiter reads ``time.monotonic`` on loops whose clock is exactly that
(the default loop, and uvloop, whose ``loop.time()`` is the same clock floored to the
millisecond and cached per iteration), the loop's own ``time`` on any other (a virtual
clock such as ``looptime``'s), and ``trio.current_time`` on trio (``MockClock`` included).
"""

from __future__ import annotations

import asyncio
import sys
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable

__all__: list[str] = []

get_running_loop: Final = asyncio.events._get_running_loop

# The asyncio loop that last served a limiter in the current task. On CPython <= 3.12
# asyncio.get_running_loop() makes a getpid() system call; a context variable read is
# several times cheaper, and a task never changes loops. Only loops whose clock the
# limiter reads as time.monotonic are recorded, so a stale value (a context copied out of
# one loop into another) can only name a loop on the very same clock.
LOOP_HINT: Final[ContextVar[object]] = ContextVar("tokenbucket_loop_hint", default=None)

# Never equal to what get_running_loop() or LOOP_HINT return: "no asyncio loop bound".
NOT_ASYNCIO: Final = object()

_BASE_TIME: Final = asyncio.BaseEventLoop.time


class Clock(NamedTuple):
    """How a limiter reads time in one event loop."""

    key: object  # the loop's identity: the asyncio loop, or trio's root task
    loop: asyncio.AbstractEventLoop | None  # None on trio
    read: Callable[[], float]
    step: float  # the clock's resolution, for timers that fire early
    hinted: bool  # record the loop in LOOP_HINT (its clock is time.monotonic)


def asyncio_clock(loop: asyncio.AbstractEventLoop) -> Clock:
    uvloop = type(loop).__module__.startswith("uvloop")
    monotonic = type(loop).time is _BASE_TIME or uvloop
    read = time.monotonic if monotonic else loop.time
    return Clock(loop, loop, read, 1e-3 if uvloop else 1e-6, monotonic)


# Per asyncio loop type: whether a limiter reads its clock as time.monotonic (see
# asyncio_clock), for now(), which runs twice per lease of an adaptive cap.
_MONOTONIC_LOOPS: Final[dict[type, bool]] = {}


def now() -> tuple[object, float]:
    """Which clock a limiter reads in this thread, and its time: ``None`` for
    ``time.monotonic`` (outside any event loop, and in every loop that reads it), else
    the loop's key (a virtual clock's loop, a trio run)."""
    loop = get_running_loop()
    if loop is not None:
        kind = type(loop)
        monotonic = _MONOTONIC_LOOPS.get(kind)
        if monotonic is None:
            monotonic = _MONOTONIC_LOOPS[kind] = asyncio_clock(loop).hinted
        if monotonic:
            return None, time.monotonic()
        return loop, loop.time()
    root = trio_root()
    if root is not None:
        current: Callable[[], float] = sys.modules["trio"].current_time
        return root, current()
    return None, time.monotonic()


def trio_root() -> object | None:
    """trio's root task when called inside ``trio.run``, else ``None``."""
    trio = sys.modules.get("trio")
    if trio is None:
        return None
    try:
        root: object = trio.lowlevel.current_root_task()
    except RuntimeError:
        return None
    return root


def trio_clock(root: object) -> Clock:
    trio = sys.modules["trio"]
    return Clock(root, None, trio.current_time, 1e-6, False)


def poster() -> Callable[[Callable[[], object]], object]:
    """How another thread runs a callable in the running loop's thread, soon: asyncio's
    ``call_soon_threadsafe``, or trio's ``TrioToken.run_sync_soon``. Either raises a
    ``RuntimeError`` once the loop is closed (the run is over)."""
    loop = get_running_loop()
    if loop is not None:
        return loop.call_soon_threadsafe
    trio = sys.modules["trio"]
    run_sync_soon: Callable[[Callable[[], object]], object] = (
        trio.lowlevel.current_trio_token().run_sync_soon
    )
    return run_sync_soon


def trio_over(root: object) -> bool:
    """Whether the trio run whose root task is ``root`` is over."""
    coroutine = getattr(root, "coro", None)
    return coroutine is not None and getattr(coroutine, "cr_frame", None) is None


def trio_clock_is_real() -> bool:
    """Whether the running trio run's clock is trio's own (real time, not a MockClock)."""
    trio = sys.modules["trio"]
    return type(trio.lowlevel.current_clock()).__name__ == "SystemClock"
