"""What the fault tests share: acquiring through a limiter while noting each grant, and
waiting for a condition."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import tokenbucket as tb

__all__ = ["Recorder", "until"]


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 2.0) -> None:
    """Wait (polling; tests only) until ``check()`` is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


class Recorder:
    """Acquire through a limiter and note each grant's instant."""

    def __init__(self, limiter: tb.TokenBucket | tb.SlidingWindow) -> None:
        self.limiter = limiter
        self.loop = asyncio.get_running_loop()
        self.grants: list[float] = []

    async def take(self) -> float:
        await self.limiter.acquire()
        now = self.loop.time()
        self.grants.append(now)
        return now
