"""How a waiter parks until the queue grants it: one way per kind of event loop.

On asyncio (and uvloop) a waiter parks on a future; the queue's one timer is a
``loop.call_at`` callback, and a timeout is another. On every other backend (trio,
through anyio) a waiter parks on an event inside its own cancel scope, and the head's
scope deadline *is* the timer: the head wakes at its instant and grants itself and those
behind it.

Either way a waiter that leaves with an exception (a cancellation included) leaves the
queue as if it had never come, and hands a grant it can no longer use back.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

import anyio

from ._errors import AcquireTimeoutError

if TYPE_CHECKING:
    import asyncio

    from ._queue import WaiterQueue, _Waiter

__all__: list[str] = []

_INF: Final = math.inf

# A waiter's state (the queue's too): waiting, granted, or gone (left, or granted and
# given back).
WAITING: Final = 0
GRANTED: Final = 1
GONE: Final = 2


async def park_asyncio(
    queue: WaiterQueue, waiter: _Waiter, loop: asyncio.AbstractEventLoop, now: float
) -> None:
    future = waiter.future = loop.create_future()
    queue.push(waiter, now)
    handle = None
    if waiter.deadline != _INF:
        handle = loop.call_at(waiter.deadline, queue.expire, waiter)
    try:
        await future
    except BaseException:
        if waiter.state is not GONE:
            queue.abandon(waiter)
        raise
    finally:
        if handle is not None:
            handle.cancel()


async def park_anyio(queue: WaiterQueue, waiter: _Waiter, now: float) -> None:
    waiter.event = anyio.Event()
    queue.push(waiter, now)
    try:
        while True:
            with anyio.CancelScope(deadline=min(waiter.wake, waiter.deadline)) as scope:
                waiter.scope = scope
                await waiter.event.wait()
            waiter.scope = None
            if waiter.state is GRANTED:
                return
            now = queue.clock()
            if now >= waiter.deadline:
                queue.remove(waiter, now)
                raise AcquireTimeoutError(queue.owner.timeout_message(waiter.amount))
            if queue.head() is waiter and now >= waiter.wake:
                queue.dispatch(now)
                if waiter.state is GRANTED:
                    return
    except BaseException:
        waiter.scope = None
        if waiter.state is not GONE:
            queue.abandon(waiter)
        raise
