"""A per-process cap in front of a backend's store: how an adaptive cap runs on Redis.

An adaptive cap is learned from the calls this process makes (``_adaptive``), so it is
applied here: a :class:`GatedStore` makes each request take a slot of a :class:`Gate`
(a concurrency-only :class:`~tokenbucket._memory.MemoryStore`, FIFO in this process,
across its event loop and its threads) before it asks the backend for its rates, and
gives the slot back when the lease ends, or when the backend does not grant the request
(a timeout, a cancellation, an error). The backend's limits hold for every process as
before; the cap bounds this process's calls in flight. One gate serves the limiter's
store and its threads' store.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Final

from ._core import MultiState, Request
from ._errors import AcquireTimeoutError
from ._loop import now as clock_now
from ._memory import MemoryStore
from ._portal import ThreadStore

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from ._backend import Store
    from ._core import Counts, RateSpec
    from ._feedback import FeedbackPlan
    from ._statistics import LimiterStatistics

__all__ = ["Gate", "GatedStore"]

_monotonic: Final = time.monotonic


class Gate:
    """The slots of one limiter's cap in this process, with what its statistics need:
    the requests that hold a slot but still wait for the backend (not in flight yet;
    one item each, appended and popped, which no thread can interleave), and the last
    grant's wait from the call on."""

    __slots__ = ("last_wait", "pending", "store")

    def __init__(self, cap: int, describe: Callable[[], str]) -> None:
        self.store = MemoryStore(MultiState((), [], cap), describe)
        self.pending: list[None] = []
        self.last_wait: float | None = None


class _Entry(Request):
    """A request's place at the gate: a slot, and nothing of any rate."""

    __slots__ = ("outer",)

    def __init__(self, outer: Request) -> None:
        super().__init__((), True)
        self.outer = outer

    def parked(self) -> None:
        self.queued = True
        self.outer.parked()  # the lease waits (told once: see Lease.parked)


class _Ticket:
    """A gated grant: its entry and the gate's ticket, and the backend's ticket."""

    __slots__ = ("entry", "gate", "inner")

    def __init__(self, entry: _Entry, gate: object, inner: object) -> None:
        self.entry = entry
        self.gate = gate
        self.inner = inner


class GatedStore:
    """``inner`` (a backend's store, or the one its threads use) behind ``gate``.

    ``primary``: the limiter's own store, which reports the gate's slots and waiters in
    its statistics and gauges (the threads' store reports only its own, so that nothing
    is counted twice).
    """

    __slots__ = ("gate", "inner", "primary")

    def __init__(self, inner: Store, gate: Gate, *, primary: bool) -> None:
        self.inner = inner
        self.gate = gate
        self.primary = primary

    def try_take(self, request: Request) -> object | None:
        return None  # a backend grants nothing without a round trip

    async def take(self, request: Request, timeout: float | None) -> _Ticket:
        slots = self.gate.store
        entry = _Entry(request)
        start = clock_now()[1]
        held = slots.try_take(entry)
        if held is None:
            held = await slots.take(entry, timeout)
        pending = self.gate.pending
        pending.append(None)
        try:
            left = None if timeout is None else max(0.0, timeout - (clock_now()[1] - start))
            ticket = await self.inner.take(request, left)
        except BaseException as error:
            self._not_granted(entry, held, error, timeout)
            raise
        finally:
            pending.pop()
        self._granted(request, entry, clock_now()[1] - start)
        return _Ticket(entry, held, ticket)

    def acquire_blocking(self, request: Request, timeout: float | None) -> _Ticket:
        """Block this thread until ``request`` is granted (the gate becomes shared)."""
        slots = self.gate.store
        inner = self.inner
        assert isinstance(inner, ThreadStore)  # (the threads' store)
        entry = _Entry(request)
        start = _monotonic()
        held = slots.acquire_blocking(entry, timeout)
        pending = self.gate.pending
        pending.append(None)
        try:
            left = None if timeout is None else max(0.0, timeout - (_monotonic() - start))
            ticket = inner.acquire_blocking(request, left)
        except BaseException as error:
            self._not_granted(entry, held, error, timeout)
            raise
        finally:
            pending.pop()
        self._granted(request, entry, _monotonic() - start)
        return _Ticket(entry, held, ticket)

    def _not_granted(
        self, entry: _Entry, held: object, error: BaseException, timeout: float | None
    ) -> None:
        """The backend did not grant ``entry``'s request (``error``): its slot is given
        back. A timeout raises an error that names the caller's timeout (the backend's
        names what was left of it)."""
        self.gate.store.release(entry, held)
        if isinstance(error, AcquireTimeoutError) and timeout is not None:
            waited = " (a slot of max_concurrency, then the backend)" if entry.queued else ""
            raise AcquireTimeoutError(
                f"{self.gate.store.describe()}: not granted within {timeout} s{waited}"
            ) from error

    def _granted(self, request: Request, entry: _Entry, seconds: float) -> None:
        """``request`` was granted ``seconds`` after its call. When it queued at the
        gate, its wait runs from its call, and what it waited for is the cap, unless the
        backend named what made it wait or made it wait longer."""
        if entry.queued:
            request.queued = True
            if request.binding is None and entry.waited >= request.waited:
                request.binding = "max_concurrency"
            request.waited = max(0.0, seconds)
        self.gate.last_wait = request.waited

    def adjust(self, request: Request, ticket: object, actual: Mapping[int, float]) -> None:
        assert isinstance(ticket, _Ticket)
        self.inner.adjust(request, ticket.inner, actual)

    def release(self, request: Request, ticket: object) -> Awaitable[None] | None:
        assert isinstance(ticket, _Ticket)
        self.gate.store.release(ticket.entry, ticket.gate)  # the next local caller goes
        return self.inner.release(request, ticket.inner)

    def feedback(
        self, plan: FeedbackPlan, lease: Request | None = None, ticket: object = None
    ) -> int:
        inner = ticket.inner if isinstance(ticket, _Ticket) else ticket
        return self.inner.feedback(plan, lease, inner)

    def update(
        self, rates: Sequence[tuple[int, RateSpec]], cap: int | None, done: Callable[[], object]
    ) -> None:
        self.inner.update(rates, cap, done)

    def reset(self) -> None:
        self.inner.reset()  # (the slots held stay held, as a reset keeps leases)

    def statistics(self) -> LimiterStatistics:
        statistics = self.inner.statistics()
        if not self.primary:
            return statistics
        # Every caller past the gate that the backend has not granted yet is pending:
        # a waiter (its threads' too), not in flight.
        gate = self.gate
        slots = gate.store.statistics()
        pending = len(gate.pending)
        last_wait = gate.last_wait
        return dataclasses.replace(
            statistics,
            in_flight=max(0, slots.in_flight - pending),
            max_concurrency=slots.max_concurrency,
            waiters=slots.waiters + pending,
            last_wait=statistics.last_wait if last_wait is None else last_wait,
        )

    def counts(self) -> Counts:
        return self.inner.counts()

    def gauges(self) -> tuple[int, int, bool]:
        _, _, paused = self.inner.gauges()
        if not self.primary:  # (its waiters are the gate's: see statistics)
            return 0, 0, paused
        gate = self.gate
        waiters, held, _ = gate.store.gauges()
        pending = len(gate.pending)
        return waiters + pending, max(0, held - pending), paused

    def at_rest(self) -> bool:
        if self.primary and not self.gate.store.at_rest():
            return False
        return self.inner.at_rest()
