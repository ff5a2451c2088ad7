"""Shared mode: one limiter for many threads and event loops, with the same guarantees.

Theory of operation
-------------------
A limiter serves one event loop without any lock (``_queue``): only that loop's thread
changes it. The first time it is used from anywhere else (a thread blocking in
``acquire_blocking``, a task of an event loop in another thread, ``try_acquire`` in a
plain thread) its queue becomes a :class:`SharedQueue`, for good. The switch runs in the
thread of the loop served, between two of its callbacks (see ``WaiterQueue.share``), so
nothing is half done when it happens, and from then on:

- every change of the state and of the queue is made under one lock, held for the
  change only: never across a wait, a wake-up or a callback of another library;
- the clock is ``time.monotonic`` (a virtual clock cannot be shared: it is refused);
- the queue head is timed by the process's one timer thread (``_timer``);
- each waiter parks on what its own world offers: a blocked thread on a lock of its own,
  an asyncio task on a future of its loop. A grant is decided under the lock, in FIFO
  order across all of them, and each granted waiter is woken once, after the lock is
  released: a thread by releasing its lock, a task through its loop
  (``call_soon_threadsafe``, or directly from its own thread).

Waiters queued before the switch keep their places and their futures; their loop's
timer for the head is replaced by the timer thread.

Cancellation, timeouts and exceptions leave as in a single loop: a waiter that leaves
before it is granted is removed, one granted but gone (cancelled, timed out at the same
moment, its loop closed) gives the grant back to the next one.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from _thread import get_ident
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast

import anyio

from ._core import Request
from ._errors import AcquireTimeoutError
from ._loop import NOT_ASYNCIO, asyncio_clock, get_running_loop, poster, trio_clock_is_real
from ._park import GONE, GRANTED, WAITING
from ._queue import _SWITCHING, NO_THREAD, WaiterQueue, _drop_claims, _Waiter
from ._timer import Timer, schedule

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

__all__ = ["SharedQueue", "become_shared"]

_INF: Final = math.inf
_monotonic: Final = time.monotonic
_SHARED: Final = object()  # the key of a shared queue: no loop or trio run is it
_NOBODY: Final[list[_Waiter]] = []  # nobody to wake (never changed)
# The longest a thread blocks in one go (Lock.acquire refuses longer timeouts).
_LONGEST: Final = min(threading.TIMEOUT_MAX, 86400.0)


def become_shared(queues: list[WaiterQueue]) -> None:
    """Turn ``queues`` (a queue and its companions, which share limits) into
    :class:`SharedQueue` objects with one lock, where nothing else changes them."""
    # One lock for them all (owners' hooks may kick the queues again, hence an RLock),
    # and who was granted in any of them, woken once it is let go. (Were one of them
    # shared already, the others join it.)
    joined = next((queue for queue in queues if queue.shared), None)
    lock = threading.RLock() if joined is None else joined._lock
    woken: list[_Waiter] = [] if joined is None else joined._woken
    queues = [queue for queue in queues if not queue.shared]
    for queue in queues:
        if queue.live and not queue._hinted:
            # Tasks wait on the clock of the loop served, which is not time.monotonic (a
            # virtual clock such as looptime's, or trio's): they cannot move to that.
            raise RuntimeError(
                f"{queue.owner.describe()} has tasks waiting on the clock of their event "
                "loop, which is not time.monotonic; a limiter shared by threads and loops "
                "runs on time.monotonic: use one limiter per loop there"
            )
    with lock:  # nobody uses a member already switched before every one is rebased
        now = _monotonic()
        moved = [_switch(queue, lock, woken) for queue in queues]
        for queue, was_moved in zip(queues, moved, strict=True):
            if was_moved:
                queue.owner.on_bind(now, True)
    for queue in queues:
        cast("SharedQueue", queue).kick()  # time the head, if any, on the timer thread


def _switch(queue: WaiterQueue, lock: threading.RLock, woken: list[_Waiter]) -> bool:
    """Make ``queue`` a shared queue on ``lock``; whether its clock changed."""
    closed = queue.aio is not None and queue.aio.is_closed()
    for waiter in queue._queue:
        if closed:  # parked in a loop closed with them: they can never run
            if waiter.state is WAITING:
                _drop_claims(queue.state, waiter.request)
            waiter.state = GONE
        else:  # parked on futures of the loop served
            waiter.loop = queue.aio
            waiter.thread = queue._thread
    if closed:
        queue._queue.clear()
        queue.live = 0
        queue.queued = 0.0
    if queue._timer is not None:
        queue._timer.cancel()
    queue._timer = None
    queue._timer_at = _INF
    queue._early = 0
    moved = queue.clock is not _monotonic  # never bound, or to a loop on another clock
    queue._lock = lock
    queue._woken = woken
    queue.key = _SHARED
    queue.aio = None
    queue.loop = NOT_ASYNCIO
    queue.clock = _monotonic
    queue._step = 1e-6
    queue._hinted = False
    queue.fast = queue._open = NO_THREAD
    queue._thread = NO_THREAD
    queue.__class__ = SharedQueue
    _SHARED_QUEUES.add(cast("SharedQueue", queue))
    return moved


def _wait_for(deadline: float) -> float:
    """Seconds to block for in one go, towards ``deadline`` (never -1: forever)."""
    return max(0.0, min(deadline - _monotonic(), _LONGEST))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class SharedQueue(WaiterQueue):
    """A waiter queue shared by threads and event loops (see the module's docstring).

    The single-loop mechanics (``dispatch``, ``remove``, ...) run under ``_lock`` and
    only record whom they granted (:meth:`_granted`); the entry points below wake them
    after releasing it.
    """

    __slots__ = ()

    shared: ClassVar[bool] = True

    # -- the clock ----------------------------------------------------------------------

    def now(self, wait: float | None = None) -> float:
        return _monotonic()

    def peek_now(self) -> float:
        return _monotonic()

    @property
    def lock(self) -> threading.RLock:
        """Held for every read or change of the state that must be consistent."""
        return self._lock

    # -- acquiring ---------------------------------------------------------------------

    def try_take(self, request: object) -> bool:
        """Take ``request`` now if nobody waits and it fits."""
        with self._lock:
            return not self.live and self.state.try_take(request, _monotonic())

    async def take(self, amount: float, request: object, timeout: float | None) -> object:
        """Wait in an asyncio task until ``request`` is granted; its ticket."""
        loop = get_running_loop()
        if loop is None:
            return await self._take_trio(amount, request, timeout)

        def park(waiter: _Waiter) -> None:  # on a future of this loop
            waiter.future = loop.create_future()
            waiter.loop = loop

        ticket, waiter = self._arrive(amount, request, timeout, park)
        if waiter is None:
            return ticket
        if waiter.future is None:
            raise AcquireTimeoutError(self.owner.timeout_message(amount))
        handle = None
        if waiter.deadline != _INF:
            if not asyncio_clock(loop).hinted:
                self.abandon(waiter)
                raise RuntimeError(
                    f"{self.owner.describe()} is shared by threads and loops and runs on "
                    "time.monotonic; this loop's clock is another (a virtual clock?)"
                )
            handle = loop.call_at(waiter.deadline, self.expire, waiter)
        try:
            await waiter.future
        except BaseException:
            if waiter.state is not GONE:
                self.abandon(waiter)
            raise
        finally:
            if handle is not None:
                handle.cancel()
        return waiter.ticket

    async def _take_trio(self, amount: float, request: object, timeout: float | None) -> object:
        """:meth:`take` for a trio task: it waits on an event its run is told to set."""
        if not trio_clock_is_real():
            raise RuntimeError(
                f"{self.owner.describe()} is shared by threads and loops and runs on "
                "time.monotonic; this trio run's clock is another (a MockClock?)"
            )
        post = poster()

        def park(waiter: _Waiter) -> None:  # on an event that this run is told to set
            waiter.event = anyio.Event()
            waiter.post = post

        ticket, waiter = self._arrive(amount, request, timeout, park)
        if waiter is None:
            return ticket
        event = waiter.event
        if event is None:
            raise AcquireTimeoutError(self.owner.timeout_message(amount))
        try:
            deadline = _INF
            if waiter.deadline != _INF:  # on this run's clock
                deadline = anyio.current_time() + (waiter.deadline - _monotonic())
            with anyio.CancelScope(deadline=deadline):
                await event.wait()
            if waiter.state is not GRANTED:  # its deadline
                self._time_out(waiter)
        except BaseException:
            if waiter.state is not GONE:
                self.abandon(waiter)
            raise
        return waiter.ticket

    def block(self, amount: float, request: object, timeout: float | None) -> object:
        """Block this thread until ``request`` is granted; its ticket."""

        def park(waiter: _Waiter) -> None:  # on a lock of its own, held until granted
            waiter.latch = threading.Lock()
            waiter.latch.acquire()

        ticket, waiter = self._arrive(amount, request, timeout, park)
        if waiter is None:
            return ticket
        latch = waiter.latch
        if latch is None:
            raise AcquireTimeoutError(self.owner.timeout_message(amount))
        try:
            while not latch.acquire(timeout=_wait_for(waiter.deadline)):
                if _monotonic() < waiter.deadline:
                    continue  # the longest single wait, or an early return
                self._time_out(waiter)
                break  # granted as it timed out: it is the caller's
        except BaseException:  # a timeout, or an interruption (KeyboardInterrupt)
            if waiter.state is not GONE:
                self.abandon(waiter)
            raise
        assert waiter.state is GRANTED  # only a grant releases the latch
        return waiter.ticket

    def _arrive(
        self,
        amount: float,
        request: object,
        timeout: float | None,
        park: Callable[[_Waiter], None],
    ) -> tuple[object, _Waiter | None]:
        """``(ticket, None)`` if nobody waits and ``request`` fits now; else
        ``(None, waiter)``, the waiter made ready by ``park`` and queued, unless
        ``timeout`` is 0 (then it is neither). Under the lock; then, once it is let go,
        a queued limiter's request is told it waits (see ``Request.parked``)."""
        with self._lock:
            now = _monotonic()
            if not self.live and self.state.try_take(request, now):
                return self.state.ticket, None
            waiter = _Waiter(amount, request, _INF if timeout is None else now + timeout)
            if timeout == 0:
                return None, waiter
            park(waiter)
            waiter.thread = get_ident()
            self.owner.before_wait(request, now)
            self.push(waiter, now)
        if isinstance(request, Request):  # (a single limiter's request is its amount)
            try:
                request.parked()
            except BaseException:  # (a listener's KeyboardInterrupt): it leaves
                self.abandon(waiter)
                raise
        return None, waiter

    def _time_out(self, waiter: _Waiter) -> None:
        """A waiter's deadline passed: it leaves the queue, unless granted meanwhile
        (then it keeps its grant); raises :class:`AcquireTimeoutError` if it was not."""
        with self._lock:
            if waiter.state is WAITING:
                self.remove(waiter, _monotonic())
            woken = self._take_woken()
        self._wake(woken)
        if waiter.state is not GRANTED:
            raise AcquireTimeoutError(self.owner.timeout_message(waiter.amount))

    # -- leaving -----------------------------------------------------------------------

    def abandon(self, waiter: _Waiter) -> None:
        """The waiter leaves with an exception: out of the queue, or its grant back."""
        with self._lock:
            if waiter.state is GRANTED:
                waiter.state = GONE
                self.state.refund(waiter.request, waiter.ticket, _monotonic())
                if self._queue:
                    self.dispatch(_monotonic())
                self.owner.on_refund()
            elif waiter.state is WAITING:
                self.remove(waiter, _monotonic())
            woken = self._take_woken()
        self._wake(woken)

    def expire(self, waiter: _Waiter) -> None:
        """A waiter's deadline, on its own loop."""
        with self._lock:
            if waiter.state is not WAITING:
                return
            self.remove(waiter, _monotonic())
            woken = self._take_woken()
        self._wake(woken)
        future = waiter.future
        if future is not None and not future.done():
            future.set_exception(AcquireTimeoutError(self.owner.timeout_message(waiter.amount)))

    def kick(self) -> None:
        with self._lock:
            if self.live:
                self.dispatch(_monotonic())
            woken = self._take_woken()
        self._wake(woken)

    # -- the mechanics, under the lock ---------------------------------------------------

    def dispatch_waiting(self) -> None:
        """Grant whoever now fits (under the lock); the caller wakes them once it lets
        go of it (:meth:`take_woken`, then :meth:`wake`)."""
        if self.live:
            self.dispatch(_monotonic())

    def push(self, waiter: _Waiter, now: float) -> None:
        self._queue.append(waiter)
        waiter.home = self
        self.fast = NO_THREAD  # never open in shared mode
        self.live += 1
        self.queued += waiter.amount
        if self.live == 1:
            self._arm(self.state.ready_at(waiter.request, now), now)

    def _granted(self, waiter: _Waiter) -> None:
        self._woken.append(waiter)  # woken by the operation that holds the lock, after it

    def _arm(self, when: float, now: float) -> None:
        if when == _INF:  # only a release or a refund can let the head in
            self._disarm()
            return
        timer = self._timer
        if timer is not None:
            if self._timer_at == when:
                return
            timer.cancel()
        self._timer_at = when
        self._timer = schedule(when, self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = _INF

    def _on_timer(self, timer: Timer) -> None:  # type: ignore[override]
        with self._lock:
            if timer is not self._timer:
                return  # cancelled after the timer thread took it
            self._timer = None
            self._timer_at = _INF
            self.dispatch(_monotonic())
            woken = self._take_woken()
        self._wake(woken)

    def next_wakeup(self) -> float | None:
        if not self.live or self._timer is None:
            return None
        return float(self._timer_at)

    def _bind(self, clock: Any) -> None:  # pragma: no cover - a shared queue never binds
        raise AssertionError("a shared queue is bound to no loop")

    # -- waking, outside the lock -------------------------------------------------------

    def take_woken(self) -> list[_Waiter]:
        """Under the lock: who was granted since, to :meth:`wake` once it is let go."""
        return self._take_woken()

    def wake(self, woken: list[_Waiter]) -> None:
        """Wake who :meth:`take_woken` gave (the lock is not held)."""
        self._wake(woken)

    def _take_woken(self) -> list[_Waiter]:
        woken = self._woken  # shared with the companions: emptied in place
        if not woken:
            return _NOBODY
        taken = woken.copy()
        woken.clear()
        return taken

    def _wake(self, woken: list[_Waiter]) -> None:
        """Wake each granted waiter once, in its own world (the lock is not held)."""
        if not woken:
            return
        me = get_ident()
        lost: list[_Waiter] = []
        try:
            for waiter in woken:
                latch = waiter.latch
                if latch is not None:
                    latch.release()
                    continue
                event = waiter.event
                if event is not None:  # a trio task's
                    if waiter.thread == me:
                        event.set()
                    else:
                        try:
                            assert waiter.post is not None
                            waiter.post(event.set)
                        except RuntimeError:  # its run is over
                            lost.append(waiter)
                    continue
                future = waiter.future
                loop = waiter.loop
                assert future is not None
                assert loop is not None
                if loop.is_closed():  # it will never run
                    lost.append(waiter)
                elif waiter.thread == me:
                    _resolve(future)
                else:
                    try:
                        loop.call_soon_threadsafe(_resolve, future)
                    except RuntimeError:  # closed meanwhile
                        lost.append(waiter)
        finally:
            if lost:
                self._give_back(lost)

    def _give_back(self, lost: list[_Waiter]) -> None:
        """Grants that can never be used (their loop is closed) go to the next waiters,
        of the queue each was granted by (this one or a companion)."""
        with self._lock:
            now = _monotonic()
            queues: list[SharedQueue] = []
            for waiter in lost:
                home = waiter.home
                assert isinstance(home, SharedQueue)
                if waiter.state is GRANTED:
                    waiter.state = GONE
                    home.state.refund(waiter.request, waiter.ticket, now)
                    if home not in queues:
                        queues.append(home)
            for home in queues:
                if home._queue:
                    home.dispatch(now)
                home.owner.on_refund()
            woken = self._take_woken()
        self._wake(woken)


# Every shared queue, for a child process after fork(): its threads are gone.
_SHARED_QUEUES: Final[weakref.WeakSet[SharedQueue]] = weakref.WeakSet()


def _after_fork() -> None:
    """In the child: nobody waits any more (their threads stayed in the parent), and no
    lock may stay held by a thread that is not there (companions keep sharing one)."""
    _SWITCHING.lock = threading.Lock()
    locks: dict[int, threading.RLock] = {}
    wakes: dict[int, list[_Waiter]] = {}
    for queue in list(_SHARED_QUEUES):
        for waiter in queue._queue:
            if waiter.state is WAITING:
                _drop_claims(queue.state, waiter.request)
            waiter.state = GONE
        queue._queue.clear()
        queue.live = 0
        queue.queued = 0.0
        queue._woken = wakes.setdefault(id(queue._woken), [])
        queue._timer = None
        queue._timer_at = _INF
        queue._lock = locks.setdefault(id(queue._lock), threading.RLock())


if hasattr(os, "register_at_fork"):  # pragma: no branch
    os.register_at_fork(after_in_child=_after_fork)
