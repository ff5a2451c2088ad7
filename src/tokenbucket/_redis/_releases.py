"""What goes back to Redis in the background: one call carries many.

Concurrency slots released, and reservations given back by callers that left before
their instant (cancelled, timed out). While a call is in flight, new ones queue, and the
next call carries all of them (one call per key, one after another: a slots key for
releases, a hash tag for give-backs, so that no call spans two slots of a Redis
Cluster), at most ``most`` items a call so that no one script call runs long. However
many holders leave at once, this uses one connection at a time, not one each: a burst
cannot exhaust the client's connection pool, the reserve calls running beside it keep
theirs, and a thousand waiters cancelled together (a timeout storm, a shutdown) are
given back in a few calls, within ``aclose``'s grace. A lone item is sent at once.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._tasks import Background

__all__ = ["Returns"]

T = TypeVar("T")


class Returns(Generic[T]):
    """The items of one kind (leases, reservations) of one backend: queued, or in a
    call. ``send(key, items)`` makes one call and never raises an Exception: what goes
    back is best effort (leases and reservations expire on their own)."""

    __slots__ = ("_background", "_in_flight", "_most", "_pending", "_send")

    def __init__(
        self,
        send: Callable[[str, list[T]], Awaitable[None]],
        background: Background,
        most: int,
    ) -> None:
        self._send = send
        self._background = background
        self._most = most
        self._pending: dict[str, list[tuple[T, asyncio.Future[None]]]] = {}
        self._in_flight = False

    def submit(self, key: str, item: T) -> asyncio.Future[None]:
        """Send ``item`` with the others of ``key``; done when its call has been made
        (or failed)."""
        future = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, []).append((item, future))
        if not self._in_flight:
            self._in_flight = True
            self._background.start(self._run())
        return future

    async def _run(self) -> None:
        # Each batch is taken when the previous call ends (the first when this task
        # first runs, after every task ready in the same loop iteration has queued).
        most = self._most
        batch: list[tuple[str, list[tuple[T, asyncio.Future[None]]]]] = []
        try:
            while self._pending:
                pending, self._pending = self._pending, {}
                batch = [
                    (key, items[i : i + most])
                    for key, items in pending.items()
                    for i in range(0, len(items), most)
                ]
                while batch:
                    key, items = batch[0]
                    await self._send(key, [item for item, _ in items])
                    batch.pop(0)
                    _resolve(items)
        finally:
            self._in_flight = False
            # Cancelled (the backend closing): nobody waits for what was not sent.
            for _, items in batch:
                _resolve(items)
            for items in self._pending.values():
                _resolve(items)
            self._pending.clear()


def _resolve(items: list[tuple[T, asyncio.Future[None]]]) -> None:
    for _, future in items:
        if not future.done():
            future.set_result(None)
