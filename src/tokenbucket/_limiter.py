"""Limiter: several limits (requests, tokens, calls in flight) taken in one await.

Theory of operation
-------------------
A :class:`Limiter` has named *dimensions* (``requests``, ``tokens``, or any names) and one
*meter* per rate: an exact sliding window by default, or a token bucket when the rate
opts in to a burst. A request is a vector (one amount per dimension) plus, when the
limiter caps concurrency, one slot. It is granted only when every meter and the slot
admit it at the same instant, and then all of them are charged at once: nothing is
held while waiting for something else. Waiters queue in one FIFO queue (the same
machinery as the single limiters), so order holds across the whole request.

A grant becomes a :class:`Lease`. Leaving the lease's ``async with`` gives the slot back;
``settle`` corrects the token count once the real usage is known: a refund goes back
to the meters (and to the next waiter at once), an overrun is charged as debt that
later callers wait off. Server feedback (``Retry-After``, rate-limit headers) pauses
the limiter or lowers what the meters may grant; it never raises what they may grant.
"""

from __future__ import annotations

import itertools
import math
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from . import _validate
from ._core import BucketState, WindowLog
from ._errors import (
    AcquireTimeoutError,
    AmountExceedsLimitError,
    ArgumentTypeError,
    InvalidArgumentError,
    LeaseError,
)
from ._headers import ServerFeedback, parse_rate_limit_headers
from ._queue import _GRANTED, _WAITING, WaiterQueue, _Waiter
from ._rate import DAY, HOUR, MINUTE, SECOND, Rate

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
    from types import TracebackType

    from ._redis import RedisBackend
    from ._redis.limiter import RemoteLimiter

__all__ = ["Lease", "LeaseContext", "Limiter", "LimiterSnapshot"]

RateLike = Rate | str
"""A rate as :class:`Limiter` accepts it: a :class:`Rate` or a string like ``"500/minute"``."""

_UNITS: Final = {"second": SECOND, "minute": MINUTE, "hour": HOUR, "day": DAY}
_INF: Final = math.inf
_MONOTONIC: Final = object()
_ARRIVALS: Final = itertools.count()


class _Meter:
    """One rate of one dimension: its core state and the most one request may take."""

    __slots__ = ("claim", "core", "dim", "key", "maximum", "rate", "redis_key", "users")

    def __init__(self, dim: str, rate: Rate) -> None:
        self.dim = dim
        self.redis_key: str | None = None  # where a Redis backend keeps it (shared meters)
        # A shared meter's claim: the earliest queue head it is too low for. No request
        # that arrived later takes from it until that one is granted or leaves, so a
        # large request is not starved by small ones of other limiters.
        self.claim: _Request | None = None
        # Which clock the core's instants are on: _MONOTONIC, an event loop, or None.
        self.key: object | None = None
        self.rate = rate
        self.core: BucketState | WindowLog
        if rate.burst is None:
            self.core = WindowLog(rate.amount, rate.period)
            self.maximum = rate.amount
        else:
            self.core = BucketState(rate.per_second, rate.burst)
            self.maximum = rate.burst
        # Limiters using this meter; more than one when a limit is shared (BucketGroup).
        self.users: list[weakref.ref[Limiter]] = []

    def at_rest(self, now: float) -> bool:
        core = self.core
        if isinstance(core, BucketState):
            return core.level(now) >= core.capacity
        return core.used(now) == 0

    def describe(self) -> str:
        burst = "" if self.rate.burst is None else f" burst {self.rate.burst:g}"
        return f"{self.dim} {self.rate}{burst}"


class _Request:
    __slots__ = ("amounts", "seq", "slot")

    def __init__(self, amounts: tuple[float, ...], slot: bool) -> None:
        self.amounts = amounts
        self.slot = slot
        self.seq = next(_ARRIVALS)  # arrival order across limiters (shared meters)


class _MultiState:
    """The pure state of a Limiter: meters, the concurrency count and a pause."""

    __slots__ = (
        "_ticket",
        "binding",
        "dims",
        "freed",
        "in_flight",
        "indexes",
        "max_concurrency",
        "meters",
        "paused_until",
        "seen",
    )

    def __init__(
        self, dims: tuple[str, ...], meters: list[_Meter], max_concurrency: int | None
    ) -> None:
        self.dims = dims
        self.meters = meters
        # Where each meter's dimension sits in this limiter's request vectors (a shared
        # meter sits at different places in different limiters).
        self.indexes = [dims.index(m.dim) for m in meters]
        self.max_concurrency = max_concurrency
        self.in_flight = 0
        self.paused_until = -_INF
        self.seen = -_INF  # the latest instant this state has been asked about
        self.freed: list[_Meter] = []  # shared meters whose claim a grant just released
        self._ticket: tuple[object, ...] = ()
        self.binding: object | None = None  # the event loop being bound to

    @property
    def ticket(self) -> tuple[object, ...]:
        return self._ticket

    @property
    def last_update(self) -> float:
        return max((m.core.last_update for m in self.meters), default=0.0)

    def try_take(self, request: _Request, now: float) -> bool:
        self.seen = max(self.seen, now)
        if now < self.paused_until:
            return False
        if request.slot and self.in_flight >= (self.max_concurrency or 0):
            return False
        amounts = request.amounts
        pairs = list(zip(self.meters, self.indexes, strict=True))
        for meter, index in pairs:
            amount = amounts[index]
            if amount and meter.claim is not None and meter.claim.seq < request.seq:
                return False
            if amount and not meter.core.fits(min(amount, meter.maximum), now):
                return False
        tickets: list[object] = []
        for meter, index in pairs:
            amount = amounts[index]
            if amount:
                meter.core.charge(amount, now)
                tickets.append(meter.core.ticket)
            else:
                tickets.append(None)
        if request.slot:
            self.in_flight += 1
        self._ticket = tuple(tickets)
        for meter in self.meters:
            if meter.claim is request:
                meter.claim = None
                self.freed.append(meter)
        return True

    def ready_at(self, request: _Request, now: float) -> float:
        if request.slot and self.in_flight >= (self.max_concurrency or 0):
            return _INF  # only a release lets it in
        when = max(now, self.paused_until)
        amounts = request.amounts
        for meter, index in zip(self.meters, self.indexes, strict=True):
            amount = amounts[index]
            if amount and meter.claim is not None and meter.claim.seq < request.seq:
                return _INF  # an earlier request of another limiter goes first
            if amount:
                when = max(when, meter.core.ready_at(min(amount, meter.maximum), now))
        return when

    def refund(self, request: _Request, ticket: tuple[object, ...], now: float) -> None:
        amounts = request.amounts
        for meter, index, entry in zip(self.meters, self.indexes, ticket, strict=True):
            amount = amounts[index]
            if amount and entry is not None:
                meter.core.refund(amount, entry, now)  # type: ignore[arg-type]
        if request.slot:
            self.in_flight -= 1

    def rebase(self, now: float) -> None:
        # A pause keeps what was left of it; an expired one stays expired.
        if self.paused_until > self.seen:
            self.paused_until = now + (self.paused_until - self.seen)
        else:
            self.paused_until = -_INF
        self.seen = now
        for meter in self.meters:
            # A shared meter another limiter already runs on this clock stays put.
            if meter.key is None or meter.key is not self.binding:
                meter.core.rebase(now)
            meter.key = self.binding


@dataclass(frozen=True)
class LimiterSnapshot:
    """A read-only view of a :class:`Limiter`, for logs and metrics.

    Attributes:
        available: per dimension, the most one request could take right now if nobody
            were queued (the tightest of that dimension's rates; negative when in debt).
        in_flight: leases holding a concurrency slot.
        max_concurrency: the cap on ``in_flight``, or ``None``.
        waiters: requests queued.
        paused_until: the event-loop time until which a server asked us to wait, or
            ``None``.
        next_wakeup: when the queue head is due, or ``None`` (nobody waits, or the head
            waits for a slot).
    """

    available: Mapping[str, float]
    in_flight: int
    max_concurrency: int | None
    waiters: int
    paused_until: float | None
    next_wakeup: float | None


class Limiter(WaiterQueue):
    """Several limits acquired atomically, in one await, with one FIFO queue.

    >>> import tokenbucket as tb
    >>> limiter = tb.Limiter(
    ...     requests_per_minute=5_000,
    ...     tokens_per_minute=800_000,
    ...     tokens_per_day=50_000_000,
    ...     max_concurrency=64,
    ... )
    >>> limiter.dimensions
    ('requests', 'tokens')

    Rates are given as keywords ``<dimension>_per_<unit>`` (unit: ``second``,
    ``minute``, ``hour`` or ``day``) with a number or a :class:`Rate`, or in ``limits``
    as ``{"tokens": [tb.per_minute(800_000), "50000000/day"]}``. Dimension names are
    yours; ``requests`` is special only in that every acquisition takes one unless told
    otherwise.

    By default a rate of N per period never admits more than N in any rolling period
    (an exact sliding window), whatever the timing. A rate with ``burst=b``
    (``tb.per_minute(500, burst=50)``) is a token bucket instead: smoother, but it can
    admit up to ``b + N`` in a rolling period.

    Args:
        limits: rates per dimension (each a rate or a list of rates).
        max_concurrency: the most leases held at once (calls in flight), or ``None``.
        allow_debt: let a request larger than a rate's amount (or burst) through once
            that meter is full, putting it in debt that later callers wait off, instead
            of rejecting it with :class:`AmountExceedsLimitError`.
        name: a label for ``repr`` and error messages.
        **rates: ``<dimension>_per_<unit>=N``.

    A limiter may be created anywhere (at import time too) and binds to the event loop
    that uses it; it is not thread-safe.
    """

    __slots__ = (
        "_allow_debt",
        "_backend",
        "_dims",
        "_leases",
        "_limits",
        "_multi",
        "_name",
        "_remote",
        "_tag",
    )

    def __init__(
        self,
        limits: Mapping[str, RateLike | Sequence[RateLike]] | None = None,
        *,
        max_concurrency: int | None = None,
        allow_debt: bool = False,
        name: str | None = None,
        backend: RedisBackend | None = None,
        key: str | None = None,
        **rates: float | Rate,
    ) -> None:
        specs: list[tuple[str, Rate]] = []
        for dim, given in (limits or {}).items():
            _check_dimension(dim, "limits")
            if isinstance(given, (str, Rate)):
                many: list[object] = [given]
            elif isinstance(given, (list, tuple)):
                many = list(given)
            else:
                raise ArgumentTypeError(
                    f"limits[{dim!r}]",
                    f"limits[{dim!r}] must be a Rate, a str such as '500/minute' or a list "
                    f"of them, not {type(given).__name__}",
                )
            if not many:
                raise InvalidArgumentError("limits", f"no rate given for {dim!r}")
            specs.extend((dim, _to_rate(item, f"limits[{dim!r}]")) for item in many)
        for keyword, value in rates.items():
            dim, unit = _split_key(keyword)
            specs.append((dim, _rate_for_unit(value, unit, keyword)))
        if max_concurrency is not None:
            if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
                raise ArgumentTypeError(
                    "max_concurrency",
                    f"max_concurrency must be an int or None, not {type(max_concurrency).__name__}",
                )
            if max_concurrency < 1:
                raise InvalidArgumentError(
                    "max_concurrency", f"max_concurrency must be >= 1, got {max_concurrency!r}"
                )
        if not specs and max_concurrency is None:
            raise InvalidArgumentError(
                "limits", "a Limiter needs at least one rate or a max_concurrency"
            )
        if not isinstance(allow_debt, bool):
            raise ArgumentTypeError("allow_debt", "allow_debt must be a bool")
        dims: list[str] = []
        for dim, _ in specs:
            if dim not in dims:
                dims.append(dim)
        self._dims = tuple(dims)
        meters = [_Meter(dim, rate) for dim, rate in specs]
        self._limits = {dim: min(m.maximum for m in meters if m.dim == dim) for dim in dims}
        self._multi = _MultiState(self._dims, meters, max_concurrency)
        self._allow_debt = allow_debt
        self._name = name
        self._leases = 0  # open leases, with or without a concurrency slot
        self._backend = backend
        self._tag = _check_key(backend, key, name)
        self._remote: RemoteLimiter | None = None
        super().__init__(self._multi)
        for meter in meters:
            meter.users.append(weakref.ref(self))

    # -- public API ------------------------------------------------------------------

    @property
    def dimensions(self) -> tuple[str, ...]:
        """The dimensions' names, in the order they were given."""
        return self._dims

    @property
    def rates(self) -> Mapping[str, tuple[Rate, ...]]:
        """The rates of each dimension."""
        return {
            dim: tuple(m.rate for m in self._multi.meters if m.dim == dim) for dim in self._dims
        }

    @property
    def max_concurrency(self) -> int | None:
        """The cap on calls in flight, or ``None``."""
        return self._multi.max_concurrency

    def acquire(self, *, timeout: float | None = None, **amounts: float) -> LeaseContext:
        """Reserve every dimension (and a concurrency slot) at once; use with ``async with``.

        ``async with limiter.acquire(tokens=1200) as lease:`` waits in FIFO order until
        the whole request fits, then holds it: one await, no task, nothing held while
        waiting. ``requests`` defaults to 1 when the limiter has that dimension; other
        dimensions default to 0. Leaving the block releases the slot, also on error and
        cancellation. Call :meth:`Lease.settle` with the real usage once it is known.

        Args:
            timeout: seconds to wait at most (``None``: forever); then
                :class:`AcquireTimeoutError` and nothing is taken.
            **amounts: the amount per dimension.

        Raises:
            AmountExceedsLimitError: an amount more than a rate can ever grant (unless
                the limiter allows debt). Raised at once; nothing is taken.
            InvalidArgumentError, ArgumentTypeError: a bad amount, an unknown dimension
                or a bad timeout.
        """
        request = self._request(amounts)
        seconds = _validate.timeout(timeout)
        if self._backend is not None:
            from ._redis.limiter import RemoteLeaseContext

            return RemoteLeaseContext(self._remote_limiter(), request.amounts, seconds)
        return LeaseContext(self, request, seconds)

    def pause(self, seconds: float) -> None:
        """Admit nothing for ``seconds`` from now (for example after a 429's
        ``Retry-After``). Waiters keep their places; a later, shorter pause does not
        shorten this one."""
        delay = _validate.real(seconds, "seconds", zero=True)
        if self._backend is not None:
            from ._headers import ServerFeedback
            from ._redis.limiter import remote_feedback

            remote_feedback(self._remote_limiter(), ServerFeedback((), delay), None)
            return
        now = self._now()
        self._multi.seen = max(self._multi.seen, now)
        self._multi.paused_until = max(self._multi.paused_until, now + delay)
        self._kick()

    def feedback(
        self,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | ServerFeedback,
        *,
        status: int | None = None,
    ) -> ServerFeedback:
        """Fold a server's response into the limiter.

        Reads the rate-limit headers of OpenAI (``x-ratelimit-*``), Anthropic
        (``anthropic-ratelimit-*``) and the IETF drafts (``RateLimit-*``), and
        ``Retry-After``. For each dimension of this limiter the server reports, its
        meters are lowered so they never grant more than the server says is left (until
        the server's reset). ``Retry-After`` (or a ``status`` of 429 without one, which
        pauses for one second) pauses the whole limiter. Malformed headers are ignored
        with a :class:`RateLimitHeaderWarning`.

        Returns what was read, for logging.
        """
        info = headers if isinstance(headers, ServerFeedback) else parse_rate_limit_headers(headers)
        if self._backend is not None:
            from ._redis.limiter import remote_feedback

            return remote_feedback(self._remote_limiter(), info, status)
        now = self._now()
        for limit in info.limits:
            meter = self._reported_meter(limit.dimension, limit.limit)
            if meter is None:
                continue
            core = meter.core
            if isinstance(core, BucketState):
                core.clamp(limit.remaining, now)
            else:
                reset = limit.reset_after
                until = now + (meter.rate.period if reset is None else reset)
                core.clamp(limit.remaining, until, now)
        retry = info.retry_after
        if retry is None and status == 429:
            retry = 1.0
        if retry is not None:
            self._multi.seen = max(self._multi.seen, now)
            self._multi.paused_until = max(self._multi.paused_until, now + retry)
        self._kick()
        return info

    def _reported_meter(self, dim: str, server_limit: float | None) -> _Meter | None:
        """The one meter a server's report on ``dim`` describes: this limiter's own rate of
        that dimension whose amount is nearest the server's limit, else the shortest
        period (providers report their per-minute limits). Shared meters are left alone:
        one member's report says nothing about the others' use of a shared pool."""
        own = [m for m in self._multi.meters if m.dim == dim and len(m.users) <= 1]
        if not own:
            return None
        if server_limit is not None:
            return min(own, key=lambda m: (abs(m.rate.amount - server_limit), m.rate.period))
        return min(own, key=lambda m: m.rate.period)

    def statistics(self) -> LimiterSnapshot:
        """A read-only view of the limiter's state; cheap and side-effect free."""
        now = self._peek_now()
        multi = self._multi
        available: dict[str, float] = {}
        for meter in multi.meters:
            core = meter.core
            level = core.level(now)
            available[meter.dim] = min(available.get(meter.dim, _INF), level)
        paused = multi.paused_until if multi.paused_until > now else None
        return LimiterSnapshot(
            available=available,
            in_flight=multi.in_flight,
            max_concurrency=multi.max_concurrency,
            waiters=self._live,
            paused_until=paused,
            next_wakeup=self._next_wakeup() if self._live else None,
        )

    def __repr__(self) -> str:
        parts = [m.describe() for m in self._multi.meters]
        if self._multi.max_concurrency is not None:
            parts.append(f"max_concurrency {self._multi.max_concurrency}")
        label = f" {self._name!r}" if self._name else ""
        return f"<Limiter{label} {', '.join(parts)} waiters={self._live}>"

    # -- internals ---------------------------------------------------------------------

    def _request(self, amounts: Mapping[str, object]) -> _Request:
        vector = [0.0] * len(self._dims)
        if "requests" in self._dims and "requests" not in amounts:
            if self._limits["requests"] < 1 and not self._allow_debt:
                raise AmountExceedsLimitError(1.0, self._limits["requests"], "requests limit")
            vector[self._dims.index("requests")] = 1.0
        for dim, value in amounts.items():
            if dim not in self._dims:
                raise InvalidArgumentError(
                    dim, f"unknown dimension {dim!r}; this limiter has {list(self._dims)}"
                )
            amount = _validate.real(value, dim, zero=True)
            if amount > self._limits[dim] and not self._allow_debt:
                raise AmountExceedsLimitError(amount, self._limits[dim], f"{dim} limit")
            vector[self._dims.index(dim)] = amount
        return _Request(tuple(vector), self._multi.max_concurrency is not None)

    async def _take(self, request: _Request, timeout: float | None) -> tuple[object, ...]:
        now = self._now()
        if not self._live and self._multi.try_take(request, now):
            return self._multi.ticket
        if timeout == 0:
            raise AcquireTimeoutError(f"{self!r} could not grant the request at once")
        waiter = _Waiter(1.0, request, _INF if timeout is None else now + timeout)
        if not self._live:
            self._claim(request, now)  # it will be the head
        await self._wait(waiter, now)
        ticket = waiter.ticket
        assert isinstance(ticket, tuple)
        return ticket

    def _timeout_message(self, waiter: _Waiter) -> str:
        return f"timed out waiting for {self!r}"

    def _claim(self, request: _Request, now: float) -> None:
        """The queue head claims the shared meters it does not fit in (see _Meter)."""
        multi = self._multi
        for meter, index in zip(multi.meters, multi.indexes, strict=True):
            amount = request.amounts[index]
            if (
                amount
                and len(meter.users) > 1
                and (meter.claim is None or request.seq < meter.claim.seq)
                and not meter.core.fits(min(amount, meter.maximum), now)
            ):
                meter.claim = request

    def _dispatch(self, now: float) -> None:
        super()._dispatch(now)
        multi = self._multi
        for waiter in self._queue:  # the head, if it is still waiting
            if waiter.state is _WAITING:
                assert isinstance(waiter.request, _Request)
                self._claim(waiter.request, now)
                break
        if multi.freed:
            freed, multi.freed = multi.freed, []
            self._kick_all(freed)

    def _forget(self, waiter: _Waiter) -> None:
        super()._forget(waiter)
        released = [m for m in self._multi.meters if m.claim is waiter.request]
        for meter in released:
            meter.claim = None
        if released:
            self._kick_others(released)

    def _abandon(self, waiter: _Waiter) -> None:
        granted = waiter.state is _GRANTED
        super()._abandon(waiter)
        if granted:  # its grant went back, to shared meters too
            self._kick_all(m for m in self._multi.meters if len(m.users) > 1)

    def _kick_all(self, meters: Iterable[_Meter]) -> None:
        """Capacity came back on ``meters``: wake this limiter and any sharing them."""
        self._kick()
        self._kick_others(meters)

    def _kick_others(self, meters: Iterable[_Meter]) -> None:
        for meter in meters:
            for ref in meter.users:
                other = ref()
                if other is not None and other is not self and other._key is self._key:
                    other._kick()

    def _release(self, request: _Request) -> None:
        self._leases -= 1
        if request.slot:
            self._multi.in_flight -= 1
            if self._key is not None and self._live:
                self._kick()

    def _settle(
        self, request: _Request, ticket: tuple[object, ...], actual: Mapping[str, object]
    ) -> None:
        now = self._now()
        refunded: list[_Meter] = []
        for dim, value in actual.items():
            if dim not in self._dims:
                raise InvalidArgumentError(
                    dim, f"unknown dimension {dim!r}; this limiter has {list(self._dims)}"
                )
            _validate.real(value, dim, zero=True)
        for dim, value in actual.items():
            used = float(value)  # type: ignore[arg-type]
            index = self._dims.index(dim)
            difference = used - request.amounts[index]
            for meter, entry in zip(self._multi.meters, ticket, strict=True):
                if meter.dim != dim or difference == 0:
                    continue
                if difference > 0:
                    meter.core.charge(difference, now)
                elif entry is not None:
                    meter.core.refund(-difference, entry, now)  # type: ignore[arg-type]
                    refunded.append(meter)
        if refunded:
            self._kick_all(refunded)

    def _remote_limiter(self) -> RemoteLimiter:
        """The Redis side of this limiter, made on first use (after any shared meters)."""
        if self._remote is None:
            from ._redis import MeterSpec
            from ._redis.limiter import RemoteLimiter

            backend = self._backend
            assert backend is not None
            assert self._tag is not None
            tag, _, name = self._tag.partition("\x00")
            pairs = []
            for i, meter in enumerate(self._multi.meters):
                core = meter.core
                rate = meter.rate
                label = f"{meter.dim}:{rate.amount!r}/{rate.period!r}"
                if isinstance(core, BucketState):
                    label += f":b{core.capacity!r}"
                    spec = MeterSpec("b", "", core.rate, core.capacity)
                else:
                    spec = MeterSpec("w", "", core.limit, core.window)
                redis_key = meter.redis_key or backend.key(
                    tag, *([name] if name else []), f"{i}", label
                )
                spec = MeterSpec(spec.kind, redis_key, spec.p1, spec.p2)
                pairs.append((spec, self._multi.indexes[i]))
            share = backend.local_share
            dims = self._dims

            def local() -> _LocalStandIn:
                limits = {
                    dim: [
                        Rate(m.rate.amount * share, m.rate.period, burst=m.rate.burst)
                        for m in self._multi.meters
                        if m.dim == dim
                    ]
                    for dim in dims
                }
                return _LocalStandIn(Limiter(limits, allow_debt=True))

            self._remote = RemoteLimiter(
                backend,
                (tag, name) if name else (tag,),
                dims,
                pairs,
                self._multi.max_concurrency,
                local,
            )
        return self._remote

    def _adopt(self, meters: list[_Meter]) -> None:
        """Take on shared meters (BucketGroup.share), before any use."""
        if self._live or self._multi.in_flight or self._key is not None:
            raise RuntimeError(f"{self!r} is in use; share limits before using it")
        dims = list(self._dims)
        for meter in meters:
            if meter.dim not in dims:
                dims.append(meter.dim)
            limit = self._limits.get(meter.dim, _INF)
            self._limits[meter.dim] = min(limit, meter.maximum)
            meter.users.append(weakref.ref(self))
        self._dims = tuple(dims)
        multi = self._multi
        multi.dims = self._dims
        multi.meters = [*multi.meters, *meters]
        multi.indexes = [self._dims.index(m.dim) for m in multi.meters]

    def _bind(
        self,
        key: object,
        loop: asyncio.AbstractEventLoop | None,
        clock: Callable[[], float],
        step: float,
    ) -> None:
        # Instants on time.monotonic are comparable across loops; others only within one.
        origin = _MONOTONIC if clock is time.monotonic else key
        if self._clock is time.monotonic:  # the old clock can still be read
            self._multi.seen = max(self._multi.seen, time.monotonic())
        self._multi.binding = origin
        super()._bind(key, loop, clock, step)
        now = clock()
        for meter in self._multi.meters:
            if meter.key is not None and meter.key is not origin:
                # Another member of a shared limit moved it onto another clock.
                meter.core.rebase(now)
            meter.key = origin

    def _at_rest(self) -> bool:
        """Indistinguishable from a new limiter of the same configuration."""
        if self._live or self._multi.in_flight or self._leases:
            return False
        # On time.monotonic the present is known even outside the loop that used it.
        now = time.monotonic() if self._clock is time.monotonic else self._peek_now()
        if self._multi.paused_until > now:
            return False
        return all(m.at_rest(now) for m in self._multi.meters)


class LeaseContext:
    """What :meth:`Limiter.acquire` returns: ``async with`` it to hold a :class:`Lease`."""

    __slots__ = ("_lease", "_limiter", "_request", "_timeout")

    def __init__(self, limiter: Limiter, request: _Request, timeout: float | None) -> None:
        self._limiter = limiter
        self._request = request
        self._timeout = timeout
        self._lease: Lease | None = None

    def __await__(self) -> Generator[Any, None, None]:
        raise TypeError(
            "Limiter.acquire() returns a lease context: use "
            "'async with limiter.acquire(...) as lease:', not 'await limiter.acquire(...)'"
        )

    async def __aenter__(self) -> Lease:
        if self._lease is not None:
            raise LeaseError("this acquire() context was already entered; call acquire() again")
        ticket = await self._limiter._take(self._request, self._timeout)
        self._limiter._leases += 1
        self._lease = Lease(self._limiter, self._request, ticket)
        return self._lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._lease is not None
        self._lease._close()


class Lease:
    """What a granted :meth:`Limiter.acquire` holds until its ``async with`` ends.

    Call :meth:`settle` once with the real usage (e.g. the tokens the response says it
    used); the concurrency slot is released when the block ends.
    """

    __slots__ = ("_limiter", "_open", "_request", "_settled", "_ticket")

    def __init__(self, limiter: Limiter, request: _Request, ticket: tuple[object, ...]) -> None:
        self._limiter = limiter
        self._request = request
        self._ticket = ticket
        self._open = True
        self._settled = False

    @property
    def reserved(self) -> Mapping[str, float]:
        """The amount taken per dimension when the lease was granted."""
        return dict(zip(self._limiter.dimensions, self._request.amounts, strict=True))

    @property
    def limiter(self) -> Limiter:
        """The limiter that granted this lease."""
        return self._limiter

    def settle(self, **actual: float) -> None:
        """Replace the reserved amounts with the real usage, once.

        ``lease.settle(tokens=response.usage.total_tokens)``: a smaller amount gives the
        difference back (waiters get it at once), a larger one is charged as debt that
        later callers wait off. Dimensions not named keep their reserved amount.

        Raises:
            LeaseError: settled twice, or after the ``async with`` block ended.
            InvalidArgumentError, ArgumentTypeError: an unknown dimension or a bad amount.
        """
        if not self._open:
            raise LeaseError("this lease has ended; settle() inside its async with block")
        if self._settled:
            raise LeaseError("this lease was already settled; settle() once per lease")
        self._limiter._settle(self._request, self._ticket, actual)
        self._settled = True

    def feedback(
        self,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        *,
        status: int | None = None,
    ) -> ServerFeedback:
        """Pass a response's headers (and status) to the limiter: see :meth:`Limiter.feedback`."""
        return self._limiter.feedback(headers, status=status)

    def _close(self) -> None:
        if self._open:
            self._open = False
            self._limiter._release(self._request)

    def __repr__(self) -> str:
        state = "open" if self._open else "ended"
        settled = ", settled" if self._settled else ""
        return f"<Lease {dict(self.reserved)} {state}{settled}>"


# -- configuration helpers -------------------------------------------------------------


def _check_dimension(dim: object, argument: str) -> None:
    if not isinstance(dim, str) or not dim.isidentifier():
        raise InvalidArgumentError(
            argument, f"dimension names must be identifiers such as 'tokens', got {dim!r}"
        )


def _split_key(key: str) -> tuple[str, str]:
    dim, sep, unit = key.rpartition("_per_")
    if not sep or unit not in _UNITS or not dim.isidentifier():
        raise InvalidArgumentError(
            key,
            f"unknown limit {key!r}; expected <dimension>_per_<unit> with a unit of "
            f"{', '.join(_UNITS)} (e.g. tokens_per_minute)",
        )
    return dim, unit


def _rate_for_unit(value: object, unit: str, key: str) -> Rate:
    if isinstance(value, Rate):
        if value.period != _UNITS[unit]:
            raise InvalidArgumentError(key, f"{key}={value!r}: the rate's period is not one {unit}")
        return value
    amount = _validate.real(value, key)
    return Rate(amount, _UNITS[unit])


def _to_rate(value: object, argument: str) -> Rate:
    if isinstance(value, Rate):
        return value
    if isinstance(value, str):
        try:
            return Rate.parse(value)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(argument, str(exc)) from None
    raise ArgumentTypeError(
        argument,
        f"{argument} must be a Rate or a str such as '500/minute', not {type(value).__name__}",
    )


def _check_key(backend: object, key: object, name: str | None) -> str | None:
    if backend is None:
        if key is not None:
            raise InvalidArgumentError(
                "key", "key names a limiter's state in a backend; pass backend= too"
            )
        return None
    from ._redis import RedisBackend

    if not isinstance(backend, RedisBackend):
        raise ArgumentTypeError(
            "backend", f"backend must be a RedisBackend, not {type(backend).__name__}"
        )
    key = key if key is not None else name
    if not isinstance(key, str) or not key:
        raise InvalidArgumentError(
            "key", "a limiter with a backend needs key=: the name its state has there"
        )
    return key


class _LocalStandIn:
    """The in-memory limiter used while Redis is unreachable (policy "local")."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    async def take_local(self, amounts: Sequence[float], timeout: float | None) -> None:
        wanted = dict(zip(self.limiter.dimensions, amounts, strict=True))
        async with self.limiter.acquire(timeout=timeout, **wanted):
            pass
