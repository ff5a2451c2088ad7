"""The FIFO waiter queue that every in-memory limiter owns: one timer, one wake-up a grant.

Theory of operation
-------------------
A limiter owns a pure state object (see ``_core``) and a :class:`WaiterQueue` of the
requests the state could not grant at once. Only the queue head is ever timed: when it
cannot be granted, the state says when it can (``ready_at``) and exactly one timer is
armed for that instant. When the timer fires, the head and every waiter behind it that
now fits are granted in order, and the timer is re-armed for the new head. A waiter is
woken once, when it is granted; nothing polls and nothing wakes everybody.

A grant is recorded in the state at the moment it is made, before the waiter runs again,
so no one can barge onto capacity meant for the head, and the owner's non-blocking path
refuses while anyone is queued.

Cancellation and timeouts: a waiter that leaves before it is granted is removed (lazily,
in O(1)); if it was the head, the next waiter is granted or timed at once. A waiter that
was granted but cancelled before it could run gives its grant back (``refund``) and the
capacity goes to the next waiter at once.

How a waiter parks is the event loop's business (``_park``). The queue binds to the
event loop that uses it (``_loop``); a different loop later (a new ``asyncio.run``, a new
``trio.run``) re-binds it, and when that loop's clock has another origin the owner moves
its state as if no time had passed, which can under-admit briefly but never over-admit
or hang.

The owner (a single limiter, or the in-memory store of a ``Limiter``) is told what only
it can act on: who heads the queue after a dispatch, a waiter that left, a grant given
back, a new clock (:class:`QueueOwner`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import time
from _thread import get_ident
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol

import anyio

from ._errors import AcquireTimeoutError
from ._loop import (
    LOOP_HINT,
    NOT_ASYNCIO,
    Clock,
    asyncio_clock,
    get_running_loop,
    poster,
    trio_clock,
    trio_over,
    trio_root,
)
from ._park import GONE as _GONE
from ._park import GRANTED as _GRANTED
from ._park import WAITING as _WAITING
from ._park import park_anyio, park_asyncio

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

__all__: list[str] = []

_INF: Final = math.inf
_monotonic: Final = time.monotonic
_NO_LOCK: Final = threading.RLock()  # a queue's lock until it is shared (never taken)


class _Switching:
    """Held while a queue binds to a loop or becomes shared, so that never happens twice
    at once. Nothing waits for anything else while holding it. (Made anew in a child
    process after ``fork()``.)"""

    def __init__(self) -> None:
        self.lock = threading.Lock()


_SWITCHING: Final = _Switching()


class NotSharedYet(RuntimeError):
    """The loop a queue serves did not share it within the time a caller could wait."""


# How often a thread waiting for a loop to switch a queue looks whether it still runs.
_HANDSHAKE_CHECK: Final = 0.05
# The longest a call that never waits (try_acquire) waits for another thread's loop to
# share the limiter it serves.
BRIEF: Final = 0.1


class QueueState(Protocol):
    """What the queue needs of a limit's state. A *request* is whatever the state takes
    (a float amount for the single limiters, a request vector for a ``Limiter``)."""

    @property
    def ticket(self) -> Any: ...
    @property
    def last_update(self) -> float: ...
    def try_take(self, request: Any, now: float) -> bool: ...
    def ready_at(self, request: Any, now: float) -> float: ...
    def refund(self, request: Any, ticket: Any, now: float) -> object: ...


class QueueOwner(Protocol):
    """What a queue tells the limiter that owns it."""

    def describe(self) -> str: ...
    def timeout_message(self, amount: float) -> str: ...
    def after_dispatch(self, head: Any, now: float) -> None:
        """A dispatch ended; ``head`` is the request still waiting first, or None."""

    def before_wait(self, request: Any, now: float) -> None:
        """Shared mode: ``request`` is about to queue (under the lock)."""

    def on_leave(self, request: Any) -> None:
        """A waiter left without being granted."""

    def on_refund(self) -> None:
        """A granted waiter left before it could run; its grant went back."""

    def on_bind(self, now: float, moved: bool) -> None:
        """The queue serves a new event loop; ``moved``: its clock has another origin."""

    @property
    def shareable(self) -> bool:
        """Whether the queue may be shared by threads and loops (see ``_threads``)."""

    def companions(self) -> list[WaiterQueue]:
        """The queues that serve the same loop as this one and become shared with it:
        those of the limiters sharing a limit with its owner (transitively), its own
        first."""


class _Waiter:
    __slots__ = (
        "amount",
        "deadline",
        "event",
        "future",
        "home",
        "latch",
        "loop",
        "post",
        "request",
        "scope",
        "state",
        "thread",
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
        # Shared mode: the loop of ``future`` and the thread it runs in, or the lock a
        # blocked thread sleeps on.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = NO_THREAD
        self.latch: threading.Lock | None = None
        self.post: Callable[[Callable[[], object]], object] | None = None  # trio's
        self.home: WaiterQueue | None = None  # the queue it waits in


def _unbound_clock() -> float:
    raise RuntimeError("limiter is not bound to an event loop")  # pragma: no cover


NO_THREAD: Final = -1  # no thread's identifier: "nobody may take without queueing"


class WaiterQueue:
    """The FIFO queue, its one timer and its binding to an event loop.

    The owner's hot paths read ``fast`` directly: the identifier of the thread whose
    tasks may take without queueing and read ``time.monotonic`` as the clock (the thread
    of the asyncio loop served, while nobody waits and its clock is that one), or
    ``NO_THREAD``. They compare it with ``_thread.get_ident()``: only the loop's own
    thread ever changes the state without the lock of shared mode.

    Shared mode (see ``_threads``): once the limiter is used from another thread than
    that of the loop it serves, the queue becomes a :class:`~._threads.SharedQueue` for
    good: every change under a lock, on ``time.monotonic``, timed by the timer thread.
    """

    shared: ClassVar[bool] = False  # a SharedQueue's is True

    __slots__ = (
        "__weakref__",
        "_early",
        "_hinted",
        "_lock",
        "_open",
        "_pid",
        "_post",
        "_queue",
        "_step",
        "_thread",
        "_timer",
        "_timer_at",
        "_woken",
        "aio",
        "clock",
        "fast",
        "key",
        "live",
        "loop",
        "owner",
        "queued",
        "state",
    )

    def __init__(self, state: QueueState, owner: QueueOwner) -> None:
        self.state = state
        self.owner = owner
        self._queue: deque[_Waiter] = deque()
        self.live = 0
        self.queued = 0.0
        self.key: object | None = None
        # The asyncio loop this queue serves, or NOT_ASYNCIO when unbound or on trio.
        self.loop: object = NOT_ASYNCIO
        self.fast = NO_THREAD
        self._open = NO_THREAD  # what `fast` is while nobody waits
        self._thread = NO_THREAD  # the thread of the loop served
        self._pid = 0  # the process it was bound in
        self._post: Callable[[Callable[[], object]], object] | None = None  # to run there
        self.aio: asyncio.AbstractEventLoop | None = None
        self.clock: Callable[[], float] = _unbound_clock
        self._timer: Any = None  # an asyncio.TimerHandle; in shared mode a _timer.Timer
        self._lock = _NO_LOCK  # shared mode's
        self._woken: list[_Waiter] = []  # shared mode: granted, to wake outside the lock
        self._timer_at = _INF
        self._early = 0
        self._step = 1e-6
        self._hinted = False

    # -- waiting ------------------------------------------------------------------------

    async def wait(self, waiter: _Waiter, now: float) -> None:
        """Queue ``waiter`` (which could not be granted at ``now``) until it is granted.

        Raises AcquireTimeoutError at its deadline; on any exception (a cancellation
        included) it leaves the limiter as if it had never come.
        """
        if self.aio is not None:
            await park_asyncio(self, waiter, self.aio, now)
        else:
            await park_anyio(self, waiter, now)

    def push(self, waiter: _Waiter, now: float) -> None:
        self._queue.append(waiter)
        waiter.home = self
        self.live += 1
        self.queued += waiter.amount
        self.fast = NO_THREAD
        if self.live == 1:  # the head: time it
            when = self.state.ready_at(waiter.request, now)
            if self.aio is not None:
                self._arm(when, now)
            else:
                waiter.wake = when

    def head(self) -> _Waiter | None:
        return self._queue[0] if self._queue else None

    # -- queue mechanics (all synchronous) -------------------------------------------------

    def dispatch(self, now: float) -> None:
        """Grant the queue head and everyone behind it who fits; time the next head."""
        queue = self._queue
        state = self.state
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
                self.owner.after_dispatch(waiter.request, now)
                return
            queue.popleft()
            waiter.state = _GRANTED
            waiter.ticket = state.ticket
            self.live -= 1
            self.queued -= waiter.amount
            self._granted(waiter)
            # Each grant is charged at the instant it is made: if the process is
            # preempted in the middle of a long batch, the later grants count from then.
            later = self.clock()
            if later > now:
                now = later
        self.queued = 0.0
        self.fast = self._open
        self._disarm()
        self.owner.after_dispatch(None, now)

    def _granted(self, waiter: _Waiter) -> None:
        """Wake a waiter just granted (a shared queue wakes it once the lock is let go)."""
        future = waiter.future
        if future is not None:
            future.set_result(None)
        else:
            assert waiter.event is not None
            waiter.event.set()

    def _forget(self, waiter: _Waiter) -> None:
        waiter.state = _GONE
        self.live -= 1
        self.queued -= waiter.amount
        if not self.live:
            self.fast = self._open
        self.owner.on_leave(waiter.request)

    def remove(self, waiter: _Waiter, now: float) -> None:
        """Take a waiting (never granted) waiter out of the queue."""
        self._forget(waiter)
        queue = self._queue
        if queue and queue[0] is waiter:
            queue.popleft()
            self.dispatch(now)
        elif len(queue) > 2 * self.live + 64:
            self._queue = deque(w for w in queue if w.state is _WAITING)

    def abandon(self, waiter: _Waiter) -> None:
        """The waiter's task is leaving with an exception."""
        now = self.clock()
        if waiter.state is _GRANTED:
            waiter.state = _GONE
            self.state.refund(waiter.request, waiter.ticket, now)
            if self._queue:
                self.dispatch(now)
            self.owner.on_refund()
        else:
            self.remove(waiter, now)

    def kick(self) -> None:
        """Capacity came back outside the queue's own flow (a release, a refund, a shared
        limit): grant whoever now fits, or re-time the head."""
        if self.live and self.key is not None:
            self.dispatch(self.clock())

    def expire(self, waiter: _Waiter) -> None:
        """Timeout callback (asyncio)."""
        if self.shared:  # armed before the queue was shared: bound to this method
            type(self).expire(self, waiter)
            return
        if waiter.state is not _WAITING:
            return
        future = waiter.future
        self.remove(waiter, self.clock())
        if future is not None and not future.done():
            future.set_exception(AcquireTimeoutError(self.owner.timeout_message(waiter.amount)))

    def _arm(self, when: float, now: float) -> None:
        """Time the queue head for ``when``."""
        if self._early:
            # The loop fired the last timer before its clock reached it (a coarse or
            # quantised clock): never arm closer than one step, so it cannot spin.
            when = max(when, now + self._step * (1 << min(self._early - 1, 20)))
        loop = self.aio
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
        now = self.clock()
        self._early = self._early + 1 if now < self._timer_at else 0
        self.dispatch(now)

    def next_wakeup(self) -> float | None:
        """When the head is due, or ``None`` (nobody waits, or only a release helps)."""
        if not self.live:
            return None
        if self.aio is not None:
            return self._timer_at if self._timer is not None else None
        for waiter in self._queue:
            if waiter.state is _WAITING:
                return waiter.wake if waiter.wake != _INF else None
        return None  # pragma: no cover - live counts a waiting waiter

    # -- event loop binding -----------------------------------------------------------------

    def now(self, wait: float | None = None) -> float:
        """Bind to the running event loop if needed and return its time.

        From an event loop in another thread than that of the loop served (still open),
        or from a thread without one, the queue is shared first, if its owner can be:
        waiting at most ``wait`` seconds (``None``: as long as it takes) for the loop
        served to make the switch, else :class:`NotSharedYet`.
        """
        if self.aio is None and self.key is not None and trio_root() is self.key:
            return self.clock()  # still in the trio run it serves (no getpid() call)
        loop = get_running_loop()
        if loop is not None:
            if loop is not self.loop:
                self._enter(asyncio_clock(loop), wait)
                if self.shared:
                    return _monotonic()
            if self._hinted:
                LOOP_HINT.set(loop)
            return self.clock()
        root = trio_root()
        if root is None:
            if self.owner.shareable:
                if not self.share(wait):
                    raise NotSharedYet
                return _monotonic()
            raise RuntimeError(
                f"{self.owner.describe()} must be used from a running asyncio or trio event loop"
            )
        if root is not self.key:
            self._enter(trio_clock(root), wait)
            if self.shared:
                return _monotonic()
        return self.clock()

    def here(self, wait: float | None = None) -> float:
        """:meth:`now`, without a look at the running loop when this task has been through
        it in the loop served, in that loop's thread (then its clock is the one)."""
        if LOOP_HINT.get() is self.loop and self._thread == get_ident():
            return self.clock()
        return self.now(wait)

    async def now_async(self, wait: float | None = None) -> float:
        """:meth:`now` for a task: if the queue must be shared first, the task awaits the
        switch (see :meth:`share_async`) instead of blocking its loop, at most ``wait``
        seconds (else :class:`NotSharedYet`)."""
        try:
            return self.now(0.0)
        except NotSharedYet:
            if not await self.share_async(wait):
                raise
            return self.now()

    def joining(self) -> bool:
        """Whether a use from here must share the queue first, with a switch that the loop
        served makes (see :meth:`share`): an async caller awaits :meth:`share_async`."""
        if self.shared:
            return False
        loop = get_running_loop()
        if loop is not None:
            if loop is self.loop:
                return False
        elif self.aio is None and trio_root() is self.key:
            return False
        return self.owner.shareable and self._any_elsewhere()

    def share_to_read(self) -> None:
        """A read from another thread than that of the loop served, while it runs: share
        the queue first (waiting briefly), so that the read is consistent. Never raises;
        a queue on another clock than ``time.monotonic`` is left alone."""
        if self._hinted and self.owner.shareable and not self.shared and self._any_elsewhere():
            with contextlib.suppress(RuntimeError):
                self.share(BRIEF)

    def running_elsewhere(self) -> bool:
        """Whether the loop served runs in another thread (and the queue is not shared)."""
        return not self.shared and self._elsewhere()

    def _any_elsewhere(self) -> bool:
        """:meth:`_elsewhere` for this queue or a companion (they serve one loop)."""
        return any(queue._elsewhere() for queue in self.owner.companions())

    def _elsewhere(self) -> bool:
        """Whether the loop (or trio run) served runs now in another thread of this
        process: only then can it change the queue without the lock while this thread
        does, so only then must the switch be made there."""
        if self.key is None or self._thread == get_ident() or self._pid != os.getpid():
            return False
        loop = self.aio
        if loop is not None:
            return loop.is_running()
        return not trio_over(self.key)

    def _enter(self, clock: Clock, wait: float | None) -> None:
        """A new loop uses the queue: bind to it, or share the queue if the loop served
        runs in another thread."""
        with _SWITCHING.lock:  # a bind and a switch never run at once
            if self.shared:
                return
            companions = self.owner.companions()
            if not (self.owner.shareable and any(q._elsewhere() for q in companions)):
                # Companions move with it: they always serve one loop.
                others = [q for q in companions[1:] if q.key is not clock.key]
                for queue in (self, *others):
                    queue._check_bind(self)
                for queue in (self, *others):
                    queue._bind(clock)
                return
        if not self.share(wait):
            raise NotSharedYet

    def _ask(
        self,
    ) -> tuple[Callable[[Callable[[], object]], object], object, WaiterQueue] | None:
        """Under the switching lock: switch here (with the companions) if no loop served
        runs elsewhere (then ``None``); else how to ask the one that does, which it is,
        and the queue that serves it."""
        if self.shared:
            return None
        companions = self.owner.companions()
        for queue in companions:
            if not queue.shared and queue._elsewhere():
                post = queue._post
                assert post is not None  # bound
                return post, queue.key, queue
        _become_shared(companions)
        return None

    def share(self, wait: float | None = None) -> bool:
        """Become a :class:`~._threads.SharedQueue` (once), from any thread; whether it is.

        Only the thread of the loop served changes the queue without a lock, and only
        while that loop runs, so the switch is made there: posted to that loop, which runs
        it between two of its callbacks, when nothing is half done; this thread waits at
        most ``wait`` seconds (``None``: as long as it takes). Directly when the queue
        serves no loop, when this is that loop's thread, or when that loop does not run
        (closed, or between two runs; its trio run over).
        """
        deadline = _INF if wait is None else _monotonic() + wait
        while True:
            with _SWITCHING.lock:
                asked = self._ask()
            if asked is None:
                return True
            post, bound, anchor = asked
            done = threading.Event()
            failure: list[BaseException] = []
            try:
                post(functools.partial(self._switch_there, bound, anchor, failure, done.set))
            except RuntimeError:  # closed meanwhile: look again
                continue
            # The loop runs the switch soon, unless it stops: then it is made here (this
            # rare wait looks every 50 ms).
            while not done.wait(min(_HANDSHAKE_CHECK, max(0.0, deadline - _monotonic()))):
                if anchor.key is not bound or not anchor._elsewhere():
                    break
                if _monotonic() >= deadline:
                    return self.shared
            if failure:
                raise failure[0]
            if self.shared:
                return True

    async def share_async(self, wait: float | None = None) -> bool:
        """:meth:`share` for a task of an event loop in another thread: it awaits the
        switch instead of blocking its loop (two loops sharing each other's limiters at
        once would wait for each other)."""
        deadline = _INF if wait is None else _monotonic() + wait
        while True:
            with _SWITCHING.lock:
                asked = self._ask()
            if asked is None:
                return True
            post, bound, anchor = asked
            back = poster()  # to this loop, from the one served
            done = anyio.Event()
            failure: list[BaseException] = []

            def tell(
                back: Callable[[Callable[[], object]], object] = back, done: anyio.Event = done
            ) -> None:
                with contextlib.suppress(RuntimeError):  # this loop closed meanwhile
                    back(done.set)

            try:
                post(functools.partial(self._switch_there, bound, anchor, failure, tell))
            except RuntimeError:  # closed meanwhile: look again
                continue
            while not done.is_set():
                with anyio.move_on_after(min(_HANDSHAKE_CHECK, deadline - _monotonic())):
                    await done.wait()
                if done.is_set() or anchor.key is not bound or not anchor._elsewhere():
                    break
                if _monotonic() >= deadline:
                    return self.shared
            if failure:
                raise failure[0]
            if self.shared:
                return True

    def _switch_there(
        self,
        bound: object,
        anchor: WaiterQueue,
        failure: list[BaseException],
        then: Callable[[], object],
    ) -> None:
        """:meth:`_switch`, as posted to the loop served: what it raises (a virtual clock)
        goes in ``failure``, for the caller, who is told by ``then``."""
        try:
            self._switch(bound, anchor)
        except BaseException as error:
            failure.append(error)
        finally:
            then()

    def _switch(self, bound: object, anchor: WaiterQueue) -> None:
        """The switch itself (see :meth:`share`), in the thread of the loop ``bound``
        that ``anchor`` (this queue or a companion) serves; once, whoever comes first,
        and only if it still serves that loop."""
        with _SWITCHING.lock:
            if not self.shared and anchor.key is bound:
                _become_shared(self.owner.companions())

    def peek_now(self) -> float:
        """The time in the loop this queue serves, if that is the running one; else the
        latest instant the state has seen."""
        loop = get_running_loop()
        if loop is not None and loop is self.aio:
            return self.clock()
        if loop is None and self.key is not None and trio_root() is self.key:
            return self.clock()
        return float(self.state.last_update)

    def _check_bind(self, user: WaiterQueue) -> None:
        """Refuse to serve another loop (for ``user``: this queue or a companion) while
        tasks wait in one that may still run."""
        if self.live:
            old = self.aio
            if old is None or not old.is_closed():
                if user is not self:
                    raise RuntimeError(
                        f"{user.owner.describe()} shares a limit with "
                        f"{self.owner.describe()}, which has tasks waiting in another "
                        "event loop; limiters that share a limit serve one event loop at "
                        "a time"
                    )
                raise RuntimeError(
                    f"{self.owner.describe()} has tasks waiting in another event loop; "
                    "a limiter serves one event loop at a time"
                )

    def _bind(self, clock: Clock) -> None:
        self._check_bind(self)
        if self.live:
            # That loop was closed with its waiters still parked: they can never run.
            for waiter in self._queue:
                if waiter.state is _WAITING:
                    _drop_claims(self.state, waiter.request)
                waiter.state = _GONE
            self.live = 0
        self._queue.clear()
        self.queued = 0.0
        self._disarm()
        same_clock = clock.read is time.monotonic and self.clock is time.monotonic
        self.key = clock.key
        self.aio = clock.loop
        self.loop = NOT_ASYNCIO if clock.loop is None else clock.loop
        self._post = poster()
        self._pid = os.getpid()
        self.clock = clock.read
        self._step = clock.step
        self._hinted = clock.hinted
        self._thread = get_ident()
        self.fast = self._open = self._thread if clock.hinted else NO_THREAD
        self.owner.on_bind(clock.read(), not same_clock)


def _become_shared(queues: list[WaiterQueue]) -> None:
    """Make ``queues`` (a queue and its companions) shared, together."""
    from ._threads import become_shared

    become_shared(queues)


def _drop_claims(state: object, request: object) -> None:
    """A waiter dropped without a word (its loop closed, or after fork): its claims on
    shared meters go with it, else no later request could ever take from them."""
    unclaim = getattr(state, "unclaim", None)
    if unclaim is not None:
        unclaim(request)
