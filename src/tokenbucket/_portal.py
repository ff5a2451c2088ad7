"""The portal: one asyncio event loop in a thread of its own, for limiters with a backend
used from threads.

Theory of operation
-------------------
A backend's store (Redis) runs on asyncio: its round trips, its sleeps to a reserved
instant and its background work belong to one event loop. A thread without a loop reaches
it through the portal: one daemon thread per process runs an event loop of its own,
started on first use. A thread hands it a coroutine (:func:`run`) or a plain call
(:func:`call`) and blocks until it is done; what it raises is raised in the thread.

A limiter used from threads opens a second store of its own for the portal's loop (see
:class:`ThreadStore`), on the same keys: the state lives in the backend, so two stores of
one limiter behave like two processes, and the portal's store batches the round trips of
every thread. A thread interrupted while it waits (``KeyboardInterrupt``) cancels its
coroutine, so nothing is taken; one granted at that very moment is undone.

After ``fork()`` the child has no portal thread: a new one starts on first use there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ._errors import AcquireTimeoutError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence

    from ._backend import Store
    from ._core import Counts, RateSpec, Request
    from ._feedback import FeedbackPlan
    from ._statistics import LimiterStatistics

__all__ = ["ThreadStore", "call", "run", "submit"]

_T = TypeVar("_T")

# How much longer than its timeout a thread waits for the portal's answer (the store's
# own deadline comes first; this bounds a portal that cannot answer at all).
_GRACE: Final = 5.0


class _Portal:
    """The portal's thread and its event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(
            target=self._serve, args=(ready,), name="tokenbucket-portal", daemon=True
        )
        self.thread.start()
        ready.wait()

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()


_portal: _Portal | None = None
_starting = threading.Lock()


def _loop() -> asyncio.AbstractEventLoop:
    """The portal's loop, started on first use."""
    global _portal
    portal = _portal
    if portal is None:
        with _starting:
            portal = _portal
            if portal is None:
                portal = _portal = _Portal()
    return portal.loop


def run(
    coro: Coroutine[Any, Any, _T],
    timeout: float | None = None,
    undo: Callable[[_T], object] | None = None,
) -> _T:
    """Run ``coro`` in the portal's loop and block this thread for its result.

    ``timeout`` bounds the wait (then :class:`AcquireTimeoutError`). Interrupted (an
    exception while blocked, or the timeout), the coroutine is cancelled; if it had
    returned already, ``undo`` is called with its result, in the portal's loop.
    """
    loop = _loop()
    if asyncio.events._get_running_loop() is loop:
        coro.close()
        raise RuntimeError("the portal's own loop cannot block on itself")
    lock = threading.Lock()
    # The coroutine's result once it returned, and whether the thread left before.
    returned: list[_T] = []
    left = False

    async def guarded() -> _T:
        result = await coro
        with lock:
            if not left:
                returned.append(result)
                return result
        if undo is not None:  # nobody will see it
            undo(result)
        return result

    future = asyncio.run_coroutine_threadsafe(guarded(), loop)
    try:
        return future.result(timeout)
    except BaseException as exc:
        with lock:
            left = True
        waited_out = not future.done() and isinstance(exc, concurrent.futures.TimeoutError)
        if returned:
            if waited_out:
                return returned[0]  # returned just as the wait ended
            if undo is not None:
                loop.call_soon_threadsafe(undo, returned[0])
        future.cancel()
        if waited_out:
            raise AcquireTimeoutError(f"not granted within {timeout} s") from None
        raise


def submit(coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
    """Start ``coro`` in the portal's loop; its future (for a loop's ``wrap_future``)."""
    return asyncio.run_coroutine_threadsafe(coro, _loop())


def call(function: Callable[..., _T], *args: Any) -> _T:
    """Call ``function(*args)`` in the portal's loop and block this thread for its result
    (for what must run in that loop: it may start background work there)."""

    async def calling() -> _T:
        return function(*args)

    return run(calling())


class ThreadStore:
    """A store used from threads: every operation of ``store`` (a store of the portal's
    loop) is run in the portal's loop, the calling thread blocking until it is done.

    It has :meth:`acquire_blocking`, as a store in memory does; its ``take`` is not for
    event loops (they use the limiter's own store).
    """

    __slots__ = ("store",)

    def __init__(self, store: Store) -> None:
        self.store = store

    def acquire_blocking(self, request: Request, timeout: float | None) -> object:
        """Block this thread until ``request`` is granted; the store's ticket."""
        store = self.store
        return run(
            _take(store, request, timeout),
            None if timeout is None else timeout + _GRACE,
            lambda ticket: self._undo(request, ticket),
        )

    def _undo(self, request: Request, ticket: object) -> None:
        """A grant its thread was interrupted before it saw: given back."""
        give_back = getattr(self.store, "give_back", None)
        if give_back is not None:
            give_back(request, ticket)

    async def take(self, request: Request, timeout: float | None) -> object:
        raise RuntimeError("a store used from threads is not awaited")  # pragma: no cover

    def try_take(self, request: Request) -> object | None:
        return None

    def adjust(self, request: Request, ticket: object, actual: Mapping[int, float]) -> None:
        call(self.store.adjust, request, ticket, actual)

    def release(self, request: Request, ticket: object) -> Awaitable[None] | None:
        """Release at once, waiting for its round trip."""
        run(_release(self.store, request, ticket))
        return None

    def feedback(
        self, plan: FeedbackPlan, lease: Request | None = None, ticket: object = None
    ) -> int:
        return call(self.store.feedback, plan, lease, ticket)

    def update(
        self, rates: Sequence[tuple[int, RateSpec]], cap: int | None, done: Callable[[], object]
    ) -> None:
        call(self.store.update, rates, cap, done)

    def reset(self) -> None:
        """This process's view only (the limiter's own store deletes the keys): a store
        of the portal's loop cannot block on it."""
        forget: Callable[[], object] | None = getattr(self.store, "forget_locally", None)
        call(self.store.reset if forget is None else forget)

    def statistics(self) -> LimiterStatistics:
        return self.store.statistics()

    def counts(self) -> Counts:
        return self.store.counts()

    def gauges(self) -> tuple[int, int, bool]:
        return self.store.gauges()

    def at_rest(self) -> bool:
        return self.store.at_rest()


async def _take(store: Store, request: Request, timeout: float | None) -> object:
    ticket = store.try_take(request)
    if ticket is None:
        ticket = await store.take(request, timeout)
    return ticket


async def _release(store: Store, request: Request, ticket: object) -> None:
    done = store.release(request, ticket)
    if done is not None:
        await done


def _after_fork() -> None:
    """In the child: the portal's thread stayed in the parent."""
    global _portal, _starting
    _portal = None
    _starting = threading.Lock()


if hasattr(os, "register_at_fork"):  # pragma: no branch
    os.register_at_fork(after_in_child=_after_fork)
