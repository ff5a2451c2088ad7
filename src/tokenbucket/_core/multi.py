"""The state of a multi-limit request: meters, the concurrency count and a pause.

A *request* is a vector (one amount per dimension) plus, when the limiter caps
concurrency, one slot. It is granted only when every meter and the slot admit it at the
same instant, and then all of them are charged at once: nothing is held while waiting
for something else.

A meter may be *shared* by several states (one pool of tokens over several models). A
shared meter that the head of some queue is too large for is *claimed* by that request:
no request that arrived later takes from it until the claimant is granted or leaves, so a
large request is not starved by a stream of small ones from other limiters. Arrival order
across states is the request's ``seq``, given by whoever makes requests.

Like every state in ``_core``, this one takes ``now`` as an argument and does no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from .bucket import BucketState
from .counts import FOLD, Counts
from .window import WindowLog

if TYPE_CHECKING:
    from collections.abc import Container, Iterable, Mapping, Sequence

__all__ = ["REFUSED_PAUSE", "REFUSED_SLOT", "Meter", "MultiState", "RateSpec", "Request"]

_INF: Final = math.inf
# Why MultiState.refused a request, besides a meter's index.
REFUSED_SLOT: Final = -1  # no concurrency slot free
REFUSED_PAUSE: Final = -2  # paused by a server


class RateSpec(Protocol):
    """An amount per period, with an optional burst (``tokenbucket.Rate`` is one)."""

    @property
    def amount(self) -> float: ...
    @property
    def period(self) -> float: ...
    @property
    def burst(self) -> float | None: ...


class Meter:
    """One rate of one dimension: an exact window, or a bucket when the rate has a burst.

    ``sharers`` counts the states that use it; a meter with more than one is a shared
    pool, which a server's report on one member never lowers.
    """

    __slots__ = ("__weakref__", "claim", "core", "dim", "maximum", "most", "rate", "sharers")

    core: BucketState | WindowLog

    def __init__(self, dim: str, rate: RateSpec) -> None:
        self.dim = dim
        self.rate = rate
        if rate.burst is None:
            self.core = WindowLog(rate.amount, rate.period)
        else:
            self.core = BucketState(rate.amount / rate.period, rate.burst)
        self.maximum = self.core.maximum  # as configured: what a request may ask for
        self.most = self.maximum  # as fitted to a server (see fit): what a grant needs
        self.sharers = 0
        self.claim: Request | None = None

    @property
    def shared(self) -> bool:
        return self.sharers > 1

    def describe(self) -> str:
        burst = "" if self.rate.burst is None else f" burst {self.rate.burst:g}"
        return f"{self.dim} {self.rate}{burst}"

    def __repr__(self) -> str:
        return f"<Meter {self.describe()}>"


@dataclass(frozen=True, slots=True)
class _ServerRate:
    """A server's limit as a bucket (the rate of a window meter's shadow)."""

    per_second: float
    capacity: float

    @property
    def amount(self) -> float:
        return self.per_second

    @property
    def period(self) -> float:
        return 1.0

    @property
    def burst(self) -> float:
        return self.capacity

    def __str__(self) -> str:
        return f"{self.per_second:g}/s as the server refills"


class Request:
    """What one acquisition asks for: an amount per dimension, and a slot or not.

    ``seq`` is its arrival order across every state sharing a meter. Only a request that
    waits needs one (see :meth:`MultiState.claim`); until it is given one it counts as
    later than every request that has. ``at`` is the instant a state granted it;
    ``waited`` and ``binding`` say how long it waited and for what, once granted after a
    wait.
    """

    __slots__ = ("amounts", "at", "binding", "queued", "seq", "slot", "waited")

    def __init__(self, amounts: tuple[float, ...], slot: bool, seq: float = _INF) -> None:
        self.amounts = amounts
        self.slot = slot
        self.seq = seq
        self.at = -_INF  # the instant it was granted
        self.waited = 0.0  # seconds from its call to its grant, if it waited
        self.binding: str | None = None  # what it waited for (see MultiState.refusal)
        self.queued = False  # a store queued it (see parked)

    def parked(self) -> None:
        """Told by a store when it queues this request, in the task or thread that waits,
        before it waits, outside any lock. (A lease also tells the limiter's listeners.)"""
        self.queued = True

    def __repr__(self) -> str:
        return f"Request({self.amounts!r}, slot={self.slot!r}, seq={self.seq!r})"


class MultiState:
    """Meters over named dimensions, a cap on grants held at once, and a pause.

    A grant's *ticket* is a list with, per meter, that meter's ticket (or ``None`` when
    the request took nothing of it); :meth:`refund` and :meth:`adjust` use it.
    """

    __slots__ = (
        "_cap",
        "_firsts",
        "_fits",
        "_granted",
        "_pairs",
        "_positions",
        "counts",
        "dims",
        "dormant",
        "fitted",
        "freed",
        "in_flight",
        "max_concurrency",
        "meters",
        "paused_until",
        "refused",
        "seen",
        "shadows",
        "ticket",
        "updated",
    )

    def __init__(
        self, dims: Sequence[str], meters: Sequence[Meter], max_concurrency: int | None
    ) -> None:
        self.dims: tuple[str, ...] = ()
        self.meters: list[Meter] = []
        self._pairs: list[tuple[Meter, BucketState | WindowLog, int]] = []
        self._positions: dict[Meter, int] = {}  # each meter's first index in the pairs
        self.max_concurrency = max_concurrency
        self._cap = max_concurrency or 0
        self.in_flight = 0
        self.paused_until = -_INF
        self.seen = -_INF  # the latest instant this state has been asked about
        self.freed: list[Meter] = []  # shared meters whose claim a grant just released
        self.ticket: list[float | None] = []  # of the most recent grant
        # Per index of a window meter, the bucket that models the server behind it (see
        # fit); after the meters in the pairs, so a grant made before it has a shorter
        # ticket.
        self.shadows: dict[int, Meter] = {}
        self.dormant: set[int] = set()  # the shadows a reset put to sleep (see reset)
        self.fitted = False  # a meter was fitted to a server's limits
        self._fits: dict[Meter, tuple[float, float]] = {}  # a bucket meter's fit: see update
        self.updated = False  # a rate was changed while running (see update)
        # Why the latest request refused was refused: the index of the meter (in meters,
        # or past them for a shadow), or one of REFUSED_SLOT, REFUSED_PAUSE.
        self.refused: int | None = None
        self.counts = Counts(0)
        self._granted = self.counts.pending
        self.add(dims, meters)

    def add(self, dims: Iterable[str], meters: Iterable[Meter]) -> None:
        """Take on more dimensions and meters (shared pools, before any use)."""
        names = list(self.dims)
        names.extend(d for d in dims if d not in names)
        for meter in meters:
            if meter.dim not in names:
                names.append(meter.dim)
            meter.sharers += 1
            self.meters.append(meter)
        self.dims = tuple(names)
        self.counts.widen(len(names))
        self._pairs = [(m, m.core, self.dims.index(m.dim)) for m in self.meters]
        # The first pair of each dimension (a shadow, added later, never is one).
        self._firsts = frozenset(
            {
                index: position
                for position, (_, _, index) in reversed(list(enumerate(self._pairs)))
            }.values()
        )
        self._positions = {}
        for position, meter in enumerate(self.meters):
            self._positions.setdefault(meter, position)

    def limit(self, dim: str) -> float:
        """The most one request may take of ``dim`` (its tightest meter), or inf."""
        return min((m.maximum for m in self.meters if m.dim == dim), default=_INF)

    @property
    def last_update(self) -> float:
        """The latest instant any meter has seen."""
        return max((m.core.last_update for m in self.meters), default=0.0)

    # -- granting -----------------------------------------------------------------------

    def try_take(self, request: Request, now: float) -> bool:
        """Grant ``request`` at ``now`` if every meter and a slot admit it; report whether."""
        if now > self.seen:
            self.seen = now
        if now < self.paused_until:
            self.refused = REFUSED_PAUSE
            return False
        if request.slot and self.in_flight >= self._cap:
            self.refused = REFUSED_SLOT
            return False
        amounts = request.amounts
        claimed = False
        tickets: list[float | None] = []
        for meter, core, index in self._pairs:
            amount = amounts[index]
            if not amount:
                tickets.append(None)
                continue
            claim = meter.claim
            if claim is not None:
                if claim.seq < request.seq:
                    self._undo(tickets)
                    self.refused = len(tickets)
                    return False
                claimed = claimed or claim is request
            most = meter.most  # a request in debt waits for a full meter
            ticket = core.take(amount, amount if amount < most else most, now)
            if ticket is None:
                self._undo(tickets)
                self.refused = len(tickets)
                return False
            tickets.append(ticket)
        if request.slot:
            self.in_flight += 1
        self.ticket = tickets
        request.at = now
        if request.seq == _INF:  # granted at once: counted as Counts.grant does, inline
            pending = self._granted
            pending.append(amounts)
            if len(pending) >= FOLD:
                self.counts.fold()
        else:  # it queued first (see claim)
            self.counts.grant(amounts, queued=True)
        if claimed:
            self.freed.extend(self.unclaim(request))
        return True

    def _undo(self, tickets: list[float | None]) -> None:
        """Take back what the first meters just granted (``tickets``: a later one refused)."""
        done = zip(self._pairs[: len(tickets)], tickets, strict=True)
        for (_, core, _), ticket in reversed(list(done)):
            if ticket is not None:
                core.undo()

    def ready_at(self, request: Request, now: float) -> float:
        """The earliest instant ``request`` can be granted if nothing else happens; inf
        while only a release (or another state's claimant) can let it in."""
        if request.slot and self.in_flight >= self._cap:
            return _INF
        when = max(now, self.paused_until)
        amounts = request.amounts
        for meter, core, index in self._pairs:
            amount = amounts[index]
            if amount:
                claim = meter.claim
                if claim is not None and claim.seq < request.seq:
                    return _INF
                when = max(when, core.ready_at(min(amount, meter.most), now))
        return when

    def claim(self, request: Request, now: float) -> None:
        """``request`` heads its queue: it claims the shared meters it does not fit."""
        amounts = request.amounts
        for meter, core, index in self._pairs:
            amount = amounts[index]
            if (
                amount
                and meter.sharers > 1
                and (meter.claim is None or request.seq < meter.claim.seq)
                and not core.fits(min(amount, meter.most), now)
            ):
                meter.claim = request

    def unclaim(self, request: Request) -> list[Meter]:
        """Drop ``request``'s claims; the meters it had claimed."""
        released = [m for m in self.meters if m.claim is request]
        for meter in released:
            meter.claim = None
        return released

    def refusal(self) -> str | None:
        """What refused the latest request refused: ``"max_concurrency"``, ``"paused"``,
        or a meter as ``"<dimension> <rate>"`` (``"tokens 800000/minute"``); ``None``
        if none was."""
        refused = self.refused
        if refused is None:
            return None
        if refused == REFUSED_SLOT:
            return "max_concurrency"
        if refused == REFUSED_PAUSE:
            return "paused"
        return self._pairs[refused][0].describe()

    # -- giving back and correcting --------------------------------------------------------

    def refund(self, request: Request, ticket: Sequence[float | None], now: float) -> None:
        """Undo a grant whose holder left before using it (as far as each meter safely
        can), and free its slot."""
        amounts = request.amounts
        for (_, core, index), entry in zip(self._pairs, ticket, strict=False):
            amount = amounts[index]
            if amount and entry is not None:
                core.refund(amount, entry, now)
        if request.slot:
            self.in_flight -= 1

    def release(self, request: Request) -> None:
        """The holder of a grant is done: its slot is free again."""
        if request.slot:
            self.in_flight -= 1

    def adjust(
        self,
        request: Request,
        ticket: Sequence[float | None],
        actual: Mapping[int, float],
        now: float,
    ) -> list[Meter]:
        """Replace a grant's amounts (by dimension index) with ``actual``: an overrun is
        charged as debt, an unused part is refunded. Returns the meters refunded."""
        refunded: list[Meter] = []
        counts = self.counts
        counts.settles += 1
        firsts = self._firsts  # each dimension's difference is counted once (Counts.settle)
        amounts = request.amounts
        count = len(ticket)  # shorter than the pairs for a grant made before a fit
        for position, (meter, core, index) in enumerate(self._pairs):
            if index not in actual:
                continue
            entry = ticket[position] if position < count else None
            difference = actual[index] - amounts[index]
            if difference > 0:
                core.charge(difference, now)
                if position in firsts:
                    counts.charged[index] += difference
            elif difference < 0:
                if position in firsts:
                    counts.refunded[index] -= difference
                if entry is not None:
                    core.refund(-difference, entry, now)
                    refunded.append(meter)
        return refunded

    def clamp(
        self,
        meter: Meter,
        remaining: float,
        until: float,
        now: float,
        refill: float | None = None,
        seen: tuple[Request, Sequence[float | None]] | None = None,
    ) -> bool:
        """Make ``meter`` grant at most ``remaining`` until ``until`` (a server's view),
        what it holds back coming back at ``refill`` units/s if given.

        ``seen``: the grant (request and ticket) whose response reported it. The server
        counted ``remaining`` when that request reached it, before the grants made here
        since, which it may not have seen yet: on a bucket, which orders its grants
        exactly, they are taken off it, and what the server refilled since (at
        ``refill``) is added. (A window's log merges grants made at one instant: it
        takes the report as of now.)

        Returns whether it lowered the meter by more than rounding (a correction).
        """
        core = meter.core
        if seen is not None and isinstance(core, BucketState):
            request, ticket = seen
            position = self._positions[meter]
            entry = ticket[position] if position < len(ticket) else None
            # (A grant's ticket is given with its instant, in try_take.)
            if entry is not None and request.at <= now:
                remaining -= core.since(entry)
                remaining += (refill or 0.0) * (now - request.at)
        lowered = core.clamp(remaining, until, now, refill)
        if lowered:
            self.counts.corrections += 1
        return lowered

    def fit(self, meter: Meter, rate: float, capacity: float, now: float) -> Meter:
        """Model the server behind ``meter`` as a bucket that refills at ``rate`` up to
        ``capacity``; return the meter that models it.

        A bucket meter is retuned to it (``_feedback.fitted`` gives the lesser of its own
        parameters and the server's). A window meter keeps its own limit and gets such a
        bucket beside it, its *shadow*, which every later grant of its dimension takes
        from too. A request larger than ``capacity`` waits for a full bucket and goes
        into debt, as with ``allow_debt``, instead of waiting forever.
        """
        self.fitted = True
        if isinstance(meter.core, BucketState):
            meter.core.retune(rate, capacity, now)
            meter.most = min(meter.maximum, capacity)
            self._fits[meter] = (rate, capacity)
            return meter
        index = self._positions[meter]
        self.dormant.discard(index)
        shadow = self.shadows.get(index)
        if shadow is None:
            shadow = Meter(meter.dim, _ServerRate(rate, capacity))
            self.shadows[index] = shadow
            self._pairs.append((shadow, shadow.core, self.dims.index(meter.dim)))
            self._positions[shadow] = len(self._pairs) - 1
        else:
            assert isinstance(shadow.core, BucketState)
            shadow.core.retune(rate, capacity, now)
            shadow.maximum = shadow.most = capacity
        return shadow

    def update(self, meter: Meter, rate: RateSpec, now: float) -> None:
        """Give ``meter`` (one of this state's own, not a shared pool) the rate ``rate``,
        of the same kind (window or bucket) and period, from ``now`` on.

        A window keeps its log: the grants in it count against the new limit (and a
        server's report holds a raise back, see ``WindowLog.retune``). A bucket keeps
        its level, down to the new capacity, and refills at the new rate, or at the
        server's if it was fitted to a lower one (see :meth:`fit`). A waiter larger
        than a lowered limit is granted once the meter is full, in debt (see
        :meth:`try_take`), so it never waits forever.
        """
        if now > self.seen:
            self.seen = now
        self.updated = True
        core = meter.core
        meter.rate = rate
        if isinstance(core, BucketState):
            assert rate.burst is not None
            per_second, burst = rate.amount / rate.period, rate.burst
            meter.maximum = burst
            server = self._fits.get(meter)
            if server is not None:  # fitted to a server: never more than it allows
                per_second, burst = min(per_second, server[0]), min(burst, server[1])
            core.retune(per_second, burst, now)
            meter.most = min(meter.maximum, burst)
        else:
            core.retune(rate.amount, now)
            meter.maximum = meter.most = core.maximum

    def reset(self, now: float, keep: Container[Meter] = ()) -> None:
        """Forget what this state granted and what servers told it: its own meters are
        full again at their configured rates (a meter fitted to a server is given back
        its own parameters; a window's shadow stops binding and sleeps, see
        ``dormant``), and a pause ends. Kept: the meters in ``keep`` (shared pools) and
        any meter shared with another state, the slots held and the counters; a grant
        made before gets nothing back when settled for less (it is forgotten), and is
        charged when settled for more."""
        if now > self.seen:
            self.seen = now
        self.paused_until = -_INF
        for meter in self.meters:
            if meter.shared or meter in keep:
                continue
            core = meter.core
            rate = meter.rate
            if isinstance(core, BucketState):
                assert rate.burst is not None
                core.retune(rate.amount / rate.period, rate.burst, now)
            core.reset(now)
            meter.maximum = meter.most = core.maximum
        for index, shadow in self.shadows.items():
            # A server's model beside a window: as loose as the window itself from now
            # on, until the server's next report fits it again.
            own = self.meters[index].rate
            core = shadow.core
            assert isinstance(core, BucketState)
            core.retune(own.amount / own.period, own.amount, now)
            core.reset(now)
            shadow.maximum = shadow.most = core.maximum
            self.dormant.add(index)  # reports go to the window again, until a next fit
        self._fits.clear()
        self.fitted = False

    def cap(self, max_concurrency: int) -> None:
        """Hold at most ``max_concurrency`` grants at once from now on (those held above
        it are kept; no more is granted until enough are released)."""
        self.updated = True
        self.max_concurrency = self._cap = max_concurrency

    def pause(self, until: float, now: float) -> None:
        """Grant nothing before ``until``; a pause already longer stays."""
        counts = self.counts
        counts.pauses += 1
        counts.paused += max(0.0, until - now)
        if now > self.seen:
            self.seen = now
        if until > self.paused_until:
            self.paused_until = until

    # -- reading --------------------------------------------------------------------------

    def available(self, now: float) -> dict[str, float]:
        """Per dimension, the most one request could take at ``now`` (negative in debt)."""
        available: dict[str, float] = {}
        for meter, _, _ in self._pairs:
            level = meter.core.level(now)
            if level < available.get(meter.dim, _INF):
                available[meter.dim] = level
        return available

    def at_rest(self, now: float) -> bool:
        """Indistinguishable at ``now`` from a new state of the same configuration (one
        fitted to a server's limits, or updated, is not: see :meth:`fit`, :meth:`update`)."""
        return (
            self.in_flight == 0
            and self.paused_until <= now
            and not self.fitted
            and not self.updated
            and all(core.at_rest(now) for _, core, _ in self._pairs)
        )

    def prime(self, since: float, grants: Iterable[tuple[float, Sequence[float]]]) -> None:
        """Start as a stand-in for a limit shared elsewhere: every bucket empty at
        ``since``, and ``grants`` made elsewhere (instant, amount per dimension, in order
        of instant, none later than now) charged at their instants (to a bucket, those
        after ``since``; to a window, all)."""
        for _meter, core, _index in self._pairs:
            core.stand_in(since)
        for at, amounts in grants:
            self.record(at, amounts, since)

    def record(self, at: float, amounts: Sequence[float], since: float = -_INF) -> None:
        """Charge a grant made elsewhere at ``at`` (to a bucket only if after ``since``;
        a window that has seen a later instant counts it from there)."""
        for _meter, core, index in self._pairs:
            amount = amounts[index]
            if amount > 0:
                core.charge_elsewhere(amount, at, since)
        if at > self.seen:
            self.seen = at

    def rebase(self, now: float, meters: Iterable[Meter] | None = None) -> None:
        """Continue on a clock with another origin, as if no time had passed: the pause
        keeps what was left of it, and ``meters`` (default: all) move too."""
        if self.paused_until > self.seen:
            self.paused_until = now + (self.paused_until - self.seen)
        else:
            self.paused_until = -_INF
        self.seen = now
        for meter in [m for m, _, _ in self._pairs] if meters is None else meters:
            meter.core.rebase(now)
