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
from _thread import get_ident
from typing import TYPE_CHECKING, Final, TypeVar

from ._errors import AcquireTimeoutError
from ._loop import LOOP_HINT, get_running_loop, trio_root
from ._queue import NotSharedYet, WaiterQueue, _Waiter
from ._statistics import LimiterStatistics
from ._threads import SharedQueue

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from ._core import Counts, Meter, MultiState, RateSpec, Request
    from ._feedback import FeedbackPlan

__all__ = ["MemoryStore"]

_INF: Final = math.inf
_MONOTONIC: Final = object()
_ARRIVALS: Final = itertools.count()
_monotonic: Final = time.monotonic
_hint: Final = LOOP_HINT.get
_T = TypeVar("_T")


class _Pool:
    """A meter shared by several stores: who uses it, and which clock it is on."""

    __slots__ = ("origin", "users")

    def __init__(self) -> None:
        self.users: list[weakref.ref[MemoryStore]] = []
        self.origin: object | None = None


_POOLS: Final[weakref.WeakKeyDictionary[Meter, _Pool]] = weakref.WeakKeyDictionary()

Ticket = list[float | None]


class MemoryStore:
    """A limiter's state in this process (see the module's docstring)."""

    __slots__ = (
        "__weakref__",
        "_describe",
        "_last_wait",
        "_multi",
        "_origin",
        "_pools",
        "_stand_in",
        "_waiters",
    )

    def __init__(self, multi: MultiState, describe: Callable[[], str]) -> None:
        self._multi = multi
        self._waiters = WaiterQueue(multi, self)
        self._describe = describe  # the limiter's repr, for messages
        self._pools: dict[Meter, _Pool] = {}
        self._origin: object | None = None
        self._last_wait: float | None = None
        self._stand_in = False

    @property
    def shareable(self) -> bool:
        """Whether threads and loops in other threads may share it (see ``_threads``): not
        while it stands in for Redis."""
        return not self._stand_in

    def companions(self) -> list[WaiterQueue]:
        """The queues of the stores it shares pools with, transitively (its own first):
        they serve one loop, and become shared together, on one lock."""
        if not self._pools:
            return [self._waiters]
        stores: list[MemoryStore] = [self]
        for store in stores:  # grows as it goes: a breadth-first walk
            for pool in store._pools.values():
                for ref in pool.users:
                    other = ref()
                    if other is not None and other not in stores:
                        stores.append(other)
        return [store._waiters for store in stores]

    def adopt(self, meters: Iterable[Meter]) -> None:
        """Use ``meters``, shared with other stores (before any use)."""
        for meter in meters:
            pool = _POOLS.get(meter)
            if pool is None:
                pool = _POOLS[meter] = _Pool()
            pool.users.append(weakref.ref(self))
            self._pools[meter] = pool

    def prime(self, since: float, grants: Iterable[tuple[float, Sequence[float]]]) -> None:
        """Start as a stand-in for a limit shared elsewhere (see ``MultiState.prime``);
        instants are on the running event loop's clock."""
        self._stand_in = True
        self._waiters.now()  # bind to the running loop first, so no rebase moves them
        self._multi.prime(since, grants)

    def record(self, at: float, amounts: Sequence[float]) -> None:
        """Charge a grant made elsewhere at ``at`` (a stand-in's, see ``prime``)."""
        self._multi.record(at, amounts)

    def limit(self, dim: str) -> float:
        """The most one request may take of ``dim``."""
        return self._multi.limit(dim)

    @property
    def in_use(self) -> bool:
        waiters = self._waiters
        return bool(waiters.live or self._multi.in_flight or waiters.key is not None)

    # -- the store's operations -------------------------------------------------------------

    def try_take(self, request: Request) -> Ticket | None:
        waiters = self._waiters
        if waiters.fast == get_ident() and _hint() is waiters.loop:
            # Nobody waits, this task runs in the loop served (in its thread), whose clock
            # is time.monotonic.
            now = _monotonic()
        elif waiters.live:
            return None
        else:
            try:
                now = waiters.now(0.0)
            except NotSharedYet:  # take() awaits the switch
                return None
            if isinstance(waiters, SharedQueue):
                with waiters.lock:
                    ticket = None if waiters.live else self._take_now(request, _monotonic())
                    woken = waiters.take_woken()  # of companions its grant let in
                waiters.wake(woken)
                return ticket
        multi = self._multi
        if not multi.try_take(request, now):
            return None
        if multi.freed:
            self._kick_freed()
        self._last_wait = 0.0
        return multi.ticket

    def _take_now(self, request: Request, now: float) -> Ticket | None:
        """What :meth:`try_take` does once it knows ``now`` (shared mode: under the lock)."""
        multi = self._multi
        if not multi.try_take(request, now):
            return None
        if multi.freed:
            self._kick_freed()
        self._last_wait = 0.0
        return multi.ticket

    async def take(self, request: Request, timeout: float | None) -> Ticket:
        waiters = self._waiters
        try:
            now = waiters.here(0.0)
        except NotSharedYet:
            try:
                now = await waiters.now_async(timeout)
            except NotSharedYet:
                raise AcquireTimeoutError(self.timeout_message(1.0)) from None
        if isinstance(waiters, SharedQueue):
            ticket = await waiters.take(1.0, request, timeout)
            self._waited(request, _monotonic() - now)
            assert isinstance(ticket, list)
            return ticket
        multi = self._multi
        if not waiters.live and multi.try_take(request, now):
            if multi.freed:
                self._kick_freed()
            self._last_wait = 0.0
            return multi.ticket
        if timeout == 0:
            raise AcquireTimeoutError(f"{self._describe()} could not grant the request at once")
        request.parked()
        waiter = _Waiter(1.0, request, _INF if timeout is None else now + timeout)
        request.seq = next(_ARRIVALS)  # its place among the waiters of every store
        request.binding = multi.refusal()  # its own refusal, or the head's (until its own)
        if not waiters.live:
            multi.claim(request, now)  # it will be the head
        await waiters.wait(waiter, now)
        self._waited(request, waiters.clock() - now)
        ticket = waiter.ticket
        assert isinstance(ticket, list)
        return ticket

    def adjust(self, request: Request, ticket: object, actual: Mapping[int, float]) -> None:
        # What _serialized does, written out: every settlement passes here, and it
        # makes no closure.
        assert isinstance(ticket, list)
        waiters = self._waiters
        if waiters._thread != get_ident() and self._forwarded(
            lambda: self.adjust(request, ticket, actual)
        ):
            return
        now = waiters.here()
        if isinstance(waiters, SharedQueue):
            with waiters.lock:
                refunded = self._multi.adjust(request, ticket, actual, _monotonic())
                if refunded:
                    self._kick_all(refunded)
                woken = waiters.take_woken()
            waiters.wake(woken)
            return
        refunded = self._multi.adjust(request, ticket, actual, now)
        if refunded:
            self._kick_all(refunded)

    def release(self, request: Request, ticket: object) -> None:
        if request.slot:
            waiters = self._waiters
            if waiters._thread != get_ident():  # a lease ended in another thread
                if self._forwarded(lambda: self.release(request, ticket)):
                    return
                if waiters.joining():
                    waiters.share()
            if isinstance(waiters, SharedQueue):
                with waiters.lock:
                    self._multi.release(request)
                    waiters.dispatch_waiting()
                    woken = waiters.take_woken()
                waiters.wake(woken)
                return
            self._multi.release(request)
            waiters.kick()

    def feedback(
        self, plan: FeedbackPlan, lease: Request | None = None, ticket: object = None
    ) -> int:
        # What _serialized does, written out: every response passes here (the transport
        # reports each one), and it makes no closure.
        waiters = self._waiters
        if waiters._thread != get_ident() and self._forwarded(
            lambda: self.feedback(plan, lease, ticket)
        ):
            return 0
        now = waiters.here()
        if isinstance(waiters, SharedQueue):
            with waiters.lock:
                lowered = self._feedback(plan, lease, ticket, _monotonic())
                woken = waiters.take_woken()
            waiters.wake(woken)
            return lowered
        return self._feedback(plan, lease, ticket, now)

    def _feedback(
        self, plan: FeedbackPlan, lease: Request | None, ticket: object, now: float
    ) -> int:
        multi = self._multi
        seen = None if lease is None or not isinstance(ticket, list) else (lease, ticket)
        lowered = 0
        for clamp in plan.clamps:
            meter = multi.meters[clamp.meter]
            until = now + clamp.reset
            shadow = multi.shadows.get(clamp.meter)
            if shadow is not None and clamp.meter in multi.dormant:
                shadow = None  # asleep since a reset: the window takes the report
            if clamp.fit is None and shadow is not None:
                # A window fitted to its server before: its server's bucket takes the report.
                lowered += multi.clamp(shadow, clamp.remaining, until, now, None, seen)
            elif clamp.fit is None:
                lowered += multi.clamp(meter, clamp.remaining, until, now, clamp.refill, seen)
            else:
                model = multi.fit(meter, *clamp.fit, now)
                lowered += multi.clamp(model, clamp.remaining, until, now, clamp.fit[0], seen)
        if plan.pause is not None:
            multi.pause(now + plan.pause, now)
        if plan.rejected:
            multi.counts.rejections += 1
        self._kick_self()
        return lowered

    def update(
        self, rates: Sequence[tuple[int, RateSpec]], cap: int | None, done: Callable[[], object]
    ) -> None:
        def apply(now: float) -> None:
            self._update(rates, cap, now)
            done()

        waiters = self._waiters
        if self._unbound(waiters):
            apply(waiters.peek_now())
        else:
            self._serialized(apply, lambda: self.update(rates, cap, done), None)

    def _update(self, rates: Sequence[tuple[int, RateSpec]], cap: int | None, now: float) -> None:
        multi = self._multi
        for index, rate in rates:
            multi.update(multi.meters[index], rate, now)
        if cap is not None:
            multi.cap(cap)
        self._kick_self()  # grant who fits now, in order, and time the head anew

    def adapt(self, cap: int) -> None:
        """An adaptive cap moved (``_adaptive``): the cap is ``cap`` from now on, at once
        for the waiters (as ``update`` sets it)."""
        self.update((), cap, _nothing)

    def reset(self) -> None:
        def forget(now: float) -> None:
            self._multi.reset(now, self._pools)
            self._kick_self()

        waiters = self._waiters
        if self._unbound(waiters):
            forget(waiters.peek_now())  # (see update)
        else:
            self._serialized(forget, self.reset, None)

    @staticmethod
    def _unbound(waiters: WaiterQueue) -> bool:
        """Never used, and no event loop here (a configuration step): nothing waits and
        nothing binds the queue, which stays free to serve a loop, on any clock."""
        return (
            waiters.key is None
            and not isinstance(waiters, SharedQueue)
            and get_running_loop() is None
            and trio_root() is None
        )

    def _serialized(
        self, operation: Callable[[float], _T], again: Callable[[], object], forwarded: _T
    ) -> _T:
        """``operation(now)`` where the state may change: in this thread if it serves the
        loop (or the store is shared: then under the lock, and who it granted is woken
        once it is let go); else ``again`` is posted to the loop's thread (see
        :meth:`_forwarded`) and ``forwarded`` is returned."""
        waiters = self._waiters
        if waiters._thread != get_ident() and self._forwarded(again):
            return forwarded
        now = waiters.here()
        if isinstance(waiters, SharedQueue):
            with waiters.lock:
                result = operation(_monotonic())
                woken = waiters.take_woken()
            waiters.wake(woken)
            return result
        return operation(now)

    def _forwarded(self, operation: Callable[[], object]) -> bool:
        """From a task of another event loop than the one served, which runs in another
        thread: have that loop run ``operation`` (a settlement, a report, a release)
        instead of blocking this loop until it shares the store; whether it will.
        (A thread without a loop waits for the switch instead.)"""
        waiters = self._waiters
        if isinstance(waiters, SharedQueue) or not waiters.running_elsewhere():
            return False
        if get_running_loop() is None and trio_root() is None:
            return False
        post = waiters._post
        assert post is not None  # bound
        try:
            post(operation)
        except RuntimeError:  # closed meanwhile
            return False
        return True

    def acquire_blocking(self, request: Request, timeout: float | None) -> Ticket:
        """Block this thread until ``request`` is granted (the store becomes shared)."""
        if not self.shareable:
            raise RuntimeError(
                f"{self._describe()} stands in for a limit kept elsewhere, which threads "
                "cannot share: use it from one event loop"
            )
        waiters = self._waiters
        start = _monotonic()
        if not waiters.share(timeout):
            raise AcquireTimeoutError(self.timeout_message(1.0))
        assert isinstance(waiters, SharedQueue)
        if timeout is not None:
            timeout = max(0.0, timeout - (_monotonic() - start))
        ticket = waiters.block(1.0, request, timeout)
        self._waited(request, _monotonic() - start)
        assert isinstance(ticket, list)
        return ticket

    def _waited(self, request: Request, seconds: float) -> None:
        """``request`` was granted ``seconds`` after its call: if it queued (it has an
        arrival number then), that is its wait; else it was granted at once."""
        if request.seq == _INF:
            self._last_wait = 0.0
            return
        self._last_wait = request.waited = max(0.0, seconds)

    def statistics(self) -> LimiterStatistics:
        waiters = self._waiters
        if waiters._thread != get_ident():
            waiters.share_to_read()
        if isinstance(waiters, SharedQueue):
            with waiters.lock:
                return self._statistics(waiters)
        return self._statistics(waiters)

    def _statistics(self, waiters: WaiterQueue) -> LimiterStatistics:
        now = waiters.peek_now()
        multi = self._multi
        paused = multi.paused_until if multi.paused_until > now else None
        return LimiterStatistics(
            available=multi.available(now),
            in_flight=multi.in_flight,
            max_concurrency=multi.max_concurrency,
            waiters=waiters.live,
            paused_until=paused,
            next_wakeup=waiters.next_wakeup(),
            last_wait=self._last_wait,
        )

    def counts(self) -> Counts:
        return self._multi.counts.snapshot()

    def gauges(self) -> tuple[int, int, bool]:
        waiters = self._waiters
        multi = self._multi
        # Off the loop's thread, its clock is read only if it is time.monotonic.
        now = _monotonic() if waiters.clock is time.monotonic else waiters.peek_now()
        return waiters.live, multi.in_flight, multi.paused_until > now

    def at_rest(self) -> bool:
        waiters = self._waiters
        if isinstance(waiters, SharedQueue):
            with waiters.lock:
                return not waiters.live and self._multi.at_rest(_monotonic())
        if waiters._thread != get_ident() and waiters.running_elsewhere():
            return False  # in use by a loop that runs in another thread: not at rest
        if waiters.live:
            return False
        # On time.monotonic the present is known even outside the loop that used it.
        now = time.monotonic() if waiters.clock is time.monotonic else waiters.peek_now()
        return self._multi.at_rest(now)

    # -- pools ----------------------------------------------------------------------------

    def _kick_freed(self) -> None:
        multi = self._multi
        freed, multi.freed = multi.freed, []
        self._kick_others(freed)

    def _kick_all(self, meters: Iterable[Meter]) -> None:
        """Capacity came back on ``meters``: wake this store and any sharing them."""
        self._kick_self()
        self._kick_others(meters)

    def _kick_self(self) -> None:
        """Grant this store's waiters what now fits. Shared, this runs under the lock:
        who is granted is woken by the operation that holds it, once it lets go."""
        waiters = self._waiters
        if isinstance(waiters, SharedQueue):
            waiters.dispatch_waiting()
        else:
            waiters.kick()

    def _kick_others(self, meters: Iterable[Meter]) -> None:
        """Grant the waiters of the stores sharing ``meters`` what now fits. Shared,
        this runs under the lock they all share, and whoever holds it wakes them."""
        key = self._waiters.key
        for meter in meters:
            pool = self._pools.get(meter)
            if pool is None:
                continue
            for ref in pool.users:
                other = ref()
                if other is not None and other is not self and other._waiters.key is key:
                    queue = other._waiters
                    if isinstance(queue, SharedQueue):
                        queue.dispatch_waiting()
                    else:
                        queue.kick()

    # -- what the queue tells its owner ---------------------------------------------------

    def describe(self) -> str:
        return self._describe()

    def timeout_message(self, amount: float) -> str:
        return f"timed out waiting for {self._describe()}"

    def after_dispatch(self, head: Request | None, now: float) -> None:
        multi = self._multi
        if head is not None:
            head.binding = multi.refusal()  # what refused it just now
            multi.claim(head, now)
        if multi.freed:
            freed, multi.freed = multi.freed, []
            self._kick_all(freed)

    def before_wait(self, request: Request, now: float) -> None:
        request.seq = next(_ARRIVALS)  # its place among the waiters of every store
        request.binding = self._multi.refusal()  # its own refusal, or the head's
        if not self._waiters.live:
            self._multi.claim(request, now)  # it will be the head

    def on_leave(self, request: Request) -> None:
        released = self._multi.unclaim(request)
        if released:
            self._kick_others(released)

    def on_refund(self) -> None:
        # The grant went back, to shared meters too.
        self._kick_all(self._pools)

    def on_bind(self, now: float, moved: bool) -> None:
        waiters = self._waiters
        # Instants on time.monotonic are comparable across loops; others only within one.
        origin = _MONOTONIC if waiters.clock is time.monotonic else waiters.key
        multi = self._multi
        if self._origin is _MONOTONIC:  # the old clock can still be read
            multi.seen = max(multi.seen, time.monotonic())
        if moved:
            # Its own meters and the pause move; pools follow their users (below).
            own = [m for m in multi.meters if m not in self._pools]
            multi.rebase(now, own + list(multi.shadows.values()))
        for meter, pool in self._pools.items():
            if pool.origin is not None and pool.origin is not origin:
                meter.core.rebase(now)  # another user moved it onto another clock
            pool.origin = origin
        self._origin = origin


def _nothing() -> None:
    pass
