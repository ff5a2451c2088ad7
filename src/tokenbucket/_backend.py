"""The seam between a limiter and where its state lives.

Theory of operation
-------------------
A :class:`~tokenbucket.Limiter` (and a single limiter given a backend) turns its
configuration into pure :class:`~tokenbucket._core.Meter` objects and asks a backend to
*open* a :class:`Store` for them. Everything that happens to the state goes through the
store's few operations:

* ``take(request, timeout)``: wait in FIFO order until the request is granted, or raise
  :class:`~tokenbucket.AcquireTimeoutError` at one absolute deadline computed at the
  call. A caller that leaves (cancelled, timed out) consumes nothing.
* ``try_take(request)``: grant at once without waiting (and without I/O), or ``None``
  (a store that cannot know without a round trip always says ``None``).
* ``adjust(request, ticket, actual)``: settle a grant to the real usage.
* ``release(request, ticket)``: the holder is done; its concurrency slot is free.
* ``feedback(plan, lease, ticket)``: apply a server's pause and clamps (decided by
  ``_feedback``), from the response to ``lease`` (granted with ``ticket``) if given;
  how many clamps lowered a meter, when known at once (else 0).
* ``update(rates, cap, done)``: give meters (by index) new rates of the same kind and
  period, and the concurrency cap a new value (``None``: kept), at once for the
  waiters; then call ``done()``, where the change was applied (it may be posted to the
  thread of the loop the store serves). A store shared by processes (Redis) makes
  the change for all of them, once the backend has it (then ``done()``), and tells its
  limiter of a change another process made (``StoreSpec.changed``).
* ``reset()``: forget what was granted and what servers said (``MultiState.reset``).
* ``statistics()``, ``counts()``, ``gauges()`` and ``at_rest()``: read the state without
  changing it (``counts()``: the running totals of what the store granted, settled and
  was told, see ``_core.counts``; ``gauges()``: waiters, slots held and whether paused,
  read from any thread without making the store shared, for metrics).

The in-memory store (``_memory``) is the default; ``_redis`` opens stores whose state
lives in Redis. A new backend implements :class:`Backend` and :class:`Store`; nothing in
the limiters changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

from ._errors import ArgumentTypeError, InvalidArgumentError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from ._core import Counts, Meter, RateSpec, Request
    from ._feedback import FeedbackPlan
    from ._memory import MemoryStore
    from ._statistics import LimiterStatistics

__all__ = ["Backend", "Store", "StoreSpec", "open_store"]


class Store(Protocol):
    """One limiter's state, wherever it lives. Tickets are the store's own."""

    async def take(self, request: Request, timeout: float | None) -> object: ...
    def try_take(self, request: Request) -> object | None: ...
    def adjust(self, request: Request, ticket: object, actual: Mapping[int, float]) -> None: ...
    def release(self, request: Request, ticket: object) -> Awaitable[None] | None: ...
    def feedback(
        self, plan: FeedbackPlan, lease: Request | None = None, ticket: object = None
    ) -> int: ...
    def update(
        self, rates: Sequence[tuple[int, RateSpec]], cap: int | None, done: Callable[[], object]
    ) -> None: ...
    def reset(self) -> None: ...
    def statistics(self) -> LimiterStatistics: ...
    def counts(self) -> Counts: ...
    def gauges(self) -> tuple[int, int, bool]: ...
    def at_rest(self) -> bool: ...


@dataclass(frozen=True)
class StoreSpec:
    """What a backend needs to open a store.

    ``key`` names the limiter in the backend, in parts that a backend must keep apart
    (two distinct keys never share state; its first part groups the keys of one group
    together); ``pools`` names the meters shared by several limiters (a group's
    shared limits), relative to ``key[0]``. ``fallback`` makes an in-memory store of the
    same limits at a share of their rates and bursts, for a backend that limits locally while it
    is unreachable. ``changed(rates, cap)`` is told the rates (by index of ``meters``)
    and the cap (``None``: kept) the limits have now, when a change made elsewhere (another
    process's ``update``) reaches the store, so that the limiter's view follows.
    ``made``: the rates (by index of ``meters``; those beyond: as they are) and the cap
    the limits were made with; a backend that names its state after the limits (Redis's
    keys) names it after those, so that every store of the same limits shares it, even
    one opened after an update.
    """

    key: tuple[str, ...]
    dims: tuple[str, ...]
    meters: Sequence[Meter]
    max_concurrency: int | None
    pools: Mapping[Meter, tuple[str, ...]] = field(default_factory=dict)
    fallback: Callable[[float], MemoryStore] | None = None
    changed: Callable[[Sequence[tuple[int, RateSpec]], int | None], None] | None = None
    made: tuple[Sequence[RateSpec], int | None] | None = None


class Backend(Protocol):
    """Where limiters keep their state when it is not in this process's memory."""

    def open(self, spec: StoreSpec) -> Store: ...


def open_store(
    backend: object,
    key: object,
    name: str | None,
    dims: tuple[str, ...],
    meters: Sequence[Meter],
    max_concurrency: int | None,
    pools: Mapping[Meter, tuple[str, ...]] | None = None,
    *,
    threads: bool = False,
    changed: Callable[[Sequence[tuple[int, RateSpec]], int | None], None] | None = None,
    made: tuple[Sequence[RateSpec], int | None] | None = None,
) -> Store:
    """Check ``backend`` and ``key`` as a limiter's arguments and open its store there.

    ``key`` (or else ``name``) names the limiter in the backend; a group's member is
    named by the parts ``(group key, member name)``, a tuple (every str is a name of its
    own, whatever characters it holds). With ``threads``, the store is the one the
    limiter's threads use, in the portal's loop (``_portal``): opened on the backend's
    ``for_threads()``, a backend of that loop.
    """
    if backend is None:
        if key is not None:
            raise InvalidArgumentError(
                "key", "key names a limiter's state in a backend; pass backend= too"
            )
        raise InvalidArgumentError("backend", "a limiter with key= needs a backend")
    if not callable(getattr(backend, "open", None)):
        raise ArgumentTypeError(
            "backend",
            f"backend must be a backend such as RedisBackend, not {type(backend).__name__}",
        )
    key = key if key is not None else name
    parts = key if isinstance(key, tuple) else (key,)
    if not all(isinstance(part, str) and part for part in parts):
        raise InvalidArgumentError(
            "key", "a limiter with a backend needs key=: the name its state has there"
        )

    def fallback(share: float) -> MemoryStore:
        from ._core import Meter, MultiState
        from ._memory import MemoryStore
        from ._rate import Rate

        # Every rate at its share, and every burst too: N processes at a share of at
        # most 1/N then admit together at most one burst and the rate.
        local = [
            Meter(
                m.dim,
                Rate(
                    m.rate.amount * share,
                    m.rate.period,
                    burst=None if m.rate.burst is None else m.rate.burst * share,
                ),
            )
            for m in meters
        ]
        return MemoryStore(MultiState(dims, local, None), lambda: f"local stand-in for {key!r}")

    spec = StoreSpec(parts, dims, meters, max_concurrency, pools or {}, fallback, changed, made)
    if threads:
        for_threads = getattr(backend, "for_threads", None)
        if for_threads is None:
            raise NotImplementedError(
                f"{type(backend).__name__} cannot serve threads: use its limiters in an event loop"
            )
        backend = for_threads()
    return cast("Backend", backend).open(spec)
