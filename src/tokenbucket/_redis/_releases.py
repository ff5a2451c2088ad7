"""Concurrency slots on their way back: one release call carries many.

While a release call is in flight, new releases queue, and the next call carries all of
them (one call per limiter's slots key, one after another). However many holders leave
at once, releasing uses one connection at a time, not one each: a burst of releases
cannot exhaust the client's connection pool, and the reserve calls running beside it
keep theirs. A lone release is sent at once, as before.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._tasks import Background

    # One call releasing ``leases``, all held on one slots key.
    Send = Callable[[str, list[str]], Awaitable[None]]

__all__ = ["Releases"]

_MOST: Final = 512  # leases per call, so that no one script call runs long


class Releases:
    """The releases of one backend: queued, or in a call."""

    __slots__ = ("_background", "_in_flight", "_pending", "_send")

    def __init__(self, send: Send, background: Background) -> None:
        self._send = send  # never raises an Exception: a release is best effort
        self._background = background
        self._pending: dict[str, list[tuple[str, asyncio.Future[None]]]] = {}
        self._in_flight = False

    def submit(self, slots_key: str, lease: str) -> asyncio.Future[None]:
        """Release ``lease`` with others; done when its call has been made (or failed)."""
        future = asyncio.get_running_loop().create_future()
        self._pending.setdefault(slots_key, []).append((lease, future))
        if not self._in_flight:
            self._in_flight = True
            self._background.start(self._run())
        return future

    async def _run(self) -> None:
        # Each batch is taken when the previous call ends (the first when this task
        # first runs, after every task ready in the same loop iteration has queued).
        batch: list[tuple[str, list[tuple[str, asyncio.Future[None]]]]] = []
        try:
            while self._pending:
                pending, self._pending = self._pending, {}
                batch = [
                    (key, items[i : i + _MOST])
                    for key, items in pending.items()
                    for i in range(0, len(items), _MOST)
                ]
                while batch:
                    key, items = batch[0]
                    await self._send(key, [lease for lease, _ in items])
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


def _resolve(items: list[tuple[str, asyncio.Future[None]]]) -> None:
    for _, future in items:
        if not future.done():
            future.set_result(None)
