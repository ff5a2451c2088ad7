"""What a server's response means for a limiter: one policy for every backend.

A response can say three things. ``Retry-After`` (or a 429 without it, read as one
second) pauses the whole limiter. A rate-limit header family reports, per dimension, how
much is left until the server's limit resets: that lowers the one meter of the dimension
the report describes (the limiter's own rate whose amount is nearest the server's limit,
else its shortest period, since providers report per-minute limits) to what is left,
and never touches a pool shared with other limiters (one member's report says nothing
about the others' use of it).

OpenAI's and Anthropic's reset is the time until the limit is *full* again: their
capacity comes back gradually, at a rate the headers imply
(:attr:`ServerLimit.refill_rate`). What is held back from a window then comes back at
that rate, not all at the reset. And when that rate, with the server's limit, describes a
limit over about the meter's own period (within 25 %), the meter is *fitted* to the
server, modelled as the bucket it is: a bucket meter's rate and burst become the lesser
of its own and the server's; a window meter keeps its limit and gains that bucket beside
it, which every later grant of its dimension takes from too. Either way the report's
``remaining`` then lowers that bucket, which refills at the server's rate. A limiter
configured too high thus runs at the server's limit from the first report on, and goes
back up (never past its configuration) when a later report shows the server allows more.
Backends apply the plan; none decides it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._core import Meter, RateSpec
    from ._headers import ServerFeedback, ServerLimit

__all__ = ["Clamp", "FeedbackPlan", "fitted", "plan_feedback"]

_PAUSE_ON_429 = 1.0
_tuple_new = tuple.__new__  # (a NamedTuple made without its Python __new__)
# A server's limit describes a meter's period when its own is within this factor of it.
_SAME_PERIOD = 1.25


class Clamp(NamedTuple):
    """Lower ``meter`` (its index among the limiter's meters) to ``remaining`` for the
    next ``reset`` seconds.

    ``refill``: the rate (units/s) at which the server's capacity comes back, when its
    reset is the time until full; what a window holds back then leaves it at that rate.
    ``fit``: the server as a bucket ``(rate, capacity)`` to fit the meter to first; the
    clamp then applies to that bucket (see :func:`fitted`).
    """

    meter: int
    remaining: float
    reset: float
    refill: float | None = None
    fit: tuple[float, float] | None = None


class FeedbackPlan(NamedTuple):
    """A server's response as a pause and clamps; ``rejected``: it said 429."""

    pause: float | None
    clamps: tuple[Clamp, ...]
    rejected: bool = False


def plan_feedback(
    info: ServerFeedback, status: int | None, meters: Sequence[Meter]
) -> FeedbackPlan:
    """The pause and the clamps that ``info`` (and ``status``) call for on ``meters``."""
    clamps: list[Clamp] = []
    if info.limits:
        owns: dict[str, list[int]] = {}  # each dimension's meters, pools left out
        for i, m in enumerate(meters):
            if m.sharers <= 1:  # (not m.shared, without the property's call)
                owns.setdefault(m.dim, []).append(i)
        for limit in info.limits:
            own = owns.get(limit.dimension)
            if own is None:
                continue
            if len(own) == 1:  # the usual case: one meter per dimension
                index = own[0]
            elif limit.limit is not None:
                server = limit.limit
                index = min(
                    own,
                    key=lambda i: (abs(meters[i].rate.amount - server), meters[i].rate.period),
                )
            else:
                index = min(own, key=lambda i: meters[i].rate.period)
            rate = meters[index].rate
            reset = rate.period if limit.reset_after is None else limit.reset_after
            fit = None if limit.refill_rate is None else _fit(rate, limit)
            clamp = (index, limit.remaining, reset, limit.refill_rate, fit)
            clamps.append(_tuple_new(Clamp, clamp))
    pause = info.retry_after
    if pause is None and status == 429:
        pause = _PAUSE_ON_429
    return _tuple_new(FeedbackPlan, (pause, tuple(clamps), status == 429))


def _fit(rate: RateSpec, limit: ServerLimit) -> tuple[float, float] | None:
    """The parameters that fit ``rate``'s meter to the server's ``limit``, if it gives a
    refill rate that, with its limit, describes a limit over about ``rate``'s period."""
    refill, most = limit.refill_rate, limit.limit
    if refill is None or most is None:
        return None
    period = most / refill  # how long the server takes to fill from empty
    if not rate.period / _SAME_PERIOD <= period <= rate.period * _SAME_PERIOD:
        return None
    return fitted(rate, refill, most)


def fitted(rate: RateSpec, refill: float, most: float) -> tuple[float, float]:
    """The bucket ``(rate, capacity)`` that models a server which holds ``most`` and
    refills at ``refill`` units/s, for a meter of ``rate``: for a bucket meter, never more
    than its own (it is retuned to it); for a window, the server's own (a bucket beside
    the window, which keeps its limit)."""
    if rate.burst is None:
        return refill, most
    return min(rate.amount / rate.period, refill), min(rate.burst, most)
