"""One timer thread for every limiter shared by threads and event loops.

A limiter used from one event loop times its queue head with that loop's own timer. A
limiter shared by threads and loops in several threads has no one loop to ask, so its
head is timed here: one daemon thread per process sleeps on a condition until the
earliest instant any shared limiter asked for, runs that limiter's callback (outside
its own lock) and sleeps again. A limiter has at most one timer armed; arming another
cancels the one before, and a cancelled timer is dropped when it reaches the top.

Everything is on ``time.monotonic``. After ``fork()`` the child has no timer thread: a
new one starts on first use there.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
import traceback
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Timer", "schedule"]

_monotonic: Final = time.monotonic


class Timer:
    """One armed instant; :meth:`cancel` it to have it never run."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[Timer], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _TimerThread:
    """The heap of timers and the thread that runs them."""

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, when: float, callback: Callable[[Timer], None]) -> Timer:
        timer = Timer(when, callback)
        with self._condition:
            heap = self._heap
            heapq.heappush(heap, (when, next(self._order), timer))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tokenbucket-timer", daemon=True
                )
                self._thread.start()
            elif heap[0][2] is timer:  # earlier than what the thread sleeps until
                self._condition.notify()
        return timer

    def _run(self) -> None:
        condition = self._condition
        heap = self._heap
        while True:
            with condition:
                while True:
                    while heap and heap[0][2].cancelled:
                        heapq.heappop(heap)
                    if not heap:
                        condition.wait()
                        continue
                    left = heap[0][0] - _monotonic()
                    if left <= 0:
                        timer = heapq.heappop(heap)[2]
                        break
                    condition.wait(left)
            try:
                timer.callback(timer)
            except Exception:  # pragma: no cover - callbacks never raise; keep timing
                traceback.print_exc()

    def _after_fork(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._heap = []
        self._thread = None


_TIMERS: Final = _TimerThread()
schedule: Final = _TIMERS.schedule

if hasattr(os, "register_at_fork"):  # pragma: no branch
    os.register_at_fork(after_in_child=_TIMERS._after_fork)
