"""The Redis-backed side of Limiter, TokenBucket and SlidingWindow (see ``__init__``)."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any

from .._errors import AcquireTimeoutError, InvalidArgumentError, LeaseError
from .._limiter import Lease, LeaseContext
from . import BackendUnavailableError, MeterSpec, RedisBackend, Reservation

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import TracebackType

    from .._headers import ServerFeedback

__all__ = ["RemoteLimiter"]

log = logging.getLogger("tokenbucket.redis")

# How long a call with a (short or zero) timeout still waits for Redis to answer.
_ANSWER_GRACE = 0.5


class RemoteLimiter:
    """Meters in Redis for one limiter: reserve, sleep, go.

    ``dims`` name the request vector's entries; ``meters`` pairs each meter with the
    index of its dimension. ``local`` makes the in-memory stand-in used when Redis is
    unreachable and the policy is ``"local"``.
    """

    def __init__(
        self,
        backend: RedisBackend,
        tag: tuple[str, ...],
        dims: Sequence[str],
        meters: Sequence[tuple[MeterSpec, int]],
        max_concurrency: int | None,
        local: Any,
    ) -> None:
        self.backend = backend
        self.tag = ":".join(tag)  # for messages
        self.dims = tuple(dims)
        # Local pause (monotonic), so waiters already holding an instant also wait.
        self.paused_until = -math.inf
        self.meters = list(meters)
        self.max_concurrency = max_concurrency
        # Every key of one limiter (and of one group) under one hash tag: tag[0].
        self.pause_key = backend.key(*tag, "pause")
        self.slots_key = backend.key(*tag, "slots") if max_concurrency else ""
        self._local_factory = local
        self._local: Any = None
        self._slot_lock: asyncio.Lock | None = None
        self.waiters = 0
        self.in_flight = 0
        self._warned = -math.inf

    def local(self) -> Any:
        if self._local is None:
            self._local = self._local_factory()
        return self._local

    async def take(self, amounts: Sequence[float], timeout: float | None) -> Reservation | None:
        """Wait until ``amounts`` are granted; the reservation, or ``None`` when granted by
        the local stand-in (Redis unreachable under the ``"local"`` policy)."""
        specs = [m for m, _ in self.meters]
        vector = [amounts[i] for _, i in self.meters]
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        self.waiters += 1
        try:
            while True:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                call = self.backend.reserve(
                    specs,
                    vector,
                    deadline=left,
                    pause_key=self.pause_key,
                    slots_key=self.slots_key,
                    slot_max=self.max_concurrency or 0,
                )
                try:
                    # The deadline also bounds waiting for Redis itself (an outage under
                    # the "wait" policy); a reservation that arrives late is given back.
                    if left is None:
                        status, wait, reservation = await call
                    else:
                        # At least a moment for Redis to answer: timeout=0 still asks.
                        limit = max(left, _ANSWER_GRACE)
                        status, wait, reservation = await asyncio.wait_for(call, limit)
                except asyncio.TimeoutError:
                    raise AcquireTimeoutError(
                        f"{self.tag!r}: not granted within {timeout} s (Redis did not answer)"
                    ) from None
                except BackendUnavailableError:
                    if self.backend.on_error != "local":
                        raise
                    now = loop.time()
                    if now >= self._warned + 10:
                        self._warned = now
                        log.warning("Redis unreachable: limiting locally at a reduced share")
                    await self.local().take_local(amounts, left)
                    return None
                if status == 1:
                    try:
                        await asyncio.sleep(wait)
                        # A server's Retry-After that came while we slept holds us too.
                        while loop.time() < self.paused_until:  # noqa: ASYNC110 - sleeps to its end
                            await asyncio.sleep(self.paused_until - loop.time())
                    except BaseException:
                        self.backend.spawn(self.backend.give_back(reservation))
                        raise
                    return reservation
                if status == 0:
                    # Not grantable before the deadline: wait it out, then give up.
                    await asyncio.sleep(left or 0.0)
                    raise AcquireTimeoutError(f"{self.tag!r}: not granted within {timeout} s")
                # No concurrency slot: block until one is released (or the first expires).
                if left is not None and left <= 0:
                    raise AcquireTimeoutError(f"{self.tag!r}: no slot within {timeout} s")
                if self._slot_lock is None:
                    self._slot_lock = asyncio.Lock()
                async with self._slot_lock:
                    bound = wait if left is None else min(wait, left)
                    await self.backend.wait_for_slot(self.slots_key, bound)
        finally:
            self.waiters -= 1


class RemoteLeaseContext(LeaseContext):
    """``async with`` a Redis-backed acquisition: yields a :class:`RemoteLease`."""

    __slots__ = ("_amounts", "_remote", "_remote_lease", "_seconds")

    def __init__(self, remote: RemoteLimiter, amounts: Sequence[float], timeout: float | None):
        self._remote = remote
        self._amounts = amounts
        self._seconds = timeout
        self._remote_lease: RemoteLease | None = None

    async def __aenter__(self) -> RemoteLease:
        if self._remote_lease is not None:
            raise LeaseError("this acquire() context was already entered; call acquire() again")
        reservation = await self._remote.take(self._amounts, self._seconds)
        self._remote.in_flight += 1
        self._remote_lease = RemoteLease(self._remote, self._amounts, reservation)
        return self._remote_lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._remote_lease is not None
        await self._remote_lease._close_remote()


class RemoteLease(Lease):
    """A granted Redis-backed acquisition (same methods as :class:`~tokenbucket.Lease`)."""

    __slots__ = ("_amounts", "_remote", "_reservation")

    def __init__(
        self, remote: RemoteLimiter, amounts: Sequence[float], reservation: Reservation | None
    ) -> None:
        self._remote = remote
        self._amounts = tuple(amounts)
        self._reservation = reservation
        self._open = True
        self._settled = False

    @property
    def reserved(self) -> Mapping[str, float]:
        return dict(zip(self._remote.dims, self._amounts, strict=True))

    @property
    def limiter(self) -> Any:
        return self._remote

    def settle(self, **actual: float) -> None:
        """Replace the reserved amounts with the real usage, once (sent to Redis in the
        background; see :meth:`tokenbucket.Lease.settle`)."""
        if not self._open:
            raise LeaseError("this lease has ended; settle() inside its async with block")
        if self._settled:
            raise LeaseError("this lease was already settled; settle() once per lease")
        unknown = sorted(set(actual) - set(self._remote.dims))
        if unknown:
            raise InvalidArgumentError(
                unknown[0],
                f"unknown dimensions {unknown}; this limiter has {list(self._remote.dims)}",
            )
        self._settled = True
        if self._reservation is None:
            return
        new = list(self._amounts)
        for dim, value in actual.items():
            new[self._remote.dims.index(dim)] = float(value)
        vector = [new[i] for _, i in self._remote.meters]
        self._remote.backend.spawn(self._remote.backend.adjust(self._reservation, vector))

    def feedback(self, headers: Any, *, status: int | None = None) -> ServerFeedback:
        """See :meth:`tokenbucket.Limiter.feedback`."""
        return remote_feedback(self._remote, headers, status)

    def _close(self) -> None:  # pragma: no cover - the remote context closes asynchronously
        raise AssertionError("closed through RemoteLeaseContext")

    async def _close_remote(self) -> None:
        if self._open:
            self._open = False
            self._remote.in_flight -= 1
            if self._reservation is not None and self._reservation.lease:
                await self._remote.backend.release(self._reservation)


def remote_feedback(remote: RemoteLimiter, headers: Any, status: int | None) -> ServerFeedback:
    from .._headers import ServerFeedback, parse_rate_limit_headers

    info = headers if isinstance(headers, ServerFeedback) else parse_rate_limit_headers(headers)
    clamps = []
    for limit in info.limits:
        for meter, index in remote.meters:
            if remote.dims[index] == limit.dimension:
                reset = meter.p2 if limit.reset_after is None else limit.reset_after
                clamps.append((meter, limit.remaining, reset))
    pause = info.retry_after
    if pause is None and status == 429:
        pause = 1.0
    if pause is not None:
        loop = asyncio.get_running_loop()
        remote.paused_until = max(remote.paused_until, loop.time() + pause)
    if clamps or pause is not None:
        remote.backend.spawn(remote.backend.feedback(remote.pause_key, pause, clamps))
    return info
