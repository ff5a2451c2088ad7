"""What happens to a limiter, told as it happens: events to listeners, and log records.

Theory of operation
-------------------
A :class:`~tokenbucket.Limiter` tells its listeners (``Limiter.subscribe``) and the
``tokenbucket`` logger about each of its moments, from the task or thread that lived it,
once the limiter has decided (granted, given up, settled, paused): a listener runs after
the decision it is told of, never inside the queue's bookkeeping, so it cannot change what
is admitted or when. An exception in a listener is logged and dropped; the caller never
sees it. A limiter without listeners pays one truth test per grant and per settlement.

Log levels: nothing at INFO or above on the path of a grant. A wait (its start, its
grant, its timeout) is logged at DEBUG; a pause and a correction by a server's headers
at INFO; a 429 at WARNING (Redis's faults are logged by the backend, at WARNING, under
``tokenbucket.redis``).
"""

from __future__ import annotations

import logging
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

__all__ = ["EventKind", "LimiterEvent", "emit", "label", "log"]

log = logging.getLogger("tokenbucket")
_NOTHING: Mapping[str, float] = MappingProxyType({})

EventKind = Literal[
    "wait", "grant", "timeout", "cancel", "settle", "pause", "rejected", "correction"
]


class LimiterEvent(NamedTuple):
    """One moment of a limiter, as told to its listeners (see :meth:`Limiter.subscribe`):
    an immutable named tuple.

    Attributes:
        kind: what happened:

            - ``"wait"``: a request could not be granted at once and waits (a
              thread's, on a limiter with a backend, is told once it is granted);
            - ``"grant"``: a request was granted, at once or after a wait (``waited``,
              ``binding``);
            - ``"timeout"``: a request gave up at its timeout (``timeout=0`` too);
            - ``"cancel"``: a request left while waiting, cancelled or failed;
            - ``"settle"``: a lease was settled: ``amounts`` is the real usage,
              ``reserved`` what it had reserved;
            - ``"pause"``: the limiter was paused for ``seconds`` (a ``Retry-After``, a
              429 or :meth:`Limiter.pause`);
            - ``"rejected"``: a response said 429 (``status``); its pause follows as a
              ``"pause"`` event;
            - ``"correction"``: a server's rate-limit headers lowered what the limiter
              may grant (``corrections``: how many of its rates).
        limiter: the limiter's name (a group member's is its name in the group), or
            ``None``.
        amounts: the request's amounts per dimension (for ``"settle"``, the usage).
        waited: seconds from the call to the grant (``"grant"``).
        binding: what the request waited for (see ``Lease.binding``), if it did.
        seconds: the pause asked for (``"pause"``).
        status: the response's status (``"rejected"``).
        reserved: what a settled lease had reserved (``"settle"``).
        corrections: how many rates a report lowered (``"correction"``).
    """

    kind: EventKind
    limiter: str | None
    amounts: Mapping[str, float] = _NOTHING
    waited: float = 0.0
    binding: str | None = None
    seconds: float | None = None
    status: int | None = None
    reserved: Mapping[str, float] | None = None
    corrections: int = 0


def emit(listeners: Sequence[Callable[[LimiterEvent], object]], event: LimiterEvent) -> None:
    """Tell ``event`` to each of ``listeners``; one that raises is logged and skipped."""
    for listener in listeners:
        _tell(listener, event)


def _tell(listener: Callable[[LimiterEvent], object], event: LimiterEvent) -> None:
    try:
        listener(event)
    except Exception:
        log.exception(
            "a listener of %s raised on a %r event; ignored", label(event.limiter), event.kind
        )


def label(name: str | None) -> str:
    """How logs name a limiter."""
    return "an unnamed limiter" if name is None else f"limiter {name!r}"
