"""A limiter's store in Redis: reserve, sleep until the reserved instant, go.

This is the Redis side of the seam in ``tokenbucket._backend``: a :class:`RedisStore` is
what :meth:`RedisBackend.open` returns for one limiter (a :class:`~tokenbucket.Limiter`,
or a single limiter given a backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, TypeVar

from .._core import Counts, Request
from .._errors import AcquireTimeoutError, BackendUnavailableError
from .._rate import Rate
from .._statistics import LimiterStatistics
from ._protocol import STALE, MeterSpec, Reservation, Shape

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence

    from .._backend import StoreSpec
    from .._core import RateSpec
    from .._feedback import FeedbackPlan
    from .._memory import MemoryStore
    from ._backend import RedisBackend

__all__ = ["RedisStore", "escape"]

_T = TypeVar("_T")

log = logging.getLogger("tokenbucket.redis")

# How long a call with a (short or zero) timeout still waits for Redis to answer.
_ANSWER_GRACE: Final = 0.5
_WARN_EVERY: Final = 10.0
# While the local stand-in is in use, how often Redis is asked whether it answers again.
_PROBE_EVERY: Final = 0.1
# The longest the probe waits for Redis to answer.
_PROBE_TIMEOUT: Final = 1.0
# How long the probe goes on after the stand-in's last grant (so that a process in use
# learns of Redis's return from the probe, not from a request Redis grants at once).
_PROBE_LINGER: Final = 1.0
# After Redis answers again, how long this process sends nothing new there: long enough
# for every other process in use to find out too and charge its stand-in's grants first.
_RETURN_HOLD: Final = _PROBE_EVERY + 0.05


def escape(name: str) -> str:
    """A user's name as one part of a Redis key: ``%``, ``:``, ``{`` and ``}`` written as
    ``%25``, ``%3A``, ``%7B`` and ``%7D``, so that no part can end the hash tag or pass
    for two parts, and distinct names stay distinct. Other names are unchanged."""
    if not any(c in name for c in "%:{}"):
        return name
    for char in "%:{}":
        name = name.replace(char, f"%{ord(char):02X}")
    return name


class RedisStore:
    """The meters of one limiter in Redis, and what this process knows of them."""

    def __init__(self, backend: RedisBackend, spec: StoreSpec) -> None:
        self.backend = backend
        self.label = ":".join(spec.key)  # for messages
        tag = [escape(part) for part in spec.key]
        self.dims = spec.dims
        # Keys and parameters as the limits were made (an update since is read from
        # Redis: see _follow).
        made, cap = spec.made or ((), spec.max_concurrency)
        self._rates = [made[i] if i < len(made) else m.rate for i, m in enumerate(spec.meters)]
        self.max_concurrency = cap
        self.meters: list[MeterSpec] = []
        self.indexes: list[int] = []
        self._pooled: set[int] = set()  # the meters shared with other limiters
        for i, meter in enumerate(spec.meters):
            rate = self._rates[i]
            label = f"{meter.dim}:{rate.amount!r}/{rate.period!r}"
            kind, p1, p2 = _params(rate)
            if rate.burst is not None:
                label += f":b{rate.burst!r}"
            pool = [escape(part) for part in spec.pools.get(meter, ())]
            if pool:
                self._pooled.add(i)
            # Every key of one limiter (and of one group) under one hash tag: tag[0].
            key = backend.key(tag[0], *pool) if pool else backend.key(*tag, f"{i}", label)
            self.meters.append(MeterSpec(kind, key, p1, p2))  # type: ignore[arg-type]
            self.indexes.append(spec.dims.index(meter.dim))
        self.pause_key = backend.key(*tag, "pause")
        self.slots_key = backend.key(*tag, "slots") if cap else ""
        # The rates every process uses, as Limiter.update changed them (see update.lua):
        # a cap's field names the cap it was made with, as a meter's key names its rate.
        self.rates_key = backend.key(*tag, "rates")
        self._cap_field = f"cap:{cap}"
        self.shape = Shape(
            tuple(self.meters), self.pause_key, self.slots_key, cap or 0, self.rates_key
        )
        self._made = self.shape.meters, cap
        self._configured = self.shape.meters  # as updated, before any fit
        self._fits: dict[int, tuple[float, float]] = {}  # bucket meters fitted: rate, capacity
        self._changed = spec.changed
        self._refreshing: asyncio.Task[None] | None = None  # reading the rates (see _refresh)
        self._one = len(self.indexes) == 1
        # Per index of a window meter, where among the meters the bucket that models the
        # server behind it is (see _fit).
        self._shadows: dict[int, int] = {}
        self._dormant: set[int] = set()  # the shadows a reset put to sleep (forget_locally)
        self._fallback = spec.fallback
        self._local: MemoryStore | None = None
        # The grants Redis made this process (loop instant, amounts), for as long as a
        # window reaches back, to charge a stand-in with; when this process first met the
        # outage; the tasks waiting in the stand-in; the task asking whether Redis is back.
        self._windows = max(
            (m.rate.period for m in spec.meters if m.rate.burst is None), default=0.0
        )
        # How far back a grant still counts: a window's span, or a bucket's B/r.
        self._horizon = max(
            [self._windows] + [meter.p2 / meter.p1 for meter in self.meters if meter.kind == "b"]
        )
        self._granted: deque[tuple[float, tuple[float, ...]]] = deque()
        # The stand-in's grants for as long as a window reaches back (see _charge_back).
        self._lent: deque[tuple[float, tuple[float, ...]]] = deque()
        self._down_since: float | None = None
        self._local_tasks: set[asyncio.Task[object]] = set()
        self._returned: asyncio.Future[None] | None = None  # done when Redis answers again
        self._stopped: set[asyncio.Future[Any]] = set()  # stand-in waits being cancelled
        self._probe: asyncio.Task[None] | None = None
        self._lent_until = -math.inf  # the probe goes on until then (loop clock)
        self._charging: asyncio.Task[None] | None = None  # see _charge_back
        self._slot_lock: asyncio.Lock | None = None
        self._slot_loop: asyncio.AbstractEventLoop | None = None  # the lock's loop
        self._woken = False  # a release woke this process, and no waiter asked since
        self._blocking: set[asyncio.Task[bool]] = set()  # the blocking wait (kept referenced)
        # What this process knows: a pause a server asked for (loop clock), its waiters,
        # the instants they are due, its slots held, and the last grant's wait.
        self.paused_until = -math.inf
        self.waiters = 0
        self.queued: list[float] = []
        self.in_flight = 0
        self.last_wait: float | None = None
        self._counts = Counts(len(spec.dims))  # this process's (see LimiterCounters)
        self._warned = -math.inf

    # -- the store's operations -------------------------------------------------------------

    def try_take(self, request: Request) -> Reservation | None:
        return None  # nothing is known here without a round trip

    async def take(self, request: Request, timeout: float | None) -> Reservation | None:
        """Wait until ``request`` is granted; the reservation, or ``None`` when the local
        stand-in granted it (Redis unreachable under the ``"local"`` policy)."""
        backend = self.backend
        loop = backend.running_loop()  # raises on trio
        amounts = request.amounts
        vector = (amounts[self.indexes[0]],) if self._one else [amounts[i] for i in self.indexes]
        start = loop.time()
        deadline = None if timeout is None else start + timeout  # the one deadline
        self.waiters += 1
        asked = False  # asked Redis once already (then waited for a slot)
        try:
            while True:
                while self._charging is not None:  # (a newer one may come meanwhile)
                    await self._charged(deadline, loop, timeout)
                probe = self._probe
                if probe is not None and not probe.done() and probe.get_loop() is loop:
                    # Redis was out of reach a moment ago: the probe finds out when it
                    # answers again; until then, the stand-in.
                    if await self._take_locally(request, deadline, loop):
                        self._grant(request, loop.time() - start, request.binding)
                        return None
                    continue
                shape = self.shape
                if len(shape.meters) != len(vector):  # a meter was fitted since (see _fit)
                    vector = [amounts[i] for i in self.indexes]
                call = backend.reserve(shape, vector, deadline=deadline)
                try:
                    if deadline is None:
                        status, wait, reservation = await call
                    else:
                        # Waiting for Redis itself (an outage under the "wait" policy) is
                        # bounded too, with a moment for it to answer a timeout of 0. Asked
                        # again after a wait for a slot, the deadline holds: a reply that
                        # comes later is given back (see Batcher.withdraw).
                        left = deadline - loop.time()
                        if not asked:
                            left = max(left, _ANSWER_GRACE)
                        status, wait, reservation = await asyncio.wait_for(call, left)
                except asyncio.TimeoutError:
                    if asked:  # a slot granted now would be granted late
                        raise AcquireTimeoutError(
                            f"{self.label!r}: no slot within {timeout} s"
                        ) from None
                    raise self._unanswered(timeout) from None
                except BackendUnavailableError:
                    if backend.on_error != "local":
                        raise
                    if not await self._take_locally(request, deadline, loop):
                        continue  # Redis answers again: ask it
                    self._grant(request, loop.time() - start, request.binding)
                    return None
                if self._local is not None or self._down_since is not None:
                    self._hand_back()  # Redis answers again: the stand-in is done
                if status == STALE:  # the rates changed (another process's update)
                    await self._refresh(deadline, loop, timeout)
                    continue
                if status == 1:
                    due = loop.time() + wait  # `wait` is what is left of it now
                    if deadline is not None and wait > 0 and due > deadline:
                        # Within the deadline when the script ran, but the round trip
                        # took the difference: the caller's deadline holds.
                        backend.give_back(reservation)
                        await asyncio.sleep(max(0.0, deadline - loop.time()))
                        raise AcquireTimeoutError(f"{self.label!r}: not granted within {timeout} s")
                    binding = "max_concurrency" if asked else None
                    if wait > 0.0 or self.paused_until > due:
                        if self.paused_until > due:
                            binding = "paused"
                        if not asked:
                            try:
                                request.parked()
                            except BaseException:  # (a listener's KeyboardInterrupt)
                                backend.give_back(reservation)
                                raise
                        await self._sleep_until(due, reservation, loop)
                    if backend.on_error == "local":  # only a stand-in needs them
                        self._record(due, request.amounts)
                    self._grant(request, loop.time() - start, binding)
                    if request.slot:
                        self.in_flight += 1
                    return reservation
                if status == 0:  # not grantable before the deadline: wait it out
                    assert deadline is not None
                    await asyncio.sleep(max(0.0, deadline - loop.time()))
                    raise AcquireTimeoutError(f"{self.label!r}: not granted within {timeout} s")
                # No concurrency slot: block until one is released (or the first
                # expires), then ask again; with a deadline, not past it.
                if not asked:
                    request.parked()
                asked = True
                if deadline is None or loop.time() < deadline:
                    await self._wait_for_slot(loop.time() + wait, deadline, loop)
                if deadline is not None and loop.time() >= deadline:
                    raise AcquireTimeoutError(f"{self.label!r}: no slot within {timeout} s")
        finally:
            self.waiters -= 1

    def _unanswered(self, timeout: float | None) -> AcquireTimeoutError:
        """The error of a caller whose ``timeout`` (and the answer grace) passed before
        Redis answered."""
        return AcquireTimeoutError(
            f"{self.label!r}: not granted within {timeout} s (Redis did not answer)"
        )

    def _grant(self, request: Request, waited: float, binding: str | None) -> None:
        """Count the grant of ``request``, ``waited`` seconds after its call (a round trip
        at least), waiting for ``binding`` if known (else ``None``: a rate, or no wait)."""
        self.last_wait = request.waited = max(0.0, waited)
        request.binding = binding
        # Queued: Redis (or the stand-in) made it wait; else it was granted at once.
        self._counts.grant(request.amounts, request.queued)

    async def _wait_for_slot(
        self, expires: float, deadline: float | None, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Block until a slot may be free (a release woke this process, or the first
        lease expires at ``expires``), or until ``deadline``.

        One waiter of this store blocks at a time; the others queue here. The bound is an
        instant, so a waiter that queued past the first lease's expiry asks again at once:
        expired slots come back together. A waiter leaves at its deadline whatever the
        round trip: its blocking wait goes on without it (the connection stays usable,
        and the lock held) until Redis answers, and a wake it brings is passed on to the
        next waiter, which then asks at once."""
        if self._slot_lock is None or self._slot_loop is not loop:
            self._slot_lock, self._slot_loop = asyncio.Lock(), loop
            self._woken = False
        lock = self._slot_lock
        if deadline is None:
            await lock.acquire()
        else:
            try:
                await asyncio.wait_for(lock.acquire(), deadline - loop.time())
            except asyncio.TimeoutError:
                return
        until = expires if deadline is None else min(expires, deadline)
        if self._woken or until <= loop.time():
            self._woken = False  # a wake passed on: ask at once
            lock.release()
            return
        # Its own task, which the store keeps (and ``aclose`` does not wait for: a
        # closed client ends it, or it ends by itself within the read timeout).
        blocking = loop.create_task(self.backend.wait_for_slot(self.slots_key, until - loop.time()))
        self._blocking.add(blocking)
        blocking.add_done_callback(self._blocking.discard)
        left: list[bool] = []  # the waiter left before the wait ended

        def ended(task: asyncio.Task[bool]) -> None:
            lock.release()
            if not task.cancelled() and task.exception() is None and task.result() and left:
                self._woken = True

        blocking.add_done_callback(ended)
        try:
            done, _ = await asyncio.wait(
                {blocking}, timeout=None if deadline is None else deadline - loop.time()
            )
        except BaseException:
            left.append(True)
            raise
        if not done:
            left.append(True)
            return
        woken = blocking.result()  # raises what the wait raised (a configuration error)
        if woken and deadline is not None and loop.time() >= deadline:
            self._woken = True  # not used by this waiter: the next one asks

    async def _sleep_until(
        self, due: float, reservation: Reservation, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Sleep to the reserved instant (and through a pause a server asked for since);
        a caller that leaves first gives the reservation back."""
        self.queued.append(due)
        try:
            await asyncio.sleep(max(0.0, due - loop.time()))
            while loop.time() < self.paused_until:  # noqa: ASYNC110 - sleeps to its end
                await asyncio.sleep(self.paused_until - loop.time())
        except BaseException:
            self.backend.give_back(reservation)
            raise
        finally:
            self.queued.remove(due)

    def _record(self, at: float, amounts: tuple[float, ...], *, local: bool = False) -> None:
        """Remember a grant this process admitted (Redis's, or with ``local`` the
        stand-in's), for a stand-in to be charged with: a stand-in made again after a
        short return of Redis still counts what the one before it granted."""
        granted = self._granted
        granted.append((at, amounts))
        if local:
            lent = self._lent
            lent.append((at, amounts))
            while lent[0][0] < at - self._horizon:
                lent.popleft()
        if not local and self._local is not None:  # after the stand-in was made
            self._local.record(at, amounts)
        if self._down_since is None:  # during an outage, keep them all (see _stand_in)
            while granted and granted[0][0] < at - self._horizon:
                granted.popleft()

    async def _take_locally(
        self, request: Request, deadline: float | None, loop: asyncio.AbstractEventLoop
    ) -> bool:
        """Wait in the local stand-in; whether it granted ``request`` (``False``: Redis
        answers again, ask it)."""
        now = loop.time()
        if now >= self._warned + _WARN_EVERY:
            self._warned = now
            log.warning("Redis unreachable: limiting locally at a reduced share (%r)", self.label)
        if self._down_since is None:
            self._down_since = now
        task = asyncio.current_task()
        assert task is not None
        returned = self._returned
        if returned is None or returned.get_loop() is not loop:
            returned = self._returned = loop.create_future()
        self._local_tasks.add(task)
        if self._probe is None or self._probe.done():
            self._probe = loop.create_task(self._wait_for_redis(loop))
        try:
            local = self._local
            if local is None:
                # What Redis reserved this process before the outage is still being
                # admitted: the stand-in starts once it all has been, charged with it.
                until = max(self.queued, default=now)
                if deadline is not None and until > deadline:
                    late = asyncio.sleep(max(0.0, deadline - now))
                    if not (await self._unless_returned(late, returned))[0]:
                        return False
                    raise AcquireTimeoutError(f"{self.label!r}: not granted in time (Redis down)")
                wait = asyncio.sleep(until - now) if until > now else None
                if wait is not None and not (await self._unless_returned(wait, returned))[0]:
                    return False
                local = self._local
                if local is None:
                    local = self._local = self._stand_in()
            for dim, amount in zip(self.dims, request.amounts, strict=True):
                if amount > local.limit(dim):
                    raise BackendUnavailableError(
                        f"{self.label!r}: {amount!r} of {dim!r} exceeds what the local "
                        f"stand-in (local_share={self.backend.local_share!r}) can grant"
                    )
            alone = _StandIn(request)  # the cap stays in Redis
            left = None if deadline is None else max(0.0, deadline - loop.time())
            granted, ticket = await self._unless_returned(local.take(alone, left), returned)
            if not granted or returned.done():  # Redis answered meanwhile: ask it
                return False
            request.binding = alone.binding
        finally:
            self._local_tasks.discard(task)
        local.release(alone, ticket)
        now = loop.time()
        self._record(now, request.amounts, local=True)
        self._lent_until = now + _PROBE_LINGER
        return True

    async def _unless_returned(
        self, work: Awaitable[_T], returned: asyncio.Future[None]
    ) -> tuple[bool, _T | None]:
        """Wait for ``work`` unless Redis answers again first (``returned``): whether
        ``work`` ended, and its result. ``work`` runs in a task of its own, so that Redis's
        return can stop it without cancelling the caller (whose own cancellation goes on
        as it came)."""
        job = asyncio.ensure_future(work)
        try:
            await asyncio.wait((job, returned), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not job.done():
                job.cancel()  # the caller left, or Redis answers again
                self._stopped.add(job)
                job.add_done_callback(self._stopped.discard)
        if not job.done() or job.cancelled():
            return False, None
        return True, job.result()

    def _stand_in(self) -> MemoryStore:
        """The local stand-in, charged with the grants Redis made this process: its
        buckets start empty when the outage began, its windows hold what this process
        was granted in them."""
        assert self._fallback is not None
        assert self._down_since is not None
        local = self._fallback(self.backend.local_share)
        local.prime(self._down_since, self._granted)
        return local

    async def _wait_for_redis(self, loop: asyncio.AbstractEventLoop) -> None:
        """Ask Redis whether it answers again while callers wait in the stand-in, or
        until ``_PROBE_LINGER`` after its last grant."""
        while self._local_tasks or loop.time() < self._lent_until:
            await asyncio.sleep(_PROBE_EVERY)
            with contextlib.suppress(BackendUnavailableError, asyncio.TimeoutError):
                # On a cluster, the node that holds this limiter's keys; bounded, as a
                # client without a read timeout could wait forever on a dead connection.
                await asyncio.wait_for(self.backend.ping(self.pause_key), _PROBE_TIMEOUT)
                self._hand_back()
                return

    def _hand_back(self) -> None:
        """Redis answers again: it is charged with what the stand-in admitted, new
        requests go there, and the callers waiting in the stand-in leave it to ask
        Redis."""
        if self._local is not None and self.meters:
            self._charge_back()
        self._lent.clear()
        self._local = None
        self._down_since = None
        returned, self._returned = self._returned, None
        if returned is not None and not returned.done():
            returned.set_result(None)  # the callers waiting in the stand-in ask Redis
        self._local_tasks.clear()
        probe, self._probe = self._probe, None
        if probe is not None and probe is not asyncio.current_task():
            probe.cancel()

    async def _charged(
        self,
        deadline: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        timeout: float | None = None,
    ) -> None:
        """Wait until what must reach Redis before this store's next request has (the
        stand-in's grants: else they would be admitted as if the stand-in had granted
        nothing; a reset, an update): until ``deadline`` at most, then
        :class:`AcquireTimeoutError`."""
        charging = self._charging
        if charging is not None:
            if not charging.done() and charging.get_loop() is asyncio.get_running_loop():
                left = None
                if deadline is not None and loop is not None:  # (with the answer grace)
                    left = max(deadline - loop.time(), _ANSWER_GRACE)
                # (ends if it is cancelled, by aclose, too)
                await asyncio.wait((charging,), timeout=left)
                if not charging.done():
                    raise self._unanswered(timeout)
            if self._charging is charging:
                self._charging = None

    def _charge_back(self) -> None:
        """Charge Redis with what the stand-in admitted (a limit must hold across
        Redis's return too): each bucket the stand-in's grants of its last ``B/r``
        seconds (older ones it has earned back), at most its share of the burst; each
        window the stand-in's grants still inside it, at their instants."""
        now = self.backend.running_loop().time()
        share = self.backend.local_share
        owed = [0.0] * len(self.meters)
        grants = []
        for at, amounts in self._lent:
            vector = tuple(amounts[i] for i in self.indexes)
            age = now - at
            for m, meter in enumerate(self.meters):
                if meter.kind == "b" and age < meter.p2 / meter.p1:
                    owed[m] += vector[m]
            if age < self._windows:
                grants.append((age, vector))
        for m, meter in enumerate(self.meters):
            owed[m] = min(owed[m], share * meter.p2)
        until = now + _RETURN_HOLD
        self._charging = self.backend.spawn(self._charge(owed, grants, until))

    async def _charge(
        self, owed: list[float], grants: list[tuple[float, tuple[float, ...]]], until: float
    ) -> None:
        if grants or any(owed):
            rates = (self.rates_key, self.shape.version)
            await self.backend.charge(self.meters, owed, grants, rates)
        await asyncio.sleep(max(0.0, until - self.backend.running_loop().time()))

    def adjust(self, request: Request, ticket: object, actual: Mapping[int, float]) -> None:
        self._counts.settle(request.amounts, actual)
        if ticket is None:  # granted by the local stand-in: nothing in Redis to correct
            return
        assert isinstance(ticket, Reservation)
        new = list(request.amounts)
        for index, value in actual.items():
            new[index] = value
        # A grant made before a meter was fitted (see _fit) has fewer meters. A bucket's
        # schedule is read with the parameters in use now (an update or a fit since the
        # grant changed them): the difference is converted with those.
        count = len(ticket.meters)
        vector = [new[i] for i in self.indexes[:count]]
        current = ticket._replace(meters=tuple(self.meters[:count]), version=self.shape.version)
        self.backend.spawn(self.backend.adjust(current, vector))

    def release(self, request: Request, ticket: object) -> Awaitable[None] | None:
        if request.slot and ticket is not None:
            self.in_flight -= 1
        if isinstance(ticket, Reservation) and ticket.lease:
            return self.backend.release(ticket)
        return None

    def give_back(self, request: Request, ticket: object) -> None:
        """A grant whose caller left before it could use it (a thread interrupted as it
        was granted): given back in the background, its slot with it."""
        if request.slot and ticket is not None:
            self.in_flight -= 1
        if isinstance(ticket, Reservation):
            self.backend.give_back(ticket)

    def update(
        self, rates: Sequence[tuple[int, RateSpec]], cap: int | None, done: Callable[[], object]
    ) -> None:
        """Change rates and the cap for every process, once Redis has the change:
        update.lua converts what the meters hold and gives the rates hash a new version,
        so that every process, this one included, reads the new rates before it reserves
        again (see :meth:`_follow`). Until Redis has it, this store keeps the rates it
        has (what it sends meanwhile is read in them). In the event loop this store
        serves, the change is sent in the background before this store's next request
        (see :meth:`_send_first`), and ``done()`` is called when Redis has it; from a
        thread without a loop, the thread blocks until then."""
        changes = []
        for index, rate in rates:
            # (What the meter holds is in the hash's parameters, or else in those it was
            # made with: update.lua converts from those.)
            old = self._made[0][index]
            _, p1, p2 = _params(rate)  # (of old's kind and period: see Limiter.update)
            changes.append((old, replace(old, p1=p1, p2=p2), rate.amount))
        sent = None if cap is None else (self._cap_field, cap, self.max_concurrency or 0)
        rates_key, slots_key = self.rates_key, self.slots_key
        looped = asyncio.events._get_running_loop() is not None

        async def send(backend: RedisBackend) -> None:
            held = await backend.update(rates_key, changes, sent, slots_key)
            done()
            if looped:  # (from another thread, this store learns it as from another process)
                self._follow(held)

        self._send_first(send, "change the limits")

    async def _refresh(
        self, deadline: float | None, loop: asyncio.AbstractEventLoop, timeout: float | None
    ) -> None:
        """Read the rates that an update (another process's) gave the limiter, and follow
        them; by ``deadline``. One read at a time, whoever waits for it."""
        task = self._refreshing
        if task is None or task.done() or task.get_loop() is not loop:
            task = self._refreshing = loop.create_task(self._read_rates())
            task.add_done_callback(_retrieved)
        if deadline is None:
            await asyncio.shield(task)
            return
        try:
            # (With a moment for Redis to answer, as for the reserve call: see take.)
            left = max(deadline - loop.time(), _ANSWER_GRACE)
            await asyncio.wait_for(asyncio.shield(task), left)
        except asyncio.TimeoutError:
            raise self._unanswered(timeout) from None

    async def _read_rates(self) -> None:
        try:
            held = await self.backend.rates(self.rates_key)
        except BackendUnavailableError:
            if self.backend.on_error != "local":
                raise
            return  # the next call finds Redis out of reach too: the stand-in
        self._follow(held)

    def _follow(self, held: Mapping[str, str]) -> None:
        """Take the rates and cap that the rates hash ``held`` gives the limiter (those
        the limiter was made with where it gives none), and its version; when the
        version is new here, tell the limiter all of them (so that its view ends as the
        latest store to read them saw them)."""
        version = held.get("v", "")
        if version == self.shape.version:
            return
        configured = list(self._configured)
        rates: list[tuple[int, RateSpec]] = []
        for index, made in enumerate(self._made[0]):
            if index in self._pooled:
                continue
            entry = held.get(made.key)
            new, rate = made, self._rates[index]
            if entry is not None:
                p1, p2, amount = map(float, entry.split())
                new = replace(made, p1=p1, p2=p2)
                rate = Rate(amount, rate.period, burst=None if made.kind == "w" else p2)
            configured[index] = new
            rates.append((index, rate))
        made_cap = self._made[1]
        field = held.get(self._cap_field)
        cap = made_cap if field is None or made_cap is None else int(field)
        self._configure(configured, cap)
        self.shape = replace(self.shape, version=version)
        if self._changed is not None:
            self._changed(rates, cap)

    def _configure(self, configured: Sequence[MeterSpec], cap: int | None) -> None:
        """The meters as configured now, and the cap: a bucket fitted to a server never
        gets more than the server's rate and capacity (see ``MultiState.update``)."""
        self._configured = tuple(configured)
        for index, own in enumerate(configured):
            fit = self._fits.get(index)
            if fit is not None:
                own = replace(own, p1=min(own.p1, fit[0]), p2=min(own.p2, fit[1]))
            if index not in self._pooled:
                self.meters[index] = own
        self.max_concurrency = cap
        self.shape = replace(self.shape, meters=tuple(self.meters), slot_max=cap or 0)
        self._horizon = max([self._windows] + [m.p2 / m.p1 for m in self.meters if m.kind == "b"])

    def _send_first(
        self, send: Callable[[RedisBackend], Coroutine[Any, Any, None]], what: str
    ) -> None:
        """Send ``send(backend)`` to Redis before this store's next request. In the
        event loop this store serves, in the background, after what was sent before
        (reports, settlements...), and this store's next requests wait for it (as for a
        charge-back: see ``_charged``); from a thread without a loop, the thread blocks
        until it is done (in the portal's loop), and an error is raised there; in the
        background, it is logged (``what`` was not done)."""
        if asyncio.events._get_running_loop() is None:
            from .._portal import run

            run(send(self.backend.for_threads()))
            return
        backend = self.backend
        backend.running_loop()  # (moves the backend to this loop if it served another)
        earlier = backend.background()

        async def first() -> None:
            if earlier:
                await asyncio.wait(earlier)
            try:
                await send(backend)
            except asyncio.CancelledError:  # (the loop closed first: no one else says it)
                log.warning("%r: did not %s in Redis: the event loop ended first", self.label, what)
                raise
            except Exception as exc:  # (no caller waits for it)
                log.warning("%r: Redis did not %s: %s", self.label, what, exc)

        self._charging = backend.spawn(first())

    def reset(self) -> None:
        """Forget what the limiter was granted, for every process: its keys are deleted
        (see :meth:`_send_first`), then :meth:`forget_locally`. The rates an update gave
        it stay."""
        keys = [self.pause_key]
        for index, configured in enumerate(self._configured):
            if index in self._pooled:
                continue  # a limit shared with other limiters: not this one's to forget
            key = configured.key
            keys += [key, key + ":last"] if configured.kind == "b" else [key, key + ":sum"]
            keys.append(key + ":held")
            keys.append(key + ":mark")
        for shadow in self._shadows.values():
            key = self.meters[shadow].key
            keys += [key, key + ":last"]

        async def forget(backend: RedisBackend) -> None:
            await backend.forget(keys)

        self._send_first(forget, "reset the limiter")
        self.forget_locally()

    def forget_locally(self) -> None:
        """Drop what this process was told and kept: a server's pause and fits (a bucket
        has its own parameters again; a window's shadow, as loose as the window, sleeps
        until a next fit: reports go to the window), the grants kept for a stand-in, and
        the stand-in's own state."""
        self._fits.clear()
        for index, configured in enumerate(self._configured):
            if index not in self._pooled:
                self.meters[index] = configured
        for index, shadow in self._shadows.items():
            own = self._configured[index]
            self.meters[shadow] = MeterSpec("b", self.meters[shadow].key, own.p1 / own.p2, own.p1)
            self._dormant.add(index)
        self.shape = replace(self.shape, meters=tuple(self.meters))
        self._horizon = max([self._windows] + [m.p2 / m.p1 for m in self.meters if m.kind == "b"])
        self.paused_until = -math.inf
        self._granted.clear()  # forgotten: never charged to a stand-in
        self._lent.clear()  # nor to Redis when it answers again
        if self._local is not None:
            self._local.reset()

    def feedback(
        self, plan: FeedbackPlan, lease: Request | None = None, ticket: object = None
    ) -> int:
        # (The grants made since ``lease`` are not taken off what the server reports:
        # they are in Redis, where other processes' are too.)
        del lease, ticket
        clamps: list[tuple[MeterSpec, float, float, float | None]] = []
        for clamp in plan.clamps:
            shadow = self._shadows.get(clamp.meter)
            if shadow is not None and clamp.meter in self._dormant:
                shadow = None  # asleep since a reset: the window takes the report
            if clamp.fit is None and shadow is not None:
                # A window fitted to its server before: its server's bucket takes the report.
                clamps.append((self.meters[shadow], clamp.remaining, clamp.reset, None))
            elif clamp.fit is None:
                clamps.append(
                    (self.meters[clamp.meter], clamp.remaining, clamp.reset, clamp.refill)
                )
            else:
                clamps.append(
                    (self._fit(clamp.meter, *clamp.fit), clamp.remaining, clamp.reset, None)
                )
        counts = self._counts
        counts.corrections += len(clamps)
        counts.rejections += plan.rejected
        if plan.pause is not None:
            until = self.backend.running_loop().time() + plan.pause
            self.paused_until = max(self.paused_until, until)
            counts.pauses += 1
            counts.paused += plan.pause
        if clamps or plan.pause is not None:
            rates = (self.rates_key, self.shape.version)
            self.backend.spawn(self.backend.feedback(self.pause_key, plan.pause, clamps, rates))
        return 0  # (what Redis's script lowers is not known here)

    def _fit(self, index: int, rate: float, capacity: float) -> MeterSpec:
        """Model the server behind meter ``index`` as a bucket of ``rate`` and ``capacity``
        (see ``MultiState.fit``): a bucket meter is retuned, a window meter gets a bucket
        beside it in Redis (its key: the window's, ``:server``), which every later call of
        this process sends too. Returns the meter that models the server."""
        meter = self.meters[index]
        if meter.kind == "b":
            fitted = replace(meter, p1=rate, p2=capacity)
            self.meters[index] = fitted
            self._fits[index] = (rate, capacity)
        else:
            fitted = MeterSpec("b", meter.key + ":server", rate, capacity)
            self._dormant.discard(index)
            shadow = self._shadows.get(index)
            if shadow is None:
                self._shadows[index] = len(self.meters)
                self.meters.append(fitted)
                self.indexes.append(self.indexes[index])
                self._one = False
            else:
                self.meters[shadow] = fitted
        self.shape = replace(self.shape, meters=tuple(self.meters))
        # How far back a grant still counts (see __init__), with the fitted buckets.
        self._horizon = max([self._windows] + [m.p2 / m.p1 for m in self.meters if m.kind == "b"])
        return fitted

    def statistics(self) -> LimiterStatistics:
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:
            now = -math.inf
        paused = self.paused_until if self.paused_until > now else None
        return LimiterStatistics(
            available={},
            in_flight=self.in_flight,
            max_concurrency=self.max_concurrency,
            waiters=self.waiters,
            paused_until=paused,
            next_wakeup=min(self.queued) if self.queued else None,
            last_wait=self.last_wait,
        )

    def counts(self) -> Counts:
        return self._counts.snapshot()

    def gauges(self) -> tuple[int, int, bool]:
        # The pause is on the loop's clock: asyncio's is time.monotonic.
        return self.waiters, self.in_flight, self.paused_until > time.monotonic()

    def at_rest(self) -> bool:
        # The state lives in Redis: a new store of the same limits would behave the same,
        # unless this one was fitted to a server's limits (see _fit), or follows an
        # update (a new store would learn of it only when it first asks).
        return (
            not self.waiters
            and not self.in_flight
            and self.shape.meters == self._configured == self._made[0]
            and self.max_concurrency == self._made[1]
        )


def _params(rate: RateSpec) -> tuple[str, float, float]:
    """A meter's kind and parameters in Redis: a window's limit and span, or a bucket's
    rate per second and capacity."""
    if rate.burst is None:
        return "w", rate.amount, rate.period
    return "b", rate.amount / rate.period, rate.burst


def _retrieved(task: asyncio.Task[None]) -> None:
    """(Its waiters get its error; none may be left to.)"""
    if not task.cancelled():
        task.exception()


class _StandIn(Request):
    """A request as the local stand-in takes it: without a slot (the cap stays in
    Redis), telling the request it stands for when it waits."""

    __slots__ = ("_of",)

    def __init__(self, request: Request) -> None:
        super().__init__(request.amounts, False, request.seq)
        self._of = request

    def parked(self) -> None:
        self.queued = True
        self._of.parked()
