"""What TokenBucket and SlidingWindow share: an amount taken from one limit, in FIFO order.

A single limiter keeps its pure state (``_core``) and owns a :class:`WaiterQueue`. Its
uncontended ``acquire`` is the cheapest path in the library: when nobody waits, the
amount is a plain number and the task is in the loop the limiter serves, it takes the
amount from the state and returns without yielding. Everything else (checks, waiting,
timeouts) goes through ``_acquire``. Given a backend, the state lives there instead and
every acquisition goes through the backend's store (see ``_backend``).
"""

from __future__ import annotations

import threading
import time
from _thread import get_ident
from typing import TYPE_CHECKING, cast

from . import _validate
from ._backend import open_store
from ._core import Meter, Request
from ._errors import AcquireTimeoutError, AmountExceedsLimitError, ArgumentTypeError
from ._loop import LOOP_HINT
from ._portal import ThreadStore
from ._queue import BRIEF, NotSharedYet, WaiterQueue, _Waiter
from ._statistics import LimitStatistics
from ._threads import SharedQueue

if TYPE_CHECKING:
    from types import TracebackType

    from ._backend import Backend, Store
    from ._core import BucketState, WindowLog
    from ._rate import Rate

__all__: list[str] = []

_INF = float("inf")
_monotonic = time.monotonic
_hint = LOOP_HINT.get
_OPENING = threading.Lock()  # opening a limiter's store for threads


class SingleLimiter:
    """Base of the single limiters: acquire/try_acquire of an amount over a FIFO queue."""

    __slots__ = (
        "__weakref__",
        "_max",
        "_place",
        "_remote",
        "_state",
        "_take",
        "_threads",
        "_waiters",
    )

    _LIMIT_NAME = "limit"
    shareable = True  # by threads and loops (see _threads)

    def __init__(
        self,
        state: BucketState | WindowLog,
        rate: Rate,
        backend: Backend | None,
        key: str | None,
    ) -> None:
        self._state = state
        self._take = state.try_take
        self._max = state.maximum
        self._waiters = WaiterQueue(state, self)
        # Where the state lives when it is not in memory (Redis), or None.
        self._remote: Store | None = None
        self._threads: ThreadStore | None = None  # see _blocking_remote
        self._place = (backend, key, Meter("units", rate))
        if backend is not None or key is not None:
            self._remote = self._open_remote()

    # -- public API ------------------------------------------------------------------

    async def acquire(self, amount: float = 1.0, *, timeout: float | None = None) -> None:
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
        waiters = self._waiters
        if waiters.fast == get_ident() and _hint() is waiters.loop and timeout is None:
            # Nobody waits, this task runs in the thread of the loop served and its clock
            # is time.monotonic. An amount above the limit never fits, so it falls through
            # to the checks below with NaN and every other value the state refuses.
            cls = amount.__class__
            if (cls is int or cls is float) and amount > 0 and self._take(amount, _monotonic()):
                return
        await self._acquire(amount, timeout)

    def try_acquire(self, amount: float = 1.0) -> bool:
        """Take ``amount`` units if available right now; never waits, never queues.

        Returns ``False`` while any task is queued in :meth:`acquire`, so it never
        overtakes a waiter. ``try_acquire(0)`` returns ``True``. Must be called from
        inside a running event loop (it reads the loop's clock).

        Raises:
            AmountExceedsLimitError: ``amount`` is more than the limiter can ever grant.
            InvalidArgumentError, ArgumentTypeError: a bad ``amount``; with a backend,
                :class:`ArgumentTypeError` (an answer needs a round trip: await
                ``acquire(amount, timeout=0)`` instead).
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
        waiters = self._waiters
        try:
            now = waiters.now(BRIEF)
        except NotSharedYet:  # the loop that uses it, in another thread, has not shared it
            return False
        if waiters.shared:
            return cast("SharedQueue", waiters).try_take(amount)
        if waiters.live:
            return False
        return self._state.try_take(amount, now)

    def statistics(self) -> LimitStatistics:
        """A snapshot of the limiter's state; cheap and side-effect free.

        Inside the event loop that uses the limiter, ``available`` is computed at the
        loop's current time; elsewhere, at the last instant the limiter saw. Read from
        another thread while that loop runs (a dashboard's), the limiter becomes shared
        (see :meth:`acquire_blocking`), so that the read is consistent. With a backend,
        ``available`` is ``None`` and the rest counts this process's waiters.
        """
        waiters = self._waiters
        if self._remote is not None:
            remote = self._remote.statistics()
            return LimitStatistics(
                available=None,
                limit=self._max,
                waiters=remote.waiters,
                queued=waiters.queued,
                next_wakeup=remote.next_wakeup,
            )
        if waiters._thread != get_ident():
            waiters.share_to_read()
        if isinstance(waiters, SharedQueue):
            with waiters.lock:
                return self._statistics(waiters)
        return self._statistics(waiters)

    def _statistics(self, waiters: WaiterQueue) -> LimitStatistics:
        return LimitStatistics(
            available=max(0.0, self._state.level(waiters.peek_now())),
            limit=self._max,
            waiters=waiters.live,
            queued=waiters.queued if waiters.live else 0.0,
            next_wakeup=waiters.next_wakeup(),
        )

    def acquire_blocking(self, amount: float = 1.0, *, timeout: float | None = None) -> None:
        """Block this thread until ``amount`` units are granted, in FIFO order.

        The same acquisition as :meth:`acquire`, for threads: one FIFO order across every
        thread and every event loop using the limiter, and the thread sleeps until it is
        granted or times out (woken once). The first call (or any use from a thread
        other than that of the event loop using the limiter) makes the limiter *shared*:
        from then on it is safe to use from any number of threads and asyncio loops at
        once, on ``time.monotonic``. Do not call it from a coroutine: it blocks the loop.

        Args:
            amount: units to take (a float > 0).
            timeout: seconds to wait at most; ``None`` or ``math.inf`` waits forever,
                ``0`` only takes what is available right now.

        Raises:
            AmountExceedsLimitError: ``amount`` is more than the limiter can ever grant.
            InvalidArgumentError, ArgumentTypeError: a bad ``amount`` or ``timeout``.
            AcquireTimeoutError: ``timeout`` passed first. Nothing is consumed.
            RuntimeError: the limiter serves a trio run in another thread, or has tasks
                waiting on a loop whose clock is not ``time.monotonic``.

        An exception while blocked (``KeyboardInterrupt``) consumes nothing. With a
        backend (Redis), threads take through a second store of the limiter, on the same
        key, in the process's portal loop (one daemon thread), which batches their round
        trips.
        """
        cls = amount.__class__
        if (cls is float or cls is int) and 0 < amount <= self._max:
            value = float(amount)
        else:
            value = self._check_amount(amount)
        seconds = None if timeout is None else _validate.timeout(timeout)
        if value == 0:
            return
        if self._remote is not None:
            self._blocking_remote().acquire_blocking(Request((value,), False), seconds)
            return
        waiters = self._waiters
        start = _monotonic()
        if not waiters.share(seconds):
            raise AcquireTimeoutError(self.timeout_message(value))
        assert isinstance(waiters, SharedQueue)
        if seconds is not None:
            seconds = max(0.0, seconds - (_monotonic() - start))
        waiters.block(value, value, seconds)

    def __enter__(self) -> None:
        """``with limiter:`` blocks this thread until one unit is granted (see
        :meth:`acquire_blocking`)."""
        self.acquire_blocking()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Nothing to release: rate-limited units are spent once granted."""

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

    def _open_remote(self, *, threads: bool = False) -> Store:
        backend, key, meter = self._place
        return open_store(backend, key, None, ("units",), [meter], None, threads=threads)

    def _blocking_remote(self) -> ThreadStore:
        """The store that threads take through: a second store of the same key, in the
        portal's loop (see ``_portal``), opened on first use."""
        threads = self._threads
        if threads is None:
            with _OPENING:
                threads = self._threads
                if threads is None:
                    threads = self._threads = ThreadStore(self._open_remote(threads=True))
        return threads

    def _repr(self, config: str) -> str:
        stats = self.statistics()
        available = "?" if stats.available is None else f"{stats.available:.6g}"
        text = f"<{type(self).__name__} {config} available={available} waiters={stats.waiters}"
        if stats.next_wakeup is not None:
            text += f" next_wakeup={stats.next_wakeup:.6g}"
        return text + ">"

    # -- the slow path -------------------------------------------------------------------

    def _check_amount(self, amount: object) -> float:
        value = _validate.real(amount, "amount", zero=True)
        if value > self._max:
            raise AmountExceedsLimitError(value, self._max, self._LIMIT_NAME)
        return value

    async def _acquire(self, amount: float, timeout: float | None) -> None:
        cls = amount.__class__  # what the caller passed, whatever the annotations say
        if (cls is float or cls is int) and 0 < amount <= self._max:
            value = float(amount)
        else:
            value = self._check_amount(amount)
        seconds = None if timeout is None else _validate.timeout(timeout)
        waiters = self._waiters
        if self._remote is not None:
            if value:
                waiters.queued += value
                try:
                    await self._remote.take(Request((value,), False), seconds)
                finally:
                    waiters.queued -= value
            return
        try:
            now = await waiters.now_async(seconds)
        except NotSharedYet:  # the loop it serves, in another thread, did not share it
            raise AcquireTimeoutError(self.timeout_message(value)) from None
        if value == 0:
            return
        if isinstance(waiters, SharedQueue):
            await waiters.take(value, value, seconds)
            return
        if not waiters.live and self._state.try_take(value, now):
            return
        if seconds == 0:
            raise AcquireTimeoutError(f"{value!r} units were not available at once")
        deadline = _INF if seconds is None else now + seconds
        await waiters.wait(_Waiter(value, value, deadline), now)

    # -- what the queue tells its owner --------------------------------------------------

    def companions(self) -> list[WaiterQueue]:
        """Its own queue: it shares no limit with another."""
        return [self._waiters]

    def describe(self) -> str:
        return repr(self)

    def timeout_message(self, amount: float) -> str:
        return f"timed out waiting for {amount!r} units from {self!r}"

    def after_dispatch(self, head: object, now: float) -> None:
        pass

    def before_wait(self, request: object, now: float) -> None:
        pass

    def on_leave(self, request: object) -> None:
        pass

    def on_refund(self) -> None:
        pass

    def on_bind(self, now: float, moved: bool) -> None:
        if moved:
            self._state.rebase(now)
