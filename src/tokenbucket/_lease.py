"""Lease and LeaseContext: what ``Limiter.acquire`` hands out, on every backend.

One object per acquisition: the :class:`LeaseContext` that ``acquire`` returns is the
request the limiter's store is asked for (a :class:`~tokenbucket._core.Request`), and
entering it makes it the :class:`Lease` the caller holds. The uncontended path of a
``Limiter`` allocates nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from ._adaptive import dropped_status
from ._core import Request
from ._errors import LeaseError
from ._loop import now as clock_now

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable, Mapping
    from types import TracebackType

    from ._backend import Store
    from ._headers import ServerFeedback
    from ._limiter import Limiter

__all__ = ["BlockingLeaseContext", "Lease", "LeaseContext"]

# A lease's stage: not granted yet, held (and settled or not), ended (settled or not).
_NEW: Final = 0
_OPEN: Final = 1
_SETTLED: Final = 2
_ENDED: Final = 3  # _ENDED + 1: ended after a settle


class Lease(Request):
    """What a granted :meth:`Limiter.acquire` holds until its ``async with`` ends.

    Call :meth:`settle` once with the real usage (e.g. the tokens the response says it
    used); the concurrency slot is released when the block ends.

    Attributes:
        waited: seconds from the call to the grant, on the limiter's clock: ``0.0`` when
            it was granted at once. With a backend (Redis) it includes the round trip.
        binding: what it waited for, once granted after a wait: ``"max_concurrency"``,
            ``"paused"`` (a server asked to wait), or the rate that refused it last, as
            ``"<dimension> <rate>"`` (``"tokens 800000/minute"``); ``None`` when it did
            not wait, or when the backend cannot tell (Redis, for its rates).
    """

    __slots__ = ("_dropped", "_limiter", "_since", "_stage", "_store", "_ticket", "_timeout")

    def __init__(
        self,
        limiter: Limiter,
        amounts: tuple[float, ...],
        slot: bool,
        timeout: float | None,
    ) -> None:
        self.amounts = amounts
        self.slot = slot
        self.seq = _LATE
        self.waited = 0.0
        self.binding = None
        self.queued = False
        self._limiter = limiter
        self._timeout = timeout
        self._stage = _NEW
        self._ticket: object  # the store's own record of the grant, once granted
        self._store: Store  # the store that granted it, once granted
        # With an adaptive cap: when it was granted, and whether its call was dropped.
        self._since: tuple[object, float]  # (its clock, the instant)
        self._dropped = False

    @property
    def reserved(self) -> Mapping[str, float]:
        """The amount taken per dimension when the lease was granted."""
        return dict(zip(self._limiter.dimensions, self.amounts, strict=True))

    @property
    def limiter(self) -> Limiter:
        """The limiter that granted this lease."""
        return self._limiter

    def settle(self, **actual: float) -> None:
        """Replace the reserved amounts with the real usage, once.

        ``lease.settle(tokens=response.usage.total_tokens)``: a smaller amount gives the
        difference back (waiters get it at once), a larger one is charged as debt that
        later callers wait off. Dimensions not named keep their reserved amount. With a
        backend (Redis), the correction is sent in the background.

        Raises:
            LeaseError: settled twice, before the lease was granted, or after the
                ``async with`` block ended.
            InvalidArgumentError, ArgumentTypeError: an unknown dimension or a bad amount.
                Nothing is changed.
        """
        stage = self._stage
        if stage != _OPEN:
            if stage == _NEW:
                raise LeaseError("this lease is not granted yet; settle() inside async with")
            if stage == _SETTLED:
                raise LeaseError("this lease was already settled; settle() once per lease")
            raise LeaseError("this lease has ended; settle() inside its async with block")
        limiter = self._limiter
        amounts = limiter._amounts(actual)
        self._store.adjust(self, self._ticket, amounts)
        self._stage = _SETTLED
        if limiter._listeners:
            limiter._settled(self, amounts)

    def _renew(self) -> None:
        """Not granted (timed out, cancelled): it may be entered again, as a new request
        (a place at the end of the queue, a wait of its own)."""
        self.seq = _LATE
        self.waited = 0.0
        self.binding = None
        self.queued = False

    def parked(self) -> None:
        """(The store queues it: the limiter tells its listeners, once: a request that
        waits at an adaptive cap's gate may wait for the backend's rates after it.)"""
        if self.queued:
            return
        self.queued = True
        self._limiter._parked(self)

    def feedback(
        self,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | ServerFeedback,
        *,
        status: int | None = None,
    ) -> ServerFeedback:
        """Pass the headers (and status) of this lease's response to the limiter: see
        :meth:`Limiter.feedback`. On a token-bucket meter in memory, what the server says
        is left is read as of when this request reached it: what the bucket granted since
        is taken off it, and the server's refill since added. (A window's log merges the
        grants of one instant, and Redis holds other processes' grants: there, as of
        now.) With an adaptive cap, a status of 429 or 5xx marks this lease's call as
        dropped (see :func:`adaptive`)."""
        if status is not None and dropped_status(status):
            self._dropped = True  # (for an adaptive cap: see _adaptive)
        if self._stage in (_OPEN, _SETTLED):
            return self._limiter._feedback(headers, status, self, self._ticket, self._store)
        return self._limiter._feedback(headers, status, None, None)

    def __repr__(self) -> str:
        state = ("not granted", "open", "open, settled", "ended", "ended, settled")[self._stage]
        return f"<Lease {dict(self.reserved)} {state}>"


class LeaseContext(Lease):
    """What :meth:`Limiter.acquire` returns: ``async with`` it to hold it as a :class:`Lease`.

    Entering waits (in FIFO order) until the request is granted and gives the lease (this
    very object); leaving releases the concurrency slot, also on error and cancellation.
    A context is entered once.
    """

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        raise TypeError(
            "Limiter.acquire() returns a lease context: use "
            "'async with limiter.acquire(...) as lease:', not 'await limiter.acquire(...)'"
        )

    async def __aenter__(self) -> Lease:
        """Wait until granted. Cancelled or timed out, it takes nothing."""
        if self._stage != _NEW:
            raise LeaseError("this acquire() context was already entered; call acquire() again")
        limiter = self._limiter
        store = limiter._store
        ticket = store.try_take(self)  # no second coroutine when it fits at once
        if ticket is None:
            try:
                ticket = await store.take(self, self._timeout)
            except BaseException as error:
                try:
                    limiter._left(self, error)
                finally:
                    self._renew()
                raise
        self._ticket = ticket
        self._store = store
        self._stage = _OPEN
        limiter._leases.append(None)  # a count that threads cannot lose
        if limiter._controller is not None:
            self._since = clock_now()
        if self.queued or limiter._listeners:
            try:
                limiter._granted(self)
            except BaseException as error:  # (a listener's KeyboardInterrupt): it ends
                await self.__aexit__(type(error), error, error.__traceback__)
                raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Release the concurrency slot (at once in memory; one round trip on Redis)."""
        if self._stage == _OPEN or self._stage == _SETTLED:
            self._stage += _ENDED - _OPEN
            limiter = self._limiter
            try:
                if limiter._controller is not None:
                    limiter._sample(self, exc)
            finally:
                limiter._leases.pop()
                done = self._store.release(self, self._ticket)
            if done is not None:
                await done


class BlockingLeaseContext(LeaseContext):
    """What :meth:`Limiter.acquire_blocking` returns: ``with`` it to hold it as a
    :class:`Lease`, in a thread.

    Entering blocks the thread (in FIFO order with every thread and task waiting on the
    limiter) until the request is granted; leaving releases the concurrency slot, also on
    error. A context is entered once. With a backend (Redis), the limiter's store for
    threads grants it (see ``_portal``), and its settlement, feedback and release go there.
    """

    __slots__ = ()

    def __enter__(self) -> Lease:
        """Block until granted. Timed out (or interrupted), it takes nothing."""
        if self._stage != _NEW:
            raise LeaseError("this acquire_blocking() context was already entered; call it again")
        limiter = self._limiter
        store = limiter._blocking_store()
        try:
            self._ticket = store.acquire_blocking(self, self._timeout)
        except BaseException as error:
            try:
                limiter._left(self, error)
            finally:
                self._renew()
            raise
        self._store = store
        self._stage = _OPEN
        limiter._leases.append(None)
        if limiter._controller is not None:
            self._since = clock_now()
        if self.queued or limiter._listeners:
            try:
                if self.queued and limiter._threads is not None:
                    limiter._parked(self)  # (see parked): told now, from this thread
                limiter._granted(self)
            except BaseException as error:  # (a listener's KeyboardInterrupt): it ends
                self.__exit__(type(error), error, error.__traceback__)
                raise
        return self

    def parked(self) -> None:
        """(With a backend, a thread's request waits in the portal's loop: its thread
        tells the wait once granted, so that no listener runs in that loop.)"""
        if self._limiter._threads is None:
            super().parked()
        else:
            self.queued = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Release the concurrency slot."""
        if self._stage == _OPEN or self._stage == _SETTLED:
            self._stage += _ENDED - _OPEN
            limiter = self._limiter
            try:
                if limiter._controller is not None:
                    limiter._sample(self, exc)
            finally:
                limiter._leases.pop()
                done = self._store.release(self, self._ticket)
            assert done is None  # at once (with a backend: once its round trip is made)


_LATE: Final = float("inf")
