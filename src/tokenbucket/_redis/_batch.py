"""Reservations on their way to Redis: one reserve call carries many.

While a reserve call is in flight, new requests queue, and the next call carries all of
them: one call per hash tag, so that no call spans two slots of a Redis Cluster. When
the last reply showed that a tag's next free instant is well in the future (its limit
is binding), new requests to it are *held* for a while (``delay``, at most half the
time left until that instant) before they are sent: they could not be admitted earlier
anyway, and requests arriving one by one at the admission rate then share a call too.

A request taken back before it is sent was never reserved; one taken back while its call
is in flight is reported (``on_lost``) once the reply comes, to be given back before
the next call is sent (what it frees is then free for the requests in that one). Callers
await the request's future itself (no task, no shield per request): cancelling the
caller cancels the future, and :meth:`Batcher.withdraw` says what that left behind.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Final

from ._protocol import RESERVED, Reply, Shape, member

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from ._tasks import Background

    # One call for the requests ``(shape, amounts, seconds left until the deadline)``:
    # the call's id and its replies.
    Send = Callable[
        [Sequence[tuple[Shape, Sequence[float], float | None]]], Awaitable[tuple[str, list[Reply]]]
    ]
    # A reply that reached no one: (the request, its reservation's id, the reply); what
    # is done when what it reserved has been given back (None: nothing to give back).
    Lost = Callable[["Pending", str, Reply], "asyncio.Future[None] | None"]

__all__ = ["Batcher"]

_MIN_HOLD: Final = 0.001  # shorter holds are not worth a timer
_REMEMBERED: Final = 1024  # tags whose next free instant is kept before past ones go


class Pending:
    """One request: queued, held, or in a call. ``future`` gets ``(reply, the loop's
    clock when it arrived, the reservation's id)``."""

    __slots__ = ("amounts", "deadline", "future", "sent", "shape", "tag")

    def __init__(
        self,
        shape: Shape,
        amounts: Sequence[float],
        future: asyncio.Future[tuple[Reply, float, str]],
        deadline: float | None,
    ) -> None:
        self.shape = shape
        self.amounts = amounts
        self.future = future
        self.deadline = deadline  # on the loop's clock; sent as the time left then
        self.tag = shape.tag
        self.sent = False


class Batcher:
    """The reserve requests of one backend: queued, held, or in a call."""

    __slots__ = (
        "_background",
        "_free_at",
        "_in_flight",
        "_lost",
        "_pending",
        "_send",
        "delay",
        "held",
        "hold_timers",
    )

    def __init__(self, send: Send, lost: Lost, delay: float, background: Background) -> None:
        self._send = send
        self._lost = lost
        self.delay = delay  # the longest a request is held (0: never)
        self._background = background
        self._pending: list[Pending] = []
        self._in_flight = False
        # Per hash tag: the latest instant a reply reserved (loop clock), and the
        # requests held until a timer sends them together.
        self._free_at: dict[str, float] = {}
        self.held: dict[str, list[Pending]] = {}
        self.hold_timers: dict[str, asyncio.TimerHandle] = {}

    def submit(self, shape: Shape, amounts: Sequence[float], deadline: float | None) -> Pending:
        """Queue one request to be sent with others; await its ``future`` for the reply.
        ``deadline`` is on the loop's clock. A caller that stops waiting (cancelled)
        calls :meth:`withdraw`."""
        loop = asyncio.get_running_loop()
        pending = Pending(shape, amounts, loop.create_future(), deadline)
        hold = 0.0
        if self.delay:
            now = loop.time()
            if deadline is None or deadline - now > self.delay:
                hold = min(self.delay, (self._free_at.get(pending.tag, now) - now) / 2)
        if hold >= _MIN_HOLD:
            self._hold(pending, hold, loop)
        else:
            if self.held and pending.tag in self.held:
                self.flush(pending.tag)  # earlier requests go first (FIFO)
            self._pending.append(pending)
            if not self._in_flight:
                self._start()
        return pending

    def withdraw(self, pending: Pending) -> None:
        """The caller of ``pending`` stopped waiting: never sent, it is taken out (nothing
        was reserved); in a call, its reply goes to ``lost`` when it comes (it may have
        reserved something); answered already, its reply goes to ``lost`` now."""
        future = pending.future
        if future.done() and not future.cancelled():
            if future.exception() is None:
                reply, _, name = future.result()
                self._lost(pending, name, reply)
            return
        future.cancel()
        if not pending.sent:
            self._unsend(pending)
        # else: _run_group reports it when the reply comes.

    def flush(self, tag: str) -> None:
        """Send the requests held for ``tag`` (in the next call)."""
        timer = self.hold_timers.pop(tag, None)
        if timer is not None:
            timer.cancel()
        held = self.held.pop(tag, [])
        self._pending.extend(held)
        if held and not self._in_flight:
            self._start()

    def flush_all(self) -> None:
        """Send every request held."""
        for tag in list(self.held):
            self.flush(tag)

    def _hold(self, pending: Pending, hold: float, loop: asyncio.AbstractEventLoop) -> None:
        """Keep ``pending`` back for up to ``hold`` seconds, with the others of its tag."""
        held = self.held.get(pending.tag)
        if held is None:
            self.held[pending.tag] = [pending]
            self.hold_timers[pending.tag] = loop.call_later(hold, self.flush, pending.tag)
        else:
            held.append(pending)

    def _unsend(self, pending: Pending) -> None:
        """Take ``pending``, not sent yet, out of its queue."""
        for queue in (self.held.get(pending.tag), self._pending):
            if queue is not None and pending in queue:
                queue.remove(pending)
                if not queue and queue is not self._pending:
                    self.flush(pending.tag)  # drops the empty list and its timer
                return

    def _start(self) -> None:
        self._in_flight = True
        self._background.start(self._run())

    async def _run(self) -> None:
        # The batch is taken when this task first runs, after every task that was ready
        # in the same loop iteration has queued its request. One call per hash tag.
        pending, self._pending = self._pending, []
        groups: dict[str, list[Pending]] = {}
        for request in pending:
            if not request.future.cancelled():
                request.sent = True
                groups.setdefault(request.tag, []).append(request)
        giving: list[asyncio.Future[None]] = []
        try:
            for batch in groups.values():
                await self._run_group(batch, giving)
            if giving:
                # What callers that left while the call was out reserved is given back
                # before the next call is sent: the requests in it (often sent by the
                # callers that stay) find it free.
                await asyncio.wait(giving)
        finally:
            self._in_flight = False
            if self._pending:
                self._start()

    async def _run_group(self, batch: list[Pending], giving: list[asyncio.Future[None]]) -> None:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        requests = [
            # The time left now, not when the request queued.
            (p.shape, p.amounts, None if p.deadline is None else max(0.0, p.deadline - sent))
            for p in batch
        ]
        try:
            call, replies = await self._send(requests)
            arrived = loop.time()
        except BaseException as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            free = -math.inf
            for i, (pending, reply) in enumerate(zip(batch, replies, strict=True)):
                if reply.status == RESERVED and reply.wait > free:
                    free = reply.wait
                if pending.future.done():  # its caller left while the call was out
                    if reply.status == RESERVED:
                        given = self._lost(pending, member(call, i), reply)
                        if given is not None:
                            giving.append(given)
                    continue
                # The wait counts from the reply's arrival here, not from when each
                # task resumes: tasks of one batch resume one after another.
                pending.future.set_result((reply, arrived, member(call, i)))
            if free > -math.inf:
                self._note_free(batch[0].tag, arrived + free, arrived)

    def _note_free(self, tag: str, instant: float, now: float) -> None:
        """Remember the latest instant reserved on ``tag``'s limits (forgetting past
        ones, so per-key use keeps this small)."""
        free_at = self._free_at
        if instant > free_at.get(tag, -math.inf):
            free_at[tag] = instant
            if len(free_at) > _REMEMBERED:
                for old in [t for t, at in free_at.items() if at <= now]:
                    del free_at[old]
