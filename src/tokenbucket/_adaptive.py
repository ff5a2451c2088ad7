"""A concurrency cap that finds itself: ``max_concurrency=tb.adaptive(...)``.

:func:`adaptive` describes the cap (its bounds and its policy, see ``_core.adaptive``);
each limiter made with it keeps a :class:`Controller`: the policy, fed with the outcome
of each lease as it ends, and the history of the limit. The limiter applies a new limit
as :meth:`Limiter.update` applies a cap: at once for the waiters, in FIFO order, and a
lower one keeps the leases held.

What a lease tells: how long it was held (from its grant to its end), how many leases the
limiter held then, and whether the call was *dropped*: a response reported with status
429 or 5xx (``lease.feedback(..., status=...)``, which the transports call), or the
block (or a transport's response body) left with a timeout, a broken connection or an
error carrying such a status (see :func:`dropped_by`). A lease cancelled or left with
another error (this library's own included), or a response body closed before its end,
tells nothing: it is no sample (the caller's own trouble, not the server's). With a
backend (Redis), the cap is learned and applied per process (see ``_gate``).
"""

from __future__ import annotations

import builtins
import math
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

from ._core.adaptive import AIMD, Gradient
from ._errors import ArgumentTypeError, InvalidArgumentError, TokenBucketError

if TYPE_CHECKING:
    from ._core.adaptive import Policy

__all__ = ["Adaptive", "Controller", "LimitChange", "adaptive", "dropped_by"]

# The exceptions that say the server did not serve the call: by name, so that no SDK is
# imported (httpx / httpx2, openai, anthropic, google-genai).
_DROPS: Final = frozenset(
    {
        "TimeoutException",  # httpx: connect, read, write and pool timeouts
        "NetworkError",  # httpx: connect, read and write errors
        "RemoteProtocolError",
        "Timeout",  # requests: connect and read timeouts
        "ConnectionError",  # requests (not the built-in one)
        "ClientConnectionError",  # aiohttp
        "ServerTimeoutError",
        "APITimeoutError",  # openai, anthropic
        "APIConnectionError",
        "RateLimitError",
        "InternalServerError",
        "ServiceUnavailableError",
        "OverloadedError",  # anthropic's 529
        "ServerError",  # google-genai: 5xx
    }
)
_TUNING: Final = {
    "aimd": frozenset({"backoff", "window", "max_window"}),
    "gradient": frozenset(
        {"backoff", "window", "max_window", "smoothing", "tolerance", "queue", "probe_every"}
    ),
}
# Per tuning value: the open-closed range it must be in, said in words.
_RANGES: Final = {
    "backoff": (0.0, 0.999, "in (0, 0.999]"),
    "window": (0.0, math.inf, "a whole number >= 1"),
    "max_window": (0.0, math.inf, "> 0"),
    "smoothing": (0.0, 1.0, "in (0, 1]"),
    "tolerance": (1.0, math.inf, "> 1"),
    "queue": (0.0, math.inf, "> 0"),
    "probe_every": (0.0, math.inf, "> 0, or None"),
}
# ExceptionGroup's base (Python 3.11; the exceptiongroup backport's on 3.10, if loaded).
_GROUPS: Final[tuple[type, ...]] = tuple(
    kind
    for kind in (
        getattr(builtins, "BaseExceptionGroup", None),
        getattr(sys.modules.get("exceptiongroup"), "BaseExceptionGroup", None),
    )
    if kind is not None
)
_HISTORY: Final = 64  # the changes of the limit kept


def dropped_by(error: BaseException | None) -> bool:
    """Whether a lease left with ``error`` says the server did not serve its call: a
    timeout or a broken connection, an error named as the SDKs name those, or an error
    that carries a status of 429 or 5xx (``status_code``, ``code``, or its
    ``response.status_code``: httpx's ``HTTPStatusError``, the SDKs' status errors).
    This library's own errors (a limiter's timeout, Redis out of reach) are not the
    server's."""
    if error is None or isinstance(error, TokenBucketError):
        return False
    inner = getattr(error, "exceptions", None)  # (a task group's: any of its errors)
    if isinstance(error, _GROUPS) and isinstance(inner, tuple):
        return any(dropped_by(one) for one in inner if isinstance(one, BaseException))
    if isinstance(error, (TimeoutError, ConnectionError)):
        return True
    if any(kind.__name__ in _DROPS for kind in type(error).__mro__):
        return True
    return any(dropped_status(status) for status in _statuses(error))


def dropped_status(status: int) -> bool:
    """Whether a response of ``status`` is a dropped call: 429 or 5xx."""
    return status == 429 or 500 <= status <= 599


def _statuses(error: BaseException) -> list[int]:
    """The HTTP statuses an error carries (``status_code``, ``status``, ``code``, or its
    ``response``'s), read without raising."""
    found = []
    for owner, name in (
        (error, "status_code"),
        (error, "status"),
        (error, "code"),
        ("response", "status_code"),
        ("response", "status"),
    ):
        try:
            holder = getattr(error, owner, None) if isinstance(owner, str) else owner
            value = getattr(holder, name, None)
        except Exception:  # (a property that fails: no status there)
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            found.append(value)
    return found


@dataclass(frozen=True)
class Adaptive:
    """A concurrency cap that finds itself (see :func:`adaptive`)."""

    initial: int
    minimum: int
    maximum: int
    policy: Literal["gradient", "aimd"] = "gradient"
    tuning: tuple[tuple[str, float | None], ...] = field(default=())

    def make(self) -> Policy:
        kind = Gradient if self.policy == "gradient" else AIMD
        return kind(self.initial, self.minimum, self.maximum, **dict(self.tuning))  # type: ignore[arg-type]


def adaptive(
    initial: int = 16,
    min: int = 1,
    max: int = 512,
    *,
    policy: Literal["gradient", "aimd"] = "gradient",
    **tuning: float | None,
) -> Adaptive:
    """A ``max_concurrency`` that finds the right number of calls in flight by itself.

    ``tb.Limiter(tokens_per_minute=200_000, max_concurrency=tb.adaptive(initial=16,
    min=1, max=512))``: the limiter starts at ``initial`` calls in flight and moves the
    cap between ``min`` and ``max`` with what its calls tell (their latency, and 429s,
    5xx, timeouts and broken connections).

    ``policy``: ``"gradient"`` (the default) watches the latency: it grows (by
    ``queue``, 10 % of the cap, smoothed by ``smoothing``, 0.2) while the latency stays
    within ``tolerance`` (1.2x) of the latency without load, and shrinks as queues
    build up in the server, before it fails; the latency without load is measured by a
    short probe at half the cap every ``probe_every`` seconds (30; ``None``: never; and
    never more often than every 20 latencies). ``"aimd"`` watches failures alone: it
    grows by one call per window, and shrinks by ``backoff`` (x0.9) when a call is
    dropped. Both move once per window of ``window`` calls (10) or ``max_window``
    seconds (1.0), measure the cap in force (a latency counts only if its call started
    after the cap last moved), start by doubling (a slow start, until the first sign of
    congestion), never grow while the application sends less than half the cap, and
    lower the cap once per burst of drops (by more than ``backoff`` when more than a
    fifth of a window's calls were dropped: by half when all were). The gradient
    reads the median latency of a window, so that calls of very different lengths (an
    LLM's) move it less. With a backend (Redis), each process learns and applies its
    own cap, in front of the rates the processes share there.

    Raises:
        InvalidArgumentError: bounds out of order or below 1, an unknown policy, a
            tuning value its policy does not take, or one out of its range.
        ArgumentTypeError: a bound that is not an int, a tuning value that is not a
            number.
    """
    for name, value in (("initial", initial), ("min", min), ("max", max)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ArgumentTypeError(name, f"{name} must be an int, not {type(value).__name__}")
    if not 1 <= min <= max:
        raise InvalidArgumentError("min", f"need 1 <= min <= max, got min={min}, max={max}")
    if not min <= initial <= max:
        raise InvalidArgumentError(
            "initial", f"need min <= initial <= max, got {initial} (min {min}, max {max})"
        )
    if policy not in _TUNING:
        raise InvalidArgumentError("policy", f"policy must be 'gradient' or 'aimd', not {policy!r}")
    for name, number in tuning.items():
        if name not in _TUNING[policy]:
            raise InvalidArgumentError(
                name, f"{policy!r} takes {sorted(_TUNING[policy])}, not {name!r}"
            )
        if number is None and name == "probe_every":
            continue
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise ArgumentTypeError(name, f"{name} must be a number, not {type(number).__name__}")
        low, high, what = _RANGES[name]
        if not (math.isfinite(number) and low < number <= high) or (
            name == "window" and number != int(number)
        ):
            raise InvalidArgumentError(name, f"{name} must be {what}, got {number!r}")
    return Adaptive(initial, min, max, policy, tuple(sorted(tuning.items())))


class LimitChange(NamedTuple):
    """One move of an adaptive cap."""

    at: float  # on the limiter's clock
    limit: int
    reason: str  # "grow", "latency", "drop", "probe" or "probed"


class Controller:
    """One limiter's adaptive cap: its policy, fed by the leases that end (from any
    thread: under :attr:`lock`), and the history of its limit."""

    __slots__ = ("clock", "config", "history", "limit", "lock", "policy")

    def __init__(self, config: Adaptive, clock: object, now: float) -> None:
        self.config = config
        self.policy = config.make()
        self.limit = self.policy.current
        self.lock = threading.Lock()  # held while a change is applied too (see Limiter)
        self.clock = clock  # the clock the policy's instants are on
        self.history: deque[LimitChange] = deque(
            [LimitChange(now, self.limit, "initial")], _HISTORY
        )

    def sample(
        self, clock: object, now: float, rtt: float, in_flight: int, dropped: bool
    ) -> LimitChange | None:
        """One lease's outcome, timed on ``clock`` (call it under :attr:`lock`); the
        change of the limit it made, if any. Samples on another clock than the last
        (another event loop) start the policy's timing again."""
        if clock is not self.clock:
            self.clock = clock
            self.policy.rebase(now)
        reason = self.policy.sample(now, rtt, in_flight, dropped)
        limit = self.policy.current
        if limit == self.limit:
            return None
        self.limit = limit
        change = LimitChange(now, limit, reason or "probed")  # (or a rebase ended a probe)
        self.history.append(change)
        return change
