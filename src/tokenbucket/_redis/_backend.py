"""RedisBackend: its settings, its keys, and one method per script call."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Final, Literal

from .. import _validate
from .._errors import (
    ArgumentTypeError,
    BackendConfigurationError,
    BackendError,
    BackendUnavailableError,
    InvalidArgumentError,
)
from . import _protocol, _scripts
from ._batch import Batcher
from ._protocol import RESERVED, WRONG_TYPE, MeterSpec, Reply, Reservation, Shape
from ._releases import Returns
from ._tasks import Background
from .store import RedisStore

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence

    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster

    from .._backend import StoreSpec
    from ._batch import Pending
    from ._scripts import Client

__all__ = ["RedisBackend", "default_url"]

log = logging.getLogger("tokenbucket.redis")

# Calls made again once Redis answers, at most at a time: while Redis is down, every
# reserve call fails (most never reached it) and is undone once it is back, and releases
# and give-backs wait to be made; beyond this many, the rest are not.
_MAX_RETRYING: Final = 256
# The timeouts of the clients this backend makes from a URL (see docs/redis.md): a round
# trip takes a millisecond or so; one that has not answered in READ_TIMEOUT is on a dead
# connection, which is then dropped and replaced.
READ_TIMEOUT: Final = 2.0
CONNECT_TIMEOUT: Final = 2.0
# Grants of a local stand-in charged to Redis per call, at most.
_CHARGED_AT_ONCE: Final = 1000
# How long a slot waiter sleeps between tries when Redis refuses its blocking wait.
_SLOT_POLL: Final = 0.2
# Leases released, and reservations given back, in one script call at most (so that no
# one call runs long).
_MOST_RELEASED: Final = 512
_MOST_GIVEN_BACK: Final = 128


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
            in-memory limiter at ``local_share`` of the rates and bursts, charged with
            what Redis granted this process, until Redis answers again; with N
            processes and ``local_share <= 1/N`` the shared limit holds across the
            outage: see "When Redis fails" in the Redis guide).
        lease_ttl: seconds a concurrency slot stays held if its process dies.
        batch_delay: the longest a request is held back to share a round trip with
            others, and only when the limiter's last reply showed that the request
            could not be admitted before twice that long anyway (a binding limit), so
            holding it delays no admission; requests with a timeout are never held.
            ``0`` sends every request at once (a round trip per admission when
            acquirers arrive one by one).
        threads_client: makes the client that threads use (``acquire_blocking``): the
            portal loop that serves them needs a client of its own, of the same server.
            By default it is made from ``client``'s options; a Redis Cluster client
            cannot be copied that way, so with one, pass how to make another, e.g.
            ``threads_client=lambda: RedisCluster(host=..., port=...)``.
    """

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster | str,
        *,
        prefix: str = "tokenbucket",
        time_source: Literal["server", "client"] = "server",
        on_error: Literal["wait", "raise", "local"] = "wait",
        max_backoff: float = 5.0,
        local_share: float = 0.5,
        lease_ttl: float = 300.0,
        batch_delay: float = 0.01,
        threads_client: Callable[[], aioredis.Redis | RedisCluster] | None = None,
    ) -> None:
        try:
            import redis.asyncio as aioredis_module
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ImportError(
                "the Redis backend needs redis-py: pip install 'tokenbucket-async[redis]'"
            ) from exc
        if isinstance(client, str):
            # The URL's own options (``?socket_timeout=...``) take precedence.
            client = aioredis_module.Redis.from_url(client, **_CLIENT_OPTIONS)
        for name, value in (
            ("time_source", time_source),
            ("on_error", on_error),
            ("prefix", prefix),
        ):
            if not isinstance(value, str):
                raise ArgumentTypeError(name, f"{name} must be a str, not {type(value).__name__}")
        if time_source not in ("server", "client"):
            raise InvalidArgumentError(
                "time_source", f"time_source must be 'server' or 'client', not {time_source!r}"
            )
        if on_error not in ("wait", "raise", "local"):
            raise InvalidArgumentError(
                "on_error", f"on_error must be 'wait', 'raise' or 'local', not {on_error!r}"
            )
        if not prefix:
            raise InvalidArgumentError("prefix", "prefix must be a non-empty str")
        share = _validate.real(local_share, "local_share")
        if share > 1:
            raise InvalidArgumentError(
                "local_share", f"local_share must be in (0, 1], got {local_share!r}"
            )
        _validate.real(max_backoff, "max_backoff", zero=False)
        _validate.real(lease_ttl, "lease_ttl", zero=False)
        _validate.real(batch_delay, "batch_delay", zero=True)
        self.client = client
        self.prefix = prefix
        self.time_source = time_source
        self.on_error = on_error
        self.max_backoff = max_backoff
        self.local_share = share
        self.lease_ttl = lease_ttl
        self._scripts = _scripts.Scripts(client, prefix)
        self._block_for = _longest_block(client)
        self._refused_blocking = False  # warned once that BLPOP is refused
        self._background = Background()
        self._batch = Batcher(
            self._reserve_batch, self._lost_reply, float(batch_delay), self._background
        )
        # The asyncio loop the client's connections belong to, whether they may hold
        # some of an earlier loop, and what closes them when asyncio.run ends the loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stale = False
        self._closer: AsyncGenerator[None, None] | None = None
        # Reserve and settle calls are named by this backend's id and a count.
        self._id = uuid.uuid4().hex + "-"
        self._calls = itertools.count()
        self._retrying = 0  # undos, releases and give-backs waiting for Redis to answer
        self._retry_warned = False
        self._releases: Returns[str] = Returns(
            self._release_batch, self._background, _MOST_RELEASED
        )
        self._give_backs: Returns[Reservation] = Returns(
            self._give_back_batch, self._background, _MOST_GIVEN_BACK
        )
        self._twin: RedisBackend | None = None  # see for_threads
        if threads_client is not None and not callable(threads_client):
            raise ArgumentTypeError(
                "threads_client",
                "threads_client must make a client (a callable), "
                f"not {type(threads_client).__name__}",
            )
        self._threads_client = threads_client

    @property
    def batch_delay(self) -> float:
        """The longest a request is held back to share a round trip (see the class)."""
        return self._batch.delay

    @batch_delay.setter
    def batch_delay(self, value: float) -> None:
        self._batch.delay = float(value)

    @property
    def round_trips(self) -> int:
        """Script calls made (for benchmarks and tests)."""
        return self._scripts.round_trips

    def running_loop(self) -> asyncio.AbstractEventLoop:
        """The running asyncio loop. On a loop other than the last one (successive
        ``asyncio.run()`` calls), what belonged to the last one is dropped first: its
        requests and background tasks here, and (at the next call) its connections.
        Anywhere else (trio) raises :class:`BackendConfigurationError`."""
        loop = _get_running_loop()
        if loop is None:
            raise BackendConfigurationError(_NOT_ASYNCIO)
        if loop is not self._loop:
            self._move_to(loop)
        return loop

    def _move_to(self, loop: asyncio.AbstractEventLoop) -> None:
        self._stale = self._loop is not None
        self._loop = loop
        self._background = Background()
        self._batch = Batcher(
            self._reserve_batch, self._lost_reply, self._batch.delay, self._background
        )
        self._releases = Returns(self._release_batch, self._background, _MOST_RELEASED)
        self._give_backs = Returns(self._give_back_batch, self._background, _MOST_GIVEN_BACK)
        # asyncio.run closes the loop's async generators while the loop still runs
        # (shutdown_asyncgens): this one closes the connections then. It is started
        # here, and the loop only holds it weakly.
        self._closer = _close_at_shutdown(self.client)
        with contextlib.suppress(StopIteration):
            self._closer.asend(None).send(None)

    async def _connections(self) -> Client:
        """The client, once it holds no connection of an earlier loop."""
        self.running_loop()
        if self._stale:
            self._stale = False
            # A loop that ended without closing them (not by asyncio.run): their
            # sockets cannot be closed any more, only dropped.
            with contextlib.suppress(Exception):
                await _disconnect(self.client)
        return self.client

    def for_threads(self) -> RedisBackend:
        """This backend's twin for the portal's loop (``tokenbucket._portal``), which
        serves the threads: the same settings and server, a client of its own (a client's
        connections belong to one loop, and this backend's may serve another at the same
        time). Made once."""
        twin = self._twin
        if twin is None:
            with _TWINNING:
                twin = self._twin
                if twin is None:
                    made = self._threads_client
                    twin = self._twin = RedisBackend(
                        _copy(self.client) if made is None else made(),
                        prefix=self.prefix,
                        time_source=self.time_source,
                        on_error=self.on_error,
                        max_backoff=self.max_backoff,
                        local_share=self.local_share,
                        lease_ttl=self.lease_ttl,
                        batch_delay=self.batch_delay,
                    )
        return twin

    def open(self, spec: StoreSpec) -> RedisStore:
        """The store of one limiter's state here (see ``tokenbucket._backend``)."""
        return RedisStore(self, spec)

    def key(self, *parts: str) -> str:
        """A namespaced key; ``{...}`` is the hash tag: one limiter's keys share a slot."""
        tag, *rest = parts
        return ":".join([f"{{{self.prefix}:{tag}}}", *rest])

    async def ping(self, key: str | None = None) -> None:
        """Check that Redis answers (with ``key``: the node that holds ``key``, on a
        cluster); raise :class:`BackendUnavailableError` if not, and
        :class:`BackendConfigurationError` if it refuses the credentials or the database
        index."""
        client = await self._connections()
        try:
            await (client.ping() if key is None else client.exists(key))
        except _scripts.errors() as exc:
            raise _scripts.translate(exc, self.prefix) from exc

    async def aclose(self, *, grace: float = 0.5) -> None:
        """Wait up to ``grace`` seconds for give-backs and releases in flight (they may be
        retrying while Redis is down), cancel what is left, then close the client (and
        the one the limiters' threads use: see the Redis guide, "From threads")."""
        end = self.running_loop().time() + grace
        twin, self._twin = self._twin, None
        if twin is not None:  # the threads' backend, in the portal's loop
            from .._portal import submit

            await asyncio.wrap_future(submit(twin.aclose(grace=grace)))
        self._batch.flush_all()
        await self._background.drain(end)
        await (await self._connections()).aclose()

    def background(self) -> set[asyncio.Task[Any]]:
        """What runs in the background now (calls in flight, give-backs, reports...)."""
        return self._background.running()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a give-back or release in the background, keeping a reference to it (at
        most a few at a time, so a burst of them does not exhaust the connection pool)."""
        return self._background.spawn(coro)

    # -- script calls -------------------------------------------------------------------

    def _now_arg(self) -> str:
        return _protocol.SERVER_TIME if self.time_source == "server" else repr(time.time())

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA ``name``, loading it on first use and again after NOSCRIPT."""
        if self._stale or _get_running_loop() is not self._loop:
            await self._connections()
        return await self._scripts.call(name, keys, args)

    async def _with_policy(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a script under the failure policy ("local" is handled by the caller)."""
        return await _scripts.with_policy(
            self._script,
            name,
            keys,
            args,
            on_error=self.on_error,
            max_backoff=self.max_backoff,
            prefix=self.prefix,
        )

    async def _reserve_batch(
        self, requests: Sequence[tuple[Shape, Sequence[float], float | None]]
    ) -> tuple[str, list[Reply]]:
        # A retry sends the same call (its id names it): charged once if it had run.
        call = f"{self._id}{next(self._calls)}"
        keys, args = _protocol.encode_batch(self._now_arg(), call, requests, self.lease_ttl)
        try:
            replies = await self._with_policy("reserve", keys, args)
        except BackendUnavailableError:
            # The call may have run and its reply been lost: its callers get the error,
            # so what it reserved must not count.
            self._undo_later(keys, args)
            raise
        return call, _protocol.decode_replies(replies, keys)

    def _lost_reply(
        self, pending: Pending, member: str, reply: Reply
    ) -> asyncio.Future[None] | None:
        """A reservation whose caller left while its call was out: given back."""
        if reply.status != RESERVED:
            return None
        return self.give_back(_reservation(pending.shape, pending.amounts, member, reply))

    def _undo_later(self, keys: list[str], args: list[Any]) -> None:
        """Undo a reserve call whose caller got an error, for as long as Redis remembers
        the call."""
        what = "undo a reserve call whose reply was lost"
        within = _protocol.RECORD_TTL_MS / 1000
        self._retry_later("reserve", keys, _protocol.undo(args), within, what)

    def _retry_later(
        self, name: str, keys: list[str], args: list[Any], within: float, what: str
    ) -> None:
        """Make a call that failed with Redis out of reach (an undo, a release, a
        give-back) once it answers again, in the background, for ``within`` seconds at
        most; beyond ``_MAX_RETRYING`` such calls at a time, the next ones are dropped
        (with one warning until the backlog is gone)."""
        if self._retrying >= _MAX_RETRYING:
            if not self._retry_warned:
                self._retry_warned = True
                log.warning(
                    "more than %d calls wait for Redis to answer again; the next ones are "
                    "not made again (what they reserve or hold counts until it expires)",
                    _MAX_RETRYING,
                )
            return
        self._retrying += 1
        self._background.start(self._retry(name, keys, args, within, what))

    async def _retry(
        self, name: str, keys: list[str], args: list[Any], within: float, what: str
    ) -> None:
        try:
            await self._when_answered(name, keys, args, within, what)
        finally:
            self._retrying -= 1
            if not self._retrying:
                self._retry_warned = False

    async def _when_answered(
        self, name: str, keys: list[str], args: list[Any], within: float, what: str
    ) -> None:
        """Call a script once Redis answers: retried (quietly, with backoff) while it
        is unreachable, for ``within`` seconds at most; never raises."""
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        delay = 0.05
        try:
            while not await self._try_script(name, keys, args):
                if loop.time() + delay >= end:
                    log.warning("could not %s: Redis unreachable", what)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
        except Exception as exc:  # best effort
            log.warning("could not %s: %s", what, exc)

    async def _try_script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> bool:
        """Call a script once; whether Redis answered (an outage, on a cluster a failover
        in progress too: not; any other error is raised)."""
        try:
            await self._script(name, keys, args)
        except Exception as exc:
            if not _scripts.is_outage(exc):
                raise
            log.debug("Redis unreachable (%s); will retry %s", exc, name)
            return False
        return True

    async def reserve(
        self, shape: Shape, amounts: Sequence[float], *, deadline: float | None
    ) -> tuple[int, float, Reservation]:
        """Reserve ``amounts`` on ``shape``'s meters at their earliest common instant.

        ``deadline`` is an instant on the running loop's clock, or ``None``. Returns
        ``(status, wait, reservation)``: status 1 reserved (sleep ``wait`` seconds, then
        go), 0 the instant is past ``deadline`` (nothing taken), 2 no concurrency slot
        (nothing taken; ``wait`` is when the first lease expires), 4 the limiter's
        rates changed since ``shape.version`` (nothing taken: read them, then ask
        again). Requests of this process share round trips.
        """
        batch = self._batch
        pending = batch.submit(shape, amounts, deadline)
        try:
            reply, arrived, member = await pending.future
        except asyncio.CancelledError:
            batch.withdraw(pending)  # what it reserved, if anything, is given back
            raise
        if reply.status == WRONG_TYPE:
            raise BackendError(
                f"the key {reply.key!r} holds a value of the wrong type; is another "
                f"program using the prefix {self.prefix!r}?"
            )
        reservation = _reservation(shape, amounts, member, reply)
        if reply.status != RESERVED:
            return reply.status, reply.wait, reservation
        # What is left of the wait now, on the local clock.
        left = reply.wait - (asyncio.get_running_loop().time() - arrived)
        return reply.status, left if left > 0.0 else 0.0, reservation

    def give_back(self, reservation: Reservation) -> asyncio.Future[None]:
        """Return a reservation whose caller left before its instant, in the background
        (best effort): the give-backs of this process share calls, one call per hash
        tag. Done when its call has been made (or failed)."""
        self.running_loop()  # a new loop gets its own queue of give-backs
        if not reservation.meters and not reservation.lease:  # nothing held in Redis
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future
        return self._give_backs.submit(reservation.tag, reservation)

    async def _give_back_batch(self, tag: str, reservations: list[Reservation]) -> None:
        keys, args = _protocol.encode_give_backs(self._now_arg(), reservations, self.lease_ttl)
        try:
            await self._with_policy("cancel", keys, args)
        except BackendUnavailableError:
            # Out of reach (under "raise" or "local"): given back once Redis answers.
            what = f"give {len(reservations)} reservation(s) back"
            self._retry_later("cancel", keys, args, _protocol.RECORD_TTL_MS / 1000, what)
        except Exception as exc:  # a give-back is best effort
            log.warning("could not give %d reservation(s) back: %s", len(reservations), exc)

    async def release(self, reservation: Reservation) -> None:
        """Release a concurrency slot and wake one process waiting for one (sharing a
        round trip with the other releases of this process; never raises)."""
        if not reservation.lease:
            return
        self.running_loop()  # a new loop gets its own queue of releases
        await asyncio.shield(self._releases.submit(reservation.slots_key, reservation.lease))

    async def _release_batch(self, slots_key: str, leases: list[str]) -> None:
        keys, args = _protocol.encode_release(slots_key, leases, self.lease_ttl)
        try:
            await self._with_policy("release", keys, args)
        except BackendUnavailableError:
            # Out of reach (under "raise" or "local"): released once Redis answers, or
            # the slots would stay held until their leases expire.
            what = f"release {len(leases)} concurrency slot(s)"
            self._retry_later("release", keys, args, self.lease_ttl, what)
        except Exception as exc:  # the leases expire on their own
            log.warning("could not release %d concurrency slot(s): %s", len(leases), exc)

    async def wait_for_slot(self, slots_key: str, seconds: float) -> bool:
        """Block (without polling) until a slot is released, or ``seconds`` pass (as
        Redis counts them: its reply comes a round trip later); whether a release woke
        this process."""
        from redis.exceptions import ResponseError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        # Within the client's read timeout, or the read would fail before Redis answers.
        timeout = max(0.001, min(seconds, self._block_for))
        try:
            client = await self._connections()
            woken = await client.blpop([_protocol.wake_key(slots_key)], timeout=timeout)
        except RedisTimeoutError:
            return False  # a dead connection, dropped; the time was spent waiting anyway
        except Exception as exc:  # any other failure: wait without blocking
            # Refused (an ACL without blocking commands, the wake key of another type):
            # a timed wait instead, or every waiter would spin on the script.
            refused = isinstance(exc, ResponseError)
            error = _scripts.translate(exc, self.prefix)
            if isinstance(error, BackendConfigurationError) and not refused:
                raise error from exc
            if refused and not self._refused_blocking:
                self._refused_blocking = True
                log.warning(
                    "Redis refused the blocking wait for a concurrency slot (%s); waiting "
                    "for slots with timed waits of %.2f s instead",
                    exc,
                    _SLOT_POLL,
                )
            await asyncio.sleep(min(seconds, _SLOT_POLL))
            return False
        return woken is not None

    async def adjust(self, reservation: Reservation, new_amounts: Sequence[float]) -> None:
        """Settle a grant: replace its amounts by ``new_amounts``."""
        if tuple(new_amounts) == reservation.amounts:
            return  # nothing to change (or no meter)
        # A retry sends the same call (its key names it): settled once if it had run.
        call = f"{self._id}{next(self._calls)}"
        keys, args = _protocol.encode_adjust(self._now_arg(), call, reservation, new_amounts)
        await self._with_policy("adjust", keys, args)

    async def charge(
        self,
        meters: Sequence[MeterSpec],
        owed: Sequence[float],
        grants: Sequence[tuple[float, Sequence[float]]],
        rates: tuple[str, str],
    ) -> None:
        """Charge what a local stand-in admitted: each bucket what it is ``owed``, each
        window the ``grants`` ``(seconds ago, amount per meter)``, in calls of at most
        ``_CHARGED_AT_ONCE`` grants (best effort: never raises); ``rates``: the rates
        hash and version the parameters of ``meters`` come from."""
        first = 0
        while True:
            part = grants[first : first + _CHARGED_AT_ONCE]
            call = f"{self._id}{next(self._calls)}"
            now = self._now_arg()
            keys, args = _protocol.encode_charge(now, call, meters, owed, part, rates)
            try:
                await self._with_policy("charge", keys, args)
            except Exception as exc:  # the limit may be exceeded by as much, once
                log.warning("could not charge Redis with the local stand-in's grants: %s", exc)
                return
            first += _CHARGED_AT_ONCE
            if first >= len(grants):
                return
            owed = [0.0] * len(meters)  # charged with the first part

    async def feedback(
        self,
        pause_key: str,
        pause: float | None,
        clamps: Sequence[tuple[MeterSpec, float, float, float | None]],
        rates: tuple[str, str],
    ) -> None:
        """Pause for ``pause`` seconds and lower meters to ``(remaining, reset)``
        (``rates``: the rates hash and version their parameters come from)."""
        now = self._now_arg()
        keys, args = _protocol.encode_feedback(now, pause_key, pause, clamps, rates)
        await self._with_policy("feedback", keys, args)

    async def forget(self, keys: Sequence[str]) -> None:
        """Delete ``keys`` (a limiter's meters and pause: a reset)."""
        await self._with_policy("forget", keys, [len(keys)])

    async def update(
        self,
        rates_key: str,
        changes: Sequence[tuple[MeterSpec, MeterSpec, float]],
        cap: tuple[str, int, int] | None,
        slots_key: str,
    ) -> dict[str, str]:
        """Give each meter of ``changes`` ``(meter, new, amount)`` the parameters of
        ``new``, and the cap ``(field, value, value before)`` its value, for every
        process (see update.lua), waking who waits for a slot of ``slots_key`` if it
        rose; what the rates hash holds then (see :meth:`rates`). Sent again after a
        lost reply, the call changes nothing more."""
        version = f"{self._id}{next(self._calls)}"
        keys, args = _protocol.encode_update(
            self._now_arg(), version, rates_key, changes, cap, slots_key, self.lease_ttl
        )
        flat = await self._with_policy("update", keys, args)
        return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def rates(self, rates_key: str) -> dict[str, str]:
        """What a limiter's rates hash holds (see update.lua): field to value."""

        async def read(name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
            return await (await self._connections()).hgetall(keys[0])

        held = await _scripts.with_policy(
            read,
            "rates",
            [rates_key],
            [],
            on_error=self.on_error,
            max_backoff=self.max_backoff,
            prefix=self.prefix,
        )
        return {_text(field): _text(value) for field, value in held.items()}

    def __repr__(self) -> str:
        return (
            f"<RedisBackend prefix={self.prefix!r} time={self.time_source} "
            f"on_error={self.on_error}>"
        )


def _reservation(shape: Shape, amounts: Sequence[float], member: str, reply: Reply) -> Reservation:
    lease = member if shape.slots_key else ""
    at = reply.now + reply.wait
    return Reservation(
        shape.meters,
        tuple(amounts),
        member,
        at,
        lease,
        shape.slots_key,
        shape.rates_key,
        shape.version,
    )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


_get_running_loop: Final = asyncio.events._get_running_loop  # None, not an error

_NOT_ASYNCIO: Final = (
    "the Redis backend runs on asyncio only (redis-py's asyncio client), and no asyncio "
    "event loop is running here (trio?): run the limiters that use a RedisBackend under "
    "asyncio (asyncio.run, or anyio with its asyncio backend), or use in-memory limiters"
)


async def _close_at_shutdown(client: Client) -> AsyncGenerator[None, None]:
    """Started in a loop, closed by the loop's ``shutdown_asyncgens``: then close the
    client's connections, while the loop can still close their sockets."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await _disconnect(client)


async def _disconnect(client: Client) -> None:
    """Close the client's connections; it opens new ones when next used. A cluster
    client has no pool: closing it closes every node's connections, and it finds the
    cluster's nodes again at its next command."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        await pool.disconnect()
    else:
        await client.aclose()


_CLIENT_OPTIONS: Final[dict[str, Any]] = {
    "socket_timeout": READ_TIMEOUT,
    "socket_connect_timeout": CONNECT_TIMEOUT,
    "socket_keepalive": True,
}


def _longest_block(client: Any) -> float:
    """The longest ``BLPOP`` that ``client`` reads the reply of: under its read timeout
    (with a margin for the round trip), at most a minute."""
    pool = getattr(client, "connection_pool", None)
    # A cluster client has no pool: its nodes' connections take its connection_kwargs.
    options = getattr(pool or client, "connection_kwargs", None)
    if isinstance(options, dict) and "socket_timeout" in options:
        read_timeout = options["socket_timeout"]
    else:  # a client made without one: redis-py's default, if it has one
        import inspect

        from redis.asyncio.connection import Connection

        default = inspect.signature(Connection.__init__).parameters.get("socket_timeout")
        read_timeout = None if default is None else default.default
    if not isinstance(read_timeout, (int, float)) or read_timeout <= 0:
        return 60.0
    return max(0.001, min(60.0, read_timeout * 0.75, read_timeout - 0.25))


_TWINNING: Final = threading.Lock()


def _copy(client: Client) -> Client:
    """A client of the same server and options as ``client``, with connections of its
    own."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:  # a cluster client: its options are not all its constructor's
        raise BackendConfigurationError(
            "threads need a client of their own, which cannot be copied from a Redis "
            "Cluster client: pass RedisBackend(..., threads_client=lambda: "
            "RedisCluster(...)), a function that makes one"
        )
    import redis.asyncio as aioredis

    copy = type(pool)(
        connection_class=pool.connection_class,
        max_connections=pool.max_connections,
        **pool.connection_kwargs,
    )
    return aioredis.Redis.from_pool(copy)


def default_url() -> str:
    """``TOKENBUCKET_REDIS_URL`` or the local default."""
    return os.environ.get("TOKENBUCKET_REDIS_URL", "redis://127.0.0.1:6379/0")
