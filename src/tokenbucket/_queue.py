"""The async shell shared by every in-memory limiter: a FIFO waiter queue with one timer.

Theory of operation
-------------------
A limiter owns a pure state object (see ``_core``) and a FIFO queue of waiters. Only the
queue head is ever timed: when it cannot be granted, the state says when it can
(``ready_at``) and exactly one timer is armed for that instant. When the timer fires, the
head and every waiter behind it that now fits are granted in order, and the timer is
re-armed for the new head. A waiter is woken once, when it is granted; nothing polls and
nothing wakes everybody.

A grant is recorded in the state at the moment it is made, before the waiter runs again,
so no one can barge onto capacity meant for the head, and ``try_acquire`` refuses while
anyone is queued.

Cancellation and timeouts: a waiter that leaves before it is granted is removed (lazily,
in O(1)); if it was the head, the next waiter is granted or timed at once. A waiter that
was granted but cancelled before it could run gives its grant back (``refund``) and the
capacity goes to the next waiter at once.

Event loops: on asyncio the timer is a ``loop.call_at`` callback and a waiter parks on a
future. On every other backend (trio, through anyio) each waiter parks on an event inside
its own cancel scope, and the head's scope deadline *is* the timer: the head wakes at its
instant and grants itself and those behind it. The limiter binds to the event loop that
uses it; a different loop later (a new ``asyncio.run``, a new ``trio.run``) re-binds it,
and when that loop's clock has another origin the state is re-based as if no time had
passed, which can under-admit briefly but never over-admit or hang.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections import deque
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio

from . import _validate
from ._backend import open_store
from ._core import Meter, Request
from ._errors import AcquireTimeoutError, AmountExceedsLimitError, ArgumentTypeError
from ._statistics import LimitStatistics

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from ._backend import Backend, Store
    from ._rate import Rate

__all__: list[str] = []  # the shell of the public limiters; nothing public

_get_running_loop: Final = asyncio.events._get_running_loop
# The asyncio loop that last served a limiter in the current task. On CPython <= 3.12
# asyncio.get_running_loop() makes a getpid() system call; a context variable read is
# several times cheaper, and a task never changes loops. Only loops whose clock the
# limiter reads as time.monotonic (the default clock, and uvloop's) are recorded, so a
# stale value (a context copied out of one loop into another) can only name a loop on
# the very same clock.
_LOOP_HINT: Final[ContextVar[object]] = ContextVar("tokenbucket_loop_hint", default=None)
_BASE_TIME: Final = asyncio.BaseEventLoop.time
_INF: Final = math.inf

_NOT_ASYNCIO: Final = object()

_WAITING: Final = 0
_GRANTED: Final = 1
_GONE: Final = 2


class _State(Protocol):
    """What the queue needs of a limit's state. A *request* is whatever the state takes
    (a float amount for the single limiters, a vector for :class:`Limiter`)."""

    @property
    def ticket(self) -> Any: ...
    @property
    def last_update(self) -> float: ...
    def try_take(self, request: Any, now: float) -> bool: ...
    def ready_at(self, request: Any, now: float) -> float: ...
    def refund(self, request: Any, ticket: Any, now: float) -> object: ...
    def rebase(self, now: float) -> None: ...


class _LevelState(_State, Protocol):
    def level(self, now: float) -> float: ...


class _Waiter:
    __slots__ = (
        "amount",
        "deadline",
        "event",
        "future",
        "request",
        "scope",
        "state",
        "ticket",
        "wake",
    )

    def __init__(self, amount: float, request: object, deadline: float) -> None:
        self.amount = amount  # what statistics count as queued
        self.request = request  # what the state is asked for
        self.state = _WAITING
        self.ticket: object = None
        self.future: asyncio.Future[None] | None = None
        self.event: anyio.Event | None = None
        self.scope: anyio.CancelScope | None = None
        self.wake = _INF
        self.deadline = deadline


def _trio_root() -> object | None:
    trio = sys.modules.get("trio")
    if trio is None:
        return None
    try:
        root: object = trio.lowlevel.current_root_task()
    except RuntimeError:
        return None
    return root


class WaiterQueue:
    """The FIFO queue, its one timer and its binding to an event loop (no public API)."""

    __slots__ = (
        "__weakref__",
        "_aio",
        "_clock",
        "_early",
        "_hinted",
        "_key",
        "_live",
        "_loop",
        "_queue",
        "_queued",
        "_state",
        "_step",
        "_timer",
        "_timer_at",
    )

    def __init__(self, state: _State) -> None:
        self._state = state
        self._queue: deque[_Waiter] = deque()
        self._live = 0
        self._queued = 0.0
        self._key: object | None = None
        # The asyncio loop this limiter serves, or _NOT_ASYNCIO (never equal to what
        # _get_running_loop() or _LOOP_HINT return) when unbound or serving trio.
        self._loop: object = _NOT_ASYNCIO
        self._aio: asyncio.AbstractEventLoop | None = None
        self._clock: Callable[[], float] = _unbound_clock
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = _INF
        self._early = 0
        self._step = 1e-6
        self._hinted = False

    # -- waiting (all asynchronous) ------------------------------------------------------

    async def _wait(self, waiter: _Waiter, now: float) -> None:
        """Queue ``waiter`` (which could not be granted at ``now``) until it is granted.

        Raises AcquireTimeoutError at its deadline; on any exception (a cancellation
        included) it leaves the limiter as if it had never come.
        """
        if self._aio is not None:
            await self._wait_asyncio(waiter, self._aio, now)
        else:
            await self._wait_anyio(waiter, now)

    async def _wait_asyncio(
        self, waiter: _Waiter, loop: asyncio.AbstractEventLoop, now: float
    ) -> None:
        future = waiter.future = loop.create_future()
        self._push(waiter)
        if self._live == 1:
            self._arm(self._state.ready_at(waiter.request, now), now)
        handle = None
        if waiter.deadline != _INF:
            handle = loop.call_at(waiter.deadline, self._expire, waiter)
        try:
            await future
        except BaseException:
            if waiter.state is not _GONE:
                self._abandon(waiter)
            raise
        finally:
            if handle is not None:
                handle.cancel()

    async def _wait_anyio(self, waiter: _Waiter, now: float) -> None:
        waiter.event = anyio.Event()
        self._push(waiter)
        if self._live == 1:
            waiter.wake = self._state.ready_at(waiter.request, now)
        try:
            while True:
                with anyio.CancelScope(deadline=min(waiter.wake, waiter.deadline)) as scope:
                    waiter.scope = scope
                    await waiter.event.wait()
                waiter.scope = None
                if waiter.state is _GRANTED:
                    return
                now = self._clock()
                if now >= waiter.deadline:
                    self._remove(waiter, now)
                    raise AcquireTimeoutError(self._timeout_message(waiter))
                if self._queue[0] is waiter and now >= waiter.wake:
                    self._dispatch(now)
                    if waiter.state is _GRANTED:
                        return
        except BaseException:
            waiter.scope = None
            if waiter.state is not _GONE:
                self._abandon(waiter)
            raise

    # -- queue mechanics (all synchronous) -------------------------------------------------

    def _push(self, waiter: _Waiter) -> None:
        self._queue.append(waiter)
        self._live += 1
        self._queued += waiter.amount

    def _dispatch(self, now: float) -> None:
        """Grant the queue head and everyone behind it who fits; time the next head."""
        queue = self._queue
        state = self._state
        while queue:
            waiter = queue[0]
            if waiter.state is not _WAITING:
                queue.popleft()
                continue
            future = waiter.future
            if future is not None and future.done():
                # Its task was cancelled and has not run yet: it will find itself gone.
                queue.popleft()
                self._forget(waiter)
                continue
            if not state.try_take(waiter.request, now):
                self._arm(state.ready_at(waiter.request, now), now)
                return
            queue.popleft()
            waiter.state = _GRANTED
            waiter.ticket = state.ticket
            self._live -= 1
            self._queued -= waiter.amount
            if future is not None:
                future.set_result(None)
            else:
                assert waiter.event is not None
                waiter.event.set()
            # Each grant is charged at the instant it is made: if the process is
            # preempted in the middle of a long batch, the later grants count from then.
            later = self._clock()
            if later > now:
                now = later
        self._queued = 0.0
        self._disarm()

    def _forget(self, waiter: _Waiter) -> None:
        waiter.state = _GONE
        self._live -= 1
        self._queued -= waiter.amount

    def _remove(self, waiter: _Waiter, now: float) -> None:
        """Take a waiting (never granted) waiter out of the queue."""
        self._forget(waiter)
        queue = self._queue
        if queue and queue[0] is waiter:
            queue.popleft()
            self._dispatch(now)
        elif len(queue) > 2 * self._live + 64:
            self._queue = deque(w for w in queue if w.state is _WAITING)

    def _abandon(self, waiter: _Waiter) -> None:
        """The waiter's task is leaving ``acquire`` with an exception."""
        now = self._clock()
        if waiter.state is _GRANTED:
            waiter.state = _GONE
            self._state.refund(waiter.request, waiter.ticket, now)
            if self._queue:
                self._dispatch(now)
        else:
            self._remove(waiter, now)

    def _kick(self) -> None:
        """Capacity came back outside the queue's own flow (a release, a refund, a shared
        limit): grant whoever now fits, or re-time the head."""
        if self._live and self._key is not None:
            self._dispatch(self._clock())

    def _expire(self, waiter: _Waiter) -> None:
        """Timeout callback (asyncio)."""
        if waiter.state is not _WAITING:
            return
        future = waiter.future
        self._remove(waiter, self._clock())
        if future is not None and not future.done():
            future.set_exception(AcquireTimeoutError(self._timeout_message(waiter)))

    def _timeout_message(self, waiter: _Waiter) -> str:
        return f"timed out waiting for {waiter.amount!r} units from {self!r}"

    def _arm(self, when: float, now: float) -> None:
        """Time the queue head for ``when``."""
        if self._early:
            # The loop fired the last timer before its clock reached it (a coarse or
            # quantised clock): never arm closer than one step, so it cannot spin.
            when = max(when, now + self._step * (1 << min(self._early - 1, 20)))
        loop = self._aio
        if when == _INF and loop is not None:
            # Nothing but a release or a refund can let the head in: no timer.
            self._disarm()
            return
        if loop is None:
            head = self._queue[0]
            head.wake = when
            if head.scope is not None:
                head.scope.deadline = min(when, head.deadline)
            return
        timer = self._timer
        if timer is not None:
            if self._timer_at == when:
                return
            timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = _INF
        self._early = 0

    def _on_timer(self) -> None:
        self._timer = None
        now = self._clock()
        self._early = self._early + 1 if now < self._timer_at else 0
        self._dispatch(now)

    def _next_wakeup(self) -> float | None:
        if self._aio is not None:
            return self._timer_at if self._timer is not None else None
        for waiter in self._queue:
            if waiter.state is _WAITING:
                return waiter.wake if waiter.wake != _INF else None
        return None

    # -- event loop binding -----------------------------------------------------------------

    def _now(self) -> float:
        """Bind to the running event loop if needed and return its time."""
        loop = _get_running_loop()
        if loop is not None:
            if loop is not self._loop:
                uvloop = type(loop).__module__.startswith("uvloop")
                # uvloop's loop.time() is CLOCK_MONOTONIC floored to the millisecond and
                # cached per loop iteration: time.monotonic reads the same clock exactly.
                monotonic = type(loop).time is _BASE_TIME or uvloop
                clock = time.monotonic if monotonic else loop.time
                self._bind(loop, loop, clock, 1e-3 if uvloop else 1e-6)
                self._hinted = monotonic
            if self._hinted:
                _LOOP_HINT.set(loop)
            return self._clock()
        root = _trio_root()
        if root is None:
            raise RuntimeError(
                f"{type(self).__name__} must be used from a running asyncio or trio event loop"
            )
        if root is not self._key:
            trio = sys.modules["trio"]
            self._bind(root, None, trio.current_time, 1e-6)
        return self._clock()

    def _peek_now(self) -> float:
        loop = _get_running_loop()
        if loop is not None and loop is self._aio:
            return self._clock()
        if loop is None and self._key is not None and _trio_root() is self._key:
            return self._clock()
        return self._state.last_update

    def _bind(
        self,
        key: object,
        loop: asyncio.AbstractEventLoop | None,
        clock: Callable[[], float],
        step: float,
    ) -> None:
        if self._live:
            old = self._aio
            if old is None or not old.is_closed():
                raise RuntimeError(
                    f"{self!r} has tasks waiting in another event loop; "
                    "a limiter serves one event loop at a time"
                )
            # That loop was closed with its waiters still parked: they can never run.
            for waiter in self._queue:
                waiter.state = _GONE
            self._live = 0
        self._queue.clear()
        self._queued = 0.0
        self._disarm()
        same_clock = clock is time.monotonic and self._clock is time.monotonic
        self._key = key
        self._aio = loop
        self._loop = _NOT_ASYNCIO if loop is None else loop
        self._clock = clock
        self._step = step
        self._hinted = False
        if not same_clock:
            self._rebase(clock())

    def _rebase(self, now: float) -> None:
        """The limiter moved onto a clock with another origin."""
        self._state.rebase(now)


class QueuedLimiter(WaiterQueue):
    """Base of the single limiters: acquire/try_acquire of an amount over a FIFO queue."""

    __slots__ = ("_max", "_remote")

    _LIMIT_NAME = "limit"
    _state: _LevelState

    def __init__(
        self,
        state: _LevelState,
        maximum: float,
        rate: Rate,
        backend: Backend | None,
        key: str | None,
    ) -> None:
        super().__init__(state)
        self._max = maximum
        # Where the state lives when it is not in memory (Redis), or None.
        self._remote: Store | None = None
        if backend is not None or key is not None:
            self._remote = open_store(backend, key, None, ("units",), [Meter("units", rate)], None)

    # -- public API ------------------------------------------------------------------

    async def acquire(self, amount: float = 1, *, timeout: float | None = None) -> None:
        """Wait until ``amount`` units are granted, in FIFO order.

        Returns without yielding to the event loop when the amount is available and
        nobody is queued; otherwise queues behind earlier callers and sleeps until
        granted (woken once, by the limiter). ``acquire(0)`` returns at once.

        Args:
            amount: units to take (a float > 0; fractional costs are fine).
            timeout: seconds to wait at most; ``None`` or ``math.inf`` waits forever,
                ``0`` only takes what is available right now.

        Raises:
            AmountExceedsLimitError: ``amount`` is more than the limiter can ever grant.
            InvalidArgumentError, ArgumentTypeError: a bad ``amount`` or ``timeout``.
            AcquireTimeoutError: ``timeout`` passed first. Nothing is consumed.

        Cancellation: a cancelled (or timed-out) caller consumes nothing and delays no
        one; if it had just been granted, the grant goes back to the next waiter.
        """
        if (
            not self._live
            and timeout is None
            and (_LOOP_HINT.get() is self._loop or _get_running_loop() is self._loop)
        ):
            cls = amount.__class__
            if (
                (cls is int or cls is float)
                and 0 < amount <= self._max
                and self._state.try_take(amount, self._clock())
            ):
                return
        await self._acquire(amount, timeout)

    def try_acquire(self, amount: float = 1) -> bool:
        """Take ``amount`` units if available right now; never waits, never queues.

        Returns ``False`` while any task is queued in :meth:`acquire`, so it never
        overtakes a waiter. ``try_acquire(0)`` returns ``True``. Must be called from
        inside a running event loop (it reads the loop's clock).

        Raises:
            AmountExceedsLimitError: ``amount`` is more than the limiter can ever grant.
            InvalidArgumentError, ArgumentTypeError: a bad ``amount``.
        """
        cls = amount.__class__
        if not ((cls is int or cls is float) and 0 < amount <= self._max):
            amount = self._check_amount(amount)
            if amount == 0:
                return True
        if self._remote is not None:
            raise ArgumentTypeError(
                "amount",
                f"{type(self).__name__} with a backend cannot answer without a round trip: "
                "use 'await limiter.acquire(amount, timeout=0)'",
            )
        now = self._now()
        if self._live:
            return False
        return self._state.try_take(amount, now)

    def statistics(self) -> LimitStatistics:
        """A snapshot of the limiter's state; cheap and side-effect free.

        Inside the event loop that uses the limiter, ``available`` is computed at the
        loop's current time; elsewhere, at the last instant the limiter saw. With a
        backend, ``available`` is ``None`` and the rest counts this process's waiters.
        """
        if self._remote is not None:
            remote = self._remote.statistics()
            return LimitStatistics(
                available=None,
                limit=self._max,
                waiters=remote.waiters,
                queued=self._queued,
                next_wakeup=remote.next_wakeup,
            )
        now = self._peek_now()
        return LimitStatistics(
            available=max(0.0, self._state.level(now)),
            limit=self._max,
            waiters=self._live,
            queued=self._queued if self._live else 0.0,
            next_wakeup=self._next_wakeup() if self._live else None,
        )

    async def __aenter__(self) -> None:
        """``async with limiter:`` acquires one unit (see :meth:`acquire`)."""
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Nothing to release: rate-limited units are spent once granted."""

    # -- the slow path -------------------------------------------------------------------

    def _check_amount(self, amount: object) -> float:
        value = _validate.real(amount, "amount", zero=True)
        if value > self._max:
            raise AmountExceedsLimitError(value, self._max, self._LIMIT_NAME)
        return value

    async def _acquire(self, amount: object, timeout: object) -> None:
        value = self._check_amount(amount)
        seconds = _validate.timeout(timeout)
        if self._remote is not None:
            if value:
                self._queued += value
                try:
                    await self._remote.take(Request((value,), False, 0), seconds)
                finally:
                    self._queued -= value
            return
        now = self._now()
        if value == 0:
            return
        if not self._live and self._state.try_take(value, now):
            return
        if seconds == 0:
            raise AcquireTimeoutError(f"{value!r} units were not available at once")
        await self._wait(_Waiter(value, value, _INF if seconds is None else now + seconds), now)


def _unbound_clock() -> float:
    raise RuntimeError("limiter is not bound to an event loop")  # pragma: no cover


def _describe(value: float) -> str:
    return f"{value:.6g}"


def limiter_repr(limiter: QueuedLimiter, config: str) -> str:
    stats = limiter.statistics()
    available = "?" if stats.available is None else _describe(stats.available)
    text = f"<{type(limiter).__name__} {config} available={available} waiters={stats.waiters}"
    if stats.next_wakeup is not None:
        text += f" next_wakeup={_describe(stats.next_wakeup)}"
    return text + ">"
