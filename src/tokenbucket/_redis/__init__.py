"""Limits shared by many processes and hosts, with their state in Redis.

Theory of operation
-------------------
Every limit is a *meter* in Redis: a token bucket is a GCRA "theoretical arrival time"
(one string key), an exact sliding window is a sorted set of grants scored by their
instant. A request is *reserved* by one Lua script call (``reserve.lua``): the script
finds the earliest instant ``t`` at which every meter of the request admits it (never
before a reservation already made on those meters, so arrival at Redis defines the
order), charges all of them at ``t``, and returns ``t - now``; the caller sleeps exactly
that long, locally, and is admitted. Nobody polls. Time is the Redis server's ``TIME``
(or the client's clock, when configured), so hosts' clocks do not matter.

Requests of one process share round trips: while a script call is in flight, new
requests queue, and the next call carries all of them (one ``EVALSHA`` for the batch).
When the last reply showed that a limiter's next free instant is well in the future (its
limit is binding), new requests to it are held for a short while (``batch_delay``, at
most half the time left until that instant) before they are sent: they could not be
admitted earlier anyway, and requests arriving one by one at the admission rate then
share a round trip too.

A caller that leaves before its instant (cancelled, timed out) gives its reservation back
(``cancel.lua``) as far as it safely can. A concurrency cap holds slots as leases with an
expiry, so a crashed process cannot hold them forever; a released slot wakes one waiting
process through a list it blocks on (``BLPOP``), not by polling.

When Redis cannot be reached, the backend follows its ``on_error`` policy: ``"wait"``
(fail closed: retry with exponential backoff, logging each failure), ``"raise"``
(:class:`BackendUnavailableError`), or ``"local"`` (fail open: limit with an in-memory
limiter at ``local_share`` of the rates until Redis answers again).

The Redis backend runs on asyncio (redis-py's asyncio client).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Final, Literal

from .. import _validate
from .._errors import (
    BackendError,
    BackendUnavailableError,
    InvalidArgumentError,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    import redis.asyncio as aioredis

    from .._backend import StoreSpec
    from .store import RedisStore

__all__ = ["BackendError", "BackendUnavailableError", "RedisBackend"]

log = logging.getLogger("tokenbucket.redis")

_SCRIPTS: Final = ("reserve", "cancel", "release", "adjust", "feedback")
# The scripts that clock.lua (`now`) and log.lua (window logs) go before.
_USE_PRELUDES: Final = ("reserve", "cancel", "adjust", "feedback")
_SLACK_MS: Final = 1000  # keys outlive what they hold by this much
_MIN_HOLD: Final = 0.001  # shorter holds are not worth a timer


@dataclass(frozen=True)
class MeterSpec:
    """One limit in Redis: ``kind`` ``"b"`` (bucket: ``p1`` rate, ``p2`` capacity) or
    ``"w"`` (window: ``p1`` limit, ``p2`` seconds)."""

    kind: Literal["b", "w"]
    key: str
    p1: float
    p2: float


@dataclass(frozen=True)
class Reservation:
    """What a caller holds after ``reserve``: enough to give it back or settle it."""

    meters: tuple[MeterSpec, ...]
    amounts: tuple[float, ...]
    member: str
    at: float  # the instant reserved, on the backend's clock
    lease: str  # concurrency lease id, or ""
    slots_key: str


class _Pending:
    __slots__ = ("args", "deadline", "future", "keys", "tag")

    def __init__(
        self,
        keys: list[str],
        args: list[Any],
        future: asyncio.Future[Any],
        deadline: float | None,
    ) -> None:
        self.keys = keys
        self.args = args
        self.future = future
        self.deadline = deadline  # on the loop's clock; sent as the time left then
        self.tag = keys[0].partition("}")[0]


class RedisBackend:
    """Where shared limits keep their state: one Redis (or Redis Cluster) database.

    ::

        backend = tb.RedisBackend("redis://127.0.0.1:6379/0")
        bucket = tb.TokenBucket(rate=10, capacity=20, backend=backend, key="api")

    Args:
        client: a ``redis.asyncio.Redis`` client, or a URL to make one from.
        prefix: the namespace of every key this backend writes.
        time_source: ``"server"`` (the Redis server's ``TIME``; one clock for all hosts)
            or ``"client"`` (this host's wall clock, for managed services that refuse
            ``TIME`` in scripts: then hosts' clock skew shifts their grants by as much).
        on_error: what to do when Redis cannot be reached: ``"wait"`` (retry with
            exponential backoff up to ``max_backoff`` seconds, logging each failure),
            ``"raise"`` (:class:`BackendUnavailableError`) or ``"local"`` (limit with an
            in-memory limiter at ``local_share`` of the rates until Redis is back).
        lease_ttl: seconds a concurrency slot stays held if its process dies.
        batch_delay: the longest a request is held back to share a round trip with
            others, and only when the limiter's last reply showed that the request
            could not be admitted before twice that long anyway (a binding limit), so
            holding it delays no admission; requests with a timeout are never held.
            ``0`` sends every request at once (a round trip per admission when
            acquirers arrive one by one).
    """

    def __init__(
        self,
        client: aioredis.Redis | str,
        *,
        prefix: str = "tokenbucket",
        time_source: Literal["server", "client"] = "server",
        on_error: Literal["wait", "raise", "local"] = "wait",
        max_backoff: float = 5.0,
        local_share: float = 0.5,
        lease_ttl: float = 300.0,
        batch_delay: float = 0.01,
    ) -> None:
        try:
            import redis.asyncio as aioredis_module
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ImportError(
                "the Redis backend needs redis-py: pip install 'tokenbucket[redis]'"
            ) from exc
        if isinstance(client, str):
            client = aioredis_module.Redis.from_url(client)
        if time_source not in ("server", "client"):
            raise InvalidArgumentError(
                "time_source", f"time_source must be 'server' or 'client', not {time_source!r}"
            )
        if on_error not in ("wait", "raise", "local"):
            raise InvalidArgumentError(
                "on_error", f"on_error must be 'wait', 'raise' or 'local', not {on_error!r}"
            )
        if not isinstance(prefix, str) or not prefix:
            raise InvalidArgumentError("prefix", f"prefix must be a non-empty str, not {prefix!r}")
        share = _validate.real(local_share, "local_share")
        if share > 1:
            raise InvalidArgumentError(
                "local_share", f"local_share must be in (0, 1], got {local_share!r}"
            )
        _seconds("max_backoff", max_backoff, zero=False)
        _seconds("lease_ttl", lease_ttl, zero=False)
        _seconds("batch_delay", batch_delay, zero=True)
        self.client = client
        self.prefix = prefix
        self.time_source = time_source
        self.on_error = on_error
        self.max_backoff = max_backoff
        self.local_share = share
        self.lease_ttl = lease_ttl
        self.batch_delay = float(batch_delay)
        files = resources.files(__package__) / "lua"
        prelude = "".join(
            (files / f"{name}.lua").read_text(encoding="utf-8") for name in ("clock", "log")
        )
        self._source = {
            name: (prelude if name in _USE_PRELUDES else "")
            + (files / f"{name}.lua").read_text(encoding="utf-8")
            for name in _SCRIPTS
        }
        self._sha: dict[str, str] = {}
        self._pending: list[_Pending] = []
        self._in_flight = False
        # Per hash tag: the latest instant a reply reserved (loop clock), and the
        # requests held until a timer sends them together.
        self._free_at: dict[str, float] = {}
        self._held: dict[str, list[_Pending]] = {}
        self._hold_timers: dict[str, asyncio.TimerHandle] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.round_trips = 0  # script calls made (for benchmarks and tests)
        self._spawn_slots: asyncio.Semaphore | None = None

    def open(self, spec: StoreSpec) -> RedisStore:
        """The store of one limiter's state here (see ``tokenbucket._backend``)."""
        from .store import RedisStore

        return RedisStore(self, spec)

    def key(self, *parts: str) -> str:
        """A namespaced key; ``{...}`` is the hash tag: one limiter's keys share a slot."""
        tag, *rest = parts
        return ":".join([f"{{{self.prefix}:{tag}}}", *rest])

    async def ping(self) -> None:
        """Check that Redis answers; raise :class:`BackendUnavailableError` if not."""
        from redis.exceptions import RedisError

        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            raise BackendUnavailableError(f"Redis is unreachable: {exc}") from exc

    async def aclose(self, *, grace: float = 0.5) -> None:
        """Wait up to ``grace`` seconds for give-backs and releases in flight (they may be
        retrying while Redis is down), cancel what is left, then close the client."""
        loop = asyncio.get_running_loop()
        end = loop.time() + grace
        for tag in list(self._held):
            self._flush(tag)
        while self._background:  # give-backs may spawn while others finish
            _, late = await asyncio.wait(set(self._background), timeout=max(0.0, end - loop.time()))
            if late and loop.time() >= end:
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        await self.client.aclose()

    def _now_arg(self) -> str:
        return "" if self.time_source == "server" else repr(time.time())

    # -- script calls -------------------------------------------------------------------

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA ``name``, loading it on first use and again after NOSCRIPT."""
        from redis.exceptions import NoScriptError, ResponseError

        sha = self._sha.get(name)
        self.round_trips += 1
        try:
            if sha is None:
                raise NoScriptError("not loaded yet")
            return await self.client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            sha = await self.client.script_load(self._source[name])
            self._sha[name] = sha
            self.round_trips += 1
            return await self.client.evalsha(sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                raise BackendError(
                    f"a key under {self.prefix!r} holds a value of the wrong type ({exc}); "
                    "is another program using this prefix?"
                ) from exc
            raise BackendError(f"Redis refused the limiter's script: {exc}") from exc

    async def _with_policy(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a script under the failure policy ("local" is handled by the caller)."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        delay = 0.05
        while True:
            try:
                return await self._script(name, keys, args)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:  # noqa: PERF203
                if self.on_error != "wait":
                    raise BackendUnavailableError(f"Redis is unreachable: {exc}") from exc
                log.warning("Redis unreachable (%s); retrying in %.2f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)

    # -- reservations (batched) -----------------------------------------------------------

    async def reserve(
        self,
        meters: Sequence[MeterSpec],
        amounts: Sequence[float],
        *,
        deadline: float | None,
        pause_key: str = "",
        slots_key: str = "",
        slot_max: int = 0,
    ) -> tuple[int, float, Reservation]:
        """Reserve ``amounts`` on ``meters`` at their earliest common instant.

        ``deadline`` is an instant on the running loop's clock, or ``None``. Returns
        ``(status, wait, reservation)``: status 1 reserved (sleep ``wait`` seconds, then
        go), 0 the instant is past ``deadline`` (nothing taken), 2 no concurrency slot
        (nothing taken; ``wait`` is when the first lease expires). Requests of this
        process share round trips.
        """
        member = uuid.uuid4().hex
        lease = uuid.uuid4().hex if slots_key else ""
        keys: list[str] = []
        index: dict[str, int] = {}

        def at(key: str) -> int:
            if key not in index:
                keys.append(key)
                index[key] = len(keys)
            return index[key]

        args: list[Any] = [
            len(meters),
            -1,  # the time left until the deadline, filled in when sent
            at(pause_key) if pause_key else 0,
            at(slots_key) if slots_key else 0,
            slot_max,
            lease,
            self.lease_ttl,
        ]
        for meter, amount in zip(meters, amounts, strict=True):
            args += [
                meter.kind,
                at(meter.key),
                repr(meter.p1),
                repr(meter.p2),
                repr(amount),
                member,
            ]
        loop = asyncio.get_running_loop()
        now = loop.time()
        pending = _Pending(keys, args, loop.create_future(), deadline)
        hold = 0.0
        if self.batch_delay and (deadline is None or deadline - now > self.batch_delay):
            hold = min(self.batch_delay, (self._free_at.get(pending.tag, now) - now) / 2)
        if hold >= _MIN_HOLD:
            self._hold(pending, hold, loop)
        else:
            if pending.tag in self._held:
                self._flush(pending.tag)  # earlier requests go first (FIFO)
            self._pending.append(pending)
            if not self._in_flight:
                self._start_batch(loop)
        try:
            status, wait, now, arrived = await asyncio.shield(pending.future)
        except asyncio.CancelledError:
            if self._unsent(pending):
                pending.future.cancel()  # never sent: nothing was reserved
            else:
                # Cancelled while the round trip is in flight: give back what it reserves.
                pending.future.add_done_callback(
                    lambda f: self._give_back_later(f, meters, amounts, member, lease, slots_key)
                )
            raise
        reservation = Reservation(
            tuple(meters), tuple(amounts), member, float(now) + float(wait), lease, slots_key
        )
        # What is left of the wait now, on the local clock.
        left = float(wait) - (asyncio.get_running_loop().time() - arrived)
        return int(status), max(0.0, left) if int(status) == 1 else float(wait), reservation

    def _hold(self, pending: _Pending, hold: float, loop: asyncio.AbstractEventLoop) -> None:
        """Keep ``pending`` back for up to ``hold`` seconds, with the others of its tag."""
        held = self._held.get(pending.tag)
        if held is None:
            self._held[pending.tag] = [pending]
            self._hold_timers[pending.tag] = loop.call_later(hold, self._flush, pending.tag)
        else:
            held.append(pending)

    def _flush(self, tag: str) -> None:
        """Send the requests held for ``tag`` (in the next batch)."""
        timer = self._hold_timers.pop(tag, None)
        if timer is not None:
            timer.cancel()
        held = self._held.pop(tag, [])
        self._pending.extend(held)
        if held and not self._in_flight:
            self._start_batch(asyncio.get_running_loop())

    def _unsent(self, pending: _Pending) -> bool:
        """Take ``pending`` out if it has not been sent yet; whether it was."""
        for queue in (self._held.get(pending.tag), self._pending):
            if queue is not None and pending in queue:
                queue.remove(pending)
                if not queue and queue is not self._pending:
                    self._flush(pending.tag)  # drops the empty list and its timer
                return True
        return False

    def _start_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._in_flight = True
        task = loop.create_task(self._run_batch())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_batch(self) -> None:
        # The batch is taken when this task first runs, after every task that was ready
        # in the same loop iteration has queued its request. One script call per hash
        # tag, so that no call spans two slots of a Redis Cluster.
        pending, self._pending = self._pending, []
        groups: dict[str, list[_Pending]] = {}
        for request in pending:
            if not request.future.cancelled():
                groups.setdefault(request.tag, []).append(request)
        try:
            for batch in groups.values():
                await self._run_group(batch)
        finally:
            self._in_flight = False
            if self._pending:
                self._start_batch(asyncio.get_running_loop())

    async def _run_group(self, batch: list[_Pending]) -> None:
        keys: list[str] = []
        args: list[Any] = [self._now_arg(), _SLACK_MS, len(batch)]
        loop = asyncio.get_running_loop()
        sent = loop.time()
        for pending in batch:
            offset = len(keys)
            keys.extend(pending.keys)
            request = list(pending.args)
            if pending.deadline is not None:  # the time left now, not when it queued
                request[1] = max(0.0, pending.deadline - sent)
            # Re-number this request's key indexes into the batch's KEYS.
            request[2] = request[2] + offset if request[2] else 0
            request[3] = request[3] + offset if request[3] else 0
            for i in range(7 + 1, len(request), 6):
                request[i] += offset
            args.extend(request)
        try:
            replies = await self._with_policy("reserve", keys, args)
            arrived = loop.time()
        except BaseException as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for pending, reply in zip(batch, replies, strict=True):
                if pending.future.done():
                    continue
                if int(reply[0]) == 3:
                    key = reply[2].decode() if isinstance(reply[2], bytes) else str(reply[2])
                    pending.future.set_exception(
                        BackendError(
                            f"the key {key!r} holds a value of the wrong type; is another "
                            f"program using the prefix {self.prefix!r}?"
                        )
                    )
                else:
                    # The wait counts from the reply's arrival here, not from when each
                    # task resumes: tasks of one batch resume one after another.
                    status, wait = int(reply[0]), _num(reply[1])
                    pending.future.set_result((status, wait, _num(reply[2]), arrived))
                    if status == 1:
                        self._note_free(pending.tag, arrived + wait, arrived)

    def _note_free(self, tag: str, instant: float, now: float) -> None:
        """Remember the latest instant reserved on ``tag``'s limits (forgetting past
        ones, so per-key use keeps this small)."""
        free_at = self._free_at
        if instant > free_at.get(tag, -math.inf):
            free_at[tag] = instant
            if len(free_at) > 1024:
                for old in [t for t, at in free_at.items() if at <= now]:
                    del free_at[old]

    def _give_back_later(
        self,
        future: asyncio.Future[Any],
        meters: Sequence[MeterSpec],
        amounts: Sequence[float],
        member: str,
        lease: str,
        slots_key: str,
    ) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        status, wait, now, _ = future.result()
        if int(status) != 1:
            return
        reservation = Reservation(
            tuple(meters), tuple(amounts), member, float(now) + float(wait), lease, slots_key
        )
        self.spawn(self.give_back(reservation))

    def spawn(self, coro: Any) -> None:
        """Run a give-back or release in the background, keeping a reference to it (at
        most a few at a time, so a burst of them does not exhaust the connection pool)."""
        task = asyncio.get_running_loop().create_task(self._bounded(coro))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _bounded(self, coro: Any) -> Any:
        if self._spawn_slots is None:
            self._spawn_slots = asyncio.Semaphore(16)
        async with self._spawn_slots:
            return await coro

    async def give_back(self, reservation: Reservation) -> None:
        """Return a reservation whose caller left before its instant (best effort)."""
        keys: list[str] = []
        args: list[Any] = [self._now_arg(), repr(reservation.at), len(reservation.meters)]
        for meter, amount in zip(reservation.meters, reservation.amounts, strict=True):
            keys.append(meter.key)
            args += [meter.kind, len(keys), repr(meter.p1), repr(meter.p2), repr(amount)]
            args.append(reservation.member)
        args.append(reservation.lease)
        if reservation.lease:
            keys.append(reservation.slots_key)
        try:
            await self._with_policy("cancel", keys, args)
        except Exception as exc:  # a give-back is best effort
            log.warning("could not give a reservation back: %s", exc)

    async def release(self, reservation: Reservation) -> None:
        """Release a concurrency slot and wake one process waiting for one."""
        if not reservation.lease:
            return
        wake = reservation.slots_key + ":wake"
        try:
            await self._with_policy(
                "release",
                [reservation.slots_key, wake],
                [reservation.lease, int(self.lease_ttl * 1000)],
            )
        except Exception as exc:  # the lease expires on its own
            log.warning("could not release a concurrency slot: %s", exc)

    async def wait_for_slot(self, slots_key: str, seconds: float) -> None:
        """Block (without polling) until a slot is released, or ``seconds`` pass."""
        timeout = max(0.001, min(seconds, 60.0))
        with contextlib.suppress(Exception):
            await self.client.blpop([slots_key + ":wake"], timeout=timeout)

    async def adjust(self, reservation: Reservation, new_amounts: Sequence[float]) -> None:
        """Settle a grant: replace its amounts by ``new_amounts``."""
        keys: list[str] = []
        args: list[Any] = [self._now_arg(), _SLACK_MS, len(reservation.meters)]
        for meter, old, new in zip(
            reservation.meters, reservation.amounts, new_amounts, strict=True
        ):
            keys.append(meter.key)
            args += [meter.kind, len(keys), repr(meter.p1), repr(meter.p2), repr(old)]
            args += [reservation.member, repr(new), repr(reservation.at)]
        await self._with_policy("adjust", keys, args)

    async def feedback(
        self,
        pause_key: str,
        pause: float | None,
        clamps: Sequence[tuple[MeterSpec, float, float]],
    ) -> None:
        """Pause for ``pause`` seconds and lower meters to ``(remaining, reset)``."""
        keys: list[str] = [pause_key]
        args: list[Any] = [self._now_arg(), _SLACK_MS, -1 if pause is None else pause, len(clamps)]
        for meter, remaining, reset in clamps:
            keys.append(meter.key)
            args += [meter.kind, len(keys), repr(meter.p1), repr(meter.p2)]
            args += [repr(remaining), repr(reset)]
        await self._with_policy("feedback", keys, args)

    def __repr__(self) -> str:
        return (
            f"<RedisBackend prefix={self.prefix!r} time={self.time_source} "
            f"on_error={self.on_error}>"
        )


def _seconds(name: str, value: object, *, zero: bool) -> None:
    _validate.real(value, name, zero=zero)


def _num(value: Any) -> float:
    text = value.decode() if isinstance(value, bytes) else str(value)
    number = float(text)
    if math.isnan(number):  # pragma: no cover - the scripts never return NaN
        raise BackendError(f"unexpected reply {value!r}")
    return number


def default_url() -> str:
    """``TOKENBUCKET_REDIS_URL`` or the local default."""
    return os.environ.get("TOKENBUCKET_REDIS_URL", "redis://127.0.0.1:6379/0")
