"""Helpers shared by the Redis tests and the process helper script (no pytest here)."""

from __future__ import annotations

import contextvars
import math
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from tokenbucket._redis import RedisBackend, Reservation

if TYPE_CHECKING:
    from collections.abc import Sequence

    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster

    from tokenbucket._redis._protocol import Shape

DEFAULT_URL = "redis://127.0.0.1:6379/15"
START_HINT = "redis-server --daemonize yes --port 6379 --save '' --appendonly no"

# Float instants on the server clock come back as %.17g text, computed in Lua doubles:
# allow a rounding error this small (TIME itself has microsecond resolution).
ROUNDING = 1e-6
SCHEDULE_ULP = 2**-21  # two units in the last place of an epoch instant (< 2**31 s)


def configured_url() -> str:
    """``TOKENBUCKET_REDIS_URL``, or the local default (database 15)."""
    return os.environ.get("TOKENBUCKET_REDIS_URL", DEFAULT_URL)


@dataclass(frozen=True)
class Grant:
    """A reservation granted by the reserve script, as the caller received it."""

    at: float  # the instant reserved, on the backend's clock (exact: the script's own)
    now: float  # the backend's clock when the script ran (the request's arrival)
    reservation: Reservation


class RecordingBackend(RedisBackend):
    """A :class:`RedisBackend` that remembers the reservations its callers were granted.

    Each granted reservation is appended to ``granted`` and also set in ``last`` (a
    context variable, so the task that acquired can read its own reservation right after
    ``acquire`` returns: the reservation is made in that task's context).
    """

    def __init__(self, client: aioredis.Redis | RedisCluster | str, **options: Any) -> None:
        super().__init__(client, **options)
        self.granted: list[Grant] = []
        self.last: contextvars.ContextVar[Grant | None] = contextvars.ContextVar(
            "last_grant", default=None
        )

    async def reserve(
        self, shape: Shape, amounts: Sequence[float], *, deadline: float | None
    ) -> tuple[int, float, Reservation]:
        result = await super().reserve(shape, amounts, deadline=deadline)
        status, wait, reservation = result
        if status == 1:
            grant = Grant(reservation.at, reservation.at - wait, reservation)
            self.granted.append(grant)
            self.last.set(grant)
        return result


async def server_time(client: aioredis.Redis) -> float:
    """The Redis server's clock (``TIME``), in seconds."""
    seconds, micros = await client.time()
    return float(seconds) + float(micros) / 1e6


def window_peak(instants: Sequence[float], window: float) -> int:
    """The most instants inside any half-open window ``[s, s + window)``.

    An entry granted at ``x`` leaves the window at ``x + window`` exactly, so an instant
    ``ROUNDING`` short of that still counts as outside (rounding of the Lua doubles).
    """
    ordered = sorted(instants)
    peak = 0
    end = 0
    for start, value in enumerate(ordered):
        end = max(end, start)
        while end < len(ordered) and ordered[end] < value + window - ROUNDING:
            end += 1
        peak = max(peak, end - start)
    return peak


def bucket_excess(instants: Sequence[float], rate: float, capacity: float) -> float:
    """How far unit grants at ``instants`` exceed ``capacity + rate * T`` over the worst
    interval (<= 0: the token bucket bound holds on every interval)."""
    ordered = sorted(instants)
    worst = -float("inf")
    lowest = float("inf")
    for index, value in enumerate(ordered):
        # Grants i..j number j - i + 1 and may be at most capacity + rate*(t_j - t_i).
        level = index - rate * value
        lowest = min(lowest, level - ROUNDING * rate)
        worst = max(worst, level - lowest + 1 - capacity)
    return worst


_TAG = re.compile(r"^\{([^{}]*)\}")


def hash_tag(key: str) -> str | None:
    """The hash tag Redis Cluster would hash for ``key`` (``None`` if it has none)."""
    match = _TAG.match(key)
    return match.group(1) if match else None


@dataclass(frozen=True)
class Limit:
    """One limit as the contract states it, for computing when grants may happen.

    ``bucket``: ``p1`` rate (units/s), ``p2`` capacity. ``window``: ``p1`` limit, ``p2``
    window (s). ``amount``: what each request takes of it.
    """

    kind: Literal["bucket", "window"]
    p1: float
    p2: float
    amount: float = 1.0


def earliest(previous: Sequence[float], limits: Sequence[Limit]) -> float:
    """The earliest instant the next request may be granted, given the instants of the
    grants before it (in arrival order), by G1 (conformance) and G3 (FIFO) alone."""
    t = previous[-1] if previous else -math.inf  # never before an earlier arrival
    n = len(previous)
    for limit in limits:
        a = limit.amount
        if limit.kind == "bucket":
            # Grants i..n (the new one included) fit in capacity + rate * (t - t_i).
            for i, at in enumerate(previous):
                t = max(t, at + ((n - i + 1) * a - limit.p2) / limit.p1)
        else:
            # The newest j such that grants j..n exceed the limit must have left the window.
            total = a
            for j in range(n - 1, -1, -1):
                total += a
                if total > limit.p1 * (1 + 1e-12):
                    t = max(t, previous[j] + limit.p2)
                    break
    return t


def ideal_schedule(count: int, limits: Sequence[Limit]) -> list[float]:
    """The earliest instants (from 0) at which ``count`` requests arriving together at 0
    can be granted: lower bounds for any conforming limiter."""
    instants: list[float] = []
    for _ in range(count):
        instants.append(max(0.0, earliest(instants, limits)))
    return instants


def schedule_errors(
    grants: Sequence[Grant], limits: Sequence[Limit], *, late: bool = True
) -> list[str]:
    """What is wrong with grants on fresh meters: each must be granted no earlier than
    the limits allow (G1) and, with ``late``, no later than its arrival or that instant,
    whichever is later (G2). Empty when the schedule is right."""
    ordered = sorted(grants, key=lambda g: (g.at, g.now))
    errors: list[str] = []
    previous: list[float] = []
    for k, grant in enumerate(ordered):
        allowed = earliest(previous, limits)
        since = grant.at - ordered[0].at
        if grant.at < allowed - ROUNDING:
            errors.append(f"grant {k} at {since:+.6f} s is early by {allowed - grant.at:.6f} s")
        # A bucket's schedule rounds up (never early) by at most one unit in the last
        # place of an epoch instant per grant: lateness may grow by that much per grant.
        if late and grant.at > max(allowed, grant.now) + ROUNDING + (k + 1) * SCHEDULE_ULP:
            excess = grant.at - max(allowed, grant.now)
            errors.append(f"grant {k} at {since:+.6f} s is late by {excess:.6f} s")
        previous.append(grant.at)
    return errors
