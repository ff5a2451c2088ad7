"""What a server's response means for a limiter: one policy for every backend.

A response can say two things. ``Retry-After`` (or a 429 without it, read as one second)
pauses the whole limiter. A rate-limit header family reports, per dimension, how much
is left until the server's window resets: that lowers the one meter of the dimension
the report describes (the limiter's own rate whose amount is nearest the server's limit,
else its shortest period, since providers report per-minute limits), never raises it,
and never touches a pool shared with other limiters (one member's report says nothing
about the others' use of it). Backends apply the plan; none decides it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._core import Meter
    from ._headers import ServerFeedback

__all__ = ["Clamp", "FeedbackPlan", "plan_feedback"]

_PAUSE_ON_429 = 1.0


@dataclass(frozen=True, slots=True)
class Clamp:
    """Lower ``meter`` (its index among the limiter's meters) to ``remaining`` for the
    next ``reset`` seconds."""

    meter: int
    remaining: float
    reset: float


@dataclass(frozen=True, slots=True)
class FeedbackPlan:
    pause: float | None
    clamps: tuple[Clamp, ...]


def plan_feedback(
    info: ServerFeedback, status: int | None, meters: Sequence[Meter]
) -> FeedbackPlan:
    """The pause and the clamps that ``info`` (and ``status``) call for on ``meters``."""
    clamps: list[Clamp] = []
    for limit in info.limits:
        own = [i for i, m in enumerate(meters) if m.dim == limit.dimension and not m.shared]
        if not own:
            continue
        if limit.limit is not None:
            server = limit.limit
            index = min(
                own, key=lambda i: (abs(meters[i].rate.amount - server), meters[i].rate.period)
            )
        else:
            index = min(own, key=lambda i: meters[i].rate.period)
        reset = meters[index].rate.period if limit.reset_after is None else limit.reset_after
        clamps.append(Clamp(index, limit.remaining, reset))
    pause = info.retry_after
    if pause is None and status == 429:
        pause = _PAUSE_ON_429
    return FeedbackPlan(pause, tuple(clamps))
