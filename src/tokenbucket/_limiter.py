"""Limiter: several limits (requests, tokens, calls in flight) taken in one await.

Theory of operation
-------------------
A :class:`Limiter` has named *dimensions* (``requests``, ``tokens``, or any names) and one
*meter* per rate: an exact sliding window by default, or a token bucket when the rate
opts in to a burst. A request is a vector (one amount per dimension) plus, when the
limiter caps concurrency, one slot. It is granted only when every meter and the slot
admit it at the same instant, and then all of them are charged at once: nothing is
held while waiting for something else. Waiters queue in one FIFO queue (the same
machinery as the single limiters), so order holds across the whole request.

A grant becomes a :class:`Lease`. Leaving the lease's ``async with`` gives the slot back;
``settle`` corrects the token count once the real usage is known: a refund goes back
to the meters (and to the next waiter at once), an overrun is charged as debt that
later callers wait off. Server feedback (``Retry-After``, rate-limit headers) pauses
the limiter or lowers what the meters may grant; it never raises what they may grant.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Final, cast

from . import _validate
from ._adaptive import Adaptive, Controller, dropped_by
from ._backend import open_store
from ._config import RateLike, concurrency, parse_limits
from ._core import Meter, MultiState, Request
from ._counters import Waits, counters
from ._errors import (
    AcquireTimeoutError,
    AmountExceedsLimitError,
    ArgumentTypeError,
    InvalidArgumentError,
)
from ._events import EventKind, LimiterEvent, emit, label, log
from ._feedback import FeedbackPlan, plan_feedback
from ._gate import Gate, GatedStore
from ._headers import ServerFeedback, parse_rate_limit_headers
from ._lease import BlockingLeaseContext, Lease, LeaseContext
from ._loop import get_running_loop
from ._loop import now as clock_now
from ._memory import MemoryStore
from ._portal import ThreadStore

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from ._backend import Backend, Store
    from ._core import RateSpec
    from ._rate import Rate
    from ._statistics import LimiterCounters, LimiterStatistics

__all__ = ["Limiter"]

_MOST: Final = sys.float_info.max
_OPENING: Final = threading.Lock()  # opening a limiter's store for threads
_SUBSCRIBING: Final = threading.Lock()  # changing a limiter's listeners


class Limiter:
    """Several limits acquired atomically, in one await, with one FIFO queue.

    >>> import tokenbucket as tb
    >>> limiter = tb.Limiter(
    ...     requests_per_minute=5_000,
    ...     tokens_per_minute=800_000,
    ...     tokens_per_day=50_000_000,
    ...     max_concurrency=64,
    ... )
    >>> limiter.dimensions
    ('requests', 'tokens')

    Rates are given as keywords ``<dimension>_per_<unit>`` (unit: ``second``,
    ``minute``, ``hour`` or ``day``) with a number or a :class:`Rate`, or in ``limits``
    as ``{"tokens": [tb.per_minute(800_000), "50000000/day"]}``. Dimension names are
    yours; ``requests`` is special only in that every acquisition takes one unless told
    otherwise.

    By default a rate of N per period never admits more than N in any rolling period
    (an exact sliding window), whatever the timing. A rate with ``burst=b``
    (``tb.per_minute(500, burst=50)``) is a token bucket instead: smoother, but it can
    admit up to ``b + N`` in a rolling period.

    Args:
        limits: rates per dimension (each a rate or a list of rates).
        max_concurrency: the most leases held at once (calls in flight), or ``None``;
            or ``tb.adaptive(initial, min, max)``: a cap that moves by itself with the
            latency and the failures of the calls (see :func:`adaptive`).
        allow_debt: let a request larger than a rate's amount (or burst) through once
            that meter is full, putting it in debt that later callers wait off, instead
            of rejecting it with :class:`AmountExceedsLimitError`.
        name: a label for ``repr`` and error messages.
        **rates: ``<dimension>_per_<unit>=N``.

    A limiter may be created anywhere (at import time too) and binds to the event loop
    that uses it; it is not thread-safe.
    """

    __slots__ = (
        "__weakref__",
        "_allow_debt",
        "_backend",
        "_caps",
        "_controller",
        "_describing",
        "_dims",
        "_gate",
        "_index",
        "_key",
        "_leases",
        "_limits",
        "_listeners",
        "_made",
        "_multi",
        "_name",
        "_pools",
        "_requests_ok",
        "_slot",
        "_store",
        "_template",
        "_threads",
        "_waits",
    )

    def __init__(
        self,
        limits: Mapping[str, RateLike | Sequence[RateLike]] | None = None,
        *,
        max_concurrency: int | Adaptive | None = None,
        allow_debt: bool = False,
        name: str | None = None,
        backend: Backend | None = None,
        key: str | None = None,
        **rates: float | Rate,
    ) -> None:
        specs = parse_limits(limits, rates)
        controller = None
        gate = None
        if isinstance(max_concurrency, Adaptive):
            controller = Controller(max_concurrency, *clock_now())
            cap: int | None = controller.limit
            if backend is not None or key is not None:
                # Learned and applied in this process (see _gate): the backend's limits
                # hold no cap.
                gate = Gate(controller.limit, _describer(self))
                cap = None
        else:
            cap = concurrency(max_concurrency)
        if not specs and cap is None and gate is None:
            raise InvalidArgumentError(
                "limits", "a Limiter needs at least one rate or a max_concurrency"
            )
        if not isinstance(allow_debt, bool):
            raise ArgumentTypeError("allow_debt", "allow_debt must be a bool")
        if name is not None and not isinstance(name, str):
            raise ArgumentTypeError("name", f"name must be a str, not {type(name).__name__}")
        dims = tuple(dict.fromkeys(dim for dim, _ in specs))
        self._multi = MultiState(dims, [Meter(dim, rate) for dim, rate in specs], cap)
        # As made: what a backend names the state after (an update changes the meters').
        self._made = (tuple(rate for _, rate in specs), cap)
        self._describing = threading.Lock()  # (a backend's stores tell changes from threads)
        self._slot = cap is not None
        self._allow_debt = allow_debt
        self._configure()
        self._name = name
        # Open leases, with or without a concurrency slot: one item each (appended and
        # popped, which no thread can interleave; a counter's += could lose one).
        self._leases: list[None] = []
        self._backend = backend
        self._key = key
        self._pools: dict[Meter, tuple[str, ...]] = {}
        self._gate = gate  # with a backend, the slots of an adaptive cap (see _gate)
        self._controller = controller  # an adaptive cap's (see _sample)
        self._store: Store = self._open()
        self._threads: ThreadStore | GatedStore | None = None  # see _blocking_store
        self._waits = Waits()
        self._listeners: tuple[Callable[[LimiterEvent], object], ...] = ()

    def _configure(self) -> None:
        """Derive what requests are checked against from the dimensions and meters."""
        self._dims = dims = self._multi.dims
        self._index = {dim: i for i, dim in enumerate(dims)}
        self._limits = {dim: self._multi.limit(dim) for dim in dims}
        # The largest amount taken without a closer look (finite: inf is refused).
        self._caps = [_MOST if self._allow_debt else min(self._limits[d], _MOST) for d in dims]
        self._template = [1.0 if d == "requests" else 0.0 for d in dims]
        self._requests_ok = (
            "requests" not in self._index or self._allow_debt or (self._limits["requests"] >= 1.0)
        )

    def _open(self, *, threads: bool = False) -> Store:
        if self._backend is None and self._key is None:
            return MemoryStore(self._multi, _describer(self))
        store = self._open_backend(threads=threads)
        if self._gate is None or threads:  # (the threads' store is gated in its portal)
            return store
        return GatedStore(store, self._gate, primary=True)

    def _open_backend(self, *, threads: bool) -> Store:
        return open_store(
            self._backend,
            self._key,
            self._name,
            self._dims,
            self._multi.meters,
            self._multi.max_concurrency,
            self._pools,
            threads=threads,
            changed=self._follow,
            made=self._made,
        )

    def _reporting_store(self) -> Store:
        """The store a report (a pause, feedback) goes to: with a backend, from a thread
        without an event loop, the one its threads use (it runs in the portal's loop)."""
        store = self._store
        if isinstance(store, MemoryStore) or get_running_loop() is not None:
            return store
        return self._blocking_store()

    def _blocking_store(self) -> MemoryStore | ThreadStore | GatedStore:
        """The store that threads block on: the limiter's own in memory; with a backend,
        a second store of the same limits in the portal's loop (see ``_portal``), opened
        on first use."""
        store = self._store
        if isinstance(store, MemoryStore):
            return store
        threads = self._threads
        if threads is None:
            with _OPENING:
                threads = self._threads
                if threads is None:
                    threads = ThreadStore(self._open(threads=True))
                    if self._gate is not None:
                        threads = GatedStore(threads, self._gate, primary=False)
                    self._threads = threads
        return threads

    # -- public API ------------------------------------------------------------------

    @property
    def dimensions(self) -> tuple[str, ...]:
        """The dimensions' names, in the order they were given."""
        return self._dims

    @property
    def rates(self) -> Mapping[str, tuple[Rate, ...]]:
        """The rates of each dimension."""
        return {
            dim: tuple(cast("Rate", m.rate) for m in self._multi.meters if m.dim == dim)
            for dim in self._dims
        }

    @property
    def max_concurrency(self) -> int | None:
        """The cap on calls in flight, or ``None``. (An adaptive cap's value now: with a
        backend, this process's.)"""
        return self._cap()

    @property
    def name(self) -> str | None:
        """The limiter's label, or ``None``."""
        return self._name

    def acquire(self, *, timeout: float | None = None, **amounts: float) -> LeaseContext:
        """Reserve every dimension (and a concurrency slot) at once; use with ``async with``.

        ``async with limiter.acquire(tokens=1200) as lease:`` waits in FIFO order until
        the whole request fits, then holds it: one await, no task, nothing held while
        waiting. ``requests`` defaults to 1 when the limiter has that dimension; other
        dimensions default to 0. Leaving the block releases the slot, also on error and
        cancellation. Call :meth:`Lease.settle` with the real usage once it is known.

        Args:
            timeout: seconds to wait at most (``None``: forever); then
                :class:`AcquireTimeoutError` and nothing is taken.
            **amounts: the amount per dimension.

        Raises:
            AmountExceedsLimitError: an amount more than a rate can ever grant (unless
                the limiter allows debt). Raised at once; nothing is taken.
            InvalidArgumentError, ArgumentTypeError: a bad amount, an unknown dimension
                or a bad timeout.
        """
        vector = self._template.copy()  # requests=1 unless told otherwise
        if not self._requests_ok and "requests" not in amounts:
            raise AmountExceedsLimitError(1.0, self._limits["requests"], "requests limit")
        index = self._index
        caps = self._caps
        for dim, value in amounts.items():
            i = index.get(dim)
            cls = value.__class__
            if i is not None and (cls is float or cls is int) and 0 <= value <= caps[i]:
                vector[i] = value
            else:  # the generic checks, which raise what is wrong
                amount = self._check(dim, value)
                vector[self._index[dim]] = amount
        seconds = None if timeout is None else _validate.timeout(timeout)
        return LeaseContext(self, tuple(vector), self._slot, seconds)

    def acquire_blocking(
        self, *, timeout: float | None = None, **amounts: float
    ) -> BlockingLeaseContext:
        """:meth:`acquire` for threads: ``with limiter.acquire_blocking(tokens=1200) as
        lease:`` blocks this thread until the whole request is granted, then holds it.

        One FIFO order across every thread and every asyncio loop using the limiter; the
        thread sleeps until it is granted or times out (woken once). The first call (or any
        use from a thread other than that of the event loop using the limiter) makes the
        limiter *shared*: from then on any number of threads and asyncio loops in other
        threads may use it at once, on ``time.monotonic``. The lease has :meth:`Lease.settle`
        and :meth:`Lease.feedback`; leaving the block releases the concurrency slot, also
        on error. Do not call it from a coroutine: it blocks the loop.

        With a backend (Redis), threads take through a second store of the limiter, on
        the same keys, in the process's portal loop (one daemon thread), which batches
        their round trips; their leases settle and release there.

        Raises:
            AmountExceedsLimitError, InvalidArgumentError, ArgumentTypeError: as
                :meth:`acquire`, at once; nothing is taken.
            AcquireTimeoutError: from entering, when ``timeout`` passed first.
            RuntimeError: from entering: the limiter shares limits with other members of
                its group, serves a trio run in another thread, or has tasks waiting on a
                loop whose clock is not ``time.monotonic``.
        """
        context = self.acquire(timeout=timeout, **amounts)
        return BlockingLeaseContext(self, context.amounts, context.slot, context._timeout)

    def update(
        self,
        limits: Mapping[str, RateLike | Sequence[RateLike]] | None = None,
        *,
        max_concurrency: int | None = None,
        **rates: float | Rate,
    ) -> None:
        """Change rates and the concurrency cap while the limiter runs, at once for
        everyone, waiters included.

        ``limiter.update(tokens_per_minute=400_000, max_concurrency=16)``: rates are given
        as to the constructor. Each replaces the limiter's rate of the same dimension and
        period (``tokens_per_minute`` replaces the per-minute tokens rate), which stays
        what it is: an exact window (no ``burst``), or a token bucket (a ``burst``).

        The rule, never over-admitting across the change:

        - a window keeps its log: the grants already in it count against the new limit,
          so a lower limit admits nothing more until enough of them have left it, and
          every window holds the old limit before the change and the new one after;
        - a bucket keeps the tokens on hand, down to its new burst, and refills at its new
          rate from now on;
        - a lower cap keeps the leases held, and admits no more until enough have ended;
        - waiters keep their order: those that fit now are granted at once, the first
          that does not is timed anew. One asking more than a lowered limit is granted
          once that rate is full, in debt (as with ``allow_debt``), rather than waiting
          forever; new requests that large are refused as usual.

        What a server's reports said (see :meth:`feedback`) still holds: a bucket fitted
        to a server never gets more than the server's rate and burst, and a window's
        raise waits for what a report held back. Limits shared by a group's members
        (``BucketGroup.share``) are not changed here. In memory, called from a thread
        other than that of the event loop the limiter serves, the change is applied
        there (in order with everything else the loop does).

        With a backend (Redis), the change is made in Redis, where it converts what the
        meters hold by the rule above, for every process using the limit. It is sent in
        the background, before the next request of this event loop (from a thread
        without an event loop, ``update`` returns once Redis has it); ``rates`` and
        ``max_concurrency`` show it once Redis has it, in this process and in each
        other one (its threads included) before it next reserves, as in a process
        started later. A process that has not asked Redis since checks a request's size
        against the limits it knows. A reservation made before the change for a later
        instant (a waiter sleeping until its turn) keeps its instant: a raise speeds up
        the requests made after it. A process made with other rates uses other keys,
        and keeps its own rates; one made with another ``max_concurrency`` keeps its own
        cap. Call it from the limiter's event loop, or from a thread without one.

        Raises:
            InvalidArgumentError: a rate with no rate of its dimension and period to
                replace, or of the other kind (burst or not), or one shared by a group's
                members; a cap on a limiter made without one. Nothing is changed.
            BackendUnavailableError: with a backend, from a thread without an event
                loop, Redis could not be reached (or ``BackendError``: it refused the
                change). The change is not made (unless Redis made it and its answer
                was lost: then every process takes it before it next reserves). (In an
                event loop, the change is sent in the background, and such an error is
                logged.)
        """
        specs = parse_limits(limits, rates)
        multi = self._multi
        changes: list[tuple[int, Rate]] = []
        for dim, rate in specs:
            own = [
                i
                for i, m in enumerate(multi.meters)
                if m.dim == dim
                and not m.shared
                and m not in self._pools
                and m.rate.period == rate.period
            ]
            if not own:
                have = [m.describe() for m in multi.meters if not m.shared and m not in self._pools]
                raise InvalidArgumentError(
                    dim,
                    f"{dim!r} has no rate per {rate.period:g} s of its own to update; this "
                    f"limiter has {have} (update changes existing rates)",
                )
            index = own[0]
            meter = multi.meters[index]
            if (meter.rate.burst is None) != (rate.burst is None):
                kind = "an exact window (no burst)" if meter.rate.burst is None else "a bucket"
                raise InvalidArgumentError(
                    dim, f"{meter.describe()} is {kind}: its update must be one too"
                )
            if any(i == index for i, _ in changes):
                raise InvalidArgumentError(dim, f"{meter.describe()} is given twice")
            changes.append((index, rate))
        cap = None if max_concurrency is None else concurrency(max_concurrency)
        if cap is not None and self._controller is not None:
            raise InvalidArgumentError(
                "max_concurrency",
                "this limiter's cap is adaptive: it moves by itself, within the bounds "
                "given to tb.adaptive()",
            )
        if cap is not None and multi.max_concurrency is None:
            raise InvalidArgumentError(
                "max_concurrency",
                "this limiter was made without max_concurrency, so its leases hold no "
                "slot: make it with one (a high one) to change it later",
            )
        if not changes and cap is None:
            return

        def applied() -> None:  # where the store applied it (see Store.update)
            with self._describing:  # (a memory store changed multi: nothing to mirror)
                self._mirror(changes, cap)
                self._configure()
            log.info("%s: updated to %s", label(self._name), self._described(changes, cap))

        self._store.update(changes, cap, applied)

    def _mirror(self, rates: Sequence[tuple[int, RateSpec]], cap: int | None) -> bool:
        """Describe the limits a backend's store has now (rates by index, ``cap`` or
        ``None``: kept) in ``_multi``; whether anything changed."""
        multi = self._multi
        changed = False
        for index, rate in rates:
            meter = multi.meters[index]
            if meter.rate != rate:
                multi.update(meter, rate, multi.seen)
                changed = True
        if cap is not None and cap != multi.max_concurrency:
            multi.cap(cap)
            changed = True
        return changed

    def _follow(self, rates: Sequence[tuple[int, RateSpec]], cap: int | None) -> None:
        """A backend's store says the limits changed elsewhere (another process's
        :meth:`update`; see ``StoreSpec.changed``): the size checks, ``rates`` and
        ``max_concurrency`` follow."""
        with self._describing:
            if not self._mirror(rates, cap):
                return
            self._configure()
            changes = self._described(rates, cap)
            log.info("%s: limits follow the backend's: %s", label(self._name), changes)

    def _described(self, rates: Sequence[tuple[int, RateSpec]], cap: int | None) -> str:
        """The limits ``rates`` (by index) and ``cap`` (``None``: none) now have, for logs."""
        described = [self._multi.meters[i].describe() for i, _ in rates]
        return ", ".join(described + ([f"max_concurrency {cap}"] if cap is not None else []))

    def reset(self) -> None:
        """Forget what the limiter granted and what servers told it: every rate admits
        in full again, as a new limiter's would; a server's pause ends and its
        corrections are dropped (until its next report). Waiters that now fit are
        granted at once, in order. Kept: the leases held (their slots, and settling them:
        less than reserved gives nothing back, more is charged), the counters, changes
        made by :meth:`update`, and limits shared by a group's members.

        With a backend (Redis), every process using the limit sees it forgotten: its keys
        are deleted (in the background, before this process's next request; from a
        thread without an event loop, before ``reset`` returns). A reservation made
        before, for a later instant (a waiter of another process, sleeping until its
        turn), is forgotten too: its holder still goes at its instant. A server's
        corrections are dropped in this process (each process keeps what the server
        told it).
        """
        self._store.reset()
        threads = self._threads
        if threads is not None:  # the threads' store of a Redis limiter: its own view
            threads.reset()
        log.info("%s: reset", label(self._name))

    def pause(self, seconds: float) -> None:
        """Admit nothing for ``seconds`` from now (for example after a 429's
        ``Retry-After``). Waiters keep their places; a later, shorter pause does not
        shorten this one."""
        delay = _validate.real(seconds, "seconds", zero=True)
        plan = FeedbackPlan(delay, ())
        self._reporting_store().feedback(plan)
        self._reported(plan, None, 0)

    def feedback(
        self,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | ServerFeedback,
        *,
        status: int | None = None,
    ) -> ServerFeedback:
        """Fold a server's response into the limiter.

        Reads the rate-limit headers of OpenAI (``x-ratelimit-*``), Anthropic
        (``anthropic-ratelimit-*``) and the IETF drafts (``RateLimit-*``), and
        ``Retry-After``. For each dimension of this limiter the server reports, its
        meters are lowered so they never grant more than the server says is left (until
        the server's reset). ``Retry-After`` (or a ``status`` of 429 without one, which
        pauses for one second) pauses the whole limiter. Malformed headers are ignored
        with a :class:`RateLimitHeaderWarning`.

        Returns what was read, for logging.
        """
        return self._feedback(headers, status, None, None)

    def _feedback(
        self,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | ServerFeedback,
        status: int | None,
        lease: Request | None,
        ticket: object,
        store: Store | None = None,
    ) -> ServerFeedback:
        info = headers if isinstance(headers, ServerFeedback) else parse_rate_limit_headers(headers)
        plan = plan_feedback(info, status, self._multi.meters)
        store = self._reporting_store() if store is None else store
        corrected = store.feedback(plan, lease, ticket)
        if corrected or plan.pause is not None or plan.rejected:
            self._reported(plan, status, corrected)
        return info

    def subscribe(self, listener: Callable[[LimiterEvent], object]) -> Callable[[], None]:
        """Call ``listener(event)`` on each :class:`LimiterEvent` of this limiter: a wait
        starts, a request is granted, times out or is cancelled, a lease is settled, a
        server pauses or corrects the limiter, a response says 429. Returns a function
        that unsubscribes it.

        The listener runs in the task or thread that lived the event, after the limiter
        decided it (so it cannot change what is admitted or when), and must be quick: a
        grant's listener runs before its ``async with`` block starts. An exception it
        raises is logged (``tokenbucket`` logger) and dropped. Without listeners, the
        events cost nothing.

        >>> import tokenbucket as tb
        >>> limiter = tb.Limiter(requests_per_minute=60, name="search")
        >>> seen = []
        >>> unsubscribe = limiter.subscribe(lambda event: seen.append(event.kind))
        >>> unsubscribe()
        """
        if not callable(listener):
            raise ArgumentTypeError(
                "listener", f"listener must be callable, not {type(listener).__name__}"
            )
        with _SUBSCRIBING:
            self._listeners = (*self._listeners, listener)

        return lambda: self._unsubscribe(listener)

    def _unsubscribe(self, listener: Callable[[LimiterEvent], object]) -> None:
        """Stop telling ``listener`` (once, if it was subscribed)."""
        with _SUBSCRIBING:
            listeners = list(self._listeners)
            if listener in listeners:
                listeners.remove(listener)
                self._listeners = tuple(listeners)

    def statistics(self) -> LimiterStatistics:
        """A read-only view of the limiter's state; cheap and side-effect free.

        Read from another thread while the event loop that uses the limiter runs (a
        dashboard's), the limiter becomes shared (see :meth:`acquire_blocking`), so that
        the read is consistent. With a backend (Redis), ``available`` is empty (reading it
        would take a round trip) and the counts are this process's.
        """
        statistics = dataclasses.replace(self._store.statistics(), counters=self._counters())
        controller = self._controller
        if controller is None:
            return statistics
        with controller.lock:
            history = tuple(controller.history)
        return dataclasses.replace(statistics, limit_history=history)

    def __repr__(self) -> str:
        parts = [m.describe() for m in self._multi.meters]
        cap = self._cap()
        if cap is not None:
            parts.append(f"max_concurrency {cap}")
        label = f" {self._name!r}" if self._name else ""
        store = getattr(self, "_store", None)
        waiters = 0 if store is None else store.statistics().waiters
        return f"<Limiter{label} {', '.join(parts)} waiters={waiters}>"

    # -- internals ---------------------------------------------------------------------

    def _counters(self) -> LimiterCounters:
        """The counters of every store of the limiter (from any thread, sharing nothing)."""
        counts = [self._store.counts()]
        threads = self._threads
        if threads is not None:
            counts.append(threads.counts())
        return counters(self._dims, counts, self._waits)

    def _gauges(self) -> tuple[int, int, bool, int | None]:
        """Waiters, slots held, whether paused, and the cap on calls in flight (from any
        thread, sharing nothing)."""
        waiters, held, paused = self._store.gauges()
        threads = self._threads
        if threads is not None:
            more = threads.gauges()
            waiters, held, paused = waiters + more[0], held + more[1], paused or more[2]
        return waiters, held, paused, self._cap()

    def _cap(self) -> int | None:
        """The cap on calls in flight (from any thread)."""
        controller = self._controller
        if self._gate is not None and controller is not None:
            return controller.limit
        return self._multi.max_concurrency

    def _observe_waits(
        self, observer: Callable[[float, str | None], object], *, remove: bool = False
    ) -> None:
        """Tell ``observer`` each wait (seconds, binding) once granted; or stop."""
        with _SUBSCRIBING:
            observers = list(self._waits.observers)
            if remove:
                if observer in observers:
                    observers.remove(observer)
            else:
                observers.append(observer)
            self._waits.observers = tuple(observers)

    # What happens to a lease and to the limiter, told to the counters, the log and the
    # listeners (see _events), in the task or thread that lived it.

    def _parked(self, lease: Request) -> None:
        """``lease`` could not be granted at once: it waits."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: a request of %s waits", label(self._name), self._named(lease.amounts))
        if self._listeners:
            emit(self._listeners, LimiterEvent("wait", self._name, self._named(lease.amounts)))

    def _granted(self, lease: Request) -> None:
        """``lease`` was granted (after a wait if ``lease.queued``)."""
        waited = lease.waited
        if lease.queued:
            waits = self._waits
            waits.granted(waited)
            for observe in waits.observers:
                observe(waited, lease.binding)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s: granted %s after %.3f s (bound by %s)",
                    label(self._name),
                    self._named(lease.amounts),
                    waited,
                    lease.binding,
                )
        if self._listeners:
            emit(
                self._listeners,
                LimiterEvent(
                    "grant", self._name, self._named(lease.amounts), waited, lease.binding
                ),
            )

    def _sample(self, lease: Lease, error: BaseException | None) -> None:
        """``lease`` ends, with ``error`` if its block raised: what it tells the adaptive
        cap (nothing when it was cancelled or failed for a reason of the caller's own, or
        when it ended on another clock than it was granted on)."""
        controller = self._controller
        assert controller is not None
        dropped = lease._dropped or dropped_by(error)
        if error is not None and not dropped:
            return
        clock, now = clock_now()
        since_clock, since = lease._since
        if clock is not since_clock:
            return
        store = self._gate.store if self._gate is not None else self._store
        assert isinstance(store, MemoryStore)
        with controller.lock:  # (changes applied in the order they are made)
            change = controller.sample(clock, now, now - since, len(self._leases), dropped)
            if change is None:
                return
            store.adapt(change.limit)
        level = logging.INFO if change.reason == "drop" else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level, "%s: max_concurrency %d (%s)", label(self._name), change.limit, change.reason
            )

    def _left(self, lease: Request, error: BaseException) -> None:
        """``lease`` left while waiting, with ``error``."""
        self._waits.left(error)
        timeout = isinstance(error, AcquireTimeoutError)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s: a request of %s %s",
                label(self._name),
                self._named(lease.amounts),
                "timed out" if timeout else f"left waiting ({type(error).__name__})",
            )
        if self._listeners:
            kind: EventKind = "timeout" if timeout else "cancel"
            emit(self._listeners, LimiterEvent(kind, self._name, self._named(lease.amounts)))

    def _settled(self, lease: Request, actual: Mapping[int, float]) -> None:
        """``lease`` was settled to ``actual`` (by dimension index)."""
        used = list(lease.amounts)
        for index, value in actual.items():
            used[index] = value
        event = LimiterEvent(
            "settle", self._name, self._named(used), reserved=self._named(lease.amounts)
        )
        emit(self._listeners, event)

    def _reported(self, plan: FeedbackPlan, status: int | None, corrected: int) -> None:
        """A server's report (or :meth:`pause`) paused or corrected the limiter."""
        name = self._name
        if plan.rejected:
            log.warning(
                "%s: the server answered 429; pausing for %.3f s", label(name), plan.pause or 0.0
            )
        elif plan.pause is not None:
            log.info("%s: paused for %.3f s", label(name), plan.pause)
        if corrected:
            log.info(
                "%s: a server's rate-limit headers lowered %d of its rates", label(name), corrected
            )
        listeners = self._listeners
        if listeners:
            if plan.rejected:
                emit(listeners, LimiterEvent("rejected", name, status=status))
            if plan.pause is not None:
                emit(listeners, LimiterEvent("pause", name, seconds=plan.pause))
            if corrected:
                emit(listeners, LimiterEvent("correction", name, corrections=corrected))

    def _named(self, amounts: Iterable[float]) -> dict[str, float]:
        """Amounts by dimension name."""
        return dict(zip(self._dims, amounts, strict=False))

    def _check(self, dim: str, value: object) -> float:
        """Check one amount of a request; raise what is wrong with it."""
        if dim not in self._index:
            raise InvalidArgumentError(
                dim, f"unknown dimension {dim!r}; this limiter has {list(self._dims)}"
            )
        amount = _validate.real(value, dim, zero=True)
        if amount > self._caps[self._index[dim]]:
            raise AmountExceedsLimitError(amount, self._limits[dim], f"{dim} limit")
        return amount

    def _amounts(self, actual: Mapping[str, object]) -> dict[int, float]:
        """Check a settlement's amounts; by dimension index."""
        checked: dict[int, float] = {}
        index = self._index
        for dim, value in actual.items():
            i = index.get(dim)
            if i is None:
                raise InvalidArgumentError(
                    dim, f"unknown dimension {dim!r}; this limiter has {list(self._dims)}"
                )
            if (type(value) is float or type(value) is int) and 0 <= value <= _MOST:
                checked[i] = float(value)
            else:  # the generic checks, which raise what is wrong
                checked[i] = _validate.real(value, dim, zero=True)
        return checked

    def _adopt(self, meters: list[Meter], pools: Mapping[Meter, tuple[str, ...]]) -> None:
        """Take on shared meters (BucketGroup.share), before any use."""
        if self._in_use():
            raise RuntimeError(f"{self!r} is in use; share limits before using it")
        self._multi.add((), meters)
        self._configure()
        self._pools.update(pools)
        if isinstance(self._store, MemoryStore):
            self._store.adopt(meters)
        else:
            self._store = self._open()
            self._threads = None

    def _in_use(self) -> bool:
        store = self._store
        busy = store.in_use if isinstance(store, MemoryStore) else False
        gate = self._gate
        return bool(self._leases or busy or (gate is not None and gate.store.in_use))

    def _at_rest(self) -> bool:
        """Indistinguishable from a new limiter of the same configuration."""
        return not self._leases and self._store.at_rest()


def _describer(limiter: Limiter) -> Callable[[], str]:
    """``repr(limiter)`` for messages, without keeping the limiter alive."""
    ref = weakref.ref(limiter)

    def describe() -> str:
        alive = ref()
        return "<Limiter (gone)>" if alive is None else repr(alive)

    return describe
