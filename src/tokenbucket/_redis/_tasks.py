"""What a backend runs in the background: reserve calls in flight, and the give-backs,
releases, settles and feedback that no caller waits for. ``aclose`` waits for them."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Coroutine

__all__ = ["Background"]

_AT_ONCE: Final = 16  # spawned tasks running at a time (they share the connection pool)


class Background:
    """Tasks kept referenced until they finish."""

    __slots__ = ("_slots", "_tasks")

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._slots: asyncio.Semaphore | None = None

    def start(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` now."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def running(self) -> set[asyncio.Task[Any]]:
        """The tasks started so far and not finished."""
        return set(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` when one of a few places is free (so that a burst of give-backs
        does not exhaust the connection pool)."""
        return self.start(self._bounded(coro))

    async def _bounded(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self._slots is None:
            self._slots = asyncio.Semaphore(_AT_ONCE)
        try:
            async with self._slots:
                return await coro
        finally:
            coro.close()  # cancelled before it started (drain): closed, not left unawaited

    async def drain(self, end: float) -> None:
        """Wait for every task (those started meanwhile too) until the loop's clock
        reaches ``end``; then cancel what is left."""
        loop = asyncio.get_running_loop()
        while self._tasks:  # tasks may start others while they finish
            _, late = await asyncio.wait(set(self._tasks), timeout=max(0.0, end - loop.time()))
            if late and loop.time() >= end:
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
