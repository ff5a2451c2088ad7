"""Lease and LeaseContext: what ``Limiter.acquire`` hands out, on every backend."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import LeaseError

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable, Mapping
    from types import TracebackType

    from ._core import Request
    from ._headers import ServerFeedback
    from ._limiter import Limiter

__all__ = ["Lease", "LeaseContext"]


class LeaseContext:
    """What :meth:`Limiter.acquire` returns: ``async with`` it to hold a :class:`Lease`.

    Entering waits (in FIFO order) until the request is granted; leaving releases the
    concurrency slot, also on error and cancellation.
    """

    __slots__ = ("_lease", "_limiter", "_request", "_timeout")

    def __init__(self, limiter: Limiter, request: Request, timeout: float | None) -> None:
        self._limiter = limiter
        self._request = request
        self._timeout = timeout
        self._lease: Lease | None = None

    def __await__(self) -> Generator[Any, None, None]:
        raise TypeError(
            "Limiter.acquire() returns a lease context: use "
            "'async with limiter.acquire(...) as lease:', not 'await limiter.acquire(...)'"
        )

    async def __aenter__(self) -> Lease:
        if self._lease is not None:
            raise LeaseError("this acquire() context was already entered; call acquire() again")
        limiter = self._limiter
        store = limiter._store
        ticket = store.try_take(self._request)  # no second coroutine when it fits at once
        if ticket is None:
            ticket = await store.take(self._request, self._timeout)
        limiter._leases += 1
        lease = self._lease = Lease(limiter, self._request, ticket)
        return lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lease = self._lease
        assert lease is not None
        if lease._open:
            lease._open = False
            limiter = lease._limiter
            limiter._leases -= 1
            done = limiter._store.release(lease._request, lease._ticket)
            if done is not None:
                await done


class Lease:
    """What a granted :meth:`Limiter.acquire` holds until its ``async with`` ends.

    Call :meth:`settle` once with the real usage (e.g. the tokens the response says it
    used); the concurrency slot is released when the block ends.
    """

    __slots__ = ("_limiter", "_open", "_request", "_settled", "_ticket")

    def __init__(self, limiter: Limiter, request: Request, ticket: object) -> None:
        self._limiter = limiter
        self._request = request
        self._ticket = ticket  # the store's own record of the grant
        self._open = True
        self._settled = False

    @property
    def reserved(self) -> Mapping[str, float]:
        """The amount taken per dimension when the lease was granted."""
        return dict(zip(self._limiter.dimensions, self._request.amounts, strict=True))

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
            LeaseError: settled twice, or after the ``async with`` block ended.
            InvalidArgumentError, ArgumentTypeError: an unknown dimension or a bad amount.
                Nothing is changed.
        """
        if not self._open:
            raise LeaseError("this lease has ended; settle() inside its async with block")
        if self._settled:
            raise LeaseError("this lease was already settled; settle() once per lease")
        limiter = self._limiter
        amounts = limiter._amounts(actual)
        limiter._store.adjust(self._request, self._ticket, amounts)
        self._settled = True

    def feedback(
        self,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | ServerFeedback,
        *,
        status: int | None = None,
    ) -> ServerFeedback:
        """Pass a response's headers (and status) to the limiter: see :meth:`Limiter.feedback`."""
        return self._limiter.feedback(headers, status=status)

    def __repr__(self) -> str:
        state = "open" if self._open else "ended"
        settled = ", settled" if self._settled else ""
        return f"<Lease {dict(self.reserved)} {state}{settled}>"
