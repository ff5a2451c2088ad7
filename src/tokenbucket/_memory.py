"""The in-memory store: a multi-limit state behind this process's FIFO waiter queue.

Theory of operation
-------------------
A :class:`MemoryStore` keeps a :class:`~tokenbucket._core.MultiState` and queues the
requests it cannot grant yet in the waiter queue of ``_queue`` (one timer, one wake-up
per grant). Besides what the queue does for every limiter, it looks after *pools*:
meters shared by several limiters (a group's shared limits). When capacity comes back
on a pool (a grant released a claim, a refund, a cancellation), every store using it is
kicked, so its head is granted or re-timed at once; a pool moved onto another clock by
one of its users is re-based when the next user binds to it.
"""

from __future__ import annotations

import itertools
import math
import time
import weakref
from typing import TYPE_CHECKING, Final

from ._errors import AcquireTimeoutError
from ._queue import _GRANTED, _LOOP_HINT, _WAITING, WaiterQueue, _Waiter
from ._statistics import LimiterStatistics

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Iterable, Mapping

    from ._core import Meter, MultiState, Request
    from ._feedback import FeedbackPlan

__all__ = ["MemoryStore"]

_INF: Final = math.inf
_MONOTONIC: Final = object()
_ARRIVALS: Final = itertools.count()


class _Pool:
    """A meter shared by several stores: who uses it, and which clock it is on."""

    __slots__ = ("origin", "users")

    def __init__(self) -> None:
        self.users: list[weakref.ref[MemoryStore]] = []
        self.origin: object | None = None


_POOLS: Final[weakref.WeakKeyDictionary[Meter, _Pool]] = weakref.WeakKeyDictionary()

Ticket = tuple[float | None, ...]


class MemoryStore(WaiterQueue):
    """A limiter's state in this process (see the module's docstring)."""

    __slots__ = ("_describe", "_last_wait", "_multi", "_origin", "_pools")

    def __init__(self, multi: MultiState, describe: Callable[[], str]) -> None:
        super().__init__(multi)
        self._multi = multi
        self._describe = describe  # the limiter's repr, for messages
        self._pools: dict[Meter, _Pool] = {}
        self._origin: object | None = None
        self._last_wait: float | None = None

    def adopt(self, meters: Iterable[Meter]) -> None:
        """Use ``meters``, shared with other stores (before any use)."""
        for meter in meters:
            pool = _POOLS.get(meter)
            if pool is None:
                pool = _POOLS[meter] = _Pool()
            pool.users.append(weakref.ref(self))
            self._pools[meter] = pool

    @property
    def in_use(self) -> bool:
        return bool(self._live or self._multi.in_flight or self._key is not None)

    # -- the store's operations -------------------------------------------------------------

    def try_take(self, request: Request) -> Ticket | None:
        now = self._clock() if _LOOP_HINT.get() is self._loop else self._now()
        multi = self._multi
        if self._live or not multi.try_take(request, now):
            return None
        if multi.freed:
            self._after_grant()
        self._last_wait = 0.0
        return multi.ticket

    async def take(self, request: Request, timeout: float | None) -> Ticket:
        now = self._clock() if _LOOP_HINT.get() is self._loop else self._now()
        multi = self._multi
        if not self._live and multi.try_take(request, now):
            if multi.freed:
                self._after_grant()
            self._last_wait = 0.0
            return multi.ticket
        if timeout == 0:
            raise AcquireTimeoutError(f"{self._describe()} could not grant the request at once")
        waiter = _Waiter(1.0, request, _INF if timeout is None else now + timeout)
        request.seq = next(_ARRIVALS)  # its place among the waiters of every store
        if not self._live:
            multi.claim(request, now)  # it will be the head
        await self._wait(waiter, now)
        self._last_wait = max(0.0, self._clock() - now)
        ticket = waiter.ticket
        assert isinstance(ticket, tuple)
        return ticket

    def adjust(self, request: Request, ticket: object, actual: Mapping[int, float]) -> None:
        assert isinstance(ticket, tuple)
        refunded = self._multi.adjust(request, ticket, actual, self._now())
        if refunded:
            self._kick_all(refunded)

    def release(self, request: Request, ticket: object) -> None:
        if request.slot:
            self._multi.release(request)
            if self._key is not None and self._live:
                self._kick()

    def feedback(self, plan: FeedbackPlan) -> None:
        now = self._now()
        multi = self._multi
        for clamp in plan.clamps:
            meter = multi.meters[clamp.meter]
            multi.clamp(meter, clamp.remaining, now + clamp.reset, now)
        if plan.pause is not None:
            multi.pause(now + plan.pause, now)
        self._kick()

    def statistics(self) -> LimiterStatistics:
        now = self._peek_now()
        multi = self._multi
        paused = multi.paused_until if multi.paused_until > now else None
        return LimiterStatistics(
            available=multi.available(now),
            in_flight=multi.in_flight,
            max_concurrency=multi.max_concurrency,
            waiters=self._live,
            paused_until=paused,
            next_wakeup=self._next_wakeup() if self._live else None,
            last_wait=self._last_wait,
        )

    def at_rest(self) -> bool:
        if self._live:
            return False
        # On time.monotonic the present is known even outside the loop that used it.
        now = time.monotonic() if self._clock is time.monotonic else self._peek_now()
        return self._multi.at_rest(now)

    # -- the queue's hooks ----------------------------------------------------------------

    def _timeout_message(self, waiter: _Waiter) -> str:
        return f"timed out waiting for {self._describe()}"

    def _after_grant(self) -> None:
        multi = self._multi
        if multi.freed:
            freed, multi.freed = multi.freed, []
            self._kick_others(freed)

    def _dispatch(self, now: float) -> None:
        super()._dispatch(now)
        multi = self._multi
        for waiter in self._queue:  # the head, if it is still waiting
            if waiter.state is _WAITING:
                multi.claim(waiter.request, now)  # type: ignore[arg-type]
                break
        if multi.freed:
            freed, multi.freed = multi.freed, []
            self._kick_all(freed)

    def _forget(self, waiter: _Waiter) -> None:
        super()._forget(waiter)
        released = self._multi.unclaim(waiter.request)  # type: ignore[arg-type]
        if released:
            self._kick_others(released)

    def _abandon(self, waiter: _Waiter) -> None:
        granted = waiter.state is _GRANTED
        super()._abandon(waiter)
        if granted:  # its grant went back, to shared meters too
            self._kick_all(self._pools)

    def _kick_all(self, meters: Iterable[Meter]) -> None:
        """Capacity came back on ``meters``: wake this store and any sharing them."""
        self._kick()
        self._kick_others(meters)

    def _kick_others(self, meters: Iterable[Meter]) -> None:
        for meter in meters:
            pool = self._pools.get(meter)
            if pool is None:
                continue
            for ref in pool.users:
                other = ref()
                if other is not None and other is not self and other._key is self._key:
                    other._kick()

    def _bind(
        self,
        key: object,
        loop: asyncio.AbstractEventLoop | None,
        clock: Callable[[], float],
        step: float,
    ) -> None:
        # Instants on time.monotonic are comparable across loops; others only within one.
        origin = _MONOTONIC if clock is time.monotonic else key
        if self._clock is time.monotonic:  # the old clock can still be read
            self._multi.seen = max(self._multi.seen, time.monotonic())
        self._origin = origin
        super()._bind(key, loop, clock, step)
        now = clock()
        moved = []
        for meter, pool in self._pools.items():
            if pool.origin is not None and pool.origin is not origin:
                moved.append(meter)  # another user moved it onto another clock
            pool.origin = origin
        if moved:
            for meter in moved:
                meter.core.rebase(now)

    def _rebase(self, now: float) -> None:
        # The store's clock changed: its own meters and pause move; pools follow their
        # users (see _bind).
        self._multi.rebase(now, [m for m in self._multi.meters if m not in self._pools])
